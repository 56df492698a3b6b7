import type pg from 'pg'
import type { Log } from '../log.ts'
import type { ResolvedTenant, TenantDb } from '../tenant-db/index.ts'
import { checkTenantId, findTenant } from '../tenants/index.ts'
import { fileIdOfKey, stagingKey, tenantPrefix, type FileRow } from './files.ts'
import type { Storage } from './storage.ts'

/**
 * The file sweep: removes from object storage what no file can reach any more, and the rows of
 * deleted files once nothing can be stored under their keys.
 *
 * A presigned PUT cannot be revoked: until it expires it can store its bytes, whatever happened to
 * the file. So a deleted file keeps its row (status `deleted`, counting toward the quota) until its
 * URL has expired; a completed file's URL can still refill its staging key; and the prefix of a
 * deleted tenant can still receive late PUTs, which must never become files of a tenant later
 * created with the same id. The sweep visits a tenant's prefix when `public.tenant_sweeps` says it
 * is due, and there:
 *
 * - lists `tenants/<id>/` page by page, and deletes every object that is not a live file's:
 *   objects of file ids with no row (a previous incarnation of the tenant, or a row already
 *   swept), of deleted files, and the staging objects of completed files. A pending file's
 *   objects stay;
 * - deletes the rows of deleted files whose URL had expired before the listing began;
 * - schedules its next visit at the next URL expiry that matters, or forgets the prefix.
 *
 * No database transaction is open during any S3 call. The visits of several replicas do not
 * overlap: a due prefix is leased (`leased_until`) by one sweeper, chosen with SKIP LOCKED.
 */

/** Clocks of the service, the database and S3 may disagree a little: expiries are trusted this much later. */
export const DEFAULT_SWEEP_GRACE_MS = 10_000
/** How long a sweeper may hold a prefix before another may take it over. */
const DEFAULT_LEASE_MS = 5 * 60_000
/** Prefixes visited per run. */
const DEFAULT_BATCH = 20

export interface SweepOptions {
  /** The control plane (public.tenant_sweeps), as the service's own role. */
  pool: pg.Pool
  storage: Pick<Storage, 'listKeyPages' | 'deleteKeys'>
  /** Reads and deletes rows in a tenant's schema, as the tenant. */
  tenantDb: Pick<TenantDb, 'lookup' | 'open'>
  graceMs?: number
  leaseMs?: number
  batch?: number
  log?: Log
}

export interface SweepSummary {
  /** Prefixes visited. */
  visited: number
  /** Objects deleted. */
  objects: number
  /** Rows of deleted files removed. */
  rows: number
}

/**
 * Asks for a visit of `tenantId`'s prefix at `dueAt` (earlier asked visits stay), and, for a
 * deleted tenant, keeps visiting it until `until`. One statement of its own, outside any
 * transaction of the tenant's: it is written before the change it is for, so that a crash after
 * the change cannot lose it.
 */
export async function requestSweep(pool: Pick<pg.Pool, 'query'>, tenantId: string, dueAt: Date, until: Date | null = null): Promise<void> {
  if (checkTenantId(tenantId) !== null) throw new Error(`Not a tenant id: ${JSON.stringify(tenantId)}`)
  await pool.query(
    `INSERT INTO public.tenant_sweeps (tenant_id, due_at, until) VALUES ($1, $2, $3)
     ON CONFLICT (tenant_id) DO UPDATE SET
       due_at = least(tenant_sweeps.due_at, excluded.due_at),
       until = greatest(tenant_sweeps.until, excluded.until),
       generation = tenant_sweeps.generation + 1`,
    [tenantId, dueAt, until]
  )
}

interface Lease {
  tenant_id: string
  generation: string
  until: Date | null
  /** The database's clock when the lease was taken; every expiry is compared with it. */
  now: Date
}

/** One run: leases the prefixes that are due and visits each. Failures are logged and retried at a later run. */
export async function sweepDue(options: SweepOptions): Promise<SweepSummary> {
  const graceMs = options.graceMs ?? DEFAULT_SWEEP_GRACE_MS
  const { rows: leases } = await options.pool.query<Lease>(
    `UPDATE public.tenant_sweeps SET leased_until = now() + $2 * interval '1 millisecond'
      WHERE tenant_id IN (
        SELECT tenant_id FROM public.tenant_sweeps
         WHERE due_at <= now() - $1 * interval '1 millisecond' AND (leased_until IS NULL OR leased_until < now())
         ORDER BY due_at LIMIT $3
           FOR UPDATE SKIP LOCKED)
      RETURNING tenant_id, generation::text AS generation, until, now() AS now`,
    [graceMs, options.leaseMs ?? DEFAULT_LEASE_MS, options.batch ?? DEFAULT_BATCH]
  )
  const summary: SweepSummary = { visited: 0, objects: 0, rows: 0 }
  for (const lease of leases) {
    try {
      const visit = await visitPrefix(options, lease, graceMs)
      summary.visited++
      summary.objects += visit.objects
      summary.rows += visit.rows
    } catch (error) {
      if (!(error instanceof SweepLater)) {
        options.log?.warn({ err: error, tenant: lease.tenant_id }, 'sweeping the files of a tenant failed; retrying at a later run')
      }
      // Released, still due: the next run tries again.
      await options.pool.query('UPDATE public.tenant_sweeps SET leased_until = NULL WHERE tenant_id = $1', [lease.tenant_id]).catch(() => undefined)
    }
  }
  return summary
}

