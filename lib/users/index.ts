import { ApiError, errors } from '../../schemas/errors.ts'
import type { User } from '../../schemas/user.ts'
import { keysetSql, readPage } from '../pagination.ts'
import type { Queryable } from '../tenant-db/index.ts'

/**
 * Users of one tenant: the SQL of its `users` table. Every query goes through the tenant's handle,
 * so it runs in the tenant's schema: no statement names a schema.
 */

/** A row of a tenant's `users` table. */
export interface UserRow {
  id: string
  email: string
  name: string
  created_at: Date
  updated_at: Date
}

export const USER_COLUMNS = 'id, email, name, created_at, updated_at'

export const toUser = (row: UserRow): User => ({
  id: row.id,
  email: row.email,
  name: row.name,
  createdAt: row.created_at.toISOString(),
  updatedAt: row.updated_at.toISOString()
})

/** A unique violation on the email is the client-facing conflict it is. */
function emailConflict(error: unknown): never {
  if (error instanceof ApiError && error.code === 'CONFLICT') {
    throw new ApiError('USER_EMAIL_EXISTS', 'A user with this email already exists in this tenant')
  }
  throw error
}

const INSERT_USER = `INSERT INTO users (email, name) VALUES ($1, $2) RETURNING ${USER_COLUMNS}`
const LIST_USERS = keysetSql(`SELECT ${USER_COLUMNS} FROM users`, 'uuid')
const USER_BY_ID = `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`
const UPDATE_USER = `UPDATE users SET email = coalesce($2, email), name = coalesce($3, name), updated_at = date_trunc('milliseconds', now())
  WHERE id = $1 RETURNING ${USER_COLUMNS}`
const DELETE_USER = 'DELETE FROM users WHERE id = $1'

export async function createUser(db: Queryable, input: { email: string; name: string }): Promise<User> {
  const { rows } = await db.query<UserRow>(INSERT_USER, [input.email, input.name]).catch(emailConflict)
  return toUser(rows[0])
}

export const listUsers = (db: Queryable, page: { limit: number; cursor?: string }) => readPage(db, LIST_USERS, page, toUser)

export async function getUser(db: Queryable, id: string): Promise<User> {
  const { rows } = await db.query<UserRow>(USER_BY_ID, [id])
  if (!rows[0]) throw errors.userNotFound(id)
  return toUser(rows[0])
}

export async function updateUser(db: Queryable, id: string, changes: { email?: string; name?: string }): Promise<User> {
  const { rows } = await db.query<UserRow>(UPDATE_USER, [id, changes.email ?? null, changes.name ?? null]).catch(emailConflict)
  if (!rows[0]) throw errors.userNotFound(id)
  return toUser(rows[0])
}

export async function deleteUser(db: Queryable, id: string): Promise<void> {
  const { rowCount } = await db.query(DELETE_USER, [id])
  if (rowCount === 0) throw errors.userNotFound(id)
}
