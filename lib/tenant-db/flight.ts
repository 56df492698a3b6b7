import type pg from 'pg'
import { serialize } from 'pg-protocol'
import { PgQueryClass, prepareValue, type PgConnection, type PgStream } from './pg-internals.ts'
import type { Lane } from './read-lanes.ts'
import { writeScope, type FlightWriter, type ScopeMode, type TenantScope } from './scope.ts'
import { NO_ROWS, prepare, statementName, statementsOf, type ConnectionStatements, type Prepared } from './statements.ts'

const EXECUTE_SYNC = Buffer.concat([serialize.execute(), serialize.sync()])
const DESCRIBE_EXECUTE_SYNC = Buffer.concat([serialize.describe({ type: 'P', name: '' }), EXECUTE_SYNC])

/**
 * One query of a tenant-scoped request, written as a single flight of extended-protocol messages
 * ending in one Sync: whatever its scope mode puts in front (BEGIN, the tenant's context; see
 * scope.ts), then the query itself. The server answers once, so the context costs no round trip;
 * and without BEGIN the Sync ends an implicit transaction that the context lived in, so nothing
 * survives it on the connection.
 *
 * Queries without parameters go this way too: sent in the simple protocol, the context statement
 * and the query would both be parsed and planned at every request (BENCHMARKS.md, C21).
 *
 * It extends pg's Query so the pool's pipelining accepts it, and uses Query's result handling;
 * only the writing of messages, and skipping the completions of the statements in front, is ours.
 * Its `name` stays unset: pg then leaves its own prepared-statement bookkeeping alone, and ours
 * (statements.ts) is the only record of what this connection has prepared.
 */
export class ScopedQuery extends PgQueryClass implements FlightWriter {
  /** The read lane this query was written to, if any (see read-lanes.ts). */
  lane: Lane | null = null
  readonly scope: TenantScope
  readonly mode: ScopeMode
  /** Completions of the statements in front of the query, skipped before its own. */
  #pendingCompletions = 0
  #statements: ConnectionStatements | null = null
  /** The query's own statement on this connection (null when it runs unprepared). */
  #statement: { name: string; entry: Prepared } | null = null
  /** Names parsed in this flight. */
  #parsedHere: string[] | null = null
  /** This flight asks for a Describe whose answer is worth remembering. */
  #learnsShape = false
  #sawRowDescription = false

  constructor(text: string, values: unknown[] | undefined, scope: TenantScope, mode: ScopeMode) {
    // Text and values apart: a config object would be copied property by property (pg clones it).
    super(text, values)
    this.scope = scope
    this.mode = mode
  }

  /**
   * Writes the flight as one buffer in one write: the messages that do not change (BEGIN, the
   * tenant's context, Describe-Execute-Sync) are serialised once and reused, and only the query's
   * Bind, which carries its values, is built per query.
   */
  submit(connection: PgConnection): Error | null {
    // pg's own writes do nothing on a closed stream; the pool then fails the client's queries.
    if (!connection.stream.writable) return new Error('Connection terminated')
    this.#statements = statementsOf(connection)
    const flight: Buffer[] = []
    this.#pendingCompletions = writeScope(flight, this.scope, this.mode, this)
    const name = this.scope.prepared ? statementName(this.text, this.scope) : undefined
    let shape: Prepared['shape'] = null
    if (name === undefined) {
      flight.push(serialize.parse({ text: this.text }))
    } else {
      const entry = this.prepareStatement(flight, name, this.text)
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

  /** The connection's statement `name`, its Parse added to the flight when the connection lacks it. */
  prepareStatement(flight: Buffer[], name: string, text: string): Prepared {
    const { entry, parsed } = prepare(flight, this.#statements!, name, text)
    if (parsed) (this.#parsedHere ??= []).push(name)
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
    const statements = this.#statements
    if (!statements) return
    for (const name of this.#parsedHere ?? []) statements.delete(name)
    if (this.#statement) statements.delete(this.#statement.name)
  }
}

/** Lane sockets holding flights until this turn of the event loop has run its I/O callbacks. */
const corkedLanes = new Set<PgStream>()

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
function writeThisTurn(stream: PgStream, bytes: Buffer): void {
  if (!corkedLanes.has(stream)) {
    if (corkedLanes.size === 0) setImmediate(uncorkLanes)
    stream.cork()
    corkedLanes.add(stream)
  }
  stream.write(bytes)
}

/** Submits a flight on a client: pg queues it behind (or, pipelined, right after) the client's other queries. */
export function send(client: pg.ClientBase, query: ScopedQuery): void {
  client.query(query as unknown as pg.QueryConfig)
}
