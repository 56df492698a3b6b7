import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { eventually } from './helpers/wait.ts'

/**
 * Isolation under load (DESIGN §8): thousands of mixed-tenant requests at high concurrency through
 * a pool of two connections, with client aborts and failing handlers injected. No response may
 * carry another tenant's rows, and afterwards no connection may be left in a transaction.
 */

const SEED = 0x5eed_2026
const TOTAL = 2400
const CONCURRENCY = 64
const ABORT_RATE = 0.1
const TENANTS = ['soak-alpha', 'soak-bravo', 'soak-charlie', 'soak-delta', 'soak-echo', 'soak-foxtrot']
const USERS_PER_TENANT = 6

/** Every address the test writes names its tenant: `<local>@<tenant>.test`. */
const emailOf = (local: string, tenant: string) => `${local}@${tenant}.test`
const TENANT_IN_TEXT = /@(soak-[a-z]+)\.test/g

/** mulberry32: a small seeded generator, so a failing run can be replayed exactly. */
function random(seed: number) {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let x = state
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Test-only routes, tenant-scoped and guarded exactly as the service's own, that fail after touching the database. */
function faultyRoutes(app: FastifyInstance) {
  const scoped = { onRequest: [app.requireTenantAccess, app.resolveTenant] }
  app.get('/test/read-then-throw', scoped, async (request) => {
    await request.db!.query('SELECT email FROM users')
    throw new Error('handler bug after a read')
  })
  app.post<{ Body: { email: string } }>('/test/write-then-throw', scoped, async (request) => {
    await request.db!.query(`INSERT INTO users (email, name) VALUES ($1, 'Doomed')`, [request.body.email])
    throw new Error('handler bug after a write')
  })
}

interface Plan {
  kind: 'list' | 'get-own' | 'get-foreign' | 'create' | 'health' | 'read-throw' | 'write-throw'
  tenant: string
  admin: boolean
  method: 'GET' | 'POST'
  path: string
  body?: Record<string, string>
  /** Milliseconds after which the client destroys the socket, when this request is to be aborted. */
  abortAfterMs?: number
}

interface Outcome {
  plan: Plan
  status?: number
  body?: string
  aborted?: boolean
  error?: string
}

let ctx: TestContext
let port: number
const userIds = new Map<string, string[]>()

t.before(async () => {
  // A generous wait for a connection: on a busy machine the queue of 64 callers must not turn into
  // 503s, while a leaked connection still would.
  ctx = await setupApp(
    t,
    { PG_POOL_MAX: '2', TENANT_MAX_CONNECTIONS: '2', PG_ACQUIRE_TIMEOUT_MS: '10000', RATE_LIMIT_MAX: '1000000' },
    { beforeReady: faultyRoutes }
  )
  for (const tenant of TENANTS) {
    await createTenant(ctx, tenant)
    const { rows } = await ctx.admin.query<{ id: string }>(
      `INSERT INTO "${tenant}".users (email, name) SELECT format('seed-%s@%s.test', n, $1::text), format('Seed %s', n)
         FROM generate_series(1, ${USERS_PER_TENANT}) AS n RETURNING id`,
      [tenant]
    )
    userIds.set(
      tenant,
      rows.map((row) => row.id)
    )
  }
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  port = (ctx.app.server.address() as AddressInfo).port
})

function plan(next: () => number, index: number): Plan {
  const pick = <T>(items: readonly T[]) => items[Math.floor(next() * items.length)]
  const tenant = pick(TENANTS)
  const admin = next() < 0.1
  const abortAfterMs = next() < ABORT_RATE ? Math.floor(next() * 15) : undefined
  const roll = next()
  const base = { tenant, admin, abortAfterMs }
  if (roll < 0.3) return { ...base, kind: 'list', method: 'GET', path: '/users?limit=100' }
  if (roll < 0.45) return { ...base, kind: 'get-own', method: 'GET', path: `/users/${pick(userIds.get(tenant)!)}` }
  if (roll < 0.55) {
    const other = pick(TENANTS.filter((candidate) => candidate !== tenant))
    return { ...base, kind: 'get-foreign', method: 'GET', path: `/users/${pick(userIds.get(other)!)}` }
  }
  if (roll < 0.7) {
    return { ...base, kind: 'create', method: 'POST', path: '/users', body: { email: emailOf(`soak-${index}`, tenant), name: `Soak ${index}` } }
  }
  if (roll < 0.82) return { ...base, kind: 'health', method: 'GET', path: '/' }
  if (roll < 0.93) return { ...base, kind: 'read-throw', method: 'GET', path: '/test/read-then-throw' }
  return { ...base, kind: 'write-throw', method: 'POST', path: '/test/write-then-throw', body: { email: emailOf(`doomed-${index}`, tenant) } }
}

function send(agent: http.Agent, item: Plan): Promise<Outcome> {
  const headers: Record<string, string> = item.admin ? { ...ctx.auth.admin(), 'x-tenant-id': item.tenant } : ctx.auth.tenantUser(item.tenant)
  const payload = item.body ? JSON.stringify(item.body) : undefined
  if (payload) headers['content-type'] = 'application/json'
  return new Promise((resolve) => {
    const outcome: Outcome = { plan: item }
    const request = http.request({ host: '127.0.0.1', port, method: item.method, path: item.path, headers, agent }, (response) => {
      let text = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => (text += chunk))
      response.on('end', () => resolve({ ...outcome, status: response.statusCode, body: text }))
      response.on('error', () => resolve({ ...outcome, aborted: true }))
    })
    request.on('error', (error: NodeJS.ErrnoException) => {
      resolve(outcome.aborted ? outcome : { ...outcome, error: error.code ?? error.message })
    })
    if (item.abortAfterMs !== undefined) {
      setTimeout(() => {
        outcome.aborted = true
        request.destroy()
      }, item.abortAfterMs)
    }
    request.end(payload)
  })
}

