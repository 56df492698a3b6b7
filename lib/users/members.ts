import pg from 'pg'
import { ApiError, errors, serviceUnavailable } from '../../schemas/errors.ts'
import type { MemberRole } from '../../schemas/user.ts'
import type { Principal } from '../auth/index.ts'
import type { Queryable } from '../tenant-db/index.ts'
import { runInTransaction } from '../transaction.ts'
import { getUserRow, memberBySub, USER_COLUMNS, type UserRow } from './index.ts'
import { USER_POOL_CALL_MAX_MS, type UserPool } from './pool.ts'

/**
 * Members: users of a tenant backed by a user of the Cognito pool, bound to the tenant by its
 * `custom:tenant_id` attribute and known to the tenant by their `sub`.
 *
 * The database and the pool share no transaction, so every step that spans both is ordered so a
 * failure leaves something a repeat finishes, and never a pool user the service does not know of:
 *
 * - Invite: (1) the row is committed first, `status = 'inviting'`, `sub` NULL; (2) AdminCreateUser,
 *   which a repeat turns into adopting the pool user an earlier attempt made (same email, same
 *   tenant); (3) the sub is recorded and the row becomes `active`. A failure after (1) leaves an
 *   `inviting` row that is visible, reported in the answer, and finished by repeating the
 *   invitation; a tenant deletion looks its pool user up by email.
 * - Remove: the pool user is disabled and deleted before the row goes, so a failure leaves the
 *   row and a repeat finishes (a pool user already gone counts as removed). No transaction is open
 *   meanwhile (removeMember): the row goes only if it still names the pool user that was removed.
 * - Tenant deletion: every member's pool user goes while the tenant is `deleting` and its schema
 *   (the list of members) still exists; a failure stops the deletion there (see routes/auth/tenants).
 *   An `inviting` row whose pool user is not found may be an invitation between (1) and (3), its
 *   AdminCreateUser in flight: that pool user could appear after the look-up, bound to a dropped
 *   tenant, and the invitation's own clean-up could fail or never run. So such a row younger than
 *   INVITATION_IN_FLIGHT_MS stops the deletion too; the repeat finds the pool user by email, or
 *   knows none can come. A leftover pool user would outlive even a tenant created again with the
 *   same id: tokens issued before a tenant's `created_at` are refused (plugins/app/tenant-context.ts),
 *   but that pool user could log in again, and its new token would be accepted.
 * - Steps (1) and (3) hold the registry row FOR SHARE and refuse a tenant being deleted: a
 *   deletion's mark waits for them, so it then sees the row they wrote, or they see the mark (and a
 *   pool user made in between is removed at once).
 */

export interface TenantRef {
  id: string
  schema: string
  /**
   * When the tenant the caller resolved was created (ms since the epoch, as the tenant cache holds
   * it). Given, a tenant of the same id deleted and created again since is refused as gone.
   */
  createdAt?: number
}

export interface MemberInvitation {
  email: string
  name: string
  role?: MemberRole
  temporaryPassword?: string
}

/**
 * Runs `work` in a transaction in the tenant's schema, while the tenant is active. Access was
 * decided when the request's headers arrived; its body may have taken long enough for the tenant
 * to be suspended, marked for deletion or deleted (and perhaps created again) since, and each is
 * refused here as a request's own transaction refuses it (public.tenant_accepts_writes), before the
 * pool is asked for anything.
 */
async function inTenant<T>(pool: pg.Pool, tenant: TenantRef, work: (db: pg.PoolClient) => Promise<T>): Promise<T> {
  return runInTransaction(pool, async (db) => {
    const { rows } = await db.query<{ status: string; created_at: Date }>('SELECT status, created_at FROM public.tenants WHERE id = $1 FOR SHARE', [tenant.id])
    // Both sides read created_at into a Date (whole milliseconds), so equal means the same tenant.
    if (!rows[0] || (tenant.createdAt !== undefined && rows[0].created_at.getTime() !== tenant.createdAt)) throw errors.tenantNotFound(tenant.id)
    if (rows[0].status === 'deleting') throw errors.tenantDeleting(tenant.id)
    if (rows[0].status !== 'active') throw errors.tenantSuspended(tenant.id)
    await db.query("SELECT set_config('search_path', $1, true)", [tenant.schema])
    return work(db)
  })
}

