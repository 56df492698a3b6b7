import type pg from 'pg'
import { ApiError } from '../../schemas/error.ts'
import { toApiError } from './pg-errors.ts'
import { runScoped, ScopedQuery } from './scoped-query.ts'
import type { ResolvedTenant } from './tenant-cache.ts'

/** Receives, in seconds, the time from acquiring a connection to the first query's result. */
export type ContextSwitchObserver = (seconds: number) => void

const contextSwitchObservers = new WeakMap<pg.Pool, ContextSwitchObserver>()

/**
 * The request's database handle, bound to one tenant (DESIGN §3).
 *
 * Lazy: a pooled connection is taken at the first query, so a request rejected by validation or
 * auth never holds one. Every query travels in one flight with the statement that scopes it to the
 * tenant (search_path, tenant role and statement timeout, all transaction-local; see ScopedQuery),
 * so the context costs no round trip of its own, and is prepared per tenant and connection, so it
 * is not re-planned at every tenant switch.
 *
 * - Reads (GET, HEAD): each query is its own read-only implicit transaction, ended by the Sync of
 *   its flight. Under READ COMMITTED a read transaction spanning several statements would see
 *   nothing more consistent, and there is no COMMIT to send or wait for: the connection goes back
 *   to the pool as soon as the handler is done.
 * - Mutations: the first flight opens the request's transaction with BEGIN; every query of the
 *   request runs in it, and `finish()` commits or rolls it back, so a handler that fails has its
 *   writes rolled back.
 *
 * A connection whose state we cannot vouch for (a COMMIT or ROLLBACK that failed) is destroyed
 * rather than released, because releasing it could hand a tenant's context to the next request.
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
  /** A mutation's transaction has been opened (its BEGIN is on the wire). */
  #inTransaction = false
  #inflight = 0
  #released: (() => void) | null = null
  #failed = false
  #finished = false
  #acquiredAt = 0

  constructor(pool: pg.Pool, tenant: ResolvedTenant, readOnly: boolean) {
    this.#pool = pool
    this.#tenant = tenant
    this.#readOnly = readOnly
  }

  /** True once a connection was asked for: only then is there anything to end. */
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

    const config = typeof text === 'string' ? null : text
    const opensTransaction = !this.#readOnly && !this.#inTransaction
    const query = new ScopedQuery(config ? config.text : (text as string), config ? config.values : values, {
      begin: opensTransaction ? 'BEGIN' : null,
      context: this.#readOnly || opensTransaction ? this.#tenant.context : null,
      readOnly: this.#readOnly,
      tenantTag: this.#tenant.statementTag
    })
    if (opensTransaction) this.#inTransaction = true

    this.#inflight++
    try {
      const result = await runScoped<Row>(client, query)
      if (this.#acquiredAt !== 0) {
        contextSwitchObservers.get(this.#pool)?.((performance.now() - this.#acquiredAt) / 1000)
        this.#acquiredAt = 0
      }
      return result
    } catch (error) {
      this.#acquiredAt = 0
      this.#failed = true
      throw toApiError(error) ?? error
    } finally {
      if (--this.#inflight === 0 && this.#released) this.#released()
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
    return client
  }

  /** Resolves once no query of this handle is in flight (an abort can come while one is). */
  #settled(): Promise<void> | void {
    if (this.#inflight === 0) return
    return new Promise((resolve) => {
      this.#released = resolve
    })
  }

  /**
   * Ends the request's use of the database: for a mutation, COMMIT when `commit` is true and no
   * statement failed, ROLLBACK otherwise; then returns the connection. Safe to call more than once
   * and from any exit path; only the first call acts. Throws when a requested commit did not
   * happen, so the caller can answer with an error instead of a success for data that was lost.
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

    if (!this.#inTransaction) {
      // Reads: every flight ended its own implicit transaction at its Sync.
      await this.#settled()
      client.release()
      return
    }

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
      // Queued behind whatever is still in flight: the pipeline keeps the order.
      await client.query('ROLLBACK')
      client.release()
    } catch {
      client.release(true)
    }
    if (commit) throw new ApiError(500, 'TRANSACTION_FAILED', 'A statement of this request failed; nothing was saved')
  }
}
