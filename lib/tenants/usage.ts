import type pg from 'pg'
import type { TenantUsage } from '../../schemas/tenant.ts'
import type { Log } from '../log.ts'
import { runInTransaction } from '../transaction.ts'

const HOUR_MS = 3_600_000
const DAY_MS = 24 * HOUR_MS

/** Rows older than this are deleted. The endpoint reads two days at most; the rest is for operators' own queries. */
export const USAGE_RETENTION_DAYS = 8
/** How often each instance deletes rows past the retention (after a flush). */
const PRUNE_INTERVAL_MS = HOUR_MS
/** How long a flush waits for a lock (a tenant row being deleted or migrated) before trying again later. */
const FLUSH_LOCK_TIMEOUT_MS = 2000

/** What queries one tenant's tables: a tenant-scoped handle, opened by the caller. */
export interface TenantQueryable {
  query<Row extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<Row>>
}

export interface TenantUsageOptions {
  /** How often counts are written (USAGE_FLUSH_INTERVAL_MS). */
  flushIntervalMs: number
  /** Whether the database is a Citus coordinator, asked once when first needed. */
  isCitus: () => Promise<boolean>
  lockTimeoutMs?: number
  log?: Log
  now?: () => number
}

/** hour (ms since the epoch, UTC) → tenant → requests not yet written. */
type Counts = Map<number, Map<string, number>>

function addCounts(into: Counts, from: Counts): void {
  for (const [hour, tenants] of from) {
    let target = into.get(hour)
    if (!target) into.set(hour, (target = new Map()))
    for (const [tenant, requests] of tenants) target.set(tenant, (target.get(tenant) ?? 0) + requests)
  }
}

/**
 * One statement adds a batch to the table: replicas add up. Rows are taken in key order, so two
 * replicas' batches lock the same rows in the same order and cannot deadlock. A tenant deleted
 * meanwhile drops out of the join (its row locked first, so a deletion either waits for the batch,
 * whose rows then go with the tenant, or has already happened and the counts are dropped).
 */
const UPSERT = `INSERT INTO public.tenant_usage AS u (tenant_id, hour, requests)
  SELECT b.tenant_id, b.hour, b.requests
    FROM unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS b (tenant_id, hour, requests)
    JOIN public.tenants t ON t.id = b.tenant_id
   ORDER BY b.tenant_id, b.hour
     FOR KEY SHARE OF t
  ON CONFLICT (tenant_id, hour) DO UPDATE SET requests = u.requests + excluded.requests`

const PRUNE = `DELETE FROM public.tenant_usage WHERE hour < now() - interval '${USAGE_RETENTION_DAYS} days'`

const STORED_REQUESTS = 'SELECT hour, requests::text AS requests FROM public.tenant_usage WHERE tenant_id = $1 AND hour >= $2'

/**
 * The tenant migration FILES_AND_USERS needs: `users` (0001) and `files.status` (0002). A tenant
 * behind it is brought up to it before the query runs (the route calls tenantCatchUp.ensure).
 */
export const USAGE_TENANT_SCHEMA_VERSION = 2

/** Run through the tenant's own handle: unqualified names, its schema and role. */
const FILES_AND_USERS = `SELECT (SELECT count(*) FROM users)::text AS users, count(*)::text AS files, coalesce(sum(size), 0)::text AS bytes
  FROM files WHERE status = 'uploaded'`

// Tables and materialized views with their indexes and TOAST, and sequences: the relations of the
// schema that own storage. (Indexes are counted with their table; a partitioned table's size is its
// partitions'.)
const SCHEMA_RELATIONS = `FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm', 'S')`

const SCHEMA_BYTES = `SELECT coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)::text AS bytes ${SCHEMA_RELATIONS}`

/**
 * On a Citus coordinator a distributed schema's tables are shells there: their rows are in shards
 * on a worker, which citus_total_relation_size measures (with the shards' indexes). Not exercised by
 * the suite, which has no Citus cluster.
 */
const CITUS_SCHEMA_BYTES = `SELECT coalesce(sum(CASE WHEN d.logicalrelid IS NULL THEN pg_catalog.pg_total_relation_size(c.oid)
                                        ELSE citus_total_relation_size(c.oid) END), 0)::text AS bytes
  ${SCHEMA_RELATIONS.replace('JOIN pg_catalog.pg_namespace', 'LEFT JOIN pg_dist_partition d ON d.logicalrelid = c.oid JOIN pg_catalog.pg_namespace')}`

const window = (from: number, to: number) => ({ from, to, requests: 0 })

/**
 * Per-tenant usage. Requests are counted in memory, per tenant and UTC hour, at the cost of a map
 * update on the request path, and added to `public.tenant_usage` every `flushIntervalMs` in one
 * statement. A flush that fails keeps its counts for the next one; `close()` flushes what is left.
 * Stored bytes, database size and users are read from the database when asked.
 */
