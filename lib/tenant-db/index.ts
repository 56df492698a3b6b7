/**
 * The tenant-scoped database client, and the front door of lib/tenant-db: what routes, plugins and
 * scripts use of it is exported here, and nothing else.
 *
 * A tenant database resolves tenant ids through an in-memory cache of the registry (`lookup`), and
 * opens a request's handle on a tenant (`open`). Every query of a handle runs in the tenant's
 * schema, as the tenant's role, in the same flight as the statement that switches to them:
 * scope.ts is where that switch happens, handle.ts is the handle.
 */
import type pg from 'pg'
import type { Log } from '../log.ts'
import { TenantScopedDb, type CallbackBinder, type ContextSwitchObserver } from './handle.ts'
import { assertPgInternals } from './pg-internals.ts'
import { ReadLanes } from './read-lanes.ts'
import { createTenantCache, scopeOf, type ResolvedTenant } from './tenant-cache.ts'
import { TenantSlots } from './tenant-slots.ts'

export { databaseFailure, toApiError } from './pg-errors.ts'
export { RequestFinishedError, type CallbackBinder, type ContextSwitchObserver } from './handle.ts'
export type { TenantScopedDb } from './handle.ts'
export type { ResolvedTenant } from './tenant-cache.ts'
export { databaseKind, UNCACHED_WORKER_CONNECTIONS, type DatabaseKind } from './citus.ts'
export { warmConnections } from './warm-connections.ts'

/** What queries a tenant's data: a request's handle, or anything with the same `query`. */
export interface Queryable {
  query<Row extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<Row>>
}

export interface TenantDbOptions {
  /** Every query's statement_timeout (PG_STATEMENT_TIMEOUT_MS). */
  statementTimeoutMs: number
  /** A mutation's idle_in_transaction_session_timeout (PG_IDLE_IN_TRANSACTION_TIMEOUT_MS); 0: none. */
  idleInTransactionTimeoutMs?: number
  /** Pooled connections one tenant's handles may hold at once (TENANT_MAX_CONNECTIONS; tenant-slots.ts). Unset: no bound. */
  maxConnectionsPerTenant?: number
  /** How long a handle waits for one of its tenant's connections when the tenant is at its bound (PG_ACQUIRE_TIMEOUT_MS). */
  acquireTimeoutMs?: number
  /** How long a cached tenant is trusted while change notifications are not arriving. */
  cacheTtlMs: number
  /** Pooled connections that carry the reads of every request, pipelined (read-lanes.ts); 0 for none. */
  readLanes: number
  /** Named prepared statements (the default); false for a transaction-mode pooler without support for them. */
  preparedStatements?: boolean
  /** Run as the tenant's role too (the default); false: in the tenant's schema, as the service's role. */
  tenantRoles?: boolean
  /** A session connection for LISTEN when the pool goes through a transaction-mode pooler. */
  listenConnectionString?: string
  log?: Log
  /** Told the time from having a connection to the result of a handle's first query, context included. */
  onContextSwitch?: ContextSwitchObserver
  /**
   * Given when requests are traced: binds a callback to its caller's async context. A read waiting
   * for a read lane is called back from another request's turn; bound, its query's span (pg's
   * instrumentation) belongs to its own request.
   */
  bindCallback?: CallbackBinder
}

/** The tenant-scoped database of one pool. */
export function createTenantDb(pool: pg.Pool, options: TenantDbOptions) {
  assertPgInternals()
  const cache = createTenantCache(pool, {
    statementTimeoutMs: options.statementTimeoutMs,
    idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs,
    ttlMs: options.cacheTtlMs,
    preparedStatements: options.preparedStatements,
    tenantRoles: options.tenantRoles,
    listenConnectionString: options.listenConnectionString,
    log: options.log
  })
  const lanes = new ReadLanes(pool, options.readLanes)
  const environment = {
    pool,
    lanes,
    onContextSwitch: options.onContextSwitch ?? null,
    slots: new TenantSlots(options.maxConnectionsPerTenant ?? Number.POSITIVE_INFINITY, options.acquireTimeoutMs ?? 2000),
    bindCallback: options.bindCallback ?? null
  }

  const open = (tenant: ResolvedTenant, readOnly: boolean) => new TenantScopedDb(environment, tenant.id, scopeOf(tenant), readOnly)

  return {
    /** The tenant of an id: at once when cached (null: no such tenant), else once the registry answered. */
    lookup: cache.lookup,
    /** A request's handle on `tenant` (one `lookup` returned): reads are read-only, anything else one transaction. */
    open,
    /**
     * `work` in a short transaction of its own on `tenant`, committed before this resolves, rolled
     * back if `work` throws: for what must not ride the request's transaction (a step between two
     * calls to S3 or the user pool, or one that must stand when the client has gone).
     */
    async transaction<T>(tenant: ResolvedTenant, work: (db: Queryable) => Promise<T>): Promise<T> {
      const db = open(tenant, false)
      let result: T
      try {
        result = await work(db)
      } catch (error) {
        await db.finish(false)?.catch(() => undefined)
        throw error
      }
      await db.finish(true)
      return result
    },
    /** Drops one tenant (this instance changed it and must not wait for its own notification). */
    invalidate: cache.invalidate,
    /** Starts listening for tenant changes. Resolves once listening, or once the first attempt failed. */
    start: cache.start,
    /** Stops handing out read lanes and gives their connections back: before the pool is ended. */
    closeLanes: () => lanes.close(),
    /** Stops listening for tenant changes. */
    stop: cache.stop,
    /** True while tenant changes are heard (LISTEN); otherwise cached tenants expire by TTL. */
    get listening() {
      return cache.listening
    }
  }
}

export type TenantDb = ReturnType<typeof createTenantDb>
