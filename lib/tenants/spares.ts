import { randomBytes } from 'node:crypto'
import pg from 'pg'
import type { Log } from '../log.ts'
import { runInTransaction, sendEach } from '../transaction.ts'
import { latestVersion, type Migration } from './migrations.ts'
import { tenantSchemaSql, type TenantIdentity } from './sql.ts'

/**
 * Spare schemas are named `_spare_<hex>`: no tenant id starts with `_` (TENANT_ID_PATTERN), so no
 * request can name one, and no tenant can be created with a spare's name.
 */
const SPARE_SCHEMA_PREFIX = '_spare_'
/** Spares built at once: the DDL is CPU-bound in PostgreSQL, and requests need the other core. */
const BUILDERS = 2
/** Other instances take spares too: the stock is checked this often, not only after our own takes. */
const RESTOCK_INTERVAL_MS = 10_000
/** Longest wait for a spare being built when none is ready; past it the tenant is built on the spot. */
const WAIT_FOR_SPARE_MS = 2000
/**
 * Replacements wait until creations have paused this long, so that a burst of creations is served
 * from the stock without builders competing with it for the database's CPUs...
 */
const QUIET_MS = 250
/** ...unless the stock falls to this share of the target: then building starts at once. */
const LOW_WATER_SHARE = 0.25
/** Longest the service waits at start for its stock to be built; the rest is built in the background. */
const START_FILL_MS = 5000
/**
 * A spare of an older migration version is dropped only once it is this old: during a rolling
 * deploy the instances still running the older code keep a stock of their own, and dropping it
 * as fast as they rebuild it would keep both busy until the deploy ends.
 */
const STALE_SPARE_AGE = '10 minutes'

export interface TenantSparesOptions {
  /** Spares to keep ready. */
  target: number
  rolePrefix: string
  migrations: Migration[]
  log: Log
  /** Pause in creations after which replacements are built (QUIET_MS). */
  quietMs?: number
}

/**
 * Tenant schemas made ahead of need, so that creating a tenant does not wait for its tables'
 * files to be created (DESIGN §8: tenant creation p50 ≤ 10 ms).
 *
 * A spare is a role and a schema built exactly as a tenant's (tenantSchemaSql), at the latest
 * tenant migration, recorded in public.tenant_spares in the same transaction. Creating a tenant
 * takes one (`take`, a row locked with SKIP LOCKED, so concurrent creations take different ones)
 * and renames its schema and role to the tenant's in the transaction that registers the tenant;
 * a failure rolls the rename back and the spare is there for the next creation. Each spare taken
 * is replaced in the background, two being built at a time; a creation that finds none ready
 * waits for the next one built rather than building its own beside them.
 *
 * Replacements are built once creations pause (QUIET_MS) or the stock runs low (LOW_WATER_SHARE),
 * so a burst of creations up to the stock's size takes spares at the speed of a rename. At start
 * the service waits a few seconds (START_FILL_MS) for its stock, so that the first creations after
 * a deploy find one.
 *
 * Spares of an older migration version than this code's are never taken, and are dropped when
 * the stock is checked once STALE_SPARE_AGE old; spares of a newer version (another instance running newer code) are left
 * alone. The stock may exceed `target` by a spare or two (builders of several instances counting
 * at once), which the next creations take.
 */
export class TenantSpares {
  readonly #pool: pg.Pool
  readonly #options: TenantSparesOptions
  readonly #version: number
  /** Spares being built now. */
  #building = 0
  readonly #builders = new Set<Promise<void>>()
  #checking: Promise<void> | null = null
  #closed = false
  #timer: NodeJS.Timeout | null = null
  /** Takes waiting for a spare being built. */
  #waiting: (() => void)[] = []
  readonly #quietMs: number
  readonly #lowWater: number
  /** When this instance last took a spare (performance.now()), and how many it saw left then. */
  #lastTakeAt = -Infinity
  #leftAtLastTake = 0
  #restockTimer: NodeJS.Timeout | null = null
  /** Spares this instance has built, for the log. */
  #built = 0

  constructor(pool: pg.Pool, options: TenantSparesOptions) {
    this.#pool = pool
    this.#options = options
    this.#version = latestVersion(options.migrations)
    this.#quietMs = options.quietMs ?? QUIET_MS
    this.#lowWater = Math.floor(options.target * LOW_WATER_SHARE)
  }

