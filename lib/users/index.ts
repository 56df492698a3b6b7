import type { User } from '../../schemas/user.ts'

/** A row of a tenant's `users` table, and its API form. */
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
