import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { migrateControlPlane, type Migration, provisionTenant } from '../lib/tenants/index.ts'
import { createScratchDatabase, findScratchCluster, type ScratchCluster, type ScratchDatabase } from '../lib/embedded/postgres.ts'
import { log, onCleanup } from './process.ts'
import { median, round } from './report.ts'

export type Cluster = ScratchCluster

/**
 * BENCH_DATABASE_URL (a maintenance database, such as postgres://user@host:5432/postgres) when set;
 * otherwise the machine's server at 127.0.0.1:5432; otherwise (or with BENCH_PG=embedded) a
 * throwaway embedded PostgreSQL.
 */
export function chooseCluster(log: (message: string) => void): Promise<Cluster> {
  const configured = process.env.BENCH_DATABASE_URL
  return findScratchCluster({
    configured: configured ? { name: 'BENCH_DATABASE_URL', url: configured } : undefined,
    probeUrl: 'postgres://postgres@127.0.0.1:5432/postgres',
    forceEmbedded: process.env.BENCH_PG === 'embedded',
    log,
    // On Ctrl-C the bench drops its databases first, then stops the cluster (run.ts).
    stopOnSignal: false
  })
}

export type BenchDatabase = ScratchDatabase

export const createBenchDatabase = (cluster: Cluster): Promise<BenchDatabase> => createScratchDatabase(cluster.url, 'bench')

/** A tenant as the load generator sees it: its id and the users it can ask for. */
export interface BenchTenant {
  id: string
  userIds: string[]
  token?: string
}

/** `tenant-00042`: sorted like the numbers, and a valid, unreserved tenant id. */
export const benchTenantId = (index: number) => `tenant-${String(index).padStart(5, '0')}`

/**
 * `rows` users and `rows` files (metadata only: the bench never touches objects) straight into the
 * tenant's tables; returns the users' ids.
 */
export async function insertTenantRows(pool: pg.Pool, tenantId: string, rows: number): Promise<string[]> {
  const schema = pg.escapeIdentifier(tenantId)
  const prefix = pg.escapeLiteral(`tenants/${tenantId}/`)
  const { rows: users } = await pool.query<{ id: string }>(
    `WITH files AS (
       INSERT INTO ${schema}.files (id, key, filename, content_type, size, status)
       SELECT f.id, ${prefix} || f.id || '/file-' || f.n || '.txt', 'file-' || f.n || '.txt', 'text/plain', 1024 + f.n, 'uploaded'
         FROM (SELECT gen_random_uuid() AS id, n FROM generate_series(1, $1::int) AS n) AS f
     )
     INSERT INTO ${schema}.users (email, name)
     SELECT 'user' || n || '@' || $2 || '.test', 'User ' || n FROM generate_series(1, $1::int) AS n
     RETURNING id`,
    [rows, tenantId]
  )
  return users.map((user) => user.id)
}

export interface ProvisionOptions {
  rolePrefix: string
  migrations: Migration[]
  rows: number
  concurrency: number
  onProgress?: (done: number, total: number) => void
  stopped?: () => boolean
}

/**
 * Provisions tenants the way the service does (`provisionTenant`: registry row, role, schema,
 * migrations, grants in one transaction), `concurrency` at a time, then fills their tables.
 */
export async function provisionTenants(pool: pg.Pool, ids: string[], options: ProvisionOptions): Promise<BenchTenant[]> {
  const tenants: BenchTenant[] = new Array(ids.length)
  let next = 0
  let done = 0
  const worker = async () => {
    while (next < ids.length && !options.stopped?.()) {
      const index = next++
      const id = ids[index]
      await provisionTenant(pool, { id, name: `Bench ${id}` }, { rolePrefix: options.rolePrefix, migrations: options.migrations })
      tenants[index] = { id, userIds: await insertTenantRows(pool, id, options.rows) }
      options.onProgress?.(++done, ids.length)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency, ids.length)) }, worker))
  return tenants
}

/** A bench database in use: the database, the service's login on it, and the bench's own pool. */
export interface OpenedDatabase {
  database: BenchDatabase
  login: ServiceLogin
  /** Connected as the login, for provisioning and the bench's own queries. */
  pool: pg.Pool
}

/**
 * A database of the bench's own, dropped with its tenant roles at the end, the service's login on
 * it, and a pool connected as that login, the control plane migrated.
 */
export async function openBenchDatabase(cluster: Cluster, options: { asClusterUser: boolean; provisionConcurrency: number }): Promise<OpenedDatabase> {
  const database = await createBenchDatabase(cluster)
  onCleanup(`dropping database ${database.name} and its tenant roles`, () => database.drop())
  log(`database ${database.name} created (tenant roles ${database.rolePrefix}*)`)
  // Provisioning connects as the service does, so tenant roles are granted to the service's login.
  const login = await createServiceLogin(database, options.asClusterUser)
  const pool = new pg.Pool({ connectionString: login.url, max: options.provisionConcurrency + 1, application_name: 'tenant-service-bench' })
  // The drop at the end ends these connections; that must not crash the bench.
  pool.on('error', () => undefined)
  onCleanup(`closing the pool on ${database.name}`, () => pool.end())
  await migrateControlPlane(pool)
  return { database, login, pool }
}

/** The login that the service, the bare process and the bench's own provisioning connect with. */
export interface ServiceLogin {
  url: string
  role: string
  superuser: boolean
}

