import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { databaseKind } from '../../lib/tenant-db/index.ts'
import { createTenantUsage } from '../../lib/tenants/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Per-tenant usage: requests counted in memory and written in batches, the rest read when asked. */
    usage: ReturnType<typeof createTenantUsage>
  }
}

/**
 * Counts each tenant's requests, written to `public.tenant_usage` every USAGE_FLUSH_INTERVAL_MS
 * and once more on close. Only requests whose caller a guard verified with a token bound to the
 * tenant count: the tokenless `GET /` and an admin's requests do not, so nobody can inflate a
 * tenant's usage without its credentials.
 */
export default fp(
  async function usage(fastify: FastifyInstance) {
    const pool = fastify.pg.pool
    const usage = createTenantUsage(pool, {
      flushIntervalMs: fastify.config.USAGE_FLUSH_INTERVAL_MS,
      isCitus: async () => (await databaseKind(pool)).citus !== null,
      log: fastify.log
    })
    fastify.decorate('usage', usage)

    // Callback style, like the metrics': a map update per request, no promise.
    fastify.addHook('onResponse', (request, _reply, done) => {
      const tenant = request.tenant
      // `!= null`: routes of plugins registered before the decorator see it as undefined.
      if (tenant != null && request.principal?.tenant === tenant.id) usage.count(tenant.id)
      done()
    })

    fastify.addHook('onReady', async () => {
      usage.start()
    })
    // onClose hooks run in reverse order of registration: this one before the pool is ended.
    fastify.addHook('onClose', async () => {
      const left = usage.pendingRequests()
      await usage
        .close()
        .catch((error: Error) => fastify.log.error({ err: error, requests: left }, 'writing tenant usage on close failed: these requests are not counted'))
    })
  },
  { name: 'usage', dependencies: ['postgres', 'tenant-context', 'authenticate'] }
)
