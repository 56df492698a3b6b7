import type pg from 'pg'
import { type ApiError, errors, serviceUnavailable } from '../../schemas/errors.ts'
import type { Log } from '../log.ts'
import {
  isLockTimeout,
  latestVersion,
  MIGRATION_LOCK_TIMEOUT_MS,
  type Migration,
  migrateTenantSchema,
  TenantGoneError,
  type TenantToMigrate
} from './migrations.ts'

/** `on-request`: a lagging tenant's first request migrates it; `job`: only `npm run migrate` does. */
export type TenantMigrationMode = 'on-request' | 'job'

/** What a request knows of its tenant: enough to migrate it, and the version it was read at. */
export interface LaggingTenant extends TenantToMigrate {
  schemaVersion: number
}

export interface CatchUpOptions {
  mode: TenantMigrationMode
  /** The tenant migrations this build ships. */
  migrations: Migration[]
  /** Where the migrations take their connection from (the service's pool). */
  pool: pg.Pool
  /** How long a request waits for its tenant's migration before it is answered 503. */
  waitMs: number
  /** The first pause after a failed migration; it doubles with each failure in a row, up to 16 times it. */
  backoffMs: number
  /** Tenants this process migrates at once; a tenant waiting for its turn waits within `waitMs`. */
  concurrency: number
  /** The longest wait of a migration for a lock (default: `waitMs`, within 100 ms and MIGRATION_LOCK_TIMEOUT_MS). */
  lockTimeoutMs?: number
  log?: Log
  /** Told once a tenant's schema is at `version` (the caller's cache must forget the old one). */
  onMigrated?: (tenant: string, version: number) => void
  /** Told how each attempt ended: `current` when another session had already done the work. */
  onAttempt?: (outcome: AttemptOutcome) => void
}

export type AttemptOutcome = 'migrated' | 'current' | 'busy' | 'failed' | 'gone'

/** Retry-After of a 503 TENANT_MIGRATING in job mode, and after a request's wait ran out. */
export const JOB_RETRY_AFTER_SECONDS = 5
export const BUSY_RETRY_AFTER_SECONDS = 2
const MAX_BACKOFF_FACTOR = 16

interface Failure {
  until: number
  delayMs: number
  message: string
}

/** What a migration attempt ended with, for the requests waiting on it. */
type Outcome = { ok: true } | { ok: false; error: ApiError }

/** The SQLSTATE of an error or of what caused it. */
function sqlState(error: unknown): string | undefined {
  for (let cause = error as { code?: unknown; cause?: unknown } | undefined; cause; cause = cause.cause as typeof cause) {
    if (typeof cause.code === 'string' && /^[0-9A-Z]{5}$/.test(cause.code)) return cause.code
  }
  return undefined
}

const isConnectionLoss = (error: unknown) => {
  const state = sqlState(error)
  return state === undefined || state.startsWith('08') || state.startsWith('57P')
}

const migrating = (tenant: string, message: string, retryAfterSeconds: number) =>
  serviceUnavailable('TENANT_MIGRATING', `Tenant "${tenant}" ${message}`, Math.max(1, Math.ceil(retryAfterSeconds)))

/**
 * Brings a lagging tenant's schema up to what a route needs, from the request path.
 *
 * Single-flight per tenant within the process: the first request that finds its tenant behind
 * starts the migration (migrateTenantSchema: one transaction, under the tenant's advisory lock,
 * which `npm run migrate` takes too, with `lock_timeout`), and every request of that tenant waits
 * on the same attempt, each at most `waitMs`; past that it is answered 503 TENANT_MIGRATING while
 * the attempt goes on. A migration that fails is logged once and not tried again for a while
 * (doubling up to MAX_BACKOFF_FACTOR times `backoffMs`): its requests get 503 with the time left
 * as Retry-After, so the failing DDL does not run for every request. Giving up on a lock (another
 * session migrating the tenant, or holding one of its tables) is not a failure: the next request
 * tries again.
 */