type SweptRow = Pick<FileRow, 'id' | 'key' | 'status' | 'upload_expires_at'>

/** The prefix cannot be visited now (its tenant is being deleted, or not known here yet); the next run tries again. */
class SweepLater extends Error {}

async function visitPrefix(options: SweepOptions, lease: Lease, graceMs: number): Promise<{ objects: number; rows: number }> {
  const tenantId = lease.tenant_id
  /** Every URL that expired before this instant (give or take the grace) can store nothing more, and the listing begins after it. */
  const settled = lease.now.getTime() - graceMs
  /**
   * The tenant that owns the prefix now, if any, asked of the registry itself (never of a cache,
   * which could still say "no such tenant" for one just created), after each page is listed: an
   * object listed was stored with a URL handed out after its row had been committed, so a tenant
   * absent after the listing owns none of the objects listed.
   */
  const owner = async (): Promise<ResolvedTenant | null> => {
    const registered = await findTenant(options.pool, tenantId)
    if (!registered) return null
    const looked = options.tenantDb.lookup(tenantId)
    const tenant = looked instanceof Promise ? await looked : looked
    // Being deleted (which empties the prefix itself), or not in this instance's cache yet: later.
    if (registered.status === 'deleting' || !tenant || tenant.status === 'deleting') throw new SweepLater()
    return tenant
  }

  let tenant: ResolvedTenant | null = null
  let objects = 0
  for await (const keys of options.storage.listKeyPages(tenantPrefix(tenantId))) {
    tenant = await owner()
    const ids = [...new Set(keys.map((key) => fileIdOfKey(tenantId, key)).filter((id): id is string => id !== null))]
    const rows = new Map<string, SweptRow>()
    if (tenant && ids.length > 0) {
      const reader = options.tenantDb.open(tenant, true)
      try {
        const result = await reader.query<SweptRow>('SELECT id, key, status, upload_expires_at FROM files WHERE id = ANY($1::uuid[])', [ids])
        for (const row of result.rows) rows.set(row.id, row)
      } finally {
        await reader.finish(false)
      }
    }
    // Everything that is not the bytes of a live file, or of an upload still under way.
    const unreachable = keys.filter((key) => {
      const id = fileIdOfKey(tenantId, key)
      const row = id === null ? undefined : rows.get(id)
      if (!row || row.status === 'deleted') return true
      if (row.status === 'uploaded') return key === stagingKey(tenantId, row.id)
      return false
    })
    if (unreachable.length > 0) await options.storage.deleteKeys(unreachable)
    objects += unreachable.length
  }
  tenant = await owner()

  let removed = 0
  let next: Date | null = null
  if (tenant) {
    const writer = options.tenantDb.open(tenant, false)
    try {
      // Rows whose URL had expired before the listing: whatever a late PUT stored was listed and deleted.
      const deleted = await writer.query(`DELETE FROM files WHERE status = 'deleted' AND upload_expires_at <= $1`, [new Date(settled)])
      removed = deleted.rowCount ?? 0
      // The next expiry after which a deleted file's URL or a completed file's staging key is settled.
      const { rows: pending } = await writer.query<{ next: Date | null }>(
        `SELECT min(upload_expires_at) AS next FROM files WHERE status IN ('deleted', 'uploaded') AND upload_expires_at > $1`,
        [new Date(settled)]
      )
      next = pending[0].next
    } catch (error) {
      await writer.finish(false)
      throw error
    }
    await writer.finish(true)
  }
  if (lease.until && lease.until.getTime() > settled && (next === null || lease.until < next)) next = lease.until

  // Only when nobody asked for a visit meanwhile (the generation is the one leased); otherwise the
  // lease is released and the asked-for visit stands.
  const { rowCount } = await options.pool.query(
    next === null
      ? 'DELETE FROM public.tenant_sweeps WHERE tenant_id = $1 AND generation = $2'
      : 'UPDATE public.tenant_sweeps SET due_at = $3, leased_until = NULL WHERE tenant_id = $1 AND generation = $2',
    next === null ? [tenantId, lease.generation] : [tenantId, lease.generation, next]
  )
  if (rowCount === 0) await options.pool.query('UPDATE public.tenant_sweeps SET leased_until = NULL WHERE tenant_id = $1', [tenantId])
  return { objects, rows: removed }
}
