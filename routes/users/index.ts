import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import {
  createUser,
  getUser,
  getUserRow,
  hasPoolUser,
  inviteMember,
  listUsers,
  memberBySub,
  removeMember,
  requireTenantAdmin,
  type TenantTransaction,
  toUser,
  updateUser
} from '../../lib/users/index.ts'
import { IdParams, Page, PageQuery, ref, TenantHeaders } from '../../schemas/common.ts'
import { ApiError, DATABASE_ERRORS, errorResponses, TENANT_SCOPE_ERRORS, WRITE_ERRORS } from '../../schemas/errors.ts'
import { CreateUserBody, UpdateUserBody, User } from '../../schemas/user.ts'

const POOL_ERRORS = ['USER_POOL_UNAVAILABLE', 'USER_POOL_ERROR', 'USER_POOL_NOT_CONFIGURED'] as const

/**
 * Users of the tenant named in X-Tenant-ID; every query runs inside that tenant's schema (lib/users).
 * With a user pool configured, users are members: changing them takes a tenant admin (or a
 * platform admin), and `invite: true` creates the pool user (lib/users/members.ts). Without one,
 * any token of the tenant may change them, as before members existed.
 */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const tags = ['users']
  const headers = TenantHeaders
  const pool = fastify.pg.pool

  /** Member changes take a tenant admin when members are backed by the pool. */
  const mayManageMembers = async (request: FastifyRequest) => {
    if (fastify.userPool) await requireTenantAdmin(request.db!, request.principal!)
  }
  const requirePool = () => {
    if (!fastify.userPool) throw new ApiError('USER_POOL_NOT_CONFIGURED', 'No user pool is configured (COGNITO_USER_POOL_ID): users cannot be invited')
    return fastify.userPool
  }
  /** Short transactions of their own on the request's tenant, each committed before it resolves. */
  const transactionsOf =
    (request: FastifyRequest): TenantTransaction =>
    (work) =>
      fastify.tenantDb.transaction(request.tenant!, work)

  fastify.post(
    '/',
    {
      schema: {
        operationId: 'createUser',
        summary: 'Create or invite a user',
        description:
          'With `invite: true` the user is also created in the Cognito user pool, bound to this tenant, and its `sub` recorded; ' +
          'repeating an invitation that failed part-way finishes it. With a user pool configured, only an admin member of the ' +
          'tenant (or a platform admin) may create users.',
        tags,
        headers,
        body: CreateUserBody,
        response: {
          201: ref(User),
          ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, ...POOL_ERRORS, 'USER_EMAIL_EXISTS', 'TENANT_ADMIN_REQUIRED', 'MEMBER_IN_OTHER_TENANT')
        }
      }
    },
    async (request, reply) => {
      await mayManageMembers(request)
      const { invite, temporaryPassword, ...fields } = request.body
      if (temporaryPassword !== undefined && !invite) {
        throw new ApiError('VALIDATION_ERROR', 'temporaryPassword is for an invitation: send it with "invite": true')
      }
      let user: User
      if (invite) {
        const userPool = requirePool()
        // Outside the request's transaction: the row must be committed before the pool user can exist.
        user = toUser(await inviteMember(pool, request.tenant!, userPool, { ...fields, temporaryPassword }, request.log))
      } else {
        user = await createUser(request.db!, fields)
      }
      return reply.code(201).header('location', `/users/${user.id}`).send(user)
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        operationId: 'listUsers',
        summary: 'List users',
        tags,
        headers,
        querystring: PageQuery,
        response: { 200: Page(ref(User)), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'INVALID_CURSOR') }
      }
    },
    async (request) => listUsers(request.db!, request.query)
  )

  fastify.get(
    '/me',
    {
      schema: {
        operationId: 'getMe',
        summary: "The caller's own user",
        description: "The user whose `sub` is the token's `sub`.",
        tags,
        headers,
        response: { 200: ref(User), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'MEMBER_NOT_FOUND') }
      }
    },
    async (request) => {
      const row = await memberBySub(request.db!, request.principal!.subject)
      if (!row) throw new ApiError('MEMBER_NOT_FOUND', `The token's subject is no member of tenant "${request.tenant!.id}"`)
      return toUser(row)
    }
  )

  fastify.get(
    '/:id',
    {
      schema: {
        operationId: 'getUser',
        summary: 'Get a user',
        tags,
        headers,
        params: IdParams,
        response: { 200: ref(User), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'USER_NOT_FOUND') }
      }
    },
    async (request) => getUser(request.db!, request.params.id)
  )

  fastify.patch(
    '/:id',
    {
      schema: {
        operationId: 'updateUser',
        summary: 'Update a user',
        tags,
        headers,
        params: IdParams,
        body: UpdateUserBody,
        response: {
          200: ref(User),
          ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, 'USER_NOT_FOUND', 'USER_EMAIL_EXISTS', 'TENANT_ADMIN_REQUIRED', 'MEMBER_EMAIL_FIXED')
        }
      }
    },
    async (request) => {
      await mayManageMembers(request)
      if (request.body.email !== undefined) {
        const row = await getUserRow(request.db!, request.params.id, { lock: true })
        // The pool user signs in with this email; changing it here alone would part the two.
        if (hasPoolUser(row) && row.email.toLowerCase() !== request.body.email.toLowerCase()) {
          throw new ApiError('MEMBER_EMAIL_FIXED', 'The email of a member backed by the user pool is its login; it is not changed here')
        }
      }
      return updateUser(request.db!, request.params.id, request.body)
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        operationId: 'deleteUser',
        summary: 'Delete a user',
        description:
          'A member backed by the user pool has its pool user disabled, then deleted, before the row goes; if the pool fails, the ' +
          'user stays and repeating the DELETE finishes.',
        tags,
        headers,
        params: IdParams,
        response: {
          204: { type: 'null', description: 'Deleted' },
          ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, ...POOL_ERRORS, 'USER_NOT_FOUND', 'TENANT_ADMIN_REQUIRED')
        }
      }
    },
    async (request, reply) => {
      // Not through request.db: its transaction would stay open across the pool's calls (see removeMember).
      await removeMember(transactionsOf(request), request.tenant!.id, request.params.id, {
        authorize: async (db) => {
          if (fastify.userPool) await requireTenantAdmin(db, request.principal!)
        },
        userPool: requirePool
      })
      return reply.code(204).send()
    }
  )
}

export default users
