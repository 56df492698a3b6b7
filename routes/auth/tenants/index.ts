import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Page, PageQuery, ref } from '../../../schemas/common.ts'
import { ApiError, DATABASE_ERRORS, errorResponses, errors } from '../../../schemas/errors.ts'
import { CreatedTenant, CreateTenantBody, Tenant, TenantParams, TenantUsage, UpdateTenantBody } from '../../../schemas/tenant.ts'
import {
  checkTenantId,
  deleteTenant,
  findTenant,
  getTenant,
  listTenants,
  provisionTenant,
  recreationIntervalMs,
  toTenant,
  updateTenant,
  USAGE_TENANT_SCHEMA_VERSION,
  type TenantRow
} from '../../../lib/tenants/index.ts'
import { deleteTenantObjects, requestSweep } from '../../../lib/files/index.ts'
import { hasPendingInvitation, inviteMember, removeTenantMembers, toUser } from '../../../lib/users/index.ts'

/** Tenant lifecycle: the control plane. Each change is announced so every instance's cache drops the tenant. */
const tenants: FastifyPluginAsyncTypebox = async (fastify) => {
  const pool = fastify.pg.pool

  fastify.post(
    '/',
    {
      schema: {
        operationId: 'createTenant',
        summary: 'Create a tenant',
        description:
          'Creates the registry row, the tenant role and the schema at the latest migration, in one transaction. An id deleted ' +
          'less than 2 × JWT_CLOCK_TOLERANCE_MS + 1 s ago is refused (409 TENANT_RECENTLY_DELETED, with Retry-After), so that ' +
          'no token of the deleted tenant is accepted by the new one. With `admin`, ' +
          "then invites the tenant's first member, with role admin, into the Cognito user pool (see POST /users). If that " +
          'invitation fails part-way the tenant stays created, the answer says so, and repeating the same request finishes it.',
        tags: ['tenants'],
        body: CreateTenantBody,
        response: {
          201: CreatedTenant,
          ...errorResponses(
            ...DATABASE_ERRORS,
            'TENANT_ID_INVALID',
            'TENANT_ID_RESERVED',
            'TENANT_EXISTS',
            'TENANT_RECENTLY_DELETED',
            'USER_POOL_NOT_CONFIGURED',
            'USER_POOL_UNAVAILABLE',
            'USER_POOL_ERROR',
            'MEMBER_IN_OTHER_TENANT'
          )
        }
      }
    },
    async (request, reply) => {
      const { admin, ...input } = request.body
      const userPool = fastify.userPool
      if (admin && !userPool) {
        throw new ApiError('USER_POOL_NOT_CONFIGURED', 'No user pool is configured (COGNITO_USER_POOL_ID): a tenant admin cannot be invited')
      }
      let row: TenantRow
      let resumed = false
      try {
        row = await provisionTenant(pool, input, {
          rolePrefix: fastify.config.TENANT_ROLE_PREFIX,
          spares: fastify.tenantSpares,
          recreateAfterMs: recreationIntervalMs(fastify.config.JWT_CLOCK_TOLERANCE_MS)
        })
      } catch (error) {
        // A repeat of a creation whose admin invitation failed part-way: the tenant is there, the invitation is finished below.
        const existing = admin && error instanceof ApiError && error.code === 'TENANT_EXISTS' ? await findTenant(pool, input.id) : undefined
        if (!existing || existing.status === 'deleting' || !(await hasPendingInvitation(pool, existing, admin!.email))) throw error
        row = existing
        resumed = true
      }
      fastify.tenantDb.invalidate(row.id)
      reply.code(201).header('location', `/auth/tenants/${row.id}`)
      if (!admin) return reply.send(toTenant(row))
      try {
        const member = await inviteMember(pool, row, userPool!, { ...admin, role: 'admin' }, request.log)
        return reply.send({ ...toTenant(row), admin: toUser(member) })
      } catch (error) {
        if (error instanceof ApiError && !resumed) error.message = `Tenant "${row.id}" was created, but its admin was not: ${error.message}`
        throw error
      }
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
        response: { 200: ref(TenantUsage), ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND', 'TENANT_MIGRATING') }
      },
      // What its query reads; this route has no request.tenant, so the handler brings the tenant up to it.
      config: { tenantSchemaVersion: USAGE_TENANT_SCHEMA_VERSION }
    },
    async (request) => {
      const { id } = request.params
      const tenant = checkTenantId(id) === null ? await fastify.tenantDb.lookup(id) : null
      if (!tenant) throw errors.tenantNotFound(id)
      // A tenant whose schema predates the tables read is migrated first (or 503 TENANT_MIGRATING),
      // as a tenant-scoped route's preHandler does for request.tenant.
      await fastify.tenantCatchUp.ensure(tenant, USAGE_TENANT_SCHEMA_VERSION)
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
          "Disables and deletes its members' users in the Cognito user pool, deletes the tenant's files from object storage, " +
          'then drops its schema with all its data, its role and its registry row. If a pool user or a file cannot be deleted ' +
          'the answer is 502/503, the tenant stays in status `deleting` (refusing requests) and repeating the DELETE finishes the job. ' +
          "The same holds while a member's invitation may still be creating its pool user (503, at most 2 minutes after it started; see Retry-After).",
        tags: ['tenants'],
        params: TenantParams,
        response: {
          204: { type: 'null', description: 'Deleted' },
          ...errorResponses(...DATABASE_ERRORS, 'TENANT_NOT_FOUND', 'STORAGE_UNAVAILABLE', 'STORAGE_ERROR', 'USER_POOL_UNAVAILABLE', 'USER_POOL_ERROR')
        }
      }
    },
    async (request, reply) => {
      await deleteTenant(pool, request.params.id, {
        beforeDrop: async (tenant) => {
          // This instance refuses the tenant from now on; the others hear it from the announcement.
          fastify.tenantDb.invalidate(tenant.id)
          // Members first: their logins stop working before anything else goes.
          if (fastify.userPool) await removeTenantMembers(pool, tenant, fastify.userPool)
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
