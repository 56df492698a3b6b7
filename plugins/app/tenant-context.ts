import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError } from '../../schemas/error.ts'
import { createTenantCache, type ResolvedTenant } from '../domain/tenant-cache.ts'
import { TenantScopedDb } from '../domain/tenant-db.ts'
import { assertValidTenantId } from '../domain/tenants.ts'

declare module 'fastify' {
  interface FastifyInstance {
    tenantCache: ReturnType<typeof createTenantCache>
    /** onRequest hook for tenant-scoped routes: resolves X-Tenant-ID into request.tenant and request.db. */
    resolveTenant: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
  interface FastifyRequest {
    tenant: ResolvedTenant | null
    db: TenantScopedDb | null
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD'])

/**
 * Tenant resolution and the tenant-scoped database handle (DESIGN §3).
 *
 * Routes opt in with `onRequest: fastify.resolveTenant` (or in their folder's autohooks). The
 * transaction ends on every exit path:
 * - mutations commit in onSend, before the reply, so a failed commit becomes an error response;
 * - reads (GET, HEAD) run READ ONLY and commit in onResponse, after the reply is on its way;
 * - aborts (including a client gone before a mutation's commit) and timeouts roll back; a handler
 *   error rolls back through its error response.
 */
export default fp(
  async function tenantContext(fastify: FastifyInstance) {
    const pool = fastify.pg.pool
    const cache = createTenantCache(pool, {
      statementTimeoutMs: fastify.config.PG_STATEMENT_TIMEOUT_MS,
      ttlMs: fastify.config.TENANT_CACHE_TTL_MS,
      log: fastify.log
    })
    fastify.decorate('tenantCache', cache)
    fastify.decorateRequest('tenant', null)
    fastify.decorateRequest('db', null)

    fastify.decorate('resolveTenant', async function resolveTenant(request: FastifyRequest) {
      const header = request.headers['x-tenant-id']
      if (header === undefined || header === '') {
        throw new ApiError(400, 'TENANT_ID_MISSING', 'The X-Tenant-ID header is required')
      }
      if (typeof header !== 'string') throw new ApiError(400, 'TENANT_ID_INVALID', 'Send exactly one X-Tenant-ID header')
      assertValidTenantId(header)
      const tenant = await cache.lookup(header)
      if (!tenant) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${header}" does not exist`)
      if (tenant.status === 'suspended') throw new ApiError(403, 'TENANT_SUSPENDED', `Tenant "${header}" is suspended`)
      if (tenant.status === 'deleting') throw new ApiError(403, 'TENANT_DELETING', `Tenant "${header}" is being deleted`)
      request.tenant = tenant
      request.db = new TenantScopedDb(pool, tenant, SAFE_METHODS.has(request.method))
    })

    fastify.addHook('onSend', async (request, reply, payload) => {
      const db = request.db
      if (db && db.used && !db.readOnly && !db.finished) {
        // A request whose body was read in full counts as complete to Node, so when its client
        // goes away Fastify does not run onRequestAbort. The client will never hear of a commit:
        // roll back instead, as for any other abort.
        await db.finish(reply.statusCode < 400 && !reply.raw.destroyed)
      }
      return payload
    })

    fastify.addHook('onResponse', async (request, reply) => {
      const db = request.db
      if (db && db.used && !db.finished) {
        await db.finish(reply.statusCode < 400).catch((error: unknown) => {
          request.log.warn({ err: error, tenant: request.tenant?.id }, 'ending a read-only transaction failed')
        })
      }
    })

    const rollback = async (request: FastifyRequest) => {
      if (request.db && !request.db.finished) await request.db.finish(false).catch(() => undefined)
    }
    fastify.addHook('onRequestAbort', rollback)
    fastify.addHook('onTimeout', rollback)

    fastify.addHook('onReady', async () => {
      await cache.start()
    })
    fastify.addHook('onClose', async () => {
      await cache.stop()
    })
  },
  { name: 'tenant-context', dependencies: ['postgres'] }
)
