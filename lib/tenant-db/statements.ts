import { serialize } from 'pg-protocol'
import type { TenantScope } from './scope.ts'

/**
 * Named statements kept per connection. A tenant's queries are prepared under names of their own,
 * because PostgreSQL re-plans a prepared statement whenever search_path differs from the one it
 * was planned under: one name shared by all tenants would be re-planned at almost every use
 * (BENCHMARKS.md, C21). The cap bounds what a connection holds on the server however many tenants there are.
 */
const MAX_STATEMENTS_PER_CONNECTION = 256

/** What pg's Result needs to turn a statement's rows into objects, learnt from its first Describe. */
export interface ResultShape {
  fields: unknown[]
  parsers: unknown[] | undefined
  emptyRow: object | null
}
/** The statement returns no rows (its Describe answered NoData). */
export const NO_ROWS = 'no rows'

/**
 * A statement prepared on a connection. `used` is the "used since the last sweep" flag of CLOCK
 * (second chance) eviction, an approximation of least recently used: a use only sets the flag,
 * with no reordering, and the sweep that makes room moves used names to the back and evicts the
 * first unused one. Reordering a map on every use (delete and set) measured as the costliest part
 * of writing a query (BENCHMARKS.md, C7). `shape`, once known, lets later
 * executions skip Describe: the server sends no RowDescription, and nothing rebuilds the row parsers.
 */
export interface Prepared {
  used: boolean
  shape: ResultShape | typeof NO_ROWS | null
}

/** The statements one connection has prepared, by name. */
export type ConnectionStatements = Map<string, Prepared>

const statementsByConnection = new WeakMap<object, ConnectionStatements>()

export function statementsOf(connection: object): ConnectionStatements {
  let statements = statementsByConnection.get(connection)
  if (!statements) statementsByConnection.set(connection, (statements = new Map()))
  return statements
}

/** Short, stable ids for statement texts, so names stay far below PostgreSQL's 63-byte limit. */
const textIds = new Map<string, number>()
const MAX_DISTINCT_TEXTS = 10_000

/**
 * The name of `text` prepared for one tenant, kept in the tenant's own map: the same string each
 * time, so the per-connection bookkeeping hashes a string whose hash is already known. Undefined:
 * run it unprepared.
 */
export function statementName(text: string, scope: TenantScope): string | undefined {
  const known = scope.statementNames.get(text)
  if (known !== undefined) return known
  let id = textIds.get(text)
  if (id === undefined) {
    // Text built per request (never the case in our routes) would grow this without bound: such
    // queries simply run unprepared.
    if (textIds.size >= MAX_DISTINCT_TEXTS) return undefined
    id = textIds.size
    textIds.set(text, id)
  }
  const name = `q${id}_${scope.statementTag}`
  scope.statementNames.set(text, name)
  return name
}

/** Removes and returns the first name, from the front, not used since the sweep last passed it. */
function evictOne(statements: ConnectionStatements): string {
  for (;;) {
    for (const [name, entry] of statements) {
      statements.delete(name)
      if (!entry.used) return name
      entry.used = false
      statements.set(name, entry) // a second chance, at the back
    }
  }
}

/**
 * The connection's entry for `name`. When it has none, appends to the flight a Close of a name
 * evicted to make room, and the Close and Parse of `name`, and answers `parsed: true`.
 */
export function prepare(flight: Buffer[], statements: ConnectionStatements, name: string, text: string): { entry: Prepared; parsed: boolean } {
  const known = statements.get(name)
  if (known !== undefined) {
    known.used = true
    return { entry: known, parsed: false }
  }
  if (statements.size >= MAX_STATEMENTS_PER_CONNECTION) flight.push(serialize.close({ type: 'S', name: evictOne(statements) }))
  // Close first: a Parse that failed in an earlier flight may or may not have created the
  // statement, and closing a statement that does not exist is not an error.
  flight.push(serialize.close({ type: 'S', name }), serialize.parse({ name, text }))
  const entry: Prepared = { used: false, shape: null }
  statements.set(name, entry)
  return { entry, parsed: true }
}
