import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { createTenantDb, toApiError, type ResolvedTenant, type TenantDb, type TenantScopedDb } from '../../lib/tenant-db/index.ts'
import { tokenInvalid } from '../../lib/auth/index.ts'
import type { Tracing } from '../../lib/telemetry/index.ts'
import { assertValidTenantId } from '../../lib/tenants/index.ts'
import { ApiError, errors } from '../../schemas/errors.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The tenant-scoped database: tenants by id (cached) and request handles on them. */
    tenantDb: TenantDb
    /** onRequest hook for tenant-scoped routes: resolves X-Tenant-ID into request.tenant and request.db. */
    resolveTenant: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void
    /**
     * onRoute hook of a tenant-scoped folder: adds resolveTenant as the route's own onRequest hook,
     * so that it runs after the folder's guards and after the rate limit, which counts a request
     * whatever its tenant turns out to be.
     */
    scopeToTenant: (route: RouteOptions) => void
  }
  interface FastifyRequest {
    tenant: ResolvedTenant | null
    db: TenantScopedDb | null
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD'])

const rollback = async (request: FastifyRequest) => {
  if (request.db && !request.db.finished) await request.db.finish(false)?.catch(() => undefined)
}

/**
 * Tenant resolution and the tenant-scoped database handle (DESIGN §3).
 *
 * Routes opt in with `onRequest: fastify.resolveTenant` (or in their folder's autohooks). The
 * request's use of the database ends on every exit path:
 * - onSend, before the reply is written: a mutation commits there, so a failed commit becomes an
 *   error response; a read only hands its connection back (each of its queries was already a
 *   complete read-only transaction). onSend runs even when the client has gone, so a connection is
 *   never left waiting for a response that cannot be written;
 * - a mutation whose client is already gone rolls back instead of committing;
 * - aborts and timeouts roll back; a handler error rolls back through its error response;
 * - onResponse is the last safety net.
 */
export default fp(
  async function tenantContext(fastify: FastifyInstance, opts: { tracing?: Tracing | null }) {
    const { config } = fastify
    const clockToleranceMs = config.JWT_CLOCK_TOLERANCE_MS
    const contextSwitch = fastify.metrics.contextSwitch
    const tenantDb = createTenantDb(fastify.pg.pool, {
      statementTimeoutMs: config.PG_STATEMENT_TIMEOUT_MS,
      idleInTransactionTimeoutMs: config.PG_IDLE_IN_TRANSACTION_TIMEOUT_MS,
      maxConnectionsPerTenant: config.TENANT_MAX_CONNECTIONS ?? Math.max(1, Math.floor(config.PG_POOL_MAX / 2)),
      acquireTimeoutMs: config.PG_ACQUIRE_TIMEOUT_MS,
      cacheTtlMs: config.TENANT_CACHE_TTL_MS,
      // At most all connections but one: writes need a connection of their own.
      readLanes: Math.min(config.PG_READ_LANES, config.PG_POOL_MAX - 1),
      preparedStatements: config.PG_PREPARED_STATEMENTS,
      tenantRoles: config.TENANT_ISOLATION === 'role',
      listenConnectionString: config.DATABASE_DIRECT_URL,
      log: fastify.log,
      onContextSwitch: (seconds) => contextSwitch.observe(seconds),
      bindCallback: opts.tracing?.bindCallback
    })

    fastify.decorate('tenantDb', tenantDb)
    fastify.decorateRequest('tenant', null)
    fastify.decorateRequest('db', null)

    function scope(request: FastifyRequest, tenant: ResolvedTenant | null, header: string): void {
      // The invariant of tenant binding, whatever order a route's hooks run in: a caller a guard
      // accepted acts on its own tenant only, unless an admin. (The guard compares the header
      // with the token before the lookup; this holds for the tenant actually resolved.)
      const caller = request.principal
      if (caller && !caller.admin && caller.tenant !== header) throw errors.tenantMismatch()
      if (!tenant) throw errors.tenantNotFound(header)
      // A token of an earlier tenant of the same id (deleted, then created again) is not one of
      // this tenant's. `iat` has a resolution of a second, and clocks differ a little.
      if (caller && !caller.admin && (caller.issuedAt + 1) * 1000 + clockToleranceMs < tenant.createdAt) {
        throw tokenInvalid('The token was issued before its tenant was created')
      }
      if (tenant.status === 'suspended') throw errors.tenantSuspended(header)
      if (tenant.status === 'deleting') throw errors.tenantDeleting(header)
      request.tenant = tenant
      request.db = tenantDb.open(tenant, SAFE_METHODS.has(request.method))
    }

    // A callback-style hook: with the tenant cached (the common case) it completes without a
    // promise or a microtask.
    fastify.decorate('resolveTenant', function resolveTenant(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
      const header = request.headers['x-tenant-id']
      try {
        if (header === undefined || header === '') {
          throw new ApiError('TENANT_ID_MISSING', 'The X-Tenant-ID header is required')
        }
        if (typeof header !== 'string') throw new ApiError('TENANT_ID_INVALID', 'Send exactly one X-Tenant-ID header')
        assertValidTenantId(header)
        const tenant = tenantDb.lookup(header)
        if (!(tenant instanceof Promise)) {
          scope(request, tenant, header)
          return done()
        }
        tenant.then(
          (loaded) => {
            try {
              scope(request, loaded, header)
              done()
            } catch (error) {
              done(error as Error)
            }
          },
          (error: Error) => done(toApiError(error) ?? error)
        )
      } catch (error) {
        done(error as Error)
      }
    })

    fastify.decorate('scopeToTenant', function scopeToTenant(route: RouteOptions) {
      route.onRequest = [...(route.onRequest === undefined ? [] : [route.onRequest].flat()), fastify.resolveTenant]
    })

    // Callback style, like resolveTenant: a read ends synchronously, with no promise.
    fastify.addHook('onSend', (request, reply, payload, done) => {
      const db = request.db
      // `== null`: routes of plugins registered before the decorator (Swagger UI's) see it as undefined.
      if (db == null || !db.used || db.finished) return done(null, payload)
      // A request whose body was read in full counts as complete to Node, so when its client
      // goes away Fastify does not run onRequestAbort. The client will never hear of a commit:
      // roll back instead, as for any other abort.
      const ending = db.finish(reply.statusCode < 400 && !reply.raw.destroyed)
      if (ending === undefined) return done(null, payload)
      ending.then(
        () => done(null, payload),
        (error: Error) => done(error)
      )
    })

    fastify.addHook('onResponse', (request, reply, done) => {
      const db = request.db
      if (db == null || !db.used || db.finished) return done()
      const ending = db.finish(reply.statusCode < 400)
      if (ending === undefined) return done()
      ending.then(
        () => done(),
        (error: unknown) => {
          request.log.warn({ err: error, tenant: request.tenant?.id }, 'ending a transaction failed')
          done()
        }
      )
    })

    fastify.addHook('onRequestAbort', rollback)
    fastify.addHook('onTimeout', rollback)

    fastify.addHook('onReady', async () => {
      await tenantDb.start()
    })
    // Before the pool is ended, which waits for every connection it lent, the lanes' included;
    // reads still to come meanwhile take pooled connections of their own.
    fastify.addHook('preClose', async () => {
      await tenantDb.closeLanes()
    })
    fastify.addHook('onClose', async () => {
      await tenantDb.stop()
    })
  },
  { name: 'tenant-context', dependencies: ['postgres', 'metrics', 'authenticate'] }
)