/**
 * Production runs the service as an ordinary role that is a member of every tenant role (DESIGN
 * §6), and PostgreSQL checks that membership on every switch to a tenant role, a check a superuser
 * skips. So when the cluster's user is a superuser, the database is handed to a role of the bench's
 * own (`<prefix>service`: LOGIN, CREATEROLE, not a superuser), dropped with the tenant roles; with
 * `asClusterUser` (or a cluster user that is no superuser) the cluster's user is used as it is.
 */
export async function createServiceLogin(database: BenchDatabase, asClusterUser: boolean): Promise<ServiceLogin> {
  const admin = new pg.Client({ connectionString: database.url })
  await admin.connect()
  try {
    const { rows } = await admin.query<{ role: string; superuser: boolean }>(`SELECT current_user AS role, current_setting('is_superuser') = 'on' AS superuser`)
    if (asClusterUser || !rows[0].superuser) return { url: database.url, ...rows[0] }
    const role = `${database.rolePrefix}service`
    const password = randomBytes(16).toString('hex')
    await admin.query(`CREATE ROLE ${pg.escapeIdentifier(role)} LOGIN CREATEROLE PASSWORD ${pg.escapeLiteral(password)}`)
    // The owner of the database owns its public schema too (pg_database_owner), where the registry lives.
    await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(database.name)} OWNER TO ${pg.escapeIdentifier(role)}`)
    const url = new URL(database.url)
    url.username = role
    url.password = password
    return { url: url.toString(), role, superuser: false }
  } finally {
    await admin.end()
  }
}

export interface Settled {
  seconds: number
  /** What could not be done with the cluster user's rights (VACUUM of shared catalogs, CHECKPOINT). */
  skipped: string[]
}

const SETTLE_QUIET_MS = 2000
const SETTLE_LIMIT_MS = 120_000

/**
 * Bulk provisioning leaves PostgreSQL minutes of background work: autovacuum on the catalogs that
 * thousands of tenants grew, and a checkpoint writing and syncing every new file. A phase measured
 * during it measures that work, not the number of tenants. So before each phase the catalogs are
 * vacuumed and analysed, a checkpoint is forced, and the bench waits until no autovacuum worker has
 * run in the database for two seconds (two minutes at most): the steady state an operator's
 * database reaches minutes after tenants are created.
 */
export async function settleDatabase(database: BenchDatabase): Promise<Settled> {
  const begun = performance.now()
  const skipped: string[] = []
  const admin = new pg.Client({ connectionString: database.url })
  await admin.connect()
  try {
    const { rows } = await admin.query<{ name: string }>(
      `SELECT c.oid::regclass::text AS name FROM pg_class c
        WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r' ORDER BY 1`
    )
    // Without the rights (shared catalogs need a superuser), VACUUM warns and skips a table.
    const notVacuumed: string[] = []
    admin.on('notice', (notice) => notVacuumed.push(notice.message ?? ''))
    await admin.query(`VACUUM (ANALYZE) ${rows.map((row) => row.name).join(', ')}`)
    if (notVacuumed.length > 0) skipped.push(`VACUUM skipped ${notVacuumed.length} catalogs, first: ${notVacuumed[0]}`)
    try {
      await admin.query('CHECKPOINT')
    } catch (error) {
      skipped.push(`CHECKPOINT: ${(error as Error).message}`)
    }
    let quietSince = performance.now()
    while (performance.now() - quietSince < SETTLE_QUIET_MS && performance.now() - begun < SETTLE_LIMIT_MS) {
      const { rows: workers } = await admin.query<{ count: number }>(
        `SELECT count(*)::int AS count FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND datname = $1`,
        [database.name]
      )
      if (workers[0].count > 0) quietSince = performance.now()
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  } finally {
    await admin.end()
  }
  return { seconds: round((performance.now() - begun) / 1000, 1)!, skipped }
}

export interface RoleSwitchProbe {
  /** Median of 20 switches on a connection that has switched before. */
  warmMs: number
  /** Median of 5 first switches after a role of the cluster was created and dropped. */
  afterRoleChangeMs: number
}

/**
 * What one switch to a tenant role costs on a connection of the service's login, round trip
 * included. PostgreSQL checks that the login is a member of the tenant role against a list of the
 * login's memberships that each connection caches, and recomputes that list on its next switch
 * after any role of the cluster is created, renamed or dropped (creating or deleting a tenant, or
 * building a spare, does that). The recomputation grows with the number of memberships: this is
 * the once-per-connection cost of a tenant creation at the phase's number of tenants.
 */
export async function probeRoleSwitch(serviceUrl: string, adminUrl: string, rolePrefix: string, tenantRole: string): Promise<RoleSwitchProbe> {
  const service = new pg.Client({ connectionString: serviceUrl })
  const admin = new pg.Client({ connectionString: adminUrl })
  const switchMs = async () => {
    await service.query('BEGIN')
    const begun = performance.now()
    await service.query(`SELECT set_config('role', $1, true)`, [tenantRole])
    const ms = performance.now() - begun
    await service.query('COMMIT')
    return ms
  }
  try {
    await service.connect()
    await admin.connect()
    await switchMs()
    const warm: number[] = []
    for (let i = 0; i < 20; i++) warm.push(await switchMs())
    const afterChange: number[] = []
    const probe = pg.escapeIdentifier(`${rolePrefix}role_change_probe`)
    for (let i = 0; i < 5; i++) {
      await admin.query(`CREATE ROLE ${probe} NOLOGIN`)
      await admin.query(`DROP ROLE ${probe}`)
      afterChange.push(await switchMs())
    }
    return { warmMs: round(median(warm))!, afterRoleChangeMs: round(median(afterChange))! }
  } finally {
    await service.end().catch(() => undefined)
    await admin.end().catch(() => undefined)
  }
}
