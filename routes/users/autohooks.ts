import type { FastifyInstance } from 'fastify'

/**
 * Everything under /users is tenant-scoped: a token bound to the tenant in X-Tenant-ID (or an
 * admin's) comes first, so an anonymous caller cannot probe which tenants exist; then the rate
 * limit, then the tenant (at route level: see scopeToTenant).
 */
export default async function usersHooks(fastify: FastifyInstance) {
  fastify.addHook('onRoute', fastify.declareBearerAuth('tenant'))
  // The tenant migration the routes' SQL needs: 0004_members (the `sub`, `role` and `status` of
  // members, on the `users` table of 0001_users). A tenant behind it is migrated first.
  fastify.addHook('onRoute', fastify.requireTenantSchema(4))
  fastify.addHook('onRequest', fastify.requireTenantAccess)
  fastify.addHook('onRoute', fastify.scopeToTenant)
}
