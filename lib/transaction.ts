import type pg from 'pg'

/**
 * A client of a pool made with `pipeline: true` (the service's): it sends queries without waiting
 * for the previous answers. Any other client queues them, one round trip each, and pg deprecates
 * asking it for a query while another runs, so those are awaited in turn.
 */
const pipelined = (client: pg.ClientBase) => (client as { pipeline?: boolean }).pipeline === true

/** What opens each pool's control-plane transactions (limitIdleTransactions). */
const begins = new WeakMap<pg.Pool, readonly string[]>()

/**
 * Control-plane transactions on `pool` are ended by PostgreSQL once idle for `ms`
 * (PG_IDLE_IN_TRANSACTION_TIMEOUT_MS; 0: never), as a request's are: a transaction stalled
 * between its statements (a bug, a stuck event loop) would otherwise hold its locks on the
 * registry, and its pooled connection, for as long as it stalls. SET LOCAL follows BEGIN in the
 * same round trip (a message of its own: DESIGN §9), and ends with the transaction.
 */
export function limitIdleTransactions(pool: pg.Pool, ms: number): void {
  begins.set(pool, ['BEGIN', `SET LOCAL idle_in_transaction_session_timeout = ${Math.max(0, Math.trunc(ms))}`])
}

/**
 * Runs `work` on a pooled connection inside one transaction: COMMIT when it resolves, ROLLBACK
 * when it throws. A connection whose ROLLBACK fails too is destroyed rather than given back, since
 * nobody can say what state it is in (an open transaction, session settings, locks).
 */
export async function runInTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const begin = begins.get(pool) ?? ['BEGIN']
  const client = await pool.connect()
  try {
    if (pipelined(client)) {
      // Not awaited on its own: the work's first statements go out right behind it, in the same
      // round trip. Its failure fails them too, and is reported below.
      const begun = sendEach(client, begin)
      begun.catch(() => undefined)
      const result = await work(client)
      await begun
      await client.query('COMMIT')
      client.release()
      return result
    }
    await sendEach(client, begin)
    const result = await work(client)
    await client.query('COMMIT')
    client.release()
    return result
  } catch (error) {
    await client.query('ROLLBACK').then(
      () => client.release(),
      () => client.release(true)
    )
    throw error
  }
}

/**
 * Sends `statements` on `client` one per message, in one round trip where the client pipelines,
 * and answers their results in order; rejects with the first failure.
 */
export async function sendEach<Row extends pg.QueryResultRow = pg.QueryResultRow>(
  client: pg.ClientBase,
  statements: readonly string[]
): Promise<pg.QueryResult<Row>[]> {
  if (!pipelined(client)) {
    const results: pg.QueryResult<Row>[] = []
    for (const statement of statements) results.push(await client.query<Row>(statement))
    return results
  }
  const sent = statements.map((statement) => client.query<Row>(statement))
  // Behind a failure, the rest fail with "current transaction is aborted": only the first is news.
  for (const result of sent) result.catch(() => undefined)
  return Promise.all(sent)
}
