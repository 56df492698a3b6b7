import fastifyPostgres, { type PostgresPluginOptions } from '@fastify/postgres'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { keptConnections } from '../../schemas/env.ts'

/** The pool options derived from configuration. */
export function poolOptions(fastify: FastifyInstance): PostgresPluginOptions {
  const { config } = fastify
  if (!config.DATABASE_URL) throw new Error('DATABASE_URL is not set')
  return {
    pg,
    connectionString: config.DATABASE_URL,
    max: config.PG_POOL_MAX,
    // Below it, idle connections are kept rather than closed after idleTimeoutMillis.
    min: keptConnections(config),
    // Bounds the wait for a free connection; past it the request is a 503, not a hang.
    connectionTimeoutMillis: config.PG_ACQUIRE_TIMEOUT_MS,
    idleTimeoutMillis: 30_000,
    // Pipelining lets the tenant context ride in the same round trip as the first query (DESIGN §3).
    pipeline: true,
    application_name: 'tenant-service'
  } as PostgresPluginOptions
}

/** The shared pg pool, as `fastify.pg`. */
export default fp(
  async function postgres(fastify: FastifyInstance) {
    await fastify.register(fastifyPostgres, poolOptions(fastify))
    const pool = fastify.pg.pool
    // An idle connection the server dropped emits 'error' on the pool; a checked-out one emits it on
    // the client. Unhandled, either would crash the process, so both are logged and the pool
    // replaces the connection.
    pool.on('error', (error) => fastify.log.warn({ err: error }, 'idle database connection lost'))
    pool.on('connect', (client) => {
      client.on('error', (error) => fastify.log.warn({ err: error }, 'database connection lost'))
    })
  },
  { name: 'postgres' }
)