/** What each kind of request may answer; anything else is a failure of the test. */
const EXPECTED: Record<Plan['kind'], number[]> = {
  list: [200, 503],
  'get-own': [200, 503],
  'get-foreign': [404, 503],
  create: [201, 503],
  health: [200, 503],
  'read-throw': [500, 503],
  'write-throw': [500, 503]
}

t.test(`${TOTAL} mixed-tenant requests at concurrency ${CONCURRENCY} on a pool of 2, with aborts and failing handlers`, async (t) => {
  const next = random(SEED)
  const plans = Array.from({ length: TOTAL }, (_, index) => plan(next, index))
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY })
  t.teardown(() => agent.destroy())

  const outcomes: Outcome[] = []
  let cursor = 0
  const worker = async () => {
    while (cursor < plans.length) outcomes.push(await send(agent, plans[cursor++]))
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  t.equal(outcomes.length, TOTAL, 'every request finished, one way or another')

  const answered = outcomes.filter((outcome) => outcome.status !== undefined)
  const aborted = outcomes.filter((outcome) => outcome.status === undefined && outcome.aborted)
  const failed = outcomes.filter((outcome) => outcome.status === undefined && !outcome.aborted)
  const byStatus: Record<number, number> = {}
  for (const outcome of answered) byStatus[outcome.status!] = (byStatus[outcome.status!] ?? 0) + 1
  t.comment(`seed ${SEED}: ${answered.length} answered ${JSON.stringify(byStatus)}, ${aborted.length} aborted by the client`)
  t.same(
    failed.map((outcome) => outcome.error),
    [],
    'no request failed without the client aborting it'
  )
  t.ok(aborted.length >= TOTAL * ABORT_RATE * 0.5, `aborts were injected (${aborted.length})`)

  const unexpected = answered.filter((outcome) => !EXPECTED[outcome.plan.kind].includes(outcome.status!))
  t.same(
    unexpected.slice(0, 10).map((outcome) => `${outcome.plan.method} ${outcome.plan.path} (${outcome.plan.kind}): ${outcome.status} ${outcome.body}`),
    [],
    'every answer is the one its kind of request calls for'
  )
  t.ok((byStatus[200] ?? 0) + (byStatus[201] ?? 0) > TOTAL / 2, 'most requests succeeded')
  t.ok((byStatus[500] ?? 0) > 0, 'handlers failed along the way')

  // The isolation figure: rows of another tenant in any response.
  const leaks: string[] = []
  for (const outcome of answered) {
    for (const [, seen] of (outcome.body ?? '').matchAll(TENANT_IN_TEXT)) {
      if (seen !== outcome.plan.tenant) leaks.push(`${outcome.plan.tenant} got a row of ${seen}: ${outcome.plan.method} ${outcome.plan.path}`)
    }
    if (outcome.plan.kind === 'health' && outcome.status === 200) {
      const schema = (JSON.parse(outcome.body!) as { database: { currentSchema: string } }).database.currentSchema
      if (schema !== outcome.plan.tenant) leaks.push(`${outcome.plan.tenant} ran in schema ${schema}`)
    }
  }
  t.same(leaks, [], 'zero rows of another tenant in any response')
  const listed = answered.filter((outcome) => outcome.plan.kind === 'list' && outcome.status === 200)
  t.ok(
    listed.every((outcome) => (JSON.parse(outcome.body!) as { items: unknown[] }).items.length >= USERS_PER_TENANT),
    `every listing returned its tenant's rows (${listed.length} listings)`
  )

  // What was written landed in the right schema, and failed requests wrote nothing.
  for (const tenant of TENANTS) {
    const { rows } = await ctx.admin.query<{ foreign: number; doomed: number }>(
      `SELECT count(*) FILTER (WHERE email NOT LIKE $1)::int AS foreign, count(*) FILTER (WHERE email LIKE 'doomed-%')::int AS doomed
         FROM ${`"${tenant}"`}.users`,
      [`%@${tenant}.test`]
    )
    t.same(rows[0], { foreign: 0, doomed: 0 }, `${tenant}: only its own rows, none from a failed handler`)
  }
  const created = answered.filter((outcome) => outcome.plan.kind === 'create' && outcome.status === 201)
  for (const outcome of created.slice(0, 50)) {
    const { rows } = await ctx.admin.query(`SELECT 1 FROM ${`"${outcome.plan.tenant}"`}.users WHERE email = $1`, [outcome.plan.body!.email])
    if (rows.length !== 1) t.fail(`the user created by a 201 is missing: ${outcome.plan.body!.email}`)
  }

  // Nothing left behind: no open transaction, and a whole, idle pool.
  const pool = ctx.app.pg.pool
  const idleInTransaction = async () =>
    (
      await ctx.admin.query<{ count: number }>(
        `SELECT count(*)::int AS count FROM pg_stat_activity
          WHERE datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()`
      )
    ).rows[0].count
  t.ok(
    await eventually(async () => (await idleInTransaction()) === 0 && pool.idleCount === pool.totalCount && pool.waitingCount === 0, 15_000),
    'the pool settles'
  )
  t.equal(await idleInTransaction(), 0, 'zero connections idle in transaction')
  t.ok(pool.totalCount <= 2, `the pool stays within PG_POOL_MAX (${pool.totalCount})`)
  t.equal(pool.waitingCount, 0, 'nobody waits for a connection')
  t.equal(pool.idleCount, pool.totalCount, 'every pooled connection is idle')

  for (const tenant of TENANTS) {
    const last = await send(agent, { kind: 'list', tenant, admin: false, method: 'GET', path: '/users?limit=100' })
    t.equal(last.status, 200, `${tenant}: a final request succeeds`)
    t.same([...new Set([...(last.body ?? '').matchAll(TENANT_IN_TEXT)].map((match) => match[1]))], [tenant])
  }
})
