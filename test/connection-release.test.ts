import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { STALL_MS } from '../lib/tenant-db/read-lanes.ts'
import { buildApp, createTenant, setupApp, type TestContext } from './helpers/app.ts'

/**
 * Every exit path of a request returns its connection clean: success, handler error, failed
 * statement, client abort, statement timeout, pool exhaustion. Runs on a real listening server
 * with a pool of two, so a single leaked connection shows; one of the two is the read lane
 * (PG_READ_LANES), shared by the reads, and goes back to the pool when idle.
 */

const TENANT = 'release-co'
const OTHER = 'other-co'
const STATEMENT_TIMEOUT_MS = 2000
const HOLD_SECONDS = 1.5

/** Test-only routes, tenant-scoped exactly as the service's own. */
function testRoutes(app: FastifyInstance) {
  const scoped = { onRequest: app.resolveTenant }
  app.get<{ Querystring: { seconds: string } }>('/test/sleep', scoped, async (request) => {
    await request.db!.query('SELECT pg_sleep($1)', [Number(request.query.seconds)])
    return { slept: true }
  })
  app.get<{ Querystring: { seconds: string } }>(
    '/test/sleep-then-failing-onsend',
    {
      ...scoped,
      // A hook that fails on an answer nobody receives: the error answer passes through onSend again.
      onSend: async (_request, reply, payload) => {
        if (reply.raw.destroyed) throw new Error('onSend bug on a closed connection')
        return payload
      }
    },
    async (request) => {
      await request.db!.query('SELECT pg_sleep($1)', [Number(request.query.seconds)])
      return { slept: true }
    }
  )
  app.get('/test/throw-after-query', scoped, async (request) => {
    await request.db!.query('SELECT 1')
    throw new Error('handler bug after a query')
  })
  app.get('/test/failing-query', scoped, async (request) => {
    await request.db!.query('SELECT * FROM no_such_table')
    return { unreachable: true }
  })
  app.post<{ Body: { email: string } }>('/test/insert-then-throw', scoped, async (request) => {
    await request.db!.query(`INSERT INTO users (email, name) VALUES ($1, 'Doomed')`, [request.body.email])
    throw new Error('handler bug after a write')
  })
  app.post<{ Body: { email: string } }>('/test/insert-then-sleep', scoped, async (request, reply) => {
    await request.db!.query(`INSERT INTO users (email, name) VALUES ($1, 'Aborted')`, [request.body.email])
    await request.db!.query('SELECT pg_sleep(0.5)')
    return reply.code(201).send({ written: true })
  })
  app.post<{ Body: { email: string } }>('/test/swallow-failure', scoped, async (request, reply) => {
    await request.db!.query(`INSERT INTO users (email, name) VALUES ($1, 'Swallowed')`, [request.body.email])
    // A bug: the failed statement is ignored and the handler reports success.
    await request.db!.query('SELECT 1/0').catch(() => undefined)
    return reply.code(201).send({ written: true })
  })
  app.get<{ Querystring: { email: string } }>('/test/write-in-get', scoped, async (request) => {
    try {
      await request.db!.query(`INSERT INTO users (email, name) VALUES ($1, 'Sneaky')`, [request.query.email])
      return { code: null }
    } catch (error) {
      return { code: (error as { code?: string }).code ?? 'none' }
    }
  })
}

let ctx: TestContext
let port: number

t.before(async () => {
  ctx = await setupApp(
    t,
    { PG_POOL_MAX: '2', TENANT_MAX_CONNECTIONS: '2', PG_ACQUIRE_TIMEOUT_MS: '200', PG_STATEMENT_TIMEOUT_MS: String(STATEMENT_TIMEOUT_MS) },
    { beforeReady: testRoutes }
  )
  await createTenant(ctx, TENANT)
  await createTenant(ctx, OTHER)
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  port = (ctx.app.server.address() as AddressInfo).port
})

