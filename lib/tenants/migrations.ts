import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { statementsOf } from './split-sql.ts'
import { TENANT_CHANGED_CHANNEL } from './registry.ts'
import { grantTenantRoleSql } from './sql.ts'

export interface Migration {
  version: number
  name: string
  sql: string
}

export type MigrationSet = 'public' | 'tenant'

/** `migrations/` beside the sources, and beside the compiled files in `dist/` (the build copies it). */
export const MIGRATIONS_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../migrations')

const loaded = new Map<string, Promise<Migration[]>>()

/** Reads `NNNN_name.sql` files in version order. Read once per process. */
export function loadMigrations(set: MigrationSet, root = MIGRATIONS_ROOT): Promise<Migration[]> {
  const dir = path.join(root, set)
  let migrations = loaded.get(dir)
  if (!migrations) {
    migrations = readMigrationDir(dir)
    loaded.set(dir, migrations)
  }
  return migrations
}

async function readMigrationDir(dir: string): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((file) => file.endsWith('.sql')).sort()
  const migrations: Migration[] = []
  for (const file of files) {
    const match = /^(\d+)_([\w-]+)\.sql$/.exec(file)
    if (!match) throw new Error(`Migration file name must look like 0001_name.sql: ${path.join(dir, file)}`)
    const version = Number(match[1])
    if (migrations.some((m) => m.version === version)) throw new Error(`Duplicate migration version ${version} in ${dir}`)
    migrations.push({ version, name: match[2], sql: await readFile(path.join(dir, file), 'utf8') })
  }
  return migrations
}

export const latestVersion = (migrations: Migration[]) => migrations.at(-1)?.version ?? 0

// Two-key advisory locks: the first key says what is locked, the second which one.
const LOCK_CONTROL_PLANE = 0x7e4a_0001
export const LOCK_TENANT_SCHEMA = 0x7e4a_0002

/**
 * Brings `public` up to date. Serialised across instances by an advisory lock, each migration in
 * its own transaction together with its bookkeeping row.
 */
export async function migrateControlPlane(pool: pg.Pool, migrations?: Migration[]): Promise<number[]> {
  migrations ??= await loadMigrations('public')
  const client = await pool.connect()
  const applied: number[] = []
  try {
    await client.query('SELECT pg_advisory_lock($1, 0)', [LOCK_CONTROL_PLANE])
    await client.query(`CREATE TABLE IF NOT EXISTS public.schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`)
    const { rows } = await client.query<{ version: number }>('SELECT version FROM public.schema_migrations')
    const done = new Set(rows.map((row) => row.version))
    for (const migration of migrations) {
      if (done.has(migration.version)) continue
      try {
        await client.query('BEGIN')
        for (const statement of statementsOf(migration)) await client.query(statement)
        await client.query('INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name])
        await client.query('COMMIT')
      } catch (error) {
        await client.query('ROLLBACK')
        throw new Error(`Control-plane migration ${migration.version}_${migration.name} failed: ${(error as Error).message}`, {
          cause: error
        })
      }
      applied.push(migration.version)
    }
    await client.query('SELECT pg_advisory_unlock($1, 0)', [LOCK_CONTROL_PLANE])
    client.release()
  } catch (error) {
    // The session may still hold the advisory lock: never hand it back to the pool.
    client.release(true)
    throw error
  }
  return applied
}

/** The control plane's applied version, or 0 before the first migration. */
export async function controlPlaneVersion(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ version: number | null }>(
    `SELECT CASE WHEN to_regclass('public.schema_migrations') IS NULL THEN 0
            ELSE (SELECT coalesce(max(version), 0) FROM public.schema_migrations) END AS version`
  )
  return rows[0]?.version ?? 0
}

export interface TenantToMigrate {
  id: string
  schema: string
  role: string
}

/** The tenant's registry row disappeared (deleted) before its schema could be migrated. */
export class TenantGoneError extends Error {
  constructor(readonly tenant: string) {
    super(`Tenant ${tenant} no longer exists`)
    this.name = 'TenantGoneError'
  }
}

/**
 * Makes sure a tenant's role is as provisioning makes it: it exists, can log in (Citus opens worker
 * connections as it) with no password (so nobody can authenticate as it), and the service's own
 * role is a member, so requests can switch to it. Roles belong to the cluster, not the database:
 * a database restored into another cluster has its tenants and none of their roles, and this is
 * what brings them back. Touches the catalog only when something is missing. Returns true when it
 * had to create the role, whose rights must then be granted again.
 */