const emailTaken = (error: unknown): never => {
  if ((error as { code?: string }).code === '23505') throw new ApiError('USER_EMAIL_EXISTS', 'A user with this email already exists in this tenant')
  throw error
}

/**
 * How long after its row was written (`updated_at`) an invitation may still be waiting for
 * AdminCreateUser: the longest pool call, plus a margin for the row's own transaction and for
 * fetching credentials.
 */
export const INVITATION_IN_FLIGHT_MS = USER_POOL_CALL_MAX_MS + 50_000

/**
 * Invites a member: its row, its pool user (email, name, the tenant attribute), its sub. Repeating
 * an invitation whose row is still `inviting` finishes it (with this invitation's name and role).
 */
export async function inviteMember(
  pool: pg.Pool,
  tenant: TenantRef,
  userPool: UserPool,
  input: MemberInvitation,
  log?: { error(obj: object, msg?: string): void }
): Promise<UserRow> {
  const role = input.role ?? 'member'
  const row = await inTenant(pool, tenant, async (db) => {
    const { rows } = await db.query<UserRow>(`SELECT ${USER_COLUMNS} FROM users WHERE lower(email) = lower($1) FOR UPDATE`, [input.email])
    if (rows[0] && rows[0].status !== 'inviting') throw new ApiError('USER_EMAIL_EXISTS', 'A user with this email already exists in this tenant')
    if (rows[0]) {
      const { rows: resumed } = await db.query<UserRow>(
        `UPDATE users SET name = $2, role = $3, updated_at = date_trunc('milliseconds', now()) WHERE id = $1 RETURNING ${USER_COLUMNS}`,
        [rows[0].id, input.name, role]
      )
      return resumed[0]
    }
    const { rows: inserted } = await db
      .query<UserRow>(`INSERT INTO users (email, name, role, status) VALUES ($1, $2, $3, 'inviting') RETURNING ${USER_COLUMNS}`, [
        input.email,
        input.name,
        role
      ])
      .catch(emailTaken)
    return inserted[0]
  })

  let sub: string
  try {
    sub = await userPool.invite({ email: row.email, name: input.name, tenant: tenant.id, temporaryPassword: input.temporaryPassword })
  } catch (error) {
    // The email belongs to another tenant's pool user: nothing of ours exists in the pool, so the row goes.
    if (error instanceof ApiError && error.code === 'MEMBER_IN_OTHER_TENANT') {
      await inTenant(pool, tenant, (db) => db.query("DELETE FROM users WHERE id = $1 AND status = 'inviting'", [row.id])).catch(() => undefined)
      throw error
    }
    if (error instanceof ApiError) {
      error.message = `${error.message}. The invitation of ${row.email} is recorded as "inviting": repeat it to finish`
    }
    throw error
  }

  try {
    return await inTenant(pool, tenant, async (db) => {
      const { rows } = await db.query<UserRow>(
        `UPDATE users SET sub = $2, status = 'active', updated_at = date_trunc('milliseconds', now()) WHERE id = $1 RETURNING ${USER_COLUMNS}`,
        [row.id, sub]
      )
      if (!rows[0]) throw errors.userNotFound(row.id)
      return rows[0]
    })
  } catch (error) {
    // The tenant, or the row, went away meanwhile: its pool user must not outlive it.
    if (error instanceof ApiError && ['TENANT_DELETING', 'TENANT_NOT_FOUND', 'USER_NOT_FOUND'].includes(error.code)) {
      await userPool.remove(sub).catch((removal: unknown) => {
        // The pool user stays bound to the tenant. A deleting tenant's repeated DELETE still finds it
        // by email (the row is `inviting`); a tenant or row already gone leaves this line only.
        log?.error(
          { err: removal, sub, email: row.email, tenant: tenant.id, reason: error.code },
          'the pool user of an invitation whose tenant or member went away meanwhile could not be deleted; delete it from the user pool'
        )
      })
    }
    throw error
  }
}

