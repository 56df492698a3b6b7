import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { IdParams, Page, PageQuery, ref, TenantHeaders } from '../../schemas/common.ts'
import { ApiError, errorResponses } from '../../schemas/error.ts'
import { CreateUserBody, UpdateUserBody, User } from '../../schemas/user.ts'
import { decodeCursor, toPage } from '../../lib/pagination.ts'
import { toUser, USER_COLUMNS, type UserRow } from '../../lib/users/index.ts'

const notFound = (id: string) => new ApiError(404, 'USER_NOT_FOUND', `User ${id} does not exist in this tenant`)

/** Rethrows a unique violation on the email as the client-facing conflict it is. */
function emailConflict(error: unknown): never {
  if (error instanceof ApiError && error.code === 'CONFLICT') {
    throw new ApiError(409, 'USER_EMAIL_EXISTS', 'A user with this email already exists in this tenant')
  }
  throw error
}

/** Users of the tenant named in X-Tenant-ID; every query runs inside that tenant's schema. */
const users: FastifyPluginAsyncTypebox = async (fastify) => {
  const tags = ['users']
  const headers = TenantHeaders

  fastify.post(
    '/',
    {
      schema: {
        summary: 'Create a user',
        tags,
        headers,
        body: CreateUserBody,
        response: { 201: ref(User), ...errorResponses(400, 403, 404, 409, 503) }
      }
    },
    async (request, reply) => {
      const { email, name } = request.body
      const { rows } = await request
        .db!.query<UserRow>(`INSERT INTO users (email, name) VALUES ($1, $2) RETURNING ${USER_COLUMNS}`, [email, name])
        .catch(emailConflict)
      return reply.code(201).header('location', `/users/${rows[0].id}`).send(toUser(rows[0]))
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        summary: 'List users',
        tags,
        headers,
        querystring: PageQuery,
        response: { 200: Page(ref(User)), ...errorResponses(400, 403, 404, 503) }
      }
    },
    async (request) => {
      const { limit, cursor } = request.query
      const after = cursor ? decodeCursor(cursor) : null
      const { rows } = await request.db!.query<UserRow>(
        `SELECT ${USER_COLUMNS} FROM users
          WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1::timestamptz, $2::uuid)
          ORDER BY created_at, id LIMIT $3`,
        [after?.createdAt ?? null, after?.id ?? null, limit + 1]
      )
      return toPage(rows, limit, toUser)
    }
  )

  fastify.get(
    '/:id',
    {
      schema: {
        summary: 'Get a user',
        tags,
        headers,
        params: IdParams,
        response: { 200: ref(User), ...errorResponses(400, 403, 404, 503) }
      }
    },
    async (request) => {
      const { rows } = await request.db!.query<UserRow>({
        name: 'user-by-id',
        text: `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`,
        values: [request.params.id]
      })
      if (!rows[0]) throw notFound(request.params.id)
      return toUser(rows[0])
    }
  )

  fastify.patch(
    '/:id',
    {
      schema: {
        summary: 'Update a user',
        tags,
        headers,
        params: IdParams,
        body: UpdateUserBody,
        response: { 200: ref(User), ...errorResponses(400, 403, 404, 409, 503) }
      }
    },
    async (request) => {
      const { email, name } = request.body
      const { rows } = await request
        .db!.query<UserRow>(
          `UPDATE users SET email = coalesce($2, email), name = coalesce($3, name), updated_at = date_trunc('milliseconds', now())
            WHERE id = $1 RETURNING ${USER_COLUMNS}`,
          [request.params.id, email ?? null, name ?? null]
        )
        .catch(emailConflict)
      if (!rows[0]) throw notFound(request.params.id)
      return toUser(rows[0])
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        summary: 'Delete a user',
        tags,
        headers,
        params: IdParams,
        response: { 204: { type: 'null', description: 'Deleted' }, ...errorResponses(400, 403, 404, 503) }
      }
    },
    async (request, reply) => {
      const { rowCount } = await request.db!.query('DELETE FROM users WHERE id = $1', [request.params.id])
      if (rowCount === 0) throw notFound(request.params.id)
      return reply.code(204).send()
    }
  )
}

export default users
