import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Page, PageQuery, ref } from '../../../schemas/common.ts'
import { DATABASE_ERRORS, errorResponses, errors } from '../../../schemas/errors.ts'
import { CreateTenantBody, Tenant, TenantParams, TenantUsage, UpdateTenantBody } from '../../../schemas/tenant.ts'
import { checkTenantId, deleteTenant, getTenant, listTenants, provisionTenant, toTenant, updateTenant } from '../../../lib/tenants/index.ts'
import { deleteTenantObjects } from '../../../lib/files/index.ts'

/** Tenant lifecycle: the control plane. Each change is announced so every instance's cache drops the tenant. */
const tenants: FastifyPluginAsyncTypebox = async (fastify) => {
  const pool = fastify.pg.pool

  fastify.post(
    '/',
    {
      schema: {
        operationId: 'createTenant',
        summary: 'Create a tenant',
        description: 'Creates the registry row, the tenant role and the schema at the latest migration, in one transaction.',
        tags: ['tenants'],
        body: CreateTenantBody,
        response: { 201: ref(Tenant), ...errorResponses(...DATABASE_ERRORS, 'TENANT_ID_INVALID', 'TENANT_ID_RESERVED', 'TENANT_EXISTS') }
      }
    },
    async (request, reply) => {
      const row = await provisionTenant(pool, request.body, { rolePrefix: fastify.config.TENANT_ROLE_PREFIX, spares: fastify.tenantSpares })
      fastify.tenantDb.invalidate(row.id)
      return reply.code(201).header('location', `/auth/tenants/${row.id}`).send(toTenant(row))
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        operationId: 'listTenants',
        summary: 'List tenants',
        tags: ['tenants'],
        querystring: PageQuery,
        response: { 200: Page(ref(Tenant)), ...errorResponses(...DATABASE_ERRORS, 'INVALID_CURSOR') }
      }
    },
    async (request) => listTenants(pool, request.query)
  )

  fastify.get(
    '/:id',
    {
      schema: {
        operationId: 'getTenant',
        summary: 'Get a tenant',
        tags: ['tenants'],
        params: TenantParams,
        response: { 200: ref(Tenant), ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND') }
      }
    },
    async (request) => toTenant(await getTenant(pool, request.params.id))
  )

  fastify.get(
    '/:id/usage',
    {
      schema: {
        operationId: 'getTenantUsage',
        summary: "Get a tenant's usage",
        description:
          'Requests in the current and the last full hour and day (UTC) by callers with a token bound to the tenant; ' +
          'its uploaded files and their bytes; the on-disk size of its schema; its users. Requests are counted in memory ' +
          'and written every USAGE_FLUSH_INTERVAL_MS (10 s by default): those of the instance answering are all ' +
          "included, another instance's last interval may be missing.",
        tags: ['tenants'],
        params: TenantParams,
        response: { 200: ref(TenantUsage), ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND') }
      }
    },
    async (request) => {
      const { id } = request.params
      const tenant = checkTenantId(id) === null ? await fastify.tenantDb.lookup(id) : null
      if (!tenant) throw errors.tenantNotFound(id)
      // Its files and users are read through the tenant's own handle, read-only: in its schema, as its role.
      const db = fastify.tenantDb.open(tenant, true)
      try {
        return await fastify.usage.read(tenant, db)
      } finally {
        await db.finish(true)?.catch(() => undefined)
      }
    }
  )

  fastify.patch(
    '/:id',
    {
      schema: {
        operationId: 'updateTenant',
        summary: 'Rename, suspend or reactivate a tenant',
        tags: ['tenants'],
        params: TenantParams,
        body: UpdateTenantBody,
        response: { 200: ref(Tenant), ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND', 'TENANT_DELETING') }
      }
    },
    async (request) => {
      const row = await updateTenant(pool, request.params.id, request.body)
      fastify.tenantDb.invalidate(row.id)
      return toTenant(row)
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        operationId: 'deleteTenant',
        summary: 'Delete a tenant',
        description:
          "Deletes the tenant's files from object storage, then drops its schema with all its data, its role and its " +
          'registry row. If the files cannot all be deleted the answer is 502/503, the tenant stays in status ' +
          '`deleting` (refusing requests) and repeating the DELETE finishes the job.',
        tags: ['tenants'],
        params: TenantParams,
        response: {
          204: { type: 'null', description: 'Deleted' },
          ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND', 'STORAGE_UNAVAILABLE', 'STORAGE_ERROR')
        }
      }
    },
    async (request, reply) => {
      await deleteTenant(pool, request.params.id, {
        beforeDrop: async (tenant) => {
          // This instance refuses the tenant from now on; the others hear it from the announcement.
          fastify.tenantDb.invalidate(tenant.id)
          if (fastify.storage) await deleteTenantObjects(fastify.storage, tenant.id)
        }
      })
      fastify.tenantDb.invalidate(request.params.id)
      return reply.code(204).send()
    }
  )
}

export default tenants
