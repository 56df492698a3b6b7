import { createRequire } from 'node:module'
import pg from 'pg'
import { serialize } from 'pg-protocol'
import type { Lane } from './read-lanes.ts'

const { prepareValue } = createRequire(import.meta.url)('pg/lib/utils.js') as { prepareValue: (value: unknown) => unknown }

/**
 * The statement that scopes what follows it to a tenant: search_path, role and statement timeout,
 * transaction-locally (set_config(…, true) is SET LOCAL). Prepared once per connection; the
 * WHERE clause evaluates the three calls and returns no row, so nothing needs describing or parsing.
 */
const CONTEXT = {
  name: 'tenant_context',
  text:
    "SELECT WHERE (set_config('search_path', $1, true) || set_config('role', $2, true) || " +
    "set_config('statement_timeout', $3, true)) IS NULL"
}
/** The same for reads: also makes the transaction read-only, so PostgreSQL refuses any write. */
const CONTEXT_READ_ONLY = {
  name: 'tenant_context_ro',
  text:
    "SELECT WHERE (set_config('search_path', $1, true) || set_config('role', $2, true) || " +
    "set_config('statement_timeout', $3, true) || set_config('transaction_read_only', 'on', true)) IS NULL"
}

/** Messages that never change, serialised once. */
const BEGIN_FLIGHT = Buffer.concat([serialize.parse({ text: 'BEGIN' }), serialize.bind({}), serialize.execute()])
const EXECUTE = serialize.execute()
const EXECUTE_SYNC = Buffer.concat([EXECUTE, serialize.sync()])
const DESCRIBE_EXECUTE_SYNC = Buffer.concat([serialize.describe({ type: 'P', name: '' }), EXECUTE_SYNC])

/**
 * Bind and Execute of a tenant's context statement, per tenant (its context values) and mode: the
 * same bytes at every request of the tenant.
 */
const contextMessages = new WeakMap<readonly string[], { readOnly?: Buffer; readWrite?: Buffer }>()

function contextBindExecute(values: readonly string[], readOnly: boolean): Buffer {
  let cached = contextMessages.get(values)
  if (!cached) contextMessages.set(values, (cached = {}))
  const key = readOnly ? 'readOnly' : 'readWrite'
  return (cached[key] ??= Buffer.concat([
    serialize.bind({ statement: readOnly ? CONTEXT_READ_ONLY.name : CONTEXT.name, values: values as string[] }),
    EXECUTE
  ]))
}

/**
 * Named statements kept per connection. A tenant's queries are prepared under names of their own,
 * because PostgreSQL re-plans a prepared statement whenever search_path differs from the one it
 * was planned under: one name shared by all tenants would be re-planned at almost every use. The
 * cap bounds what a connection holds on the server however many tenants there are.
 */
const MAX_STATEMENTS_PER_CONNECTION = 256

/** What pg's Result needs to turn a statement's rows into objects, learnt from its first Describe. */
interface ResultShape {
  fields: unknown[]
  parsers: unknown[] | undefined
  emptyRow: object | null
}
/** The statement returns no rows (its Describe answered NoData). */
const NO_ROWS = 'no rows'

/**
 * A statement prepared on a connection. `used` is the "used since the last sweep" flag of CLOCK
 * (second chance) eviction, an approximation of least recently used: a use only sets the flag,
 * with no reordering, and the sweep that makes room moves used names to the back and evicts the
 * first unused one. Reordering a map on every use (delete and set) measured as the costliest part
 * of writing a query. `shape`, once known, lets later executions skip Describe: the server sends
 * no RowDescription, and nothing rebuilds the row parsers.
 */
interface Prepared {
  used: boolean
  shape: ResultShape | typeof NO_ROWS | null
}

const preparedByConnection = new WeakMap<object, Map<string, Prepared>>()

/** Short, stable ids for statement texts, so names stay far below PostgreSQL's 63-byte limit. */
const textIds = new Map<string, number>()
const MAX_DISTINCT_TEXTS = 10_000

/**
 * The name of `text` prepared for one tenant, kept in the tenant's own map: the same string each
 * time, so the per-connection bookkeeping below hashes a string whose hash is already known.
 */
function statementName(text: string, tenant: StatementNaming): string | undefined {
  const known = tenant.statementNames.get(text)
  if (known !== undefined) return known
  let id = textIds.get(text)
  if (id === undefined) {
    // Text built per request (never the case in our routes) would grow this without bound: such
    // queries simply run unprepared.
    if (textIds.size >= MAX_DISTINCT_TEXTS) return undefined
    id = textIds.size
    textIds.set(text, id)
  }
  const name = `q${id}_${tenant.statementTag}`
  tenant.statementNames.set(text, name)
  return name
}

