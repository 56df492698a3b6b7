import pg from 'pg'
import { ApiError } from '../../schemas/error.ts'
import type { Tenant, TenantStatus } from '../../schemas/tenant.ts'
import { latestVersion, loadMigrations, type Migration } from './migrations.ts'
import { decodeCursor, toPage } from '../pagination.ts'
import type { TenantSpares } from './spares.ts'
import { checkTenantId, tenantPrivilegesSql, tenantRoleName, type TenantIdentity } from './sql.ts'

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

const TENANT_COLUMNS = 'id, name, schema, role, status, schema_version, created_at, updated_at'

export const toTenant = (row: TenantRow): Tenant => ({
  id: row.id,
  name: row.name,
  schema: row.schema,
  status: row.status,
  schemaVersion: row.schema_version,
  createdAt: row.created_at.toISOString(),
  updatedAt: row.updated_at.toISOString()
})

/** Rejects ids that are malformed or reserved, before anything touches the database. */
export function assertValidTenantId(id: string): void {
  const problem = checkTenantId(id)
  if (problem === 'invalid') {
    throw new ApiError(400, 'TENANT_ID_INVALID', 'Tenant id must be 3–63 characters of a-z, 0-9 and -, starting with a letter')
  }
  if (problem === 'reserved') throw new ApiError(400, 'TENANT_ID_RESERVED', `"${id}" is a reserved name`)
}

export async function findTenant(db: pg.Pool | pg.PoolClient, id: string): Promise<TenantRow | undefined> {
  const { rows } = await db.query<TenantRow>({
    name: 'tenant-by-id',
    text: `SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = $1`,
    values: [id]
  })
  return rows[0]
}

export async function getTenant(db: pg.Pool, id: string): Promise<TenantRow> {
  const row = checkTenantId(id) === null ? await findTenant(db, id) : undefined
  if (!row) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
  return row
}

export async function listTenants(db: pg.Pool, page: { limit: number; cursor?: string }) {
  const after = page.cursor ? decodeCursor(page.cursor) : null
  const { rows } = await db.query<TenantRow>(
    `SELECT ${TENANT_COLUMNS} FROM public.tenants
      WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1::timestamptz, $2::text)
      ORDER BY created_at, id LIMIT $3`,
    [after?.createdAt ?? null, after?.id ?? null, page.limit + 1]
  )
  return toPage(rows, page.limit, toTenant)
}

export interface ProvisionOptions {
  rolePrefix: string
  /** Tenant migrations to apply; the files in migrations/tenant by default. */
  migrations?: Migration[]
  /** Schemas made ahead of need to take one from (see tenant-spares.ts); without, every tenant is built on the spot. */
  spares?: TenantSpares | null
}

/**
 * What makes a tenant's schema: its role, the schema, the role's rights and every tenant
 * migration, for one transaction that also registers it (a tenant) or records it (a spare).
 */
export function tenantSchemaSql(identity: TenantIdentity, migrations: Migration[]): string[] {
  const schema = pg.escapeIdentifier(identity.schema)
  const role = pg.escapeIdentifier(identity.role)
  return [
    // LOGIN without a password: nobody can authenticate as it, yet Citus can open worker connections as it (DESIGN §6).
    `CREATE ROLE ${role} LOGIN`,
    // Membership lets a non-superuser service role SET ROLE to the tenant and drop it later.
    `GRANT ${role} TO CURRENT_USER`,
    `CREATE SCHEMA ${schema}`,
    // Before the migrations, so that every table they create is granted to the role at creation.
    tenantPrivilegesSql(identity),
    `SET LOCAL search_path TO ${schema}`,
    ...migrations.map((migration) => migration.sql)
  ]
}

/**
 * Creates a tenant: registry row, role, schema and every tenant migration, in one transaction sent
 * as one message, or, when `spares` has one ready, by renaming a spare schema and role built the
 * same way at the same migration version, in one transaction too. Any failure rolls all of it
 * back, so there is never a schema without a row, or the reverse (a spare taken is put back).
 */
