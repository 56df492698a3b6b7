import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Page, PageQuery, ref } from '../../../schemas/common.ts'
import { DATABASE_ERRORS, errorResponses } from '../../../schemas/errors.ts'
import { CreateTenantBody, Tenant, TenantParams, UpdateTenantBody } from '../../../schemas/tenant.ts'
import { deleteTenant, getTenant, listTenants, provisionTenant, toTenant, updateTenant } from '../../../lib/tenants/index.ts'
import { deleteTenantObjects, requestSweep } from '../../../lib/files/index.ts'

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
          if (fastify.storage) {
            // Upload URLs signed before the deletion keep working until they expire: the file sweep
            // visits the prefix until then (and once after), so that what they store is removed and
            // never becomes a file of a tenant created later with the same id. Asked for first, so
            // that a failure from here on cannot lose it.
            const until = new Date(Date.now() + fastify.config.PRESIGN_EXPIRES_SECONDS * 1000)
            await requestSweep(pool, tenant.id, new Date(), until)
            await deleteTenantObjects(fastify.storage, tenant.id)
          }
        }
      })
      fastify.tenantDb.invalidate(request.params.id)
      return reply.code(204).send()
    }
  )
}

export default tenants
