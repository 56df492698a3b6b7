import type pg from 'pg'
import { ApiError, errors } from '../../schemas/errors.ts'
import { findTenant } from '../tenants/index.ts'
import { ScopedQuery, send } from './flight.ts'
import { isMissingRole, toApiError } from './pg-errors.ts'
import { laneAnswered, laneSent, type Lane, type LaneCallback, type ReadLanes } from './read-lanes.ts'
import { scopeMode, type TenantScope } from './scope.ts'
import type { TenantSlots } from './tenant-slots.ts'

/** Receives, in seconds, the time from having a connection to the first query's result. */
export type ContextSwitchObserver = (seconds: number) => void

/**
 * Binds a callback to the async context of its caller (tracing's, which knows the request's
 * span), so that what it does runs in that context whatever turn of the event loop calls it.
 */
export type CallbackBinder = <Callback extends (...args: never[]) => void>(callback: Callback) => Callback

/** What every handle of one tenant database shares. */
export interface HandleEnvironment {
  readonly pool: pg.Pool
  /** Carry the reads; null: every read takes a pooled connection. */
  readonly lanes: ReadLanes | null
  readonly onContextSwitch: ContextSwitchObserver | null
  /** Pooled connections each tenant's handles hold, bounded per tenant. */
  readonly slots: TenantSlots
  /**
   * Binds the callbacks that the read lanes may call from another request's turn (see #connect);
   * null when nothing needs the request's async context (tracing is off).
   */
  readonly bindCallback: CallbackBinder | null
}

/** What settles the promise of a handle's query. */
interface Settle {
  resolve: (result: pg.QueryResult) => void
  reject: (error: unknown) => void
}

/** A query of one handle, carrying what its answer settles (see TenantScopedDb.#answered). */
class HandleQuery extends ScopedQuery implements Settle {
  readonly handle: TenantScopedDb
  readonly resolve: Settle['resolve']
  readonly reject: Settle['reject']
  /** The second sending of a query whose prepared statement had gone stale. */
  readonly isRetry: boolean

  constructor(
    handle: TenantScopedDb,
    scope: TenantScope,
    text: string,
    values: unknown[] | undefined,
    mode: ReturnType<typeof scopeMode>,
    resolve: Settle['resolve'],
    reject: Settle['reject'],
    isRetry: boolean
  ) {
    super(text, values, scope, mode)
    this.handle = handle
    this.resolve = resolve
    this.reject = reject
    this.isRetry = isRetry
  }

  /** This query's flight opens the mutation's transaction (BEGIN and the tenant's context). */
  get opensTransaction(): boolean {
    return this.mode === 'begin'
  }
}

/**
 * A query asked of a request that has ended: its connection closed (a client abort, a socket
 * timeout) while the handler still had queries to run, so they were not run. The error handler
 * answers it as a closed connection, not as a fault of the service.
 */
export class RequestFinishedError extends Error {
  constructor() {
    super('The request has finished; its database handle is closed')
    this.name = 'RequestFinishedError'
  }
}

/**
 * The request's database handle, bound to one tenant (DESIGN §3).
 *
 * Lazy: a pooled connection is taken at the first query, so a request rejected by validation or
 * auth never holds one. Every query travels in one flight with the statement that scopes it to the
 * tenant (search_path, tenant role and statement timeout, all transaction-local; see scope.ts), so
 * the context costs no round trip of its own; queries are prepared per tenant and connection, so
 * they are not re-planned at every tenant switch (statements.ts).
 *
 * - Reads (GET, HEAD): each query is its own read-only implicit transaction, ended by the Sync of
 *   its flight. Under READ COMMITTED a read transaction spanning several statements would see
 *   nothing more consistent, and there is no COMMIT to send or wait for. So reads need no
 *   connection of their own: they ride the shared read lanes (ReadLanes), pipelined with other
 *   requests' reads, and take a pooled connection only when every lane is busy.
 * - Mutations: the first flight opens the request's transaction with BEGIN; every query of the
 *   request runs in it, and `finish()` commits or rolls it back, so a handler that fails has its
 *   writes rolled back.
 *
 * A connection whose state we cannot vouch for (a COMMIT or ROLLBACK that failed) is destroyed
 * rather than released, because releasing it could hand a tenant's context to the next request.
 *
 * The request path allocates one promise per query and none to end a read: the connection is
 * taken with callback APIs, queries asked for while it is on its way wait in a list, and a read
 * has nothing to give back, or gives its pooled connection back synchronously.
 */
