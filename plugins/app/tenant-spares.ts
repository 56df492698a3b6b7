import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { loadMigrations } from '../domain/migrations.ts'
import { TenantSpares } from '../domain/tenant-spares.ts'

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
    // Built in the background: the service is ready without them, and creates tenants on the spot meanwhile.
    fastify.addHook('onReady', async () => spares.start())
    fastify.addHook('preClose', async () => spares.close())
  },
  { name: 'tenant-spares', dependencies: ['postgres'] }
)
