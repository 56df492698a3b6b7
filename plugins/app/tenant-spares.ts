import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { loadMigrations, TenantSpares } from '../../lib/tenants/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Tenant schemas made ahead of need, which POST /auth/tenants takes from (TENANT_SPARES). */
    tenantSpares: TenantSpares
  }
}

export default fp(
  async function tenantSpares(fastify: FastifyInstance) {
    const spares = new TenantSpares(fastify.pg.pool, {
      target: fastify.config.TENANT_SPARES,
      rolePrefix: fastify.config.TENANT_ROLE_PREFIX,
      migrations: await loadMigrations('tenant'),
      log: fastify.log
    })
    fastify.decorate('tenantSpares', spares)
    // Before listening, the stock is built for up to a few seconds (the rest in the background),
    // so that the first creations after a deploy find spares; without them tenants are built on the spot.
    fastify.addHook('onReady', async () => spares.start())
    fastify.addHook('preClose', async () => spares.close())
  },
  { name: 'tenant-spares', dependencies: ['postgres'] }
)
