import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createUser, deleteUser, getUser, listUsers, updateUser } from '../../lib/users/index.ts'
import { IdParams, Page, PageQuery, ref, TenantHeaders } from '../../schemas/common.ts'
import { DATABASE_ERRORS, errorResponses, TENANT_SCOPE_ERRORS, WRITE_ERRORS } from '../../schemas/errors.ts'
import { CreateUserBody, UpdateUserBody, User } from '../../schemas/user.ts'

/** Users of the tenant named in X-Tenant-ID; every query runs inside that tenant's schema (lib/users). */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const tags = ['users']
  const headers = TenantHeaders

  fastify.post(
    '/',
    {
      schema: {
        operationId: 'createUser',
        summary: 'Create a user',
        tags,
        headers,
        body: CreateUserBody,
        response: { 201: ref(User), ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, 'USER_EMAIL_EXISTS') }
      }
    },
    async (request, reply) => {
      const user = await createUser(request.db!, request.body)
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
        response: { 200: ref(User), ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, 'USER_NOT_FOUND', 'USER_EMAIL_EXISTS') }
      }
    },
    async (request) => updateUser(request.db!, request.params.id, request.body)
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        operationId: 'deleteUser',
        summary: 'Delete a user',
        tags,
        headers,
        params: IdParams,
        response: { 204: { type: 'null', description: 'Deleted' }, ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, 'USER_NOT_FOUND') }
      }
    },
    async (request, reply) => {
      await deleteUser(request.db!, request.params.id)
      return reply.code(204).send()
    }
  )
}

export default users
