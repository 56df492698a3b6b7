import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError } from '../../schemas/error.ts'
import { createTenantCache, type ResolvedTenant } from '../../lib/tenant-db/tenant-cache.ts'
import { ReadLanes } from '../../lib/tenant-db/read-lanes.ts'
import { TenantScopedDb } from '../../lib/tenant-db/handle.ts'
import { toApiError } from '../../lib/tenant-db/pg-errors.ts'
import { assertValidTenantId } from '../../lib/tenants/registry.ts'
import { tenantMismatch } from '../../lib/auth/token-claims.ts'

declare module 'fastify' {
  interface FastifyInstance {
    tenantCache: ReturnType<typeof createTenantCache>
    /** onRequest hook for tenant-scoped routes: resolves X-Tenant-ID into request.tenant and request.db. */
    resolveTenant: (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => void
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
  async function tenantContext(fastify: FastifyInstance) {
    const pool = fastify.pg.pool
    const cache = createTenantCache(pool, {
      statementTimeoutMs: fastify.config.PG_STATEMENT_TIMEOUT_MS,
      ttlMs: fastify.config.TENANT_CACHE_TTL_MS,
      log: fastify.log
    })

    // At most all connections but one: writes need a connection of their own.
    const lanes = new ReadLanes(pool, Math.min(fastify.config.PG_READ_LANES, fastify.config.PG_POOL_MAX - 1))

    fastify.decorate('tenantCache', cache)
    fastify.decorateRequest('tenant', null)
    fastify.decorateRequest('db', null)

    function scope(request: FastifyRequest, tenant: ResolvedTenant | null, header: string): void {
      // The invariant of tenant binding, whatever order a route's hooks run in: a caller a guard
      // accepted acts on its own tenant only, unless an admin. (The guard compares the header
      // with the token before the lookup; this holds for the tenant actually resolved.)
      const caller = request.principal
      if (caller && !caller.admin && caller.tenant !== header) throw tenantMismatch()
      if (!tenant) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${header}" does not exist`)
      if (tenant.status === 'suspended') throw new ApiError(403, 'TENANT_SUSPENDED', `Tenant "${header}" is suspended`)
      if (tenant.status === 'deleting') throw new ApiError(403, 'TENANT_DELETING', `Tenant "${header}" is being deleted`)
      request.tenant = tenant
      request.db = new TenantScopedDb(pool, tenant, SAFE_METHODS.has(request.method), lanes)
    }

    // A callback-style hook: with the tenant cached (the common case) it completes without a
    // promise or a microtask.
    fastify.decorate('resolveTenant', function resolveTenant(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
      const header = request.headers['x-tenant-id']
      try {
        if (header === undefined || header === '') {
          throw new ApiError(400, 'TENANT_ID_MISSING', 'The X-Tenant-ID header is required')
        }
        if (typeof header !== 'string') throw new ApiError(400, 'TENANT_ID_INVALID', 'Send exactly one X-Tenant-ID header')
        assertValidTenantId(header)
        const tenant = cache.lookup(header)
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
      await cache.start()
    })
    // Before the pool is ended, which waits for every connection it lent, the lanes' included;
    // reads still to come meanwhile take pooled connections of their own.
    fastify.addHook('preClose', async () => {
      await lanes.close()
    })
    fastify.addHook('onClose', async () => {
      await cache.stop()
    })
  },
  { name: 'tenant-context', dependencies: ['postgres', 'authenticate'] }
)
