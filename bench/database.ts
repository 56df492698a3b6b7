import pg from 'pg'
import type { Migration } from '../plugins/domain/migrations.ts'
import { provisionTenant } from '../plugins/domain/tenants.ts'
import { createScratchDatabase, findScratchCluster, type ScratchCluster, type ScratchDatabase } from '../plugins/embedded/postgres.ts'

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
    log
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
