import fastifyPostgres, { type PostgresPluginOptions } from '@fastify/postgres'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import { databaseKind, UNCACHED_WORKER_CONNECTIONS, type DatabaseKind } from '../../lib/tenant-db/index.ts'
import { limitIdleTransactions } from '../../lib/transaction.ts'
import { directDatabaseUrl, keptConnections } from '../../schemas/env.ts'

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
    // The control plane's transactions are bounded as a request's are.
    limitIdleTransactions(pool, fastify.config.PG_IDLE_IN_TRANSACTION_TIMEOUT_MS)
    // A connection the server dropped emits 'error' on its client, and when it was idle pg-pool
    // emits the same error on the pool too. Unhandled, either would crash the process; the pool
    // replaces the connection, and the loss is logged once.
    const logged = new WeakSet<Error>()
    const connectionLost = (error: Error, client: pg.ClientBase) => {
      if (logged.has(error)) return
      logged.add(error)
      // Not the error object itself: pg-pool attaches the whole client to it (err.client), which
      // the log serializer would write out, connection settings and all, for every connection.
      const { code, severity } = error as Partial<pg.DatabaseError>
      const backendPid = (client as { processID?: number }).processID
      fastify.log.warn({ err: { type: error.name, message: error.message, code, severity }, backendPid }, 'database connection lost')
    }
    pool.on('error', connectionLost)
    const tenantRoles = fastify.config.TENANT_ISOLATION === 'role'
    pool.on('connect', (client) => {
      client.on('error', (error) => connectionLost(error, client))
      // On a Citus coordinator, no worker connection cached per tenant role (lib/tenant-db/citus.ts).
      // Not awaited: pg runs it before anything the connection is handed out for.
      if (tenantRoles) client.query(UNCACHED_WORKER_CONNECTIONS).catch(() => undefined)
      // The database answered at last: what it is can now be said (a start that could not ask).
      if (!kindKnown) detectDatabaseKind()
    })

    // What the database is, and so what a worker's connections are bounded by, said once: at start,
    // or, when the database could not be asked then, once the pool has connected. On a connection
    // of its own rather than one of the pool's. Not awaited: the start waits for nothing the
    // database may be slow to give.
    let kindKnown = false
    let detecting: pg.Client | null = null
    let failures = 0
    let closing = false
    const detectDatabaseKind = () => {
      if (detecting || closing) return
      const client = new pg.Client({ connectionString: directDatabaseUrl(fastify.config), connectionTimeoutMillis: 5000 })
      detecting = client
      client.on('error', () => undefined)
      client
        .connect()
        .then(() => databaseKind(client))
        .then(
          (kind) => {
            kindKnown = true
            logDatabaseKind(kind)
          },
          (error: Error & { code?: string }) => {
            if (closing) return
            // Warned once; the next connection of the pool asks again, and a failure then is only debug.
            // An address tried over IPv6 and IPv4 fails with an AggregateError, whose message is empty.
            const reason = error.message || error.code || error.name
            const line = { err: { type: error.name, message: reason, code: error.code } }
            const message = `database kind (PostgreSQL or Citus) not known: ${reason}; asked again once a connection succeeds`
            if (failures++ === 0) fastify.log.warn(line, message)
            else fastify.log.debug(line, message)
          }
        )
        .finally(() => {
          detecting = null
          client.end().catch(() => undefined)
        })
    }
    fastify.addHook('onReady', async () => detectDatabaseKind())
    fastify.addHook('onClose', async () => {
      closing = true
      await detecting?.end().catch(() => undefined)
    })
    const logDatabaseKind = (kind: DatabaseKind) => {
      const { config } = fastify
      if (!kind.citus) {
        fastify.log.info({ kind: 'postgres', postgres: kind.postgres, isolation: config.TENANT_ISOLATION }, `database: PostgreSQL ${kind.postgres}`)
        return
      }
      const perWorker = tenantRoles
        ? `tenant roles on, worker connections not cached: at most PG_POOL_MAX (${config.PG_POOL_MAX}) per worker for each replica`
        : `TENANT_ISOLATION=search_path, worker connections cached for the service's role: at most PG_POOL_MAX (${config.PG_POOL_MAX}) per worker for each replica`
      fastify.log.info(
        { kind: 'citus', postgres: kind.postgres, citus: kind.citus, workers: kind.workers, isolation: config.TENANT_ISOLATION },
        `database: Citus ${kind.citus} coordinator with ${kind.workers} workers; ${perWorker}`
      )
    }
  },
  { name: 'postgres' }
)
