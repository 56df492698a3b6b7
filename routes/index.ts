import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { TenantHeaders } from '../schemas/common.ts'
import { DATABASE_ERRORS, errorResponses, TENANT_SCOPE_ERRORS } from '../schemas/errors.ts'
import { TenantHealth } from '../schemas/health.ts'

/** GET /: the tenant-scoped health check, proving the context switch from inside the tenant's transaction. */
const root: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/',
    {
      onRequest: fastify.resolveTenant,
      // It reads no tenant table: any schema, however old, can answer it.
      config: { tenantSchemaVersion: 0 },
      schema: {
        operationId: 'getTenantHealth',
        summary: 'Tenant-scoped health check',
        description: 'Runs one query through the tenant-scoped client and reports the schema it ran in.',
        tags: ['health'],
        headers: TenantHeaders,
        security: [],
        response: { 200: TenantHealth, ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS) }
      }
    },
    async (request) => {
      const tenant = request.tenant!
      const started = performance.now()
      const { rows } = await request.db!.query<{ current_schema: string }>('SELECT current_schema()')
      return {
        status: 'ok' as const,
        tenant: tenant.id,
        schema: tenant.schema,
        database: { currentSchema: rows[0].current_schema, latencyMs: Math.round((performance.now() - started) * 1000) / 1000 }
      }
    }
  )
}

export default root