interface Answer {
  status: number
  headers: http.IncomingHttpHeaders
  body: Record<string, unknown>
}

/** One request on its own connection; `onRequest` gets the ClientRequest (to abort it). */
function call(
  method: string,
  path: string,
  options: { tenant?: string; body?: unknown; port?: number; onRequest?: (request: http.ClientRequest) => void } = {}
): Promise<Answer> {
  const payload = options.body === undefined ? undefined : JSON.stringify(options.body)
  const headers: Record<string, string> = { ...ctx.auth.tenantUser(options.tenant ?? TENANT) }
  if (payload) headers['content-type'] = 'application/json'
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port: options.port ?? port, method, path, headers, agent: false }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => (text += chunk))
      response.on('end', () => {
        try {
          resolve({ status: response.statusCode!, headers: response.headers, body: text ? JSON.parse(text) : {} })
        } catch (error) {
          reject(error)
        }
      })
      response.on('error', reject)
    })
    request.on('error', reject)
    options.onRequest?.(request)
    request.end(payload)
  })
}

async function eventually(check: () => Promise<boolean> | boolean, deadlineMs = 10_000): Promise<boolean> {
  const until = Date.now() + deadlineMs
  while (Date.now() < until) {
    if (await check()) return true
    await sleep(20)
  }
  return check()
}

async function sessions() {
  const { rows } = await ctx.admin.query<{ idle_in_transaction: number; sleeping: number; service: number }>(
    `SELECT count(*) FILTER (WHERE state LIKE 'idle in transaction%')::int AS idle_in_transaction,
            count(*) FILTER (WHERE state = 'active' AND query LIKE '%pg_sleep%')::int AS sleeping,
            count(*) FILTER (WHERE application_name = 'tenant-service' AND query <> 'LISTEN tenant_changed')::int AS service
       FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`
  )
  return rows[0]
}

/**
 * After the dust settles: no open transaction, the pool whole and idle, and still serving. The
 * settling includes the server's own view: a backend whose client has just closed its connection
 * (an app of a test that ended) stays in pg_stat_activity until the backend process has exited.
 */
async function assertClean(t: Test) {
  const pool = ctx.app.pg.pool
  const settled = await eventually(async () => {
    const s = await sessions()
    return s.idle_in_transaction === 0 && s.sleeping === 0 && s.service <= 2 && pool.idleCount === pool.totalCount && pool.waitingCount === 0
  })
  t.ok(settled, 'every connection went back to the pool')
  const s = await sessions()
  t.equal(s.idle_in_transaction, 0, 'no connection is left idle in transaction')
  t.ok(pool.totalCount <= 2, `the pool stays within its size (${pool.totalCount})`)
  t.equal(pool.waitingCount, 0, 'nobody waits for a connection')
  t.equal(pool.idleCount, pool.totalCount, 'every pooled connection is idle')
  t.ok(s.service <= 2, 'PostgreSQL sees no more service connections than the pool holds')
  for (const tenant of [TENANT, OTHER]) {
    const answer = await call('GET', '/', { tenant })
    t.equal(answer.status, 200, 'and it still serves requests')
    t.equal((answer.body.database as { currentSchema: string }).currentSchema, tenant)
  }
}

const userRows = async (email: string) => (await ctx.admin.query(`SELECT id FROM ${`"${TENANT}"`}.users WHERE email = $1`, [email])).rows.length

t.test('handler errors and failing statements release their connection', async (t) => {
  for (let i = 0; i < 3; i++) {
    const thrown = await call('GET', '/test/throw-after-query')
    t.equal(thrown.status, 500)
    t.same(thrown.body, {
      statusCode: 500,
      code: 'INTERNAL_ERROR',
      error: 'Internal Server Error',
      message: 'Something went wrong on our side',
      requestId: thrown.headers['x-request-id']
    })
    const failed = await call('GET', '/test/failing-query')
    t.equal(failed.status, 500)
    t.equal(failed.body.code, 'INTERNAL_ERROR')
    t.notMatch(JSON.stringify(failed.body), /no_such_table/, 'the SQL error stays in the log')
    const badCursor = await call('GET', '/users?cursor=not-a-cursor')
    t.equal(badCursor.status, 400)
    t.equal(badCursor.body.code, 'INVALID_CURSOR')
  }
  await assertClean(t)
})