/**
 * Removes the pool user of a member row: by sub, or, for an invitation that never recorded one, by
 * email when that pool user is bound to this tenant. Idempotent. Resolves false when the row is an
 * invitation whose pool user the pool does not hold (never made, or not yet).
 */
export async function removePoolUserOf(userPool: UserPool, tenantId: string, row: Pick<UserRow, 'email' | 'sub' | 'status'>): Promise<boolean> {
  if (row.sub) {
    await userPool.remove(row.sub)
    return true
  }
  if (row.status !== 'inviting') return true
  const found = await userPool.find(row.email)
  if (found?.tenant === tenantId) await userPool.remove(found.sub)
  return found !== null
}

/** Runs `work` in a short transaction of its own on the tenant, committed before it resolves. */
export type TenantTransaction = <T>(work: (db: Queryable) => Promise<T>) => Promise<T>

/**
 * Rounds of removeMember before it answers 503. A row's pool identity changes at most once, when
 * an invitation records its sub ((NULL, inviting) to (sub, active)), so a second round always
 * settles; the bound only keeps a bug from looping.
 */
const REMOVAL_ROUNDS = 3

/**
 * Removes a member: its pool user, then its row. The pool is never called inside a transaction: a
 * pool call may take USER_POOL_CALL_MAX_MS, and a transaction held that long would hold a pooled
 * connection and one of the tenant's TENANT_MAX_CONNECTIONS (and lock the row), starving the
 * tenant's other requests and the pool's other tenants. So the caller is authorized and the row
 * read in one short transaction (the tenant must still accept writes: a suspended or deleting
 * tenant's pool users are not touched), the pool user removed with none open, and the row deleted
 * in another only while it still names the pool user removed (sub and status). If an invitation
 * recorded its sub meanwhile, the new pool user is removed in turn rather than answering an error:
 * the pool steps are idempotent and the client asked for exactly that. Either way no row outlives
 * its pool user's removal unnoticed, and an invitation whose row went meanwhile deletes the pool
 * user it made (inviteMember).
 */
export async function removeMember(
  inTransaction: TenantTransaction,
  tenantId: string,
  id: string,
  options: { authorize(db: Queryable): Promise<void>; userPool(): UserPool }
): Promise<void> {
  let row = await inTransaction(async (db) => {
    await options.authorize(db)
    return getUserRow(db, id)
  })
  for (let round = 1; ; round++) {
    if (hasPoolUser(row)) await removePoolUserOf(options.userPool(), tenantId, row)
    const identity = [row.sub, row.status]
    const changed = await inTransaction(async (db) => {
      const { rowCount } = await db.query('DELETE FROM users WHERE id = $1 AND sub IS NOT DISTINCT FROM $2 AND status = $3', [id, ...identity])
      // Not deleted: the row changed or went meanwhile (404 then: another DELETE finished the job).
      return rowCount === 0 ? getUserRow(db, id) : null
    })
    if (!changed) return
    if (round === REMOVAL_ROUNDS) {
      throw serviceUnavailable('USER_POOL_UNAVAILABLE', `User ${id} kept changing while its pool user was being removed; retry`, 1)
    }
    row = changed
  }
}

/**
 * What reading members fails with on a tenant schema behind the members migration, which has none:
 * 42703, no sub or status column (before 0004); 42P01, no users table (before 0001); 3F000, no schema.
 */
const BEHIND_MEMBERS_MIGRATION = new Set(['42703', '42P01', '3F000'])
const isBehindMembersMigration = (error: unknown) => BEHIND_MEMBERS_MIGRATION.has((error as { code?: string }).code ?? '')