export function createTenantUsage(pool: pg.Pool, options: TenantUsageOptions) {
  const now = options.now ?? Date.now
  const lockTimeoutMs = Math.trunc(options.lockTimeoutMs ?? FLUSH_LOCK_TIMEOUT_MS)
  let pending: Counts = new Map()
  // The current hour's map in `pending`, so counting is one lookup while the hour lasts.
  let hourStart = 0
  let hourEnd = 0
  let hourCounts = new Map<string, number>()
  let timer: NodeJS.Timeout | null = null
  let lastPruneAt = Number.NEGATIVE_INFINITY
  // Flushes, and reads of the stored requests, one at a time: a read never misses a batch that is
  // on its way to the table.
  let queue: Promise<unknown> = Promise.resolve()
  const serially = <T>(work: () => Promise<T>): Promise<T> => {
    const run = queue.then(work)
    queue = run.catch(() => undefined)
    return run
  }

  function count(tenant: string): void {
    const at = now()
    if (at >= hourEnd || at < hourStart) {
      hourStart = at - (at % HOUR_MS)
      hourEnd = hourStart + HOUR_MS
      let counts = pending.get(hourStart)
      if (!counts) pending.set(hourStart, (counts = new Map()))
      hourCounts = counts
    }
    hourCounts.set(tenant, (hourCounts.get(tenant) ?? 0) + 1)
  }

  /** Takes everything counted so far out of `pending`; `count` starts a fresh map. */
  function take(): Counts {
    const taken = pending
    pending = new Map()
    hourEnd = 0
    return taken
  }

  async function flushNow(): Promise<void> {
    if (pending.size === 0) return
    const batch = take()
    const rows: [string, number, number][] = []
    for (const [hour, tenants] of batch) for (const [tenant, requests] of tenants) rows.push([tenant, hour, requests])
    rows.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]))
    try {
      await runInTransaction(pool, async (client) => {
        await client.query(`SET LOCAL lock_timeout = ${lockTimeoutMs}`)
        await client.query(UPSERT, [rows.map((row) => row[0]), rows.map((row) => new Date(row[1]).toISOString()), rows.map((row) => row[2])])
      })
    } catch (error) {
      addCounts(pending, batch)
      hourEnd = 0
      throw error
    }
    if (now() - lastPruneAt >= PRUNE_INTERVAL_MS) {
      lastPruneAt = now()
      await pool.query(PRUNE).catch((error: Error) => options.log?.warn({ err: error }, 'deleting old tenant usage failed; trying again in an hour'))
    }
  }

  /** Writes what was counted. Rejects when the write failed; the counts are then kept for the next flush. */
  const flush = () => serially(flushNow)

  /** Requests of `tenant` in the four windows: what is stored, plus what this instance has not written. */
  const requestsOf = (tenant: string, at: number) =>
    serially(async () => {
      await flushNow().catch((error: Error) => options.log?.warn({ err: error }, 'writing tenant usage failed; it is kept for the next attempt'))
      const hour = at - (at % HOUR_MS)
      const day = at - (at % DAY_MS)
      const windows = {
        currentHour: window(hour, hour + HOUR_MS),
        lastHour: window(hour - HOUR_MS, hour),
        currentDay: window(day, day + DAY_MS),
        lastDay: window(day - DAY_MS, day)
      }
      const add = (hourAt: number, requests: number) => {
        for (const counted of Object.values(windows)) if (hourAt >= counted.from && hourAt < counted.to) counted.requests += requests
      }
      const { rows } = await pool.query<{ hour: Date; requests: string }>(STORED_REQUESTS, [tenant, new Date(day - DAY_MS).toISOString()])
      for (const row of rows) add(row.hour.getTime(), Number(row.requests))
      // Not written yet: the flush above failed, or requests arrived while it ran.
      for (const [hourAt, tenants] of pending) add(hourAt, tenants.get(tenant) ?? 0)
      return windows
    })

  let citus: Promise<boolean> | null = null
  function schemaBytes(schema: string): Promise<pg.QueryResult<{ bytes: string }>> {
    if (!citus) {
      const asked = options.isCitus()
      citus = asked
      asked.catch(() => {
        if (citus === asked) citus = null
      })
    }
    return citus.then((isCitus) => pool.query<{ bytes: string }>(isCitus ? CITUS_SCHEMA_BYTES : SCHEMA_BYTES, [schema]))
  }

  const iso = (windowed: { from: number; to: number; requests: number }) => ({
    from: new Date(windowed.from).toISOString(),
    to: new Date(windowed.to).toISOString(),
    requests: windowed.requests
  })

  return {
    /** Counts one request of `tenant`, in the current hour. */
    count,
    flush,

    /**
     * The usage of `tenant` (which exists: the caller looked it up); `data` queries its tables.
     * Database figures are read as the request is answered; requests as stored, plus this
     * instance's counts not yet written. Another instance's last `flushIntervalMs` may be missing.
     */
    async read(tenant: { id: string; schema: string }, data: TenantQueryable): Promise<TenantUsage> {
      const at = now()
      const [requests, tables, size] = await Promise.all([
        requestsOf(tenant.id, at),
        data.query<{ users: string; files: string; bytes: string }>(FILES_AND_USERS),
        schemaBytes(tenant.schema)
      ])
      const stored = tables.rows[0]
      return {
        tenant: tenant.id,
        at: new Date(at).toISOString(),
        requests: {
          currentHour: iso(requests.currentHour),
          lastHour: iso(requests.lastHour),
          currentDay: iso(requests.currentDay),
          lastDay: iso(requests.lastDay)
        },
        storage: { files: Number(stored.files), bytes: Number(stored.bytes) },
        database: { bytes: Number(size.rows[0].bytes) },
        users: Number(stored.users)
      }
    },

    /** Starts flushing every `flushIntervalMs`; the timer does not keep the process alive. */
    start(): void {
      if (timer) return
      timer = setInterval(() => {
        flush().catch((error: Error) => options.log?.warn({ err: error }, 'writing tenant usage failed; it is kept for the next attempt'))
      }, options.flushIntervalMs)
      timer.unref()
    },

    /** Stops the timer and writes what is left. Rejects when that write failed: those counts are lost. */
    async close(): Promise<void> {
      if (timer) clearInterval(timer)
      timer = null
      await flush()
    },

    /** Requests counted by this instance and not yet written. */
    pendingRequests(): number {
      let total = 0
      for (const tenants of pending.values()) for (const requests of tenants.values()) total += requests
      return total
    }
  }
}

export type TenantUsageCounter = ReturnType<typeof createTenantUsage>