export class TenantScopedDb {
  readonly #environment: HandleEnvironment
  readonly #lanes: ReadLanes | null
  readonly #tenantId: string
  /** The tenant's context and statement names: private, so nothing outside lib/tenant-db can read them. */
  readonly #scope: TenantScope
  readonly #readOnly: boolean
  #client: pg.PoolClient | null = null
  /** The read lane #client belongs to (shared: never released by this handle). */
  #lane: Lane | null = null
  /** A connection was asked for (it may still be on its way). */
  #used = false
  /** Queries asked for before the connection arrived, in order. */
  #waiting: HandleQuery[] | null = null
  /** Set when taking a connection failed: every waiting and later query fails with it. */
  #connectError: unknown = null
  /** A mutation's transaction has been opened (its BEGIN is on the wire). */
  #inTransaction = false
  #inflight = 0
  #settled: (() => void) | null = null
  #failed = false
  #finished = false
  /** When the connection arrived, while the context switch is being timed (observed handles only). */
  #acquiredAt = 0

  /** Reads ride the environment's lanes when it has any; writes, and reads finding no lane free, take a pooled connection. */
  constructor(environment: HandleEnvironment, tenantId: string, scope: TenantScope, readOnly: boolean) {
    this.#environment = environment
    this.#tenantId = tenantId
    this.#lanes = readOnly ? environment.lanes : null
    this.#scope = scope
    this.#readOnly = readOnly
  }

  /** True once a connection was asked for: only then is there anything to end. */
  get used(): boolean {
    return this.#used
  }

  get finished(): boolean {
    return this.#finished
  }

  get readOnly(): boolean {
    return this.#readOnly
  }

  /** Runs `text` with `values` ($1, $2, …) in the tenant's schema, as its role. */
  query<Row extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<Row>> {
    if (this.#finished) return Promise.reject(new RequestFinishedError())
    if (this.#connectError !== null) return Promise.reject(this.#connectError)

    const mode = scopeMode(this.#readOnly, this.#inTransaction)
    if (mode === 'begin') this.#inTransaction = true
    this.#inflight++

    return new Promise<pg.QueryResult<Row>>((resolve, reject) => {
      this.#submit(new HandleQuery(this, this.#scope, text, values, mode, resolve as Settle['resolve'], reject, false))
    })
  }

  /**
   * pg calls a query's `callback` as a method of the query: this one function serves every query
   * of every handle, so no query needs a callback closure of its own.
   */
  static readonly #onAnswer = function (this: HandleQuery, error: Error | null, result: pg.QueryResult) {
    this.handle.#answered(this, error, result)
  }

  #submit(query: HandleQuery): void {
    query.callback = TenantScopedDb.#onAnswer
    if (this.#client) {
      this.#send(query)
    } else {
      ;(this.#waiting ??= []).push(query)
      if (!this.#used) this.#connect()
    }
  }

  #answered(query: HandleQuery, error: Error | null, result: pg.QueryResult): void {
    if (query.lane) laneAnswered(query.lane)
    if (error && !query.isRetry && this.#canRetry(error, query.opensTransaction)) {
      // The statement was planned before a migration changed what it reads; the failed flight
      // forgot it, so this one parses it afresh. A mutation's transaction, opened by this very
      // flight, is rolled back first.
      if (query.opensTransaction) this.#client!.query('ROLLBACK').catch(() => undefined)
      return this.#submit(new HandleQuery(this, this.#scope, query.text, query.values, query.mode, query.resolve, query.reject, true))
    }
    if (error) {
      this.#acquiredAt = 0
      this.#failed = true
      if (isMissingRole(error)) this.#explainMissingRole(query, error)
      else query.reject(toApiError(error) ?? error)
    } else {
      if (this.#acquiredAt !== 0) {
        this.#environment.onContextSwitch!((performance.now() - this.#acquiredAt) / 1000)
        this.#acquiredAt = 0
      }
      query.resolve(result)
    }
    if (--this.#inflight === 0 && this.#settled) this.#settled()
  }

  /**
   * The tenant's role is gone. Either the tenant was deleted while this request was on its way
   * (its registry row went in the same transaction): 404, as for any unknown tenant; or the role
   * alone is missing (a database restored into another cluster): a fault to repair with
   * `npm run migrate`, answered 500 and logged with PostgreSQL's words.
   */
  #explainMissingRole(query: HandleQuery, error: Error): void {
    findTenant(this.#environment.pool, this.#tenantId).then(
      (row) => query.reject(row ? error : errors.tenantNotFound(this.#tenantId)),
      () => query.reject(error)
    )
  }

  /**
   * A query that failed only because its prepared statement went stale ("cached plan must not
   * change result type": a migration changed the tables it reads) is sent once more, when nothing
   * else can have seen the failure: a read, each of whose queries is a transaction of its own, or
   * the query that opened a mutation's transaction while nothing else of the request is in flight.
   */
  #canRetry(error: Error, opensTransaction: boolean): boolean {
    if ((error as { code?: string }).code !== '0A000' || !error.message.includes('cached plan must not change result type')) return false
    if (this.#finished || this.#client === null) return false
    return this.#readOnly || (opensTransaction && this.#inflight === 1)
  }

  #send(query: HandleQuery): void {
    const lane = this.#lane
    if (lane !== null) {
      if (!lane.open) {
        // The lane went back to the pool (idle, failed or closing) since this handle took it:
        // its connection may now be inside another request's transaction. Find another way.
        this.#lane = null
        this.#client = null
        ;(this.#waiting ??= []).push(query)
        return this.#connect()
      }
      laneSent(lane)
      query.lane = lane
    }
    send(this.#client!, query)
  }

  #connect(): void {
    this.#used = true
    if (this.#lanes) {
      const onLane: LaneCallback = (error, lane) => {
        if (lane) {
          this.#lane = lane
          this.#connected(lane.client, null)
        } else if (error) {
          this.#connected(null, error)
        } else {
          this.#connectPooled()
        }
      }
      // Reads that wait for a lane to open are called back from the turn of the request that
      // opened it: bound, their queries are traced as their own request's, not as that one's.
      const bind = this.#environment.bindCallback
      this.#lanes.acquire(bind === null ? onLane : bind(onLane))
      return
    }
    this.#connectPooled()
  }

  #connectPooled(): void {
    const onSlot = (refused: Error | null) => {
      if (refused) return this.#connected(null, refused)
      // The request may have ended while it waited for one of its tenant's connections.
      if (this.#finished) {
        this.#givenBack()
        return this.#connected(null, null)
      }
      this.#environment.pool.connect((error, client) => {
        if (!client) {
          this.#givenBack()
          return this.#connected(null, error ?? null)
        }
        if (this.#finished) {
          // The request ended (an abort, a timeout) while the connection was on its way: nothing
          // was sent on it, so it goes straight back.
          this.#release(client)
          return this.#connected(null, null)
        }
        this.#connected(client, null)
      })
    }
    // A handle that waited for one of its tenant's connections is called back from the turn of the
    // request that gave it back: bound, like a lane's, so that its queries stay in its own trace.
    const bind = this.#environment.bindCallback
    this.#environment.slots.take(this.#tenantId, bind === null ? onSlot : bind(onSlot))
  }

  /** Gives a pooled connection back (destroys it when `destroy`), and counts it off its tenant's. */
  #release(client: pg.PoolClient, destroy = false): void {
    client.release(destroy)
    this.#givenBack()
  }

