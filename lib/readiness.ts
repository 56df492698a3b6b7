import type pg from 'pg'
import type { TenantStatus } from '../schemas/tenant.ts'
import { controlPlaneVersion, latestVersion, loadMigrations } from './tenants/index.ts'

/** A dependency check: throws when the dependency is not usable; may answer a line of detail. */
type Check = () => Promise<unknown>

const CHECK_TIMEOUT_MS = 2000

type Results = Record<string, { ok: boolean; detail?: string }>

export interface ReadinessOptions {
  /** How long one evaluation answers every probe: probes are anonymous and must not cost a dependency call each. */
  cacheMs?: number
  /** Told when a check starts or stops failing, with its detail; `first` when it had never answered before. */
  onChange?: (name: string, ok: boolean, detail: string | undefined, first: boolean) => void
}

/**
 * What /health/ready reports. Plugins add the dependencies they cannot work without; shutdown flips
 * the whole answer to "unavailable" before the drain begins, so the load balancer stops sending.
 * The checks run at most once per `cacheMs` (1 s), whoever asks and however often.
 */
export function createReadiness(options: ReadinessOptions = {}) {
  const cacheMs = options.cacheMs ?? 1000
  const checks = new Map<string, Check>()
  let shuttingDown = false
  let last: { at: number; results: Promise<Results> } | null = null
  const previous = new Map<string, boolean>()

  async function runAll(): Promise<Results> {
    const results: Results = {}
    const names = [...checks.keys()]
    const outcomes = await Promise.all(names.map((name) => run(checks.get(name)!)))
    for (const [i, name] of names.entries()) {
      const outcome = outcomes[i]
      results[name] = outcome
      if (previous.get(name) !== outcome.ok && (previous.has(name) || !outcome.ok)) options.onChange?.(name, outcome.ok, outcome.detail, !previous.has(name))
      previous.set(name, outcome.ok)
    }
    return results
  }

  async function run(check: Check): Promise<{ ok: boolean; detail?: string }> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS)
    })
    try {
      const detail = await Promise.race([check(), timeout])
      return typeof detail === 'string' && detail !== '' ? { ok: true, detail } : { ok: true }
    } catch (error) {
      return { ok: false, detail: (error as Error).message }
    } finally {
      clearTimeout(timer)
    }
  }

  return {
    addCheck(name: string, check: Check) {
      checks.set(name, check)
    },
    markShuttingDown() {
      shuttingDown = true
    },
    get shuttingDown() {
      return shuttingDown
    },
    async evaluate() {
      const now = Date.now()
      if (last === null || now - last.at >= cacheMs) last = { at: now, results: runAll() }
      const checked = await last.results
      const results: Results = shuttingDown ? { shutdown: { ok: false, detail: 'shutting down' }, ...checked } : checked
      return { ready: Object.values(results).every((result) => result.ok), checks: results }
    }
  }
}

export interface MigrationState {
  controlPlane: { version: number; latest: number }
  tenants: { latest: number; behind: number; byStatus: Record<TenantStatus, number> }
}

/**
 * Where the schemas stand against the migrations this build ships: the control plane's version,
 * and how many tenants are behind the latest tenant migration (with the tenant counts by status,
 * which come from the same query). Cached for `ttlMs` so probes and scrapes stay one cheap query
 * per few seconds; a control plane found behind is not cached, so readiness returns the moment
 * the migration lands.
 */
export function createMigrationState(pool: pg.Pool, options: { ttlMs?: number } = {}) {
  const ttlMs = options.ttlMs ?? 5000
  let cached: { state: MigrationState; at: number } | null = null
  let inflight: Promise<MigrationState> | null = null

  async function load(): Promise<MigrationState> {
    const [publicMigrations, tenantMigrations] = await Promise.all([loadMigrations('public'), loadMigrations('tenant')])
    const controlPlane = { version: await controlPlaneVersion(pool), latest: latestVersion(publicMigrations) }
    const latest = latestVersion(tenantMigrations)
    const byStatus: Record<TenantStatus, number> = { active: 0, suspended: 0, deleting: 0 }
    let behind = 0
    // Before the first control-plane migration there is no registry to count.
    if (controlPlane.version > 0) {
      const { rows } = await pool.query<{ status: TenantStatus; tenants: number; behind: number }>(
        `SELECT status, count(*)::int AS tenants, (count(*) FILTER (WHERE schema_version < $1))::int AS behind
           FROM public.tenants GROUP BY status`,
        [latest]
      )
      for (const row of rows) {
        byStatus[row.status] = row.tenants
        behind += row.behind
      }
    }
    const state = { controlPlane, tenants: { latest, behind, byStatus } }
    cached = controlPlane.version >= controlPlane.latest ? { state, at: Date.now() } : null
    return state
  }

  function get(): Promise<MigrationState> {
    if (cached && Date.now() - cached.at < ttlMs) return Promise.resolve(cached.state)
    inflight ??= load().finally(() => (inflight = null))
    return inflight
  }

  return {
    get,
    /** For a probe's body: the state, or null when the database does not answer in time. Never rejects. */
    async report(): Promise<MigrationState | null> {
      let timer: NodeJS.Timeout | undefined
      const late = new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), CHECK_TIMEOUT_MS)
      })
      try {
        return await Promise.race([get().catch(() => null), late])
      } finally {
        clearTimeout(timer)
      }
    }
  }
}