/** Removes and returns the first name, from the front, not used since the sweep last passed it. */
function evictOne(prepared: Map<string, Prepared>): string {
  for (;;) {
    for (const [name, entry] of prepared) {
      prepared.delete(name)
      if (!entry.used) return name
      entry.used = false
      prepared.set(name, entry) // a second chance, at the back
    }
  }
}

/** How a tenant's statements are named: a tag unique within the process, and the names given so far. */
export interface StatementNaming {
  statementTag: string
  statementNames: Map<string, string>
}

export interface ScopedQueryOptions {
  /** `BEGIN` to open the request's transaction in the same flight, or null. */
  begin: string | null
  /** The tenant's context statement values, or null inside an already scoped transaction. */
  context: readonly string[] | null
  readOnly: boolean
  /** The tenant whose statements these are; null runs the query unprepared. */
  naming: StatementNaming | null
}

/** The part of pg's Query (its result handling, and the Result it fills) that ScopedQuery builds on. */
interface PgQuery {
  text: string
  values?: unknown[]
  callback?: (error: Error | null, result: pg.QueryResult) => void
  _result: { fields: unknown[]; _parsers: unknown[] | undefined; _prebuiltEmptyResultObject: object | null }
  _accumulateRows: boolean
  handleRowDescription(message: unknown): void
  handleCommandComplete(message: unknown, connection: unknown): void
  handleError(error: Error, connection: unknown): void
}
const PgQueryClass = pg.Query as unknown as new (text: string, values?: unknown[]) => PgQuery

/**
 * One query of a tenant-scoped request, written as a single flight of extended-protocol messages
 * ending in one Sync: optionally BEGIN, then the context statement, then the query itself. The
 * server answers once, so the context costs no round trip; and without BEGIN the Sync ends an
 * implicit transaction that the context lived in, so nothing survives it on the connection.
 *
 * Queries without parameters go this way too: sent in the simple protocol, the context statement
 * and the query would both be parsed and planned at every request, which measured slower.
 *
 * It extends pg's Query so the pool's pipelining accepts it, and uses Query's result handling;
 * only the writing of messages, and skipping the completions of the statements in front, is ours.
 * Its `name` stays unset: pg then leaves its own prepared-statement bookkeeping alone, and ours
 * (preparedByConnection) is the only record of what this connection has prepared.
 */
export class ScopedQuery extends PgQueryClass {
  /** The read lane this query was written to, if any (see read-lanes.ts). */
  lane: Lane | null = null
  #pendingCompletions: number
  readonly #options: ScopedQueryOptions
  #connection: object | null = null
  /** The query's own statement on this connection (null when it runs unprepared). */
  #statement: { name: string; entry: Prepared } | null = null
  /** Names parsed in this flight. */
  #parsedHere: string[] | null = null
  /** This flight asks for a Describe whose answer is worth remembering. */
  #learnsShape = false
  #sawRowDescription = false

  constructor(text: string, values: unknown[] | undefined, options: ScopedQueryOptions) {
    // Text and values apart: a config object would be copied property by property (pg clones it).
    super(text, values)
    this.#options = options
    this.#pendingCompletions = (options.begin ? 1 : 0) + (options.context ? 1 : 0)
  }

  /**
   * Writes the flight as one buffer in one write: the messages that do not change (BEGIN, the
   * tenant's context, Describe-Execute-Sync) are serialised once and reused, and only the query's
   * Bind, which carries its values, is built per query.
   */
  submit(connection: PgConnection): Error | null {
    // pg's own writes do nothing on a closed stream; the pool then fails the client's queries.
    if (!connection.stream.writable) return new Error('Connection terminated')
    const { begin, context, readOnly, naming } = this.#options
    let prepared = preparedByConnection.get(connection)
    if (!prepared) {
      prepared = new Map()
      preparedByConnection.set(connection, prepared)
    }
    this.#connection = connection
    const flight: Buffer[] = []
    if (begin) flight.push(BEGIN_FLIGHT)
    if (context) {
      const statement = readOnly ? CONTEXT_READ_ONLY : CONTEXT
      this.#prepare(flight, prepared, statement.name, statement.text)
      flight.push(contextBindExecute(context, readOnly))
    }
    const name = naming === null ? undefined : statementName(this.text, naming)
    let shape: Prepared['shape'] = null
    if (name === undefined) {
      flight.push(serialize.parse({ text: this.text }))
    } else {
      const entry = this.#prepare(flight, prepared, name, this.text)
      this.#statement = { name, entry }
      shape = entry.shape
      this.#learnsShape = shape === null
    }
    let bind: Buffer
    try {
      bind = serialize.bind({ statement: name ?? '', values: this.values ?? [], valueMapper: prepareValue })
    } catch (error) {
      // A value pg cannot send (its toPostgres threw): nothing was written.
      this.#forget()
      return error as Error
    }
    flight.push(bind)
    if (shape === null) {
      flight.push(DESCRIBE_EXECUTE_SYNC)
    } else {
      flight.push(EXECUTE_SYNC)
      if (shape !== NO_ROWS) {
        // What handleRowDescription would have set up, from the statement's first execution.
        const result = this._result
        result.fields = shape.fields
        result._parsers = shape.parsers
        result._prebuiltEmptyResultObject = shape.emptyRow
        this._accumulateRows = true
      }
    }
    const bytes = flight.length === 1 ? flight[0] : Buffer.concat(flight)
    if (this.lane === null) connection.stream.write(bytes)
    else writeThisTurn(connection.stream, bytes)
    return null
  }