export async function ensureTenantRole(client: pg.PoolClient, role: string): Promise<boolean> {
  const name = pg.escapeIdentifier(role)
  const { rows } = await client.query<{ superuser: boolean; exists: boolean; login: boolean | null; member: boolean | null }>(
    `SELECT current_setting('is_superuser') = 'on' AS superuser, r.oid IS NOT NULL AS exists, r.rolcanlogin AS login,
            pg_has_role(current_user, r.oid, 'MEMBER') AS member
       FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_roles r ON r.rolname = $1`,
    [role]
  )
  const state = rows[0]
  if (!state.exists) {
    await client.query(`CREATE ROLE ${name} LOGIN`)
  } else {
    if (!state.login) await client.query(`ALTER ROLE ${name} LOGIN`)
    // Only a superuser may read passwords (pg_authid); anyone else trusts that roles were made here.
    if (state.superuser) {
      const { rows: password } = await client.query('SELECT 1 FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolpassword IS NOT NULL', [role])
      if (password.length > 0) await client.query(`ALTER ROLE ${name} PASSWORD NULL`)
    }
  }
  // A superuser may act as any role without being a member; anyone else needs the membership.
  if (!state.exists || !state.member) await client.query(`GRANT ${name} TO CURRENT_USER`)
  return !state.exists
}

const migrationLabel = (migration: Migration) => `${String(migration.version).padStart(4, '0')}_${migration.name}`

/**
 * How long a tenant migration waits for a lock (the schema's advisory lock, its registry row, a
 * table a request is using) before giving up: DDL queues behind the lock it waits for, and every
 * request of the tenant would queue behind the DDL. A tenant that gives up is tried again.
 */
export const MIGRATION_LOCK_TIMEOUT_MS = 3000

/** PostgreSQL gave up waiting for a lock (lock_timeout). */
export const isLockTimeout = (error: unknown): boolean => {
  for (let cause = error as { code?: string; cause?: unknown } | undefined; cause; cause = cause.cause as typeof cause) {
    if (cause.code === '55P03') return true
  }
  return false
}

/**
 * Applies the pending tenant migrations to one schema, in one transaction that also records the new
 * version, so a tenant is either wholly at the new version or untouched. Each statement is a
 * message of its own (DESIGN §9). An advisory lock keeps two migrators off the same schema; the
 * second one finds the work done and applies nothing. The registry row is locked too, so a
 * concurrent deletion of the tenant waits for the migration (or the migration finds the tenant
 * gone), never drops the schema under it. No lock is waited for longer than `lockTimeoutMs`.
 */
export async function migrateTenantSchema(
  client: pg.PoolClient,
  tenant: TenantToMigrate,
  migrations: Migration[],
  options: { lockTimeoutMs?: number } = {}
): Promise<{ from: number; to: number }> {
  await client.query('BEGIN')
  try {
    await client.query(`SET LOCAL lock_timeout = ${Math.trunc(options.lockTimeoutMs ?? MIGRATION_LOCK_TIMEOUT_MS)}`)
    await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_TENANT_SCHEMA, tenant.schema])
    const { rows } = await client.query<{ schema_version: number }>('SELECT schema_version FROM public.tenants WHERE id = $1 FOR UPDATE', [tenant.id])
    if (rows.length === 0) throw new TenantGoneError(tenant.id)
    const from = rows[0].schema_version
    const pending = migrations.filter((migration) => migration.version > from)
    const to = latestVersion(migrations)
    if (pending.length > 0) {
      await client.query(`SET LOCAL search_path TO ${pg.escapeIdentifier(tenant.schema)}`)
      for (const migration of pending) {
        try {
          for (const statement of statementsOf(migration)) await client.query(statement)
        } catch (error) {
          throw new Error(`migration ${migrationLabel(migration)}: ${(error as Error).message}`, { cause: error })
        }
      }
    }
    // New tables are granted to the role through the schema's default privileges; a role that had
    // to be created again gets its rights on everything already there.
    if (await ensureTenantRole(client, tenant.role)) for (const statement of grantTenantRoleSql(tenant)) await client.query(statement)
    // Announced like any other change of the tenant (on commit), so every instance drops the
    // version it has cached and serves the routes that needed the new one.
    await client.query(
      `WITH updated AS (
         UPDATE public.tenants SET schema_version = greatest(schema_version, $2), migration_status = 'ok', migration_error = NULL
          WHERE id = $1 AND (schema_version < $2 OR migration_status <> 'ok') RETURNING id
       )
       SELECT pg_notify('${TENANT_CHANGED_CHANNEL}', id) FROM updated`,
      [tenant.id, to]
    )
    await client.query('COMMIT')
    return { from, to: Math.max(from, to) }
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined)
    throw error
  }
}

export interface MigrationProgress {
  total: number
  done: number
  failed: number
  tenant: string
}

