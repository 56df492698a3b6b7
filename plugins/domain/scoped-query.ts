import { createRequire } from 'node:module'
import pg from 'pg'

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

/**
 * Named statements kept per connection, oldest first. A tenant's queries are prepared under names
 * of their own, because PostgreSQL re-plans a prepared statement whenever search_path differs from
 * the one it was planned under: one name shared by all tenants would be re-planned at almost every
 * use. The cap bounds what a connection holds on the server however many tenants there are.
 */
const MAX_STATEMENTS_PER_CONNECTION = 256
const preparedByConnection = new WeakMap<object, Map<string, true>>()

/** Short, stable ids for statement texts, so names stay far below PostgreSQL's 63-byte limit. */
const textIds = new Map<string, number>()
const MAX_DISTINCT_TEXTS = 10_000

function statementName(text: string, tenantTag: string): string | undefined {
  let id = textIds.get(text)
  if (id === undefined) {
    // Text built per request (never the case in our routes) would grow this without bound: such
    // queries simply run unprepared.
    if (textIds.size >= MAX_DISTINCT_TEXTS) return undefined
    id = textIds.size
    textIds.set(text, id)
  }
  return `q${id}_${tenantTag}`
}

export interface ScopedQueryOptions {
  /** `BEGIN` to open the request's transaction in the same flight, or null. */
  begin: string | null
  /** The tenant's context statement values, or null inside an already scoped transaction. */
  context: readonly string[] | null
  readOnly: boolean
  /** Per-tenant suffix of statement names; null runs the query unprepared. */
  tenantTag: string | null
}

/** The part of pg's Query (its result handling) that ScopedQuery builds on. */
interface PgQuery {
  text: string
  values?: unknown[]
  callback?: (error: Error | null, result: pg.QueryResult) => void
  handleCommandComplete(message: unknown, connection: unknown): void
  handleError(error: Error, connection: unknown): void
}
const PgQueryClass = pg.Query as unknown as new (config: { text: string; values?: unknown[] }) => PgQuery

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
  #pendingCompletions: number
  readonly #options: ScopedQueryOptions
  #preparedHere: string[] | null = null
  #connection: object | null = null

  constructor(text: string, values: unknown[] | undefined, options: ScopedQueryOptions) {
    super({ text, values })
    this.#options = options
    this.#pendingCompletions = (options.begin ? 1 : 0) + (options.context ? 1 : 0)
  }

  submit(connection: PgConnection): Error | null {
    const { begin, context, readOnly, tenantTag } = this.#options
    let prepared = preparedByConnection.get(connection)
    if (!prepared) {
      prepared = new Map()
      preparedByConnection.set(connection, prepared)
    }
    this.#connection = connection
    connection.stream.cork?.()
    try {
      if (begin) {
        connection.parse({ text: begin })
        connection.bind({})
        connection.execute({})
      }
      if (context) {
        const statement = readOnly ? CONTEXT_READ_ONLY : CONTEXT
        this.#prepare(connection, prepared, statement.name, statement.text)
        connection.bind({ statement: statement.name, values: context as string[] })
        connection.execute({})
      }
      const name = tenantTag === null ? undefined : statementName(this.text, tenantTag)
      if (name === undefined) connection.parse({ text: this.text })
      else this.#prepare(connection, prepared, name, this.text)
      connection.bind({ statement: name ?? '', values: this.values ?? [], valueMapper: prepareValue })
      connection.describe({ type: 'P', name: '' })
      connection.execute({})
      connection.sync()
    } finally {
      connection.stream.uncork?.()
    }
    return null
  }

  /** Parses `name` unless this connection has it, evicting the oldest name past the cap. */
  #prepare(connection: PgConnection, prepared: Map<string, true>, name: string, text: string): void {
    if (prepared.delete(name)) {
      prepared.set(name, true) // most recently used last
      return
    }
    if (prepared.size >= MAX_STATEMENTS_PER_CONNECTION) {
      const oldest = prepared.keys().next().value as string
      prepared.delete(oldest)
      connection.close({ type: 'S', name: oldest })
    }
    // Close first: a Parse that failed in an earlier flight may or may not have created the
    // statement, and closing a statement that does not exist is not an error.
    connection.close({ type: 'S', name })
    connection.parse({ name, text })
    prepared.set(name, true)
    ;(this.#preparedHere ??= []).push(name)
  }

  handleCommandComplete(message: unknown, connection: unknown): void {
    if (this.#pendingCompletions > 0) {
      this.#pendingCompletions--
      return
    }
    super.handleCommandComplete(message, connection)
  }

  handleError(error: Error, connection: unknown): void {
    // The names parsed in this flight may not exist on the server: forget them, so their next use
    // closes and parses them again.
    if (this.#preparedHere && this.#connection) {
      const prepared = preparedByConnection.get(this.#connection)
      for (const name of this.#preparedHere) prepared?.delete(name)
    }
    super.handleError(error, connection)
  }
}

/** The parts of pg's connection this writes to (pg-protocol messages). */
interface PgConnection {
  stream: { cork?: () => void; uncork?: () => void }
  parse(message: { name?: string; text: string }): void
  bind(message: { statement?: string; values?: unknown[]; valueMapper?: (value: unknown) => unknown }): void
  describe(message: { type: 'P' | 'S'; name: string }): void
  execute(message: { portal?: string; rows?: number }): void
  close(message: { type: 'S' | 'P'; name: string }): void
  sync(): void
}

/** Runs a ScopedQuery on a client and resolves with its result. */
export function runScoped<Row extends pg.QueryResultRow>(client: pg.PoolClient, query: ScopedQuery): Promise<pg.QueryResult<Row>> {
  return new Promise((resolve, reject) => {
    query.callback = (error, result) => (error ? reject(error) : resolve(result as pg.QueryResult<Row>))
    client.query(query as unknown as pg.QueryConfig)
  })
}
