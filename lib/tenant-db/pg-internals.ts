import { createRequire } from 'node:module'
import pg from 'pg'

/**
 * Every part of `pg` below its public API that the tenant-scoped client relies on, in one place.
 * The flights of flight.ts are written by a subclass of pg's Query, which the client submits like
 * its own and whose answers pg's Result parses; so `pg` and `pg-protocol` are pinned to exact
 * versions in package.json, and `checkPgInternals` (run when a tenant database is created, and by
 * test/tenant-db.test.ts) names whatever an upgrade moved.
 */

/** pg's value-to-wire mapping for Bind (dates, buffers, arrays, objects as JSON). */
export const { prepareValue } = createRequire(import.meta.url)('pg/lib/utils.js') as { prepareValue: (value: unknown) => unknown }

/** The part of pg's Query (its result handling, and the Result it fills) that ScopedQuery builds on. */
export interface PgQuery {
  text: string
  values?: unknown[]
  callback?: (error: Error | null, result: pg.QueryResult) => void
  _result: { fields: unknown[]; _parsers: unknown[] | undefined; _prebuiltEmptyResultObject: object | null }
  _accumulateRows: boolean
  handleRowDescription(message: unknown): void
  handleCommandComplete(message: unknown, connection: unknown): void
  handleError(error: Error, connection: unknown): void
}

export const PgQueryClass = pg.Query as unknown as new (text: string, values?: unknown[]) => PgQuery

/** The part of pg's connection a flight is written to: its socket. */
export interface PgConnection {
  stream: PgStream
}

export interface PgStream {
  writable: boolean
  write(buffer: Buffer): boolean
  cork(): void
  uncork(): void
}

/** The connection behind a pooled client (`client.connection`, not in pg's types). */
export const connectionOf = (client: pg.ClientBase) => (client as unknown as { connection: PgConnection }).connection

const QUERY_METHODS = ['submit', 'handleRowDescription', 'handleDataRow', 'handleCommandComplete', 'handleError', 'handleReadyForQuery']
const RESULT_FIELDS = ['fields', '_parsers', '_prebuiltEmptyResultObject']
const STREAM_METHODS = ['write', 'cork', 'uncork']

/**
 * What of the above this `pg` lacks, as readable problems; empty when all is there. With a client,
 * its connection's socket is checked too.
 */
export function checkPgInternals(client?: pg.ClientBase): string[] {
  const problems: string[] = []
  if (typeof prepareValue !== 'function') problems.push('pg/lib/utils.js no longer exports prepareValue')
  if (typeof pg.Query !== 'function') {
    problems.push('pg no longer exports Query')
    return problems
  }
  for (const method of QUERY_METHODS) {
    if (typeof (pg.Query.prototype as unknown as Record<string, unknown>)[method] !== 'function') problems.push(`pg's Query has no method ${method}`)
  }
  const query = new PgQueryClass('SELECT 1', [])
  if (query.text !== 'SELECT 1' || !Array.isArray(query.values)) problems.push("pg's Query no longer keeps text and values as given")
  if (typeof query._result !== 'object' || query._result === null) {
    problems.push("pg's Query has no _result (its Result)")
  } else {
    for (const field of RESULT_FIELDS) if (!(field in query._result)) problems.push(`pg's Result has no ${field}`)
  }
  if (new pg.Client({ pipeline: true } as pg.ClientConfig & { pipeline: boolean }).pipeline !== true) {
    problems.push("pg's Client ignores the pipeline option")
  }
  if (client) {
    const stream = connectionOf(client)?.stream as unknown as Record<string, unknown> | undefined
    if (!stream) problems.push('a pg client has no connection.stream')
    else for (const method of STREAM_METHODS) if (typeof stream[method] !== 'function') problems.push(`a pg connection's stream has no ${method}()`)
  }
  return problems
}

/** Throws, naming every problem, when this `pg` is not the one the tenant-scoped client was written against. */
export function assertPgInternals(client?: pg.ClientBase): void {
  const problems = checkPgInternals(client)
  if (problems.length > 0) {
    throw new Error(`The installed pg is not what lib/tenant-db relies on (see lib/tenant-db/pg-internals.ts):\n- ${problems.join('\n- ')}`)
  }
}
