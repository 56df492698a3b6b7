import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, preHandlerHookHandler, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { createTenantCatchUp, loadMigrations } from '../../lib/tenants/index.ts'
import { errorCodesOf, withErrorCodes } from '../../schemas/errors.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The tenant migration a tenant's schema must have for this route (0: any). Unset: the latest
     * one the build ships. A folder declares it for its routes with `requireTenantSchema`.
     */
    tenantSchemaVersion?: number
  }
  interface FastifyInstance {
    /** onRoute hook of a tenant-scoped folder: its routes need tenant schemas at `version` or newer (unless a route says otherwise). */
    requireTenantSchema: (version: number) => (route: RouteOptions) => void
    /** Lagging tenants brought up to what routes need (lib/tenants/catch-up.ts). */
    tenantCatchUp: ReturnType<typeof createTenantCatchUp>
  }
}

const ENSURE = Symbol('ensureTenantSchema')

/**
 * Tenant migrations with no downtime: each route declares the tenant schema version it needs
 * (`config.tenantSchemaVersion`), and a request whose tenant is behind it is not served on a
 * schema that lacks its tables. With TENANT_MIGRATIONS=on-request the request migrates its tenant
 * (and waits for that, within TENANT_MIGRATION_WAIT_MS); otherwise, or past the wait, it is answered
 * 503 TENANT_MIGRATING with Retry-After. Every instance learns the tenant's new version through the
 * tenant-change notification the migration sends.
 */
export default fp(
  async function tenantUpgrade(fastify: FastifyInstance) {
    const { config } = fastify
    const catchUp = createTenantCatchUp({
      mode: config.TENANT_MIGRATIONS,
      migrations: await loadMigrations('tenant'),
      pool: fastify.pg.pool,
      waitMs: config.TENANT_MIGRATION_WAIT_MS,
      backoffMs: config.TENANT_MIGRATION_BACKOFF_MS,
      // A few at a time, so that an upgrade's first requests leave the pool to the others.
      concurrency: Math.max(1, Math.min(4, Math.floor(config.PG_POOL_MAX / 4))),
      log: fastify.log,
      // The notification reaches this instance too, a round trip later: requests meanwhile must not
      // see the old version.
      onMigrated: (tenant) => fastify.tenantDb.invalidate(tenant),
      onAttempt: (outcome) => fastify.metrics.tenantMigrationsOnRequest.inc({ outcome })
    })
    const latest = catchUp.latest
    fastify.decorate('tenantCatchUp', catchUp)

    /** Refuses (at start) a version no migration reaches, and lists TENANT_MIGRATING on a tenant route that can answer it. */
    function declare(route: RouteOptions, version: number) {
      if (!Number.isInteger(version) || version < 0 || version > latest) {
        throw new Error(
          `${route.method} ${route.url}: config.tenantSchemaVersion ${version} is not a tenant migration of this build (0 to ${latest}, in migrations/tenant)`
        )
      }
      const response = route.schema?.response as Record<string, unknown> | undefined
      const tenantScoped = Object.values(response ?? {}).some((schema) => errorCodesOf(schema)?.includes('TENANT_NOT_FOUND'))
      if (version > 0 && tenantScoped) route.schema = { ...route.schema, response: withErrorCodes(response, 'TENANT_MIGRATING') }
    }

    fastify.decorate('requireTenantSchema', (version: number) => {
      return function requireTenantSchema(route: RouteOptions) {
        if (route.config?.tenantSchemaVersion === undefined) route.config = { ...route.config, tenantSchemaVersion: version }
        declare(route, route.config.tenantSchemaVersion as number)
      }
    })

    // Every route gets the check, first among its preHandlers: by then its onRequest hooks
    // (wherever declared) have resolved the tenant, and a request refused by validation has not
    // migrated anything. A folder's requireTenantSchema runs after this hook, so the version is
    // read from the route's options when a request comes, not now.
    fastify.addHook('onRoute', (route) => {
      declare(route, route.config?.tenantSchemaVersion ?? latest)
      // A route that needs no tenant table (GET /, the hot path of the bench) runs no check at all.
      if (route.config?.tenantSchemaVersion === 0) return
      const existing = route.preHandler === undefined ? [] : Array.isArray(route.preHandler) ? route.preHandler : [route.preHandler]
      // A HEAD route is made from its GET route's options, check included.
      if (existing.some((hook) => ENSURE in hook)) return
      const ensure = function ensureTenantSchema(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
        const tenant = request.tenant
        // `== null`: routes of plugins registered before the decorator see it as undefined.
        if (tenant == null) return done()
        const waiting = catchUp.ensure(tenant, route.config?.tenantSchemaVersion ?? latest)
        if (waiting === undefined) return done()
        waiting.then(
          () => done(),
          (error: Error) => done(error)
        )
      } as preHandlerHookHandler & { [ENSURE]: true }
      ensure[ENSURE] = true
      route.preHandler = [ensure, ...existing]
    })
  },
  { name: 'tenant-upgrade', dependencies: ['postgres', 'metrics', 'tenant-context'] }
)