  /** Adds Parse for `name` unless this connection has it, and a Close for a name evicted to make room. */
  #prepare(flight: Buffer[], prepared: Map<string, Prepared>, name: string, text: string): Prepared {
    const known = prepared.get(name)
    if (known !== undefined) {
      known.used = true
      return known
    }
    if (prepared.size >= MAX_STATEMENTS_PER_CONNECTION) flight.push(serialize.close({ type: 'S', name: evictOne(prepared) }))
    // Close first: a Parse that failed in an earlier flight may or may not have created the
    // statement, and closing a statement that does not exist is not an error.
    flight.push(serialize.close({ type: 'S', name }), serialize.parse({ name, text }))
    const entry: Prepared = { used: false, shape: null }
    prepared.set(name, entry)
    ;(this.#parsedHere ??= []).push(name)
    return entry
  }

  handleRowDescription(message: unknown): void {
    super.handleRowDescription(message)
    this.#sawRowDescription = true
    if (this.#learnsShape && this.#statement) {
      const result = this._result
      this.#statement.entry.shape = { fields: result.fields, parsers: result._parsers, emptyRow: result._prebuiltEmptyResultObject }
    }
  }

  handleCommandComplete(message: unknown, connection: unknown): void {
    if (this.#pendingCompletions > 0) {
      this.#pendingCompletions--
      return
    }
    // Described, and no RowDescription came: the statement returns no rows.
    if (this.#learnsShape && !this.#sawRowDescription && this.#statement) this.#statement.entry.shape = NO_ROWS
    super.handleCommandComplete(message, connection)
  }

  handleError(error: Error, connection: unknown): void {
    this.#forget()
    super.handleError(error, connection)
  }

  /**
   * After a failed flight (or one never written), the names parsed in it may not exist on the
   * server, and the query's own statement may have become unusable (a migration changed the
   * tables it reads: "cached plan must not change result type"). Both are forgotten, so their
   * next use closes and parses them again. Errors are rare enough for the re-parse not to matter.
   */
  #forget(): void {
    const prepared = this.#connection ? preparedByConnection.get(this.#connection) : undefined
    if (!prepared) return
    for (const name of this.#parsedHere ?? []) prepared.delete(name)
    if (this.#statement) prepared.delete(this.#statement.name)
  }
}

/** The part of pg's connection this writes to: its socket. */
interface PgConnection {
  stream: LaneStream
}

interface LaneStream {
  writable: boolean
  write(buffer: Buffer): boolean
  cork(): void
  uncork(): void
}

/** Lane sockets holding flights until this turn of the event loop has run its I/O callbacks. */
const corkedLanes = new Set<LaneStream>()

function uncorkLanes(): void {
  for (const stream of corkedLanes) stream.uncork()
  corkedLanes.clear()
}

/**
 * Writes a flight to a read lane's socket at the end of this turn of the event loop, together with
 * the flights of every other request handled in the same turn: one system call per lane and turn
 * instead of one per request, and PostgreSQL reads them all at once and answers them in one write.
 * The flights wait only for the requests already being handled (setImmediate runs right after this
 * turn's I/O callbacks), so a lone request is not delayed.
 */
function writeThisTurn(stream: LaneStream, bytes: Buffer): void {
  if (!corkedLanes.has(stream)) {
    if (corkedLanes.size === 0) setImmediate(uncorkLanes)
    stream.cork()
    corkedLanes.add(stream)
  }
  stream.write(bytes)
}