export interface MigrationSummary {
  controlPlaneApplied: number[]
  total: number
  migrated: number
  upToDate: number
  /** Tenants deleted while the run was under way. */
  gone: number
  failed: { tenant: string; error: string }[]
  /** Tenants not attempted because the run was aborted. */
  skipped: number
  /** Attempts given up on a lock (lock_timeout) and made again later in the run. */
  lockRetries: number
  interrupted: boolean
  latestVersion: number
  durationMs: number
}

export interface MigrateAllOptions {
  /** Connections used at once, the control plane's included (default 4). */
  concurrency?: number
  onProgress?: (progress: MigrationProgress) => void
  /** Where `public/` and `tenant/` are read from (default: the migrations shipped with the service). */
  migrationsRoot?: string
  tenantMigrations?: Migration[]
  /** When aborted, no further tenant is started; those under way finish, and the summary says so. */
  signal?: AbortSignal
  /** The longest wait for a lock in a tenant's migration (default MIGRATION_LOCK_TIMEOUT_MS). */
  lockTimeoutMs?: number
}

/** Attempts of a tenant whose migration keeps giving up on a lock, before it is reported as failed. */
const LOCK_ATTEMPTS = 3

/**
 * Migrates the control plane, then every tenant schema, `concurrency` at a time. A tenant that
 * fails is recorded (`migration_status = 'failed'`, with the error) and reported; the others carry
 * on. A tenant that gives up on a lock (a busy tenant's table) is tried again after the others,
 * up to LOCK_ATTEMPTS times. Running it again resumes: only versions above each tenant's
 * `schema_version` are applied, and tenants already at the latest version only have their grants
 * re-checked.
 */
export async function migrateAll(pool: pg.Pool, options: MigrateAllOptions = {}): Promise<MigrationSummary> {
  const started = performance.now()
  const root = options.migrationsRoot ?? MIGRATIONS_ROOT
  const controlPlaneApplied = await migrateControlPlane(pool, await loadMigrations('public', root))
  const migrations = options.tenantMigrations ?? (await loadMigrations('tenant', root))
  const { rows: tenants } = await pool.query<TenantToMigrate>('SELECT id, schema, role FROM public.tenants ORDER BY id')

  const summary: MigrationSummary = {
    controlPlaneApplied,
    total: tenants.length,
    migrated: 0,
    upToDate: 0,
    gone: 0,
    failed: [],
    skipped: 0,
    lockRetries: 0,
    interrupted: false,
    latestVersion: latestVersion(migrations),
    durationMs: 0
  }
  /** The tenants to migrate, in order; one that gave up on a lock is queued again at the end. */
  const queue = [...tenants]
  let next = 0
  let done = 0
  const attempts = new Map<string, number>()
  let fatal: { error: unknown } | null = null
  const stopping = () => fatal !== null || options.signal?.aborted === true

  const worker = async () => {
    let client: pg.PoolClient | null = null
    try {
      while (next < queue.length && !stopping()) {
        const tenant = queue[next++]
        client ??= await pool.connect()
        try {
          const { from, to } = await migrateTenantSchema(client, tenant, migrations, { lockTimeoutMs: options.lockTimeoutMs })
          if (to > from) summary.migrated++
          else summary.upToDate++
        } catch (error) {
          // After a failure the connection's state is not worth trusting: the next tenant gets a new one.
          client.release(true)
          client = null
          const attempt = (attempts.get(tenant.id) ?? 0) + 1
          if (isLockTimeout(error) && attempt < LOCK_ATTEMPTS) {
            // Again after the tenants still to come; nothing is counted done yet.
            attempts.set(tenant.id, attempt)
            summary.lockRetries++
            queue.push(tenant)
            continue
          }
          if (error instanceof TenantGoneError) {
            summary.gone++
          } else {
            const message = (error as Error).message
            summary.failed.push({ tenant: tenant.id, error: message })
            await pool
              .query(`UPDATE public.tenants SET migration_status = 'failed', migration_error = $2 WHERE id = $1`, [tenant.id, message])
              .catch(() => undefined)
          }
        }
        done++
        options.onProgress?.({ total: tenants.length, done, failed: summary.failed.length, tenant: tenant.id })
      }
    } catch (error) {
      // No connection could be had: the database is gone, so stop every worker rather than fail each tenant.
      fatal ??= { error }
    } finally {
      client?.release()
    }
  }
  const concurrency = Math.max(1, Math.min(options.concurrency ?? 4, tenants.length || 1))
  await Promise.all(Array.from({ length: concurrency }, worker))
  if (fatal) throw (fatal as { error: unknown }).error
  summary.skipped = tenants.length - done
  summary.interrupted = summary.skipped > 0
  summary.failed.sort((a, b) => a.tenant.localeCompare(b.tenant))
  summary.durationMs = Math.round(performance.now() - started)
  return summary
}
