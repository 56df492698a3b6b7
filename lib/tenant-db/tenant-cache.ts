import pg from 'pg'
import type { TenantStatus } from '../../schemas/tenant.ts'
import { findTenant, TENANT_CHANGED_CHANNEL } from '../tenants/index.ts'
import type { Log } from '../log.ts'
import { createScope, type TenantScope } from './scope.ts'

/** What a request knows of its tenant (`request.tenant`): the registry's view, nothing of the driver. */
export interface ResolvedTenant {
  readonly id: string
  readonly name: string
  readonly schema: string
  readonly role: string
  readonly status: TenantStatus
  /** When the tenant was created, in milliseconds since the epoch: tokens issued before it are refused. */
  readonly createdAt: number
  /** The latest tenant migration applied to its schema, when it was read (routes may need a newer one). */
  readonly schemaVersion: number
}

/**
 * The scope of each tenant this process has resolved, kept beside the public object rather than on
 * it: the context bytes and statement names stay private to lib/tenant-db.
 */
const scopes = new WeakMap<ResolvedTenant, TenantScope>()

/** The scope of a tenant returned by a tenant cache's lookup. */
export function scopeOf(tenant: ResolvedTenant): TenantScope {
  const scope = scopes.get(tenant)
  if (!scope) throw new Error(`Tenant "${tenant.id}" was not resolved by a tenant cache`)
  return scope
}

interface Entry {
  tenant: ResolvedTenant | null
  fetchedAt: number
}

export interface TenantCacheOptions {
  statementTimeoutMs: number
  idleInTransactionTimeoutMs?: number
  /** Queries of the tenants' handles use named prepared statements (PG_PREPARED_STATEMENTS). */
  preparedStatements?: boolean
  /** Queries run as the tenant's role (TENANT_ISOLATION=role, the default). */
  tenantRoles?: boolean
  /** Where to LISTEN for tenant changes: a session, not a transaction-mode pooler. Default: the pool's. */
  listenConnectionString?: string
  /** Trust for entries while change notifications are not arriving (listener down). */
  ttlMs: number
  maxEntries?: number
  /** Unknown ids are remembered this long, so a flood of them does not reach the database. */
  negativeTtlMs?: number
  log?: Log
}

/**
 * The registry as the request path sees it: an in-memory map in front of `public.tenants`.
 *
 * Entries are dropped the moment any instance changes a tenant (LISTEN on `tenant_changed`), so a
 * suspension takes effect everywhere within a round trip. While the listener is disconnected we
 * cannot hear changes, so entries then expire after `ttlMs` instead, and everything cached is
 * dropped when it reconnects.
 */
export function createTenantCache(pool: pg.Pool, options: TenantCacheOptions) {
  const entries = new Map<string, Entry>()
  const inflight = new Map<string, Promise<ResolvedTenant | null>>()
  const maxEntries = options.maxEntries ?? 100_000
  const negativeTtlMs = options.negativeTtlMs ?? Math.min(options.ttlMs, 1000)
  let listener: pg.Client | null = null
  let listening = false
  let stopped = false
  let reconnectTimer: NodeJS.Timeout | null = null
  let reconnectDelayMs = 100

  const fresh = (entry: Entry, now: number) =>
    entry.tenant === null ? now - entry.fetchedAt < negativeTtlMs : listening || now - entry.fetchedAt < options.ttlMs

  async function load(id: string): Promise<ResolvedTenant | null> {
    const row = await findTenant(pool, id)
    let tenant: ResolvedTenant | null = null
    if (row) {
      tenant = Object.freeze({
        id: row.id,
        name: row.name,
        schema: row.schema,
        role: row.role,
        status: row.status,
        createdAt: row.created_at.getTime(),
        schemaVersion: row.schema_version
      })
      scopes.set(
        tenant,
        createScope(row, {
          statementTimeoutMs: options.statementTimeoutMs,
          idleInTransactionTimeoutMs: options.idleInTransactionTimeoutMs ?? 0,
          prepared: options.preparedStatements ?? true,
          tenantRoles: options.tenantRoles ?? true
        })
      )
    }
    if (entries.size >= maxEntries) entries.delete(entries.keys().next().value as string)
    entries.set(id, { tenant, fetchedAt: Date.now() })
    return tenant
  }

  function lookup(id: string): ResolvedTenant | null | Promise<ResolvedTenant | null> {
    const entry = entries.get(id)
    if (entry && fresh(entry, Date.now())) return entry.tenant
    let pending = inflight.get(id)
    if (!pending) {
      pending = load(id).finally(() => inflight.delete(id))
      inflight.set(id, pending)
    }
    return pending
  }

  function scheduleReconnect() {
    if (stopped || reconnectTimer) return
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null
      void listen()
    }, reconnectDelayMs)
    reconnectTimer.unref()
    reconnectDelayMs = Math.min(reconnectDelayMs * 2, 5000)
  }

  function onListenerLost(error?: Error) {
    if (!listening && listener === null) return
    listening = false
    listener?.removeAllListeners()
    listener?.on('error', () => undefined)
    listener?.end().catch(() => undefined)
    listener = null
    if (!stopped) {
      options.log?.warn({ err: error }, 'tenant change listener disconnected; cached tenants now expire by TTL')
      scheduleReconnect()
    }
  }

  async function listen(): Promise<void> {
    if (stopped) return
    const client = new pg.Client(options.listenConnectionString ? { ...pool.options, connectionString: options.listenConnectionString } : pool.options)
    listener = client
    client.on('error', onListenerLost)
    client.on('end', () => onListenerLost())
    client.on('notification', (message) => {
      if (message.payload) entries.delete(message.payload)
    })
    try {
      await client.connect()
      await client.query(`LISTEN ${TENANT_CHANGED_CHANNEL}`)
      if (stopped) {
        await client.end()
        return
      }
      // Changes made while we were deaf are unknown: forget everything.
      entries.clear()
      listening = true
      reconnectDelayMs = 100
    } catch (error) {
      onListenerLost(error as Error)
    }
  }

  return {
    lookup,
    /** Drops one tenant (this instance changed it and must not wait for its own notification). */
    invalidate(id: string) {
      entries.delete(id)
    },
    /** Starts listening for changes. Resolves once listening, or once the first attempt failed. */
    start: listen,
    async stop() {
      stopped = true
      if (reconnectTimer) clearTimeout(reconnectTimer)
      const client = listener
      listener = null
      listening = false
      client?.removeAllListeners()
      client?.on('error', () => undefined)
      await client?.end().catch(() => undefined)
    },
    get listening() {
      return listening
    }
  }
}

export type TenantCache = ReturnType<typeof createTenantCache>