t.test('a mutation that throws after writing leaves no row', async (t) => {
  const answer = await call('POST', '/test/insert-then-throw', { body: { email: 'thrown@example.test' } })
  t.equal(answer.status, 500)
  t.equal(answer.body.code, 'INTERNAL_ERROR')
  t.equal(await userRows('thrown@example.test'), 0, 'rolled back')
  await assertClean(t)
})

t.test('a mutation whose statement failed is never reported as a success', async (t) => {
  const answer = await call('POST', '/test/swallow-failure', { body: { email: 'swallowed@example.test' } })
  t.equal(answer.status, 500)
  t.equal(answer.body.code, 'TRANSACTION_FAILED')
  t.equal(await userRows('swallowed@example.test'), 0, 'nothing was saved, as the response says')
  await assertClean(t)
})

t.test('a GET runs READ ONLY: PostgreSQL refuses its writes', async (t) => {
  const answer = await call('GET', '/test/write-in-get?email=sneaky%40example.test')
  t.equal(answer.status, 200)
  t.same(answer.body, { code: '25006' }, 'read_only_sql_transaction')
  t.equal(await userRows('sneaky@example.test'), 0)
  await assertClean(t)
})

/** Starts a request, waits until its query runs in PostgreSQL, then drops the connection. */
async function abortWhileRunning(t: Test, method: string, path: string, body?: unknown) {
  let request: http.ClientRequest | undefined
  const answer = call(method, path, { body, onRequest: (r) => (request = r) }).then(
    () => 'answered',
    (error: NodeJS.ErrnoException) => error.code ?? 'error'
  )
  t.ok(await eventually(async () => (await sessions()).sleeping > 0), 'the query is running')
  request!.destroy()
  t.equal(await answer, 'ECONNRESET', 'the client gave up before any answer')
}