export async function provisionTenant(
  pool: pg.Pool,
  input: { id: string; name: string },
  options: ProvisionOptions
): Promise<TenantRow> {
  assertValidTenantId(input.id)
  const migrations = options.migrations ?? (await loadMigrations('tenant'))
  const identity = { schema: input.id, role: tenantRoleName(options.rolePrefix, input.id) }
  const version = latestVersion(migrations)
  const register = (statements: string[]) => [
    `INSERT INTO public.tenants (id, name, schema, role, schema_version)
       VALUES (${pg.escapeLiteral(input.id)}, ${pg.escapeLiteral(input.name)}, ${pg.escapeLiteral(identity.schema)}, ${pg.escapeLiteral(identity.role)}, ${version})`,
    ...statements,
    `NOTIFY ${TENANT_CHANGED_CHANNEL}, ${pg.escapeLiteral(input.id)}`,
    `SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = ${pg.escapeLiteral(input.id)}`,
    'COMMIT'
  ]

  const client = await pool.connect()
  let spare: TenantIdentity | null = null
  let results: pg.QueryResult<TenantRow>[]
  try {
    spare = options.spares ? await options.spares.take(client, version) : null
    const script = spare
      ? register([
          `ALTER SCHEMA ${pg.escapeIdentifier(spare.schema)} RENAME TO ${pg.escapeIdentifier(identity.schema)}`,
          `ALTER ROLE ${pg.escapeIdentifier(spare.role)} RENAME TO ${pg.escapeIdentifier(identity.role)}`
        ])
      : ['BEGIN', ...register(tenantSchemaSql(identity, migrations))]
    results = (await client.query(script.join(';\n'))) as unknown as pg.QueryResult<TenantRow>[]
  } catch (error) {
    // A failed multi-statement message leaves the transaction aborted; roll back before reuse
    // (which also puts a spare taken back).
    await client.query('ROLLBACK').then(
      () => client.release(),
      () => client.release(true)
    )
    throw mapProvisioningError(error, input.id)
  }
  client.release()
  if (spare) options.spares!.replace()
  const row = results.at(-2)?.rows[0]
  if (!row) throw new Error('Provisioning returned no tenant row')
  return row
}

function mapProvisioningError(error: unknown, id: string): unknown {
  const code = (error as { code?: string }).code
  // 23505: registry row exists; 42P06: a schema of that name exists; 42710: the role exists.
  if (code === '23505' || code === '42P06' || code === '42710') {
    return new ApiError(409, 'TENANT_EXISTS', `Tenant "${id}" already exists`)
  }
  return error
}

export async function updateTenant(
  pool: pg.Pool,
  id: string,
  changes: { name?: string; status?: Exclude<TenantStatus, 'deleting'> }
): Promise<TenantRow> {
  if (checkTenantId(id) !== null) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
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
  if (await findTenant(pool, id)) throw tenantDeleting(id)
  throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
}

const tenantDeleting = (id: string) =>
  new ApiError(409, 'TENANT_DELETING', `Tenant "${id}" is being deleted; repeat DELETE /auth/tenants/${id} to finish`)

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
 * one drops and the other finds nothing.
 */
export async function deleteTenant(pool: pg.Pool, id: string, options: DeleteTenantOptions = {}): Promise<void> {
  if (checkTenantId(id) !== null) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
  const { rows: marked } = await pool.query<TenantRow>(
    `WITH marked AS (
       UPDATE public.tenants SET status = 'deleting', updated_at = now() WHERE id = $1 RETURNING ${TENANT_COLUMNS}
     ), notified AS (
       SELECT pg_notify('${TENANT_CHANGED_CHANNEL}', id) FROM marked
     )
     SELECT marked.* FROM marked, notified`,
    [id]
  )
  if (!marked[0]) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
  await options.beforeDrop?.(marked[0])

  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const { rows } = await client.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = $1 FOR UPDATE`, [id])
    const row = rows[0]
    if (!row) throw new ApiError(404, 'TENANT_NOT_FOUND', `Tenant "${id}" does not exist`)
    const role = pg.escapeIdentifier(row.role)
    await client.query(
      [
        `DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(row.schema)} CASCADE`,
        `DELETE FROM public.tenants WHERE id = ${pg.escapeLiteral(id)}`,
        // DROP OWNED revokes whatever the role was granted in this database, which DROP ROLE requires.
        `DROP OWNED BY ${role}`,
        `DROP ROLE ${role}`,
        `NOTIFY ${TENANT_CHANGED_CHANNEL}, ${pg.escapeLiteral(id)}`
      ].join(';\n')
    )
    await client.query('COMMIT')
    client.release()
  } catch (error) {
    await client.query('ROLLBACK').then(
      () => client.release(),
      () => client.release(true)
    )
    throw error
  }
}