  /**
   * Builds the stock, waiting up to START_FILL_MS for it (a fresh database, or a new tenant
   * migration, has none ready), then keeps checking it in the background.
   */
  async start(): Promise<void> {
    if (this.#options.target === 0) return
    this.#timer = setInterval(() => void this.check(), RESTOCK_INTERVAL_MS)
    this.#timer.unref()
    const started = performance.now()
    let timeout: NodeJS.Timeout | undefined
    const filled = await Promise.race([
      this.check().then(() => true),
      new Promise<false>((resolve) => {
        timeout = setTimeout(() => resolve(false), START_FILL_MS)
      })
    ])
    clearTimeout(timeout)
    if (this.#built === 0) return
    const seconds = ((performance.now() - started) / 1000).toFixed(1)
    this.#options.log.info(
      filled
        ? `built ${this.#built} spare tenant schemas in ${seconds} s`
        : `built ${this.#built} spare tenant schemas in ${seconds} s; the rest of the ${this.#options.target} are built in the background`
    )
  }

  /**
   * Takes a spare at `version` in the transaction open on `client` (its row deleted there, so it
   * is taken only if the caller commits), and answers its identity; or answers null, the
   * transaction as it was, when none is ready, after waiting a little for one this instance is
   * building.
   */
  async take(client: pg.PoolClient, version: number): Promise<TenantIdentity | null> {
    // TENANT_SPARES=0 means every tenant is built on the spot, spares left from before included.
    if (this.#options.target === 0 || version !== this.#version) return null
    for (let attempt = 0; attempt < 2; attempt++) {
      let taken: (TenantIdentity & { left: number }) | undefined
      try {
        // Under a savepoint: a failure here must not abort the caller's transaction. The count in
        // RETURNING sees the stock as it was before this DELETE.
        const [, deleted] = await sendEach<TenantIdentity & { left: number }>(client, [
          'SAVEPOINT take_spare',
          `DELETE FROM public.tenant_spares WHERE schema = (
             SELECT schema FROM public.tenant_spares WHERE schema_version = ${this.#version}
              ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
           ) RETURNING schema, role,
             (SELECT count(*)::int - 1 FROM public.tenant_spares WHERE schema_version = ${this.#version}) AS left`,
          'RELEASE SAVEPOINT take_spare'
        ])
        taken = deleted.rows[0]
      } catch (error) {
        await client.query('ROLLBACK TO SAVEPOINT take_spare')
        // No public.tenant_spares yet (control-plane migrations pending, MIGRATE_ON_START=false):
        // the tenant is built on the spot, as before spares existed.
        if ((error as { code?: string }).code !== '42P01') throw error
        return null
      }
      if (taken) {
        this.#lastTakeAt = performance.now()
        this.#leftAtLastTake = taken.left
        return { schema: taken.schema, role: taken.role }
      }
      // None ready: perhaps other instances took them; the count says what to build.
      void this.check()
      if (attempt === 0 && !(await this.#builtOne())) break
    }
    return null
  }

  /**
   * A spare was taken and its tenant committed: another is built in its place, at once when the
   * stock runs low, else once creations pause.
   */
  replace(): void {
    if (this.#leftAtLastTake <= this.#lowWater) this.#spawnBuilders()
    else this.#restockWhenQuiet()
  }

  /**
   * Drops the spares of an older version and builds what is missing (other instances take spares
   * too). Never rejects; resolves once the builders it started have stopped.
   */
  check(): Promise<void> {
    if (this.#closed || this.#options.target === 0) return Promise.resolve()
    this.#checking ??= this.#dropStale()
      .then(() => this.#spawnBuilders())
      .catch((error: unknown) => this.#options.log.warn({ err: error }, 'checking the spare tenant schemas failed; checked again later'))
      .finally(() => {
        this.#checking = null
      })
    return this.#checking.then(() => Promise.all(this.#builders)).then(() => undefined)
  }

  /** Stops building; a spare being built is finished (its transaction is short), none is left half made. */
  async close(): Promise<void> {
    this.#closed = true
    if (this.#timer) clearInterval(this.#timer)
    if (this.#restockTimer) clearTimeout(this.#restockTimer)
    this.#timer = null
    await this.#checking
    await Promise.all(this.#builders)
    this.#wake()
  }

  async #dropStale(): Promise<void> {
    const { rows: stale } = await this.#pool.query<TenantIdentity>(
      `SELECT schema, role FROM public.tenant_spares
        WHERE schema_version < $1 AND created_at < now() - interval '${STALE_SPARE_AGE}'`,
      [this.#version]
    )
    for (const spare of stale) {
      if (this.#closed) return
      await this.#drop(spare)
    }
  }

  /** Starts the builders once no spare has been taken for QUIET_MS. */
  #restockWhenQuiet(): void {
    if (this.#closed) return
    if (this.#restockTimer) clearTimeout(this.#restockTimer)
    const wait = Math.max(0, this.#lastTakeAt + this.#quietMs - performance.now())
    this.#restockTimer = setTimeout(() => {
      this.#restockTimer = null
      this.#spawnBuilders()
    }, wait)
    this.#restockTimer.unref()
  }

  #spawnBuilders(): void {
    if (this.#options.target === 0) return
    while (!this.#closed && this.#builders.size < BUILDERS) {
      const builder: Promise<void> = this.#buildWhileShort().finally(() => this.#builders.delete(builder))
      this.#builders.add(builder)
    }
  }

  /**
   * Builds spares while fewer than the target are ready or being built, stepping aside while
   * creations are taking spares and the stock is not low. The count and the decision to build
   * happen with no await between them and the increment, so two builders do not both build the
   * last one missing (a build committing between another's count and its decision can still make
   * one too many, which the next creation takes).
   */
  async #buildWhileShort(): Promise<void> {
    try {
      while (!this.#closed) {
        const { rows } = await this.#pool.query<{ ready: number }>('SELECT count(*)::int AS ready FROM public.tenant_spares WHERE schema_version = $1', [
          this.#version
        ])
        const { ready } = rows[0]
        if (this.#closed || ready + this.#building >= this.#options.target) return
        if (ready > this.#lowWater && performance.now() - this.#lastTakeAt < this.#quietMs) {
          this.#restockWhenQuiet()
          return
        }
        this.#building++
        try {
          await this.#build()
          this.#built++
        } finally {
          this.#building--
          this.#wake()
        }
      }
    } catch (error) {
      // Never thrown out of the background: a database away or refusing stops this round, and
      // the periodic check tries again.
      this.#options.log.warn({ err: error }, 'building spare tenant schemas failed; retried later')
    }
  }

  async #build(): Promise<void> {
    const tag = randomBytes(6).toString('hex')
    const spare = { schema: `${SPARE_SCHEMA_PREFIX}${tag}`, role: `${this.#options.rolePrefix}${SPARE_SCHEMA_PREFIX}${tag}` }
    const script = [
      ...tenantSchemaSql(spare, this.#options.migrations),
      `INSERT INTO public.tenant_spares (schema, role, schema_version)
         VALUES (${pg.escapeLiteral(spare.schema)}, ${pg.escapeLiteral(spare.role)}, ${this.#version})`
    ]
    await runInTransaction(this.#pool, (client) => sendEach(client, script))
  }

  /** Drops a spare of an older version, unless someone else is dropping or taking it. */
  async #drop(spare: TenantIdentity): Promise<void> {
    const role = pg.escapeIdentifier(spare.role)
    await runInTransaction(this.#pool, (client) =>
      sendEach(client, [
        `DELETE FROM public.tenant_spares WHERE schema = ${pg.escapeLiteral(spare.schema)}`,
        `DROP SCHEMA IF EXISTS ${pg.escapeIdentifier(spare.schema)} CASCADE`,
        `DROP OWNED BY ${role}`,
        `DROP ROLE ${role}`
      ])
    )
  }

  /** Resolves true when a spare this instance is building is done (or failed); false if none is being built, or after WAIT_FOR_SPARE_MS. */
  #builtOne(): Promise<boolean> {
    if (this.#building === 0 || this.#closed) return Promise.resolve(false)
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), WAIT_FOR_SPARE_MS)
      this.#waiting.push(() => {
        clearTimeout(timer)
        resolve(true)
      })
    })
  }

  #wake(): void {
    for (const resolve of this.#waiting.splice(0)) resolve()
  }
}
