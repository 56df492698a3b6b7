import pg from 'pg'
import { errors } from '../../schemas/errors.ts'
import type { Tenant, TenantStatus } from '../../schemas/tenant.ts'
import { keysetSql, readPage } from '../pagination.ts'
import { runInTransaction, sendEach } from '../transaction.ts'
import { checkTenantId } from './sql.ts'
import { recordTombstoneSql } from './tombstones.ts'

/** Channel on which every instance hears that a tenant changed, so caches drop it at once. */
export const TENANT_CHANGED_CHANNEL = 'tenant_changed'

export interface TenantRow {
  id: string
  name: string
  schema: string
  role: string
  status: TenantStatus
  schema_version: number
  created_at: Date
  updated_at: Date
}

export const TENANT_COLUMNS = 'id, name, schema, role, status, schema_version, created_at, updated_at'

export const toTenant = (row: TenantRow): Tenant => ({
  id: row.id,
  name: row.name,
  schema: row.schema,
  status: row.status,
  schemaVersion: row.schema_version,
  createdAt: row.created_at.toISOString(),
  updatedAt: row.updated_at.toISOString()
})

export async function findTenant(db: pg.Pool | pg.PoolClient, id: string): Promise<TenantRow | undefined> {
  // Unnamed: a transaction-mode pooler may carry no named statement (PG_PREPARED_STATEMENTS).
  const { rows } = await db.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = $1`, [id])
  return rows[0]
}

export async function getTenant(db: pg.Pool, id: string): Promise<TenantRow> {
  const row = checkTenantId(id) === null ? await findTenant(db, id) : undefined
  if (!row) throw errors.tenantNotFound(id)
  return row
}

const LIST_TENANTS = keysetSql(`SELECT ${TENANT_COLUMNS} FROM public.tenants`, 'tenant')

export const listTenants = (db: pg.Pool, page: { limit: number; cursor?: string }) => readPage(db, LIST_TENANTS, page, toTenant)

export async function updateTenant(pool: pg.Pool, id: string, changes: { name?: string; status?: Exclude<TenantStatus, 'deleting'> }): Promise<TenantRow> {
  if (checkTenantId(id) !== null) throw errors.tenantNotFound(id)
  // A tenant being deleted stays so: reactivating it would bring back a tenant with half its files.
  const { rows } = await pool.query<TenantRow>(
    `WITH updated AS (
       UPDATE public.tenants SET name = coalesce($2, name), status = coalesce($3, status), updated_at = now()
        WHERE id = $1 AND status <> 'deleting' RETURNING ${TENANT_COLUMNS}
     ), notified AS (
       SELECT pg_notify('${TENANT_CHANGED_CHANNEL}', id) FROM updated
     )
     SELECT updated.* FROM updated, notified`,
    [id, changes.name ?? null, changes.status ?? null]
  )
  if (rows[0]) return rows[0]
  if (await findTenant(pool, id)) throw errors.tenantDeleting(id)
  throw errors.tenantNotFound(id)
}

export interface DeleteTenantOptions {
  /**
   * Removes what the tenant has outside the database (its objects in storage). Runs once the
   * tenant is marked `deleting` and before its schema is dropped; when it throws, the deletion
   * stops there, the tenant stays `deleting`, and deleting it again repeats the step and finishes.
   */
  beforeDrop?: (tenant: TenantRow) => Promise<void>
}

/**
 * Deletes a tenant in two steps. First it is marked `deleting` (and announced, so every instance
 * refuses its requests from then on) and `beforeDrop` runs. Then its schema, role and registry row
 * are dropped in one transaction, the row locked first so that of two concurrent deletions only
 * one drops and the other finds nothing. That transaction also leaves the id's tombstone, which
 * keeps it from being created again too soon (tombstones.ts).
 */
export async function deleteTenant(pool: pg.Pool, id: string, options: DeleteTenantOptions = {}): Promise<void> {
  if (checkTenantId(id) !== null) throw errors.tenantNotFound(id)
  const { rows: marked } = await pool.query<TenantRow>(
    `WITH marked AS (
       UPDATE public.tenants SET status = 'deleting', updated_at = now() WHERE id = $1 RETURNING ${TENANT_COLUMNS}
     ), notified AS (
       SELECT pg_notify('${TENANT_CHANGED_CHANNEL}', id) FROM marked
     )
     SELECT marked.* FROM marked, notified`,
    [id]
  )
  if (!marked[0]) throw errors.tenantNotFound(id)
  await options.beforeDrop?.(marked[0])

  await runInTransaction(pool, async (client) => {
    const { rows } = await client.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = $1 FOR UPDATE`, [id])
    const row = rows[0]
    if (!row) throw errors.tenantNotFound(id)
    const role = pg.escapeIdentifier(row.role)
    await sendEach(client, [
      `DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(row.schema)} CASCADE`,
      `DELETE FROM public.tenants WHERE id = ${pg.escapeLiteral(id)}`,
      // DROP OWNED revokes whatever the role was granted in this database, which DROP ROLE requires.
      `DROP OWNED BY ${role}`,
      `DROP ROLE ${role}`,
      // The id may not be created again for a while (tombstones.ts).
      recordTombstoneSql(id),
      `NOTIFY ${TENANT_CHANGED_CHANNEL}, ${pg.escapeLiteral(id)}`
    ])
  })
}