export function createTenantCatchUp(options: CatchUpOptions) {
  const latest = latestVersion(options.migrations)
  const lockTimeoutMs = options.lockTimeoutMs ?? Math.min(MIGRATION_LOCK_TIMEOUT_MS, Math.max(100, options.waitMs))
  const flights = new Map<string, Promise<Outcome>>()
  const failures = new Map<string, Failure>()
  /** Versions this process brought tenants to, for requests that read their tenant just before. */
  const reached = new Map<string, number>()
  let running = 0
  const queue: (() => void)[] = []

  async function turn(): Promise<() => void> {
    if (running >= options.concurrency) await new Promise<void>((resolve) => queue.push(resolve))
    else running++
    // The slot passes straight to the next waiter, if any, so `running` counts it throughout.
    return () => {
      const next = queue.shift()
      if (next) next()
      else running--
    }
  }

  async function attempt(tenant: LaggingTenant): Promise<Outcome> {
    const release = await turn()
    try {
      let client: pg.PoolClient
      try {
        client = await options.pool.connect()
      } catch {
        // No connection within the pool's wait: the tenant is fine, the service is busy.
        options.onAttempt?.('busy')
        return { ok: false, error: migrating(tenant.id, 'is being upgraded to a newer schema; retry shortly', BUSY_RETRY_AFTER_SECONDS) }
      }
      let result: { from: number; to: number }
      try {
        result = await migrateTenantSchema(client, tenant, options.migrations, { lockTimeoutMs })
        client.release()
      } catch (error) {
        // The session may be in any state after a failure: never hand it back to the pool.
        client.release(true)
        throw error
      }
      reached.set(tenant.id, result.to)
      failures.delete(tenant.id)
      // Another session (npm run migrate, another instance) may have done it meanwhile: nothing to say then.
      if (result.to > result.from) options.log?.info({ tenant: tenant.id, from: result.from, to: result.to }, 'tenant schema migrated on request')
      options.onMigrated?.(tenant.id, result.to)
      options.onAttempt?.(result.to > result.from ? 'migrated' : 'current')
      return { ok: true }
    } catch (error) {
      const { outcome, answer } = await failed(tenant, error)
      options.onAttempt?.(outcome)
      return { ok: false, error: answer }
    } finally {
      release()
    }
  }

  /** What a failed attempt was, and what its requests are answered. */
  async function failed(tenant: LaggingTenant, error: unknown): Promise<{ outcome: AttemptOutcome; answer: ApiError }> {
    if (error instanceof TenantGoneError) return { outcome: 'gone', answer: errors.tenantNotFound(tenant.id) }
    if (isLockTimeout(error)) {
      return { outcome: 'busy', answer: migrating(tenant.id, 'is being upgraded by another session; retry shortly', BUSY_RETRY_AFTER_SECONDS) }
    }
    // The database went away under it (no SQLSTATE, or a connection or shutdown one): nothing is
    // wrong with the migration, and the next request tries again.
    if (isConnectionLoss(error)) {
      options.log?.warn({ tenant: tenant.id, err: error }, 'migrating a tenant on request lost its connection')
      return { outcome: 'busy', answer: migrating(tenant.id, 'is being upgraded to a newer schema; retry shortly', BUSY_RETRY_AFTER_SECONDS) }
    }
    const message = (error as Error).message
    const now = Date.now()
    // A failure long after the last one (fixed meanwhile by npm run migrate, then a newer release)
    // starts a new series.
    const previous = failures.get(tenant.id)
    const series = previous && now - previous.until < options.backoffMs * MAX_BACKOFF_FACTOR ? previous : undefined
    const delayMs = series ? Math.min(series.delayMs * 2, options.backoffMs * MAX_BACKOFF_FACTOR) : options.backoffMs
    failures.set(tenant.id, { until: now + delayMs, delayMs, message })
    // Once per failure that is new to this process; the same error again only lengthens the pause.
    if (series?.message !== message) {
      options.log?.warn({ tenant: tenant.id, err: error, retryInMs: delayMs }, 'migrating a tenant on request failed; its requests get 503 until it is retried')
    }
    // As npm run migrate records it, so the operator sees it in the registry too.
    await options.pool
      .query(`UPDATE public.tenants SET migration_status = 'failed', migration_error = $2 WHERE id = $1`, [tenant.id, message])
      .catch(() => undefined)
    return { outcome: 'failed', answer: failingError(tenant.id, delayMs) }
  }

  const failingError = (tenant: string, remainingMs: number) =>
    migrating(tenant, 'could not be upgraded to the schema this route needs; the operator has been told', remainingMs / 1000)

  function start(tenant: LaggingTenant): Promise<Outcome> {
    let flight = flights.get(tenant.id)
    if (!flight) {
      flight = attempt(tenant).finally(() => flights.delete(tenant.id))
      flights.set(tenant.id, flight)
    }
    return flight
  }

  function waitFor(tenant: string, flight: Promise<Outcome>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(migrating(tenant, 'is being upgraded to a newer schema; retry shortly', BUSY_RETRY_AFTER_SECONDS)), options.waitMs)
      flight.then((outcome) => {
        clearTimeout(timer)
        if (outcome.ok) resolve()
        else reject(outcome.error)
      })
    })
  }

  return {
    /** The latest tenant migration this build ships: what a route needs unless it says otherwise. */
    latest,
    mode: options.mode,
    /**
     * Nothing (at once) when `tenant` is at `required` or above. Otherwise a promise that resolves
     * once its schema is, or rejects with the error to answer: 503 TENANT_MIGRATING with
     * Retry-After, or 404 when the tenant was deleted meanwhile.
     */
    ensure(tenant: LaggingTenant, required: number): Promise<void> | undefined {
      if (tenant.schemaVersion >= required) return undefined
      if ((reached.get(tenant.id) ?? -1) >= required) return undefined
      if (options.mode === 'job') {
        return Promise.reject(migrating(tenant.id, 'is waiting for its schema upgrade (npm run migrate); retry later', JOB_RETRY_AFTER_SECONDS))
      }
      const failure = failures.get(tenant.id)
      const now = Date.now()
      if (failure && now < failure.until && !flights.has(tenant.id)) return Promise.reject(failingError(tenant.id, failure.until - now))
      return waitFor(tenant.id, start(tenant))
    },
    /** Tenants being migrated by this process right now. */
    get inFlight() {
      return flights.size
    }
  }
}

export type TenantCatchUp = ReturnType<typeof createTenantCatchUp>