/** Whether deleting this row also has to remove a pool user. */
export const hasPoolUser = (row: Pick<UserRow, 'sub' | 'status'>) => row.sub !== null || row.status === 'inviting'

/**
 * Refuses a caller who may not invite, change or remove members: anyone but a platform admin or
 * an active member of this tenant with role admin. A token whose sub has no row is not a member.
 */
export async function requireTenantAdmin(db: Queryable, caller: Principal): Promise<void> {
  if (caller.admin) return
  const member = await memberBySub(db, caller.subject)
  if (member?.role === 'admin' && member.status === 'active') return
  throw new ApiError('TENANT_ADMIN_REQUIRED', 'Only an admin member of this tenant may invite, change or remove members')
}

/**
 * Removes the pool users of every member of a tenant (the step before its schema is dropped), one
 * at a time by default: Cognito limits user updates per pool (and throttles past it), and
 * cognito-local, the development pool, keeps each pool in one JSON file that concurrent writes
 * corrupt. Every member is tried; if any fails, the error names how many and says how to finish.
 * An invitation written less than INVITATION_IN_FLIGHT_MS ago whose pool user is not found counts
 * as a failure (503, Retry-After: until it is that old): its AdminCreateUser may still be under way.
 * Returns how many rows had a pool user. A tenant schema older than the members migration has none.
 */
export async function removeTenantMembers(pool: pg.Pool, tenant: TenantRef, userPool: UserPool, options: { concurrency?: number } = {}): Promise<number> {
  let rows: (UserRow & { age_ms: number })[]
  try {
    // The row's age by the database's clock, which wrote updated_at.
    const result = await pool.query<UserRow & { age_ms: number }>(
      `SELECT ${USER_COLUMNS}, (extract(epoch FROM now() - updated_at) * 1000)::float8 AS age_ms
         FROM ${pg.escapeIdentifier(tenant.schema)}.users WHERE sub IS NOT NULL OR status = 'inviting'`
    )
    rows = result.rows
  } catch (error) {
    if (isBehindMembersMigration(error)) return 0
    throw error
  }
  const failures: unknown[] = []
  const queue = [...rows]
  const worker = async () => {
    for (let row = queue.shift(); row; row = queue.shift()) {
      try {
        const found = await removePoolUserOf(userPool, tenant.id, row)
        const inFlightMs = INVITATION_IN_FLIGHT_MS - row.age_ms
        if (!found && inFlightMs > 0) {
          const seconds = Math.ceil(inFlightMs / 1000)
          const message = `The invitation of ${row.email} may still be creating its pool user (for ${seconds} s at most)`
          failures.push(serviceUnavailable('USER_POOL_UNAVAILABLE', message, seconds))
        }
      } catch (error) {
        failures.push(error)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 1, rows.length) }, worker))
  if (failures.length > 0) {
    const first = failures[0] instanceof ApiError ? failures[0] : new ApiError('USER_POOL_ERROR', 'The user pool refused to delete a user')
    const message = `Deleting the user-pool users of tenant "${tenant.id}" failed for ${failures.length} of ${rows.length} (${first.message}); the tenant stays in status "deleting" and refuses requests. Repeat the DELETE to finish`
    throw Object.assign(new ApiError(first.code, message, first.headers), { cause: (first as { cause?: unknown }).cause ?? failures[0] })
  }
  return rows.length
}

/** Whether the tenant has an unfinished invitation for `email` (a repeated tenant creation finishes it). */
export async function hasPendingInvitation(pool: pg.Pool, tenant: TenantRef, email: string): Promise<boolean> {
  try {
    const sql = `SELECT 1 FROM ${pg.escapeIdentifier(tenant.schema)}.users WHERE lower(email) = lower($1) AND status = 'inviting'`
    const { rows } = await pool.query(sql, [email])
    return rows.length > 0
  } catch (error) {
    if (isBehindMembersMigration(error)) return false
    throw error
  }
}