  #givenBack(): void {
    this.#environment.slots.give(this.#tenantId)
  }

  /** The connection arrived (or could not be had): the queries asked for meanwhile go out, or fail. */
  #connected(client: pg.PoolClient | null, error: Error | null): void {
    const waiting = this.#waiting ?? []
    this.#waiting = null
    if (error || !client) {
      const failure = error ? (this.#connectError = toApiError(error) ?? error) : new RequestFinishedError()
      for (const query of waiting) query.callback!(failure as Error, undefined as never)
      return
    }
    if (this.#finished) {
      // Only a lane can get here: it is shared, so there is nothing to give back.
      for (const query of waiting) query.callback!(new RequestFinishedError(), undefined as never)
      return
    }
    this.#client = client
    if (this.#environment.onContextSwitch) this.#acquiredAt = performance.now()
    for (const query of waiting) this.#send(query)
  }

  /** Resolves once no query of this handle is in flight (an abort can come while one is). */
  #whenSettled(): Promise<void> {
    return new Promise((resolve) => {
      this.#settled = resolve
    })
  }

  /**
   * Ends the request's use of the database: for a mutation, COMMIT when `commit` is true and no
   * statement failed, ROLLBACK otherwise; then returns the connection. Safe to call more than once
   * and from any exit path; only the first call acts. Returns nothing when it is done already (a
   * read with no query in flight: the common case), else a promise, which rejects when a
   * requested commit did not happen, so the caller can answer with an error instead of a success
   * for data that was lost.
   */
  finish(commit: boolean): Promise<void> | undefined {
    if (this.#finished) return
    this.#finished = true
    const client = this.#client
    // No connection yet: one that arrives later is released on arrival (see #connectPooled).
    if (!client) return
    this.#client = null

    // A lane is shared: its queries still in flight are answered to a handle nobody listens to.
    if (this.#lane) return
    if (!this.#inTransaction) {
      // Reads: every flight ended its own implicit transaction at its Sync.
      if (this.#inflight === 0) {
        this.#release(client)
        return
      }
      return this.#whenSettled().then(() => this.#release(client))
    }
    return this.#end(client, commit)
  }

  async #end(client: pg.PoolClient, commit: boolean): Promise<void> {
    if (commit && !this.#failed) {
      let result: pg.QueryResult
      try {
        result = await client.query('COMMIT')
      } catch (error) {
        this.#release(client, true)
        throw toApiError(error) ?? error
      }
      this.#release(client)
      // COMMIT of a transaction that had failed answers ROLLBACK rather than an error.
      if (result.command !== 'COMMIT') throw new ApiError('TRANSACTION_FAILED', 'The transaction could not be committed')
      return
    }

    try {
      // Queued behind whatever is still in flight: the pipeline keeps the order.
      await client.query('ROLLBACK')
      this.#release(client)
    } catch {
      this.#release(client, true)
    }
    if (commit) throw new ApiError('TRANSACTION_FAILED', 'A statement of this request failed; nothing was saved')
  }
}
