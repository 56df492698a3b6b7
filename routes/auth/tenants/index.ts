import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Page, PageQuery, ref } from '../../../schemas/common.ts'
import { errorResponses } from '../../../schemas/error.ts'
import { CreateTenantBody, Tenant, TenantParams, UpdateTenantBody } from '../../../schemas/tenant.ts'
import { deleteTenant, getTenant, listTenants, provisionTenant, toTenant, updateTenant } from '../../../lib/tenants/registry.ts'
import { deleteTenantObjects } from '../../../lib/files/files.ts'

/** Tenant lifecycle: the control plane. Each change is announced so every instance's cache drops the tenant. */
const tenants: FastifyPluginAsyncTypebox = async (fastify) => {
  const pool = fastify.pg.pool

  fastify.post(
    '/',
    {
      schema: {
        summary: 'Create a tenant',
        description: 'Creates the registry row, the tenant role and the schema at the latest migration, in one transaction.',
        tags: ['tenants'],
        body: CreateTenantBody,
        response: { 201: ref(Tenant), ...errorResponses(400, 409, 503) }
      }
    },
    async (request, reply) => {
      const row = await provisionTenant(pool, request.body, { rolePrefix: fastify.config.TENANT_ROLE_PREFIX, spares: fastify.tenantSpares })
      fastify.tenantCache.invalidate(row.id)
      return reply.code(201).header('location', `/auth/tenants/${row.id}`).send(toTenant(row))
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        summary: 'List tenants',
        tags: ['tenants'],
        querystring: PageQuery,
        response: { 200: Page(ref(Tenant)), ...errorResponses(400, 503) }
      }
    },
    async (request) => listTenants(pool, request.query)
  )

  fastify.get(
    '/:id',
    {
      schema: {
        summary: 'Get a tenant',
        tags: ['tenants'],
        params: TenantParams,
        response: { 200: ref(Tenant), ...errorResponses(404, 503) }
      }
    },
    async (request) => toTenant(await getTenant(pool, request.params.id))
  )

  fastify.patch(
    '/:id',
    {
      schema: {
        summary: 'Rename, suspend or reactivate a tenant',
        tags: ['tenants'],
        params: TenantParams,
        body: UpdateTenantBody,
        response: { 200: ref(Tenant), ...errorResponses(400, 404, 503) }
      }
    },
    async (request) => {
      const row = await updateTenant(pool, request.params.id, request.body)
      fastify.tenantCache.invalidate(row.id)
      return toTenant(row)
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        summary: 'Delete a tenant',
        description:
          "Deletes the tenant's files from object storage, then drops its schema with all its data, its role and its " +
          'registry row. If the files cannot all be deleted the answer is 502/503, the tenant stays in status ' +
          '`deleting` (refusing requests) and repeating the DELETE finishes the job.',
        tags: ['tenants'],
        params: TenantParams,
        response: { 204: { type: 'null', description: 'Deleted' }, ...errorResponses(404, 502, 503) }
      }
    },
    async (request, reply) => {
      await deleteTenant(pool, request.params.id, {
        beforeDrop: async (tenant) => {
          // This instance refuses the tenant from now on; the others hear it from the announcement.
          fastify.tenantCache.invalidate(tenant.id)
          if (fastify.storage) await deleteTenantObjects(fastify.storage, tenant.id)
        }
      })
      fastify.tenantCache.invalidate(request.params.id)
      return reply.code(204).send()
    }
  )
}

export default tenants