t.test('a client abort while the query runs rolls back and releases', async (t) => {
  await abortWhileRunning(t, 'GET', '/test/sleep?seconds=0.3')
  await assertClean(t)
  await abortWhileRunning(t, 'POST', '/test/insert-then-sleep', { email: 'aborted@example.test' })
  await assertClean(t)
  t.equal(await userRows('aborted@example.test'), 0, "the aborted mutation's write was rolled back")
  await abortWhileRunning(t, 'GET', '/test/sleep-then-failing-onsend?seconds=0.3')
  await assertClean(t)

  // Counted by route and method, the GET aborted while its request was still arriving as far as
  // Node is concerned, the POST after its body was read in full: Fastify sees the two differently.
  const metrics = async () => (await ctx.app.inject({ method: 'GET', url: '/metrics', headers: ctx.auth.admin() })).body
  const aborted = (route: string, method: string) => `tenant_service_http_requests_aborted_total{route="${route}",method="${method}"} 1`
  t.ok(
    await eventually(async () => {
      const text = await metrics()
      return (
        text.includes(aborted('/test/sleep', 'GET')) &&
        text.includes(aborted('/test/insert-then-sleep', 'POST')) &&
        text.includes(aborted('/test/sleep-then-failing-onsend', 'GET'))
      )
    }),
    'every abort is counted, once, even when a later onSend hook fails on it'
  )
  t.notMatch(await metrics(), /http_request_duration_seconds_count\{route="\/test\/(sleep|insert-then-sleep)"/, 'and neither has a duration')
})

t.test('a statement past PG_STATEMENT_TIMEOUT_MS is 504 STATEMENT_TIMEOUT', async (t) => {
  const answer = await call('GET', `/test/sleep?seconds=${(STATEMENT_TIMEOUT_MS / 1000) * 5}`)
  t.equal(answer.status, 504)
  t.equal(answer.body.code, 'STATEMENT_TIMEOUT')
  await assertClean(t)
})

t.test('an exhausted pool answers 503 DATABASE_BUSY with Retry-After, and recovers', async (t) => {
  // Without read lanes every request, reads included, takes a pooled connection of its own. The
  // holders sleep long enough, and are given time enough to get their connections, for the
  // refused requests below to be refused on a machine under load.
  const pooled = await buildApp({ ...ctx.config, PG_READ_LANES: 0, PG_ACQUIRE_TIMEOUT_MS: 1000, PG_STATEMENT_TIMEOUT_MS: 20_000 }, { beforeReady: testRoutes })
  await pooled.listen({ port: 0, host: '127.0.0.1' })
  const on = { port: (pooled.server.address() as AddressInfo).port }
  const holdSeconds = 6
  const holders = [call('GET', `/test/sleep?seconds=${holdSeconds}`, on), call('GET', `/test/sleep?seconds=${holdSeconds}`, { ...on, tenant: OTHER })]
  t.ok(await eventually(async () => (await sessions()).sleeping === 2), 'both pooled connections are busy')
  const refused = await call('GET', '/users', on)
  t.equal(refused.status, 503)
  t.equal(refused.body.code, 'DATABASE_BUSY')
  t.match(refused.headers['retry-after'], /^\d+$/, 'Retry-After tells the client when to come back')
  const refusedWrite = await call('POST', '/users', { ...on, body: { email: 'busy@example.test', name: 'Busy' } })
  t.equal(refusedWrite.status, 503)
  t.equal(await userRows('busy@example.test'), 0)

  const held = await Promise.all(holders)
  t.same(
    held.map((answer) => answer.status),
    [200, 200],
    'the requests holding the connections completed'
  )
  const pool = pooled.pg.pool
  t.ok(await eventually(() => pool.idleCount === pool.totalCount && pool.waitingCount === 0), 'its connections went back to the pool')
  t.equal((await call('GET', '/', on)).status, 200, 'and it serves again')
  await pooled.close()
  await assertClean(t)
})

t.test('a client that gives up while its request waits for a connection: the connection goes back, and no error is logged', async (t) => {
  const lines: string[] = []
  const pooled = await buildApp(
    { ...ctx.config, PG_READ_LANES: 0, PG_ACQUIRE_TIMEOUT_MS: 10_000, LOG_LEVEL: 'info' },
    { beforeReady: testRoutes, logStream: { write: (line: string) => void lines.push(line) } }
  )
  await pooled.listen({ port: 0, host: '127.0.0.1' })
  const on = { port: (pooled.server.address() as AddressInfo).port }
  const pool = pooled.pg.pool
  const holders = [call('GET', '/test/sleep?seconds=0.5', on), call('GET', '/test/sleep?seconds=0.5', { ...on, tenant: OTHER })]
  t.ok(await eventually(async () => (await sessions()).sleeping === 2), 'both pooled connections are busy')

  let waiter: http.ClientRequest | undefined
  const gaveUp = call('GET', '/users', { ...on, onRequest: (request) => (waiter = request) }).then(
    () => 'answered',
    (error: NodeJS.ErrnoException) => error.code ?? 'error'
  )
  t.ok(await eventually(() => pool.waitingCount === 1), 'a third request waits for a connection')
  waiter!.destroy()
  t.equal(await gaveUp, 'ECONNRESET', 'its client gave up before any answer')

  t.same(
    (await Promise.all(holders)).map((answer) => answer.status),
    [200, 200],
    'the requests holding the connections completed'
  )
  t.ok(await eventually(() => pool.idleCount === pool.totalCount && pool.waitingCount === 0), 'every connection went back to the pool')
  t.equal((await call('GET', '/users', on)).status, 200, 'and it serves again')
  const exposition = (await pooled.inject({ method: 'GET', url: '/metrics' })).body
  t.notMatch(exposition, /http_request_duration_seconds_count\{[^}]*status_code="5\d\d"/, 'no 5xx is counted')
  await pooled.close()

  const entries = lines.map((line) => JSON.parse(line) as { level: number; msg: string; reqId?: string; code?: string })
  t.same(
    entries.filter((entry) => entry.level >= 50).map((entry) => `${entry.msg} ${entry.code ?? ''}`),
    [],
    'a client going away is not an error of the service'
  )
  t.ok(
    entries.some((entry) => entry.level === 30 && entry.msg === 'the connection closed before the answer'),
    'the log says the connection closed before the answer'
  )
  await assertClean(t)
})

t.test('a slow read on the read lane holds up no read that comes after it', async (t) => {
  const answered: string[] = []
  const slow = call('GET', `/test/sleep?seconds=${HOLD_SECONDS}`).then((answer) => {
    answered.push('slow')
    return answer
  })
  t.ok(await eventually(async () => (await sessions()).sleeping === 1), 'a read sleeps on the lane')
  // Reads sent before the lane has been silent for STALL_MS still queue behind it, by design.
  await sleep(STALL_MS * 5)
  const quick = await call('GET', '/users', { tenant: OTHER })
  answered.push('quick')
  t.equal(quick.status, 200, 'a read arriving meanwhile is answered')
  t.equal((await slow).status, 200)
  t.same(answered, ['quick', 'slow'], 'before the slow one: it did not queue behind it on the lane')
  await assertClean(t)
})

t.test('a burst mixing successes, errors, aborts and timeouts leaves the pool whole and tenants apart', async (t) => {
  const outcomes: string[] = []
  const crossTenant: string[] = []
  const jobs: Promise<void>[] = []
  for (let i = 0; i < 40; i++) {
    const tenant = i % 2 ? TENANT : OTHER
    const kind = i % 5
    if (kind === 0 || kind === 1) {
      jobs.push(
        call('GET', '/', { tenant }).then(
          (answer) => {
            outcomes.push(String(answer.status))
            const schema = (answer.body.database as { currentSchema?: string } | undefined)?.currentSchema
            if (answer.status === 200 && schema !== tenant) crossTenant.push(`${tenant} saw ${schema}`)
          },
          (error: Error) => void outcomes.push(error.message)
        )
      )
    } else if (kind === 2) {
      jobs.push(call('GET', '/test/throw-after-query', { tenant }).then((answer) => void outcomes.push(String(answer.status))))
    } else if (kind === 3) {
      let request: http.ClientRequest | undefined
      jobs.push(
        call('GET', '/test/sleep?seconds=0.05', { tenant, onRequest: (r) => (request = r) }).then(
          (answer) => void outcomes.push(String(answer.status)),
          () => void outcomes.push('aborted')
        )
      )
      setTimeout(() => request?.destroy(), 10 + (i % 7) * 5)
    } else {
      jobs.push(
        call('POST', '/test/insert-then-throw', { tenant, body: { email: `burst-${i}@example.test` } }).then(
          (answer) => void outcomes.push(String(answer.status))
        )
      )
    }
  }
  await Promise.all(jobs)
  t.equal(outcomes.length, 40)
  const unexpected = outcomes.filter((outcome) => !['200', '500', '503', 'aborted'].includes(outcome))
  t.same(unexpected, [], 'only successes, handler errors, busy answers and aborts')
  t.same(crossTenant, [], 'no request saw another tenant')
  const { rows } = await ctx.admin.query(
    `SELECT (SELECT count(*) FROM "${TENANT}".users WHERE email LIKE 'burst-%') + (SELECT count(*) FROM "${OTHER}".users WHERE email LIKE 'burst-%') AS count`
  )
  t.equal(Number(rows[0].count), 0, 'every failed mutation was rolled back')
  await assertClean(t)
})
