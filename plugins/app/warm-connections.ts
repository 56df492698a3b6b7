import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { keptConnections } from '../../schemas/env.ts'
import { warmConnections } from '../../lib/tenant-db/index.ts'

/**
 * The connections the pool keeps (PG_POOL_MIN, the whole pool unless set lower) are opened at
 * start, each having made its first switch to a tenant role, before /health/ready says ready: the
 * first requests after a deploy then find connections that PostgreSQL 15 need not build a
 * membership list for. It runs after the spare schemas' first build (which changes roles, and so
 * would undo it), while the service already listens and answers /health/live.
 */
export default fp(
  async function warmConnectionsAtStart(fastify: FastifyInstance) {
    const count = keptConnections(fastify.config)
    if (count === 0) return
    /** What the readiness check reports once the warm-up is over; null while it runs. */
    let outcome: string | null = null
    fastify.readiness.addCheck('connections', async () => {
      if (outcome === null) throw new Error(`opening ${count} connections (PG_POOL_MIN)`)
      return outcome
    })
    fastify.addHook('onReady', async () => {
      const begun = performance.now()
      // Not awaited: readiness waits for it, liveness does not.
      void warmConnections(fastify.pg.pool, count, fastify.config.TENANT_ROLE_PREFIX).then(
        (warmed) => {
          outcome = `${warmed} connections opened at start, in ${Math.round(performance.now() - begun)} ms`
          fastify.log.info({ connections: warmed, ms: Math.round(performance.now() - begun) }, 'database connections opened')
        },
        (error: Error) => {
          // Not a reason to stay unready: the database check reports an unreachable database, and
          // connections open as requests need them.
          outcome = `not all ${count} connections could be opened at start: ${error.message}`
          fastify.log.warn({ err: error }, 'opening database connections at start failed')
        }
      )
    })
  },
  { name: 'warm-connections', dependencies: ['postgres', 'readiness', 'tenant-spares'] }
)
