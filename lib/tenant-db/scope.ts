/**
 * This is where the tenant switch happens: the statement that scopes a query to its tenant, the
 * values it is bound with per tenant, and when it rides in front of a query (DESIGN §3).
 */
import pg from 'pg'
import { serialize } from 'pg-protocol'

/**
 * The context statement of a mutation: search_path (the tenant's schema only), the tenant's role
 * (DESIGN §6), the statement timeout and the idle-in-transaction timeout, all transaction-locally
 * (set_config(…, true) is SET LOCAL), so the COMMIT that ends the transaction also ends the context
 * and a released connection carries nothing. It also asks the registry whether the tenant still
 * takes writes (public.tenant_accepts_writes raises TS404 or TS403 otherwise): access was decided
 * when the headers arrived, and the body may have taken long enough for the tenant to be suspended
 * or deleted since, or deleted and created again under the same id, with the same schema and role
 * names: the registry row must still be the one resolved, created at the same instant.
 * Prepared once per connection; the WHERE clause evaluates the calls and returns no row, so there
 * is nothing to describe or parse.
 */
export const CONTEXT = {
  name: 'tenant_context_w',
  text:
    "SELECT WHERE (set_config('search_path', $1, true) || set_config('role', $2, true) || " +
    "set_config('statement_timeout', $3, true) || set_config('idle_in_transaction_session_timeout', $4, true)) IS NULL " +
    // OR, not AND: the settings are never NULL, so AND would stop before the check. Within one
    // expression PostgreSQL evaluates left to right: the context first, then the check.
    'OR NOT public.tenant_accepts_writes($5, $6)'
} as const

/**
 * The same for reads, without the registry check (a read changes nothing, and the tenant was
 * checked when the request arrived): also makes the transaction read-only, so PostgreSQL itself
 * refuses any write.
 */
export const CONTEXT_READ_ONLY = {
  name: 'tenant_context_ro',
  text:
    "SELECT WHERE (set_config('search_path', $1, true) || set_config('role', $2, true) || " +
    "set_config('statement_timeout', $3, true) || set_config('transaction_read_only', 'on', true)) IS NULL"
} as const

/**
 * What one tenant's queries are scoped with, built once when the tenant is looked up and kept with
 * it in the cache: the context statement's values and their Bind and Execute bytes (the same at
 * every request of the tenant), and how its prepared statements are named (see statements.ts).
 */
export interface TenantScope {
  /**
   * Statements are prepared under names kept per connection (statements.ts); false for a pooler
   * that cannot carry named statements: every statement of a flight is then the unnamed one.
   */
  readonly prepared: boolean
  /** search_path, role, statement timeout (the read context's values; a mutation's add three). */
  readonly values: readonly string[]
  readonly bindReadOnly: Buffer
  readonly bindReadWrite: Buffer
  /** Suffix of this tenant's prepared-statement names; unique within the process. */
  readonly statementTag: string
  /** This tenant's prepared-statement names by SQL text, filled as its queries are first prepared. */
  readonly statementNames: Map<string, string>
}

let statementTags = 0

const EXECUTE = serialize.execute()

export interface ScopeOptions {
  statementTimeoutMs: number
  /** How long a mutation's transaction may sit idle before PostgreSQL ends its session. */
  idleInTransactionTimeoutMs: number
  prepared: boolean
  /** Switch to the tenant's role too (TENANT_ISOLATION=role); else `none`: the service's own role. */
  tenantRoles: boolean
}

/**
 * `created_at` is the registry's, as read into the tenant cache: the write guard checks that the
 * tenant a mutation writes to is still the one created then.
 */
export function createScope(tenant: { id: string; schema: string; role: string; created_at: Date }, options: ScopeOptions): TenantScope {
  const role = options.tenantRoles ? tenant.role : 'none'
  const values = [pg.escapeIdentifier(tenant.schema), role, String(Math.trunc(options.statementTimeoutMs))]
  const writeValues = [...values, String(Math.trunc(options.idleInTransactionTimeoutMs)), tenant.id, tenant.created_at.toISOString()]
  const bind = (statement: string, values: string[]) => Buffer.concat([serialize.bind({ statement: options.prepared ? statement : '', values }), EXECUTE])
  return {
    prepared: options.prepared,
    values,
    bindReadOnly: bind(CONTEXT_READ_ONLY.name, values),
    bindReadWrite: bind(CONTEXT.name, writeValues),
    statementTag: (statementTags++).toString(36),
    statementNames: new Map()
  }
}

/**
 * What rides in front of a query, in the query's own flight:
 * - `read`: the read-only context. A read's every query is its own implicit transaction, ended by
 *   the flight's Sync, so each carries the context again (and none needs a COMMIT);
 * - `begin`: BEGIN and the context: the first query of a mutation opens its transaction;
 * - `none`: nothing: a later query of a mutation runs in the transaction its first one scoped.
 */
export type ScopeMode = 'read' | 'begin' | 'none'

export function scopeMode(readOnly: boolean, inTransaction: boolean): ScopeMode {
  if (readOnly) return 'read'
  return inTransaction ? 'none' : 'begin'
}

/** BEGIN as one unnamed Parse, Bind and Execute: serialised once. */
const BEGIN_FLIGHT = Buffer.concat([serialize.parse({ text: 'BEGIN' }), serialize.bind({}), serialize.execute()])
/** The context statements' Parse as the unnamed statement, for scopes that prepare nothing. */
const PARSE_CONTEXT_UNNAMED = serialize.parse({ text: CONTEXT.text })
const PARSE_CONTEXT_READ_ONLY_UNNAMED = serialize.parse({ text: CONTEXT_READ_ONLY.text })

/** What writes a flight: it adds a statement's Parse when its connection has not prepared it yet. */
export interface FlightWriter {
  prepareStatement(flight: Buffer[], name: string, text: string): unknown
}

/**
 * Appends the scope's messages to a flight and answers how many command completions they add,
 * which the query skips before its own.
 */
export function writeScope(flight: Buffer[], scope: TenantScope, mode: ScopeMode, writer: FlightWriter): number {
  if (mode === 'none') return 0
  if (mode === 'begin') flight.push(BEGIN_FLIGHT)
  const statement = mode === 'read' ? CONTEXT_READ_ONLY : CONTEXT
  if (scope.prepared) writer.prepareStatement(flight, statement.name, statement.text)
  else flight.push(mode === 'read' ? PARSE_CONTEXT_READ_ONLY_UNNAMED : PARSE_CONTEXT_UNNAMED)
  flight.push(mode === 'read' ? scope.bindReadOnly : scope.bindReadWrite)
  return mode === 'begin' ? 2 : 1
}
