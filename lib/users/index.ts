import { ApiError, errors } from '../../schemas/errors.ts'
import type { MemberRole, User } from '../../schemas/user.ts'
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
  role: MemberRole
  status: 'inviting' | 'active'
  sub: string | null
  created_at: Date
  updated_at: Date
}

export const USER_COLUMNS = 'id, email, name, role, status, sub, created_at, updated_at'

export const toUser = (row: UserRow): User => ({
  id: row.id,
  email: row.email,
  name: row.name,
  role: row.role,
  status: row.status,
  sub: row.sub,
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

const INSERT_USER = `INSERT INTO users (email, name, role) VALUES ($1, $2, $3) RETURNING ${USER_COLUMNS}`
const LIST_USERS = keysetSql(`SELECT ${USER_COLUMNS} FROM users`, 'uuid')
const USER_BY_ID = `SELECT ${USER_COLUMNS} FROM users WHERE id = $1`
const UPDATE_USER = `UPDATE users SET email = coalesce($2, email), name = coalesce($3, name), role = coalesce($4, role), updated_at = date_trunc('milliseconds', now())
  WHERE id = $1 RETURNING ${USER_COLUMNS}`

export async function createUser(db: Queryable, input: { email: string; name: string; role?: MemberRole }): Promise<User> {
  const { rows } = await db.query<UserRow>(INSERT_USER, [input.email, input.name, input.role ?? 'member']).catch(emailConflict)
  return toUser(rows[0])
}

export const listUsers = (db: Queryable, page: { limit: number; cursor?: string }) => readPage(db, LIST_USERS, page, toUser)

/** The row of `id`, locked until the transaction ends when `lock` is set. */
export async function getUserRow(db: Queryable, id: string, options: { lock?: boolean } = {}): Promise<UserRow> {
  const { rows } = await db.query<UserRow>(`${USER_BY_ID}${options.lock ? ' FOR UPDATE' : ''}`, [id])
  if (!rows[0]) throw errors.userNotFound(id)
  return rows[0]
}

/** The member a token's `sub` names, or null. */
export async function memberBySub(db: Queryable, sub: string): Promise<UserRow | null> {
  const { rows } = await db.query<UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE sub = $1`, [sub])
  return rows[0] ?? null
}

export async function getUser(db: Queryable, id: string): Promise<User> {
  const { rows } = await db.query<UserRow>(USER_BY_ID, [id])
  if (!rows[0]) throw errors.userNotFound(id)
  return toUser(rows[0])
}

export async function updateUser(db: Queryable, id: string, changes: { email?: string; name?: string; role?: MemberRole }): Promise<User> {
  const { rows } = await db.query<UserRow>(UPDATE_USER, [id, changes.email ?? null, changes.name ?? null, changes.role ?? null]).catch(emailConflict)
  if (!rows[0]) throw errors.userNotFound(id)
  return toUser(rows[0])
}

export {
  hasPendingInvitation,
  hasPoolUser,
  inviteMember,
  removeMember,
  removePoolUserOf,
  removeTenantMembers,
  requireTenantAdmin,
  type MemberInvitation,
  type TenantRef,
  type TenantTransaction
} from './members.ts'
export { createUserPool, describePoolFailure, userPoolError, type UserPool } from './pool.ts'
