import pg from 'pg'
import type { TenantStatus } from '../../schemas/tenant.ts'
import { contextValues } from '../tenants/sql.ts'
import { findTenant, TENANT_CHANGED_CHANNEL } from '../tenants/registry.ts'

/** What a request needs to know of its tenant, with its context statement's values prebuilt. */
export interface ResolvedTenant {
  id: string
  name: string
  schema: string
  role: string
  status: TenantStatus
  /** Values of the context statement: search_path, role, statement timeout. */
  context: readonly string[]
  /** Suffix of this tenant's prepared-statement names; unique within the process. */
  statementTag: string
  /** This tenant's prepared-statement names by SQL text, filled as its queries are first prepared. */
  statementNames: Map<string, string>
}

let statementTags = 0

interface Entry {
  tenant: ResolvedTenant | null
  fetchedAt: number
}

export interface TenantCacheOptions {
  statementTimeoutMs: number
  /** Trust for entries while change notifications are not arriving (listener down). */
  ttlMs: number
  maxEntries?: number
  /** Unknown ids are remembered this long, so a flood of them does not reach the database. */
  negativeTtlMs?: number
  log?: { warn: (obj: object, msg: string) => void; info: (obj: object, msg: string) => void }
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
    const tenant: ResolvedTenant | null = row
      ? {
          id: row.id,
          name: row.name,
          schema: row.schema,
          role: row.role,
          status: row.status,
          context: contextValues(row, options.statementTimeoutMs),
          statementTag: (statementTags++).toString(36),
          statementNames: new Map()
        }
      : null
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
    const client = new pg.Client(pool.options)
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
    clear() {
      entries.clear()
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
    },
    get size() {
      return entries.size
    }
  }
}

export type TenantCache = ReturnType<typeof createTenantCache>
