import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import pg from 'pg'
import { IdParams, ref, TenantHeaders } from '../schemas/common.ts'
import { ApiError, DATABASE_ERRORS, errorResponses, errors, TENANT_SCOPE_ERRORS } from '../schemas/errors.ts'
import { TenantHealth } from '../schemas/health.ts'
import { toApiError } from '../lib/tenant-db/index.ts'
import { checkTenantId } from '../lib/tenants/index.ts'
import { toUser, USER_COLUMNS, type UserRow } from '../lib/users/index.ts'
import { User } from '../schemas/user.ts'

const elapsedMs = (started: number) => Math.round((performance.now() - started) * 1000) / 1000

/** The tenant header of a route without tenant context: checked only so that it is safe to name in SQL. */
function tenantHeader(value: string): string {
  if (checkTenantId(value) !== null) throw new ApiError('TENANT_ID_INVALID', 'Not a tenant id')
  return value
}

/** 42P01/3F000: the schema-qualified name points at no tenant. */
function tenantMissing(error: unknown, tenant: string): never {
  const code = (error as { code?: string }).code
  if (code === '42P01' || code === '3F000') throw errors.tenantNotFound(tenant)
  throw toApiError(error) ?? error
}

/**
 * The routes `npm run bench` compares the service against, mounted under /bench by bench/server.ts
 * only (never by server.ts or app.ts). They share the service's pool, hooks and error handler, so
 * the only difference measured is how the tenant is reached:
 *
 * - `GET /bench/floor`: the single query of `GET /`, on a pooled connection, no tenant context;
 * - `GET /bench/floor/users/:id`: the same token check as `GET /users/:id` (the service's own
 *   `requireTenantAccess` hook), then a schema-qualified query, prepared once per tenant and
 *   connection: the fastest a schema-qualified service could be;
 * - `GET /bench/prototype`: the old prototype's context switch, `SET search_path`, the query,
 *   `RESET search_path`, each a round trip of its own, on a checked-out connection.
 */
const comparisonRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const pool = fastify.pg.pool
  const hide = true

  fastify.get('/floor', { schema: { hide, response: { 200: TenantHealth, ...errorResponses('TENANT_ID_INVALID', ...DATABASE_ERRORS) } } }, async () => {
    const started = performance.now()
    const { rows } = await pool.query<{ current_schema: string }>('SELECT current_schema()').catch((error: unknown) => {
      throw toApiError(error) ?? error
    })
    return {
      status: 'ok' as const,
      tenant: '',
      schema: rows[0].current_schema,
      database: { currentSchema: rows[0].current_schema, latencyMs: elapsedMs(started) }
    }
  })

  fastify.get(
    '/floor/users/:id',
    {
      onRequest: fastify.requireTenantAccess,
      schema: {
        hide,
        headers: TenantHeaders,
        params: IdParams,
        response: { 200: ref(User), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'USER_NOT_FOUND') }
      }
    },
    async (request) => {
      const tenant = tenantHeader(request.headers['x-tenant-id'])
      const { rows } = await pool
        .query<UserRow>({
          name: `bench-floor-user:${tenant}`,
          text: `SELECT ${USER_COLUMNS} FROM ${pg.escapeIdentifier(tenant)}.users WHERE id = $1`,
          values: [request.params.id]
        })
        .catch((error: unknown) => tenantMissing(error, tenant))
      if (!rows[0]) throw errors.userNotFound(request.params.id)
      return toUser(rows[0])
    }
  )

  fastify.get(
    '/prototype',
    {
      onRequest: fastify.resolveTenant,
      schema: { hide, headers: TenantHeaders, response: { 200: TenantHealth, ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS) } }
    },
    async (request) => {
      const tenant = request.tenant!
      const started = performance.now()
      const client = await pool.connect().catch((error: unknown) => {
        throw toApiError(error) ?? error
      })
      let currentSchema: string
      try {
        await client.query(`SET search_path TO ${pg.escapeIdentifier(tenant.schema)}`)
        const { rows } = await client.query<{ current_schema: string }>('SELECT current_schema()')
        await client.query('RESET search_path')
        currentSchema = rows[0].current_schema
      } catch (error) {
        // The search_path may still be the tenant's: such a connection is never handed back.
        client.release(true)
        throw toApiError(error) ?? error
      }
      client.release()
      return {
        status: 'ok' as const,
        tenant: tenant.id,
        schema: tenant.schema,
        database: { currentSchema, latencyMs: elapsedMs(started) }
      }
    }
  )
}

export default comparisonRoutes
