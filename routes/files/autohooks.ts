import type { FastifyInstance } from 'fastify'

/**
 * Everything under /files is tenant-scoped: a token bound to the tenant in X-Tenant-ID (or an
 * admin's) comes first, so an anonymous caller cannot probe which tenants exist; then the rate
 * limit, then the tenant (at route level: see scopeToTenant).
 */
export default async function filesHooks(fastify: FastifyInstance) {
  fastify.addHook('onRoute', fastify.declareBearerAuth('tenant'))
  // The tenant migration the routes' SQL needs: 0003_file_lifecycle (deleted files and
  // `upload_expires_at`, on the `files` table of 0002_files). A tenant behind it is migrated first.
  fastify.addHook('onRoute', fastify.requireTenantSchema(3))
  fastify.addHook('onRequest', fastify.requireTenantAccess)
  fastify.addHook('onRoute', fastify.scopeToTenant)
}
