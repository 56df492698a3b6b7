import type pg from 'pg'
import { ApiError } from '../../schemas/error.ts'
import { toApiError } from './pg-errors.ts'
import type { ResolvedTenant } from './tenant-cache.ts'

/** Receives, in seconds, the time from acquiring a connection to the first query's result. */
export type ContextSwitchObserver = (seconds: number) => void

const contextSwitchObservers = new WeakMap<pg.Pool, ContextSwitchObserver>()

/**
 * The request's database handle, bound to one tenant (DESIGN §3).
 *
 * Lazy: a pooled connection is taken at the first query, so a request rejected by validation or
 * auth never holds one. The first query travels together with the statement that opens the
 * transaction and sets `search_path`, the tenant role and `statement_timeout` transaction-locally:
 * the pool runs in pipeline mode, so both are on the wire before the first reply comes back and
 * the context costs no round trip of its own.
 *
 * The whole request is one transaction. `finish()` commits or rolls back and returns the
 * connection; a connection whose state we cannot vouch for (a COMMIT or ROLLBACK that failed) is
 * destroyed instead, because releasing it could hand a tenant's context to the next request.
 */
export class TenantScopedDb {
  /**
   * Reports the context switch of every handle on `pool` (one observer per pool, so that several
   * services in one process keep their own figures). Kept off the constructor: the request path
   * stays as it is, and a handle pays for the clock only on its first query, only when observed.
   */
  static observeContextSwitch(pool: pg.Pool, observer: ContextSwitchObserver | null): void {
    if (observer) contextSwitchObservers.set(pool, observer)
    else contextSwitchObservers.delete(pool)
  }

  readonly #pool: pg.Pool
  readonly #tenant: ResolvedTenant
  readonly #readOnly: boolean
  #client: pg.PoolClient | null = null
  #connecting: Promise<pg.PoolClient> | null = null
  #contextError: unknown = null
  #failed = false
  #finished = false
  #acquiredAt = 0

  constructor(pool: pg.Pool, tenant: ResolvedTenant, readOnly: boolean) {
    this.#pool = pool
    this.#tenant = tenant
    this.#readOnly = readOnly
  }

  /** True once a connection was asked for: only then is there a transaction to end. */
  get used(): boolean {
    return this.#connecting !== null
  }

  get finished(): boolean {
    return this.#finished
  }

  get readOnly(): boolean {
    return this.#readOnly
  }

  async query<Row extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string | pg.QueryConfig,
    values?: unknown[]
  ): Promise<pg.QueryResult<Row>> {
    if (this.#finished) throw new Error('The request has finished; its database handle is closed')
    const client = this.#client ?? (await (this.#connecting ??= this.#connect()))
    if (this.#finished) throw new Error('The request has finished; its database handle is closed')
    try {
      const result = await client.query<Row>(text as string, values)
      if (this.#acquiredAt !== 0) {
        contextSwitchObservers.get(this.#pool)?.((performance.now() - this.#acquiredAt) / 1000)
        this.#acquiredAt = 0
      }
      return result
    } catch (error) {
      this.#acquiredAt = 0
      this.#failed = true
      // When the context statement failed, every later statement fails with "transaction aborted";
      // the first error is the one that explains.
      throw toApiError(this.#contextError ?? error) ?? this.#contextError ?? error
    }
  }

  async #connect(): Promise<pg.PoolClient> {
    let client: pg.PoolClient
    try {
      client = await this.#pool.connect()
    } catch (error) {
      throw toApiError(error) ?? error
    }
    this.#client = client
    if (contextSwitchObservers.has(this.#pool)) this.#acquiredAt = performance.now()
    client
      .query(this.#readOnly ? this.#tenant.beginReadOnly : this.#tenant.beginReadWrite)
      .catch((error: unknown) => {
        this.#contextError = error
        this.#failed = true
      })
    return client
  }

  /**
   * Ends the request's transaction: COMMIT when `commit` is true and no statement failed, ROLLBACK
   * otherwise. Safe to call more than once and from any exit path; only the first call acts.
   * Throws when a requested commit did not happen, so the caller can answer with an error instead
   * of a success for data that was lost.
   */
  async finish(commit: boolean): Promise<void> {
    if (this.#finished) return
    this.#finished = true
    let client = this.#client
    if (!client && this.#connecting) {
      // Still waiting for a connection (an abort or a timeout came first): take it and hand it back.
      client = await this.#connecting.catch(() => null)
    }
    if (!client) return
    this.#client = null

    if (commit && !this.#failed) {
      let result: pg.QueryResult
      try {
        result = await client.query('COMMIT')
      } catch (error) {
        client.release(true)
        throw toApiError(error) ?? error
      }
      client.release()
      // COMMIT of a transaction that had failed answers ROLLBACK rather than an error.
      if (result.command !== 'COMMIT') throw new ApiError(500, 'TRANSACTION_FAILED', 'The transaction could not be committed')
      return
    }

    try {
      await client.query('ROLLBACK')
      client.release()
    } catch {
      client.release(true)
    }
    if (commit) throw new ApiError(500, 'TRANSACTION_FAILED', 'A statement of this request failed; nothing was saved')
  }
}
