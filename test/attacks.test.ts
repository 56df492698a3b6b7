/**
 * The service attacked from outside, each rule by the attack that would break it: the rate limit
 * by floods of made-up tenants and by one greedy user, the pool by one tenant's held connections,
 * a slow body by a tenant suspended or deleted meanwhile, pagination by forged cursors, tokens by
 * their issue time, /metrics and readiness by anonymous callers, and bodies by values of the wrong
 * type. Each checks what the attacker got and that nothing was written.
 */
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { tenantRoleName } from '../lib/tenants/index.ts'
import { runInTransaction } from '../lib/transaction.ts'
import { createTenant, readinessDetails, setupApp, type TestContext } from './helpers/app.ts'
import { createSigningKey } from './helpers/issuer.ts'
import { trickle } from './helpers/trickle.ts'
import { eventually } from './helpers/wait.ts'

const ACME = 'acme-corp'
const GLOBEX = 'globex'

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const userCount = async (ctx: TestContext, tenant: string) =>
  (await ctx.admin.query<{ count: number }>(`SELECT count(*)::int AS count FROM "${tenant}".users`)).rows[0].count

/** POST /auth/tenants for `id` again, as a platform admin. */
const recreate = (ctx: TestContext, id: string) =>
  ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: ctx.auth.admin(), payload: { id, name: `${id} again` } })

/** What exists of a tenant id: its registry row, its schema, its role. */
async function traces(ctx: TestContext, id: string) {
  const { rows } = await ctx.admin.query<{ row: boolean; schema: boolean; role: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM public.tenants WHERE id = $1) AS row,
            EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2) AS role`,
    [id, tenantRoleName(ctx.config.TENANT_ROLE_PREFIX, id)]
  )
  return rows[0]
}

/** Tallies answers by status. */
function tally(statuses: number[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const status of statuses) counts[status] = (counts[status] ?? 0) + 1
  return counts
}

t.test('unknown tenant ids are rate limited before they are looked up, and each costs no registry query past the budget', async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '5' })
  await createTenant(ctx, ACME)
  await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${ACME}`, headers: ctx.auth.admin(), payload: { status: 'suspended' } })
  // The registry lookups the service sends, counted as they pass (the pool itself is untouched).
  const pool = ctx.app.pg.pool
  const query = pool.query.bind(pool) as (...args: unknown[]) => unknown
  let lookups = 0
  pool.query = ((...args: unknown[]) => {
    if (typeof args[0] === 'string' && /FROM public\.tenants\s+WHERE id = \$1/.test(args[0])) lookups++
    return query(...args)
  }) as typeof pool.query
  const registryLookups = () => lookups
  const before = registryLookups()

  const answers: number[] = []
  for (let i = 0; i < 300; i++) {
    const response = await ctx.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': `no-such-tenant-${i}` } })
    answers.push(response.statusCode)
  }
  t.same(tally(answers), { 404: 5, 429: 295 }, 'five unknown ids answered 404, then the address is limited')
  t.ok(registryLookups() - before <= 5, `at most the budget reached the registry (${registryLookups() - before} lookups)`)

  const suspended = await ctx.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': ACME } })
  t.equal(suspended.statusCode, 429, "a suspended tenant's 403 is behind the same limit")
})

t.test('requests the guards refuse count against their address: a flood of forged tokens is 429 past the budget, and writes nothing', async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '5' })
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
  // Signed with a stranger's key under the issuer's kid, each one different (no refusal is remembered).
  const attacker = createSigningKey()
  let forgeries = 0
  const forged = () => ({
    ...bearer(ctx.issuer.token({ tenant: ACME, key: attacker, header: { kid: ctx.issuer.key.kid }, claims: { jti: `forged-${forgeries++}` } })),
    'x-tenant-id': ACME
  })
  const mismatched = { ...ctx.auth.tenantUser(GLOBEX), 'x-tenant-id': ACME }
  const send = (headers: Record<string, string>, method: 'GET' | 'POST' = 'GET', url = '/users', remoteAddress?: string) =>
    ctx.app.inject({
      method,
      url,
      headers,
      remoteAddress,
      ...(method === 'POST' && {
        payload: url === '/users' ? { email: 'eve@acme.test', name: 'Eve' } : { filename: 'a.bin', contentType: 'application/octet-stream', size: 1 }
      })
    })

  // The budget of the address: five refusals, whatever refused them.
  const first = [
    await send(forged()),
    await send(forged(), 'POST'),
    await send(forged(), 'GET', '/files'),
    await send(mismatched),
    await send(ctx.auth.tenantUser(ACME), 'GET', '/auth/tenants')
  ]
  t.same(
    first.map((response) => [response.statusCode, response.json().code]),
    [
      [401, 'TOKEN_INVALID'],
      [401, 'TOKEN_INVALID'],
      [401, 'TOKEN_INVALID'],
      [403, 'TENANT_MISMATCH'],
      [403, 'ADMIN_REQUIRED']
    ],
    'the first five refusals are answered as such'
  )
  t.equal(first[4].headers['x-ratelimit-remaining'], '0', 'and each spent the address budget')

  const flood = [
    ...(await Promise.all(Array.from({ length: 20 }, () => send(forged())))),
    await send(forged(), 'POST'),
    await send(forged(), 'POST', '/files'),
    await send(mismatched),
    await send(mismatched, 'POST'),
    await send({ 'x-tenant-id': ACME }),
    await send({ authorization: 'Bearer not-a-token', 'x-tenant-id': ACME }, 'GET', '/files')
  ]
  t.same(tally(flood.map((response) => response.statusCode)), { 429: 26 }, 'past the budget every refusal is 429')
  t.match(flood[0].json(), { code: 'RATE_LIMITED', message: /from this address/ })
  t.match(flood[0].headers['retry-after'], /^\d+$/)
  t.equal(await userCount(ctx, ACME), 0, 'no user was written')
  t.equal((await ctx.admin.query(`SELECT 1 FROM "${ACME}".files`)).rowCount, 0, 'no file was declared')

  // The budget spent is the address's: anonymous requests from it are limited too ...
  t.equal(
    (await ctx.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': ACME } })).statusCode,
    429,
    'an anonymous GET / from the address is limited'
  )
  // ... while a verified caller there spends its tenant's budget, untouched by the flood: forged
  // tokens from a shared address (a NAT, a proxy) cannot lock its genuine users out.
  const genuine = await send(ctx.auth.tenantUser(ACME))
  t.equal(genuine.statusCode, 200, "a valid token from the same address is served: it spends its tenant's budget")
  t.equal(genuine.headers['x-ratelimit-remaining'], '4')
  t.equal((await send(forged(), 'GET', '/users', '203.0.113.9')).statusCode, 401, 'another address has a budget of its own')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401, 'a route outside the limit (/metrics) is refused, never limited')
})

t.test("one caller spends at most RATE_LIMIT_CALLER_SHARE of its tenant's budget; the tenant's others and admins keep working", async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '10', RATE_LIMIT_CALLER_SHARE: '0.5' })
  await createTenant(ctx, ACME)
  const greedy = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  const other = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  const statuses = async (headers: Record<string, string>, count: number) => {
    const seen: number[] = []
    for (let i = 0; i < count; i++) seen.push((await ctx.app.inject({ method: 'GET', url: '/users', headers })).statusCode)
    return tally(seen)
  }
  t.same(await statuses(greedy, 50), { 200: 5, 429: 45 }, 'the greedy caller gets its half, then 429')
  t.same(await statuses(other, 5), { 200: 5 }, "another user of the tenant still has the tenant's other half")
  const admin = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...ctx.auth.admin(), 'x-tenant-id': ACME } })
  t.equal(admin.statusCode, 200, "an admin acting on the tenant spends a budget of its own, not the tenant's")
  const refused = await ctx.app.inject({ method: 'POST', url: '/users', headers: greedy, payload: { email: 'late@acme.test', name: 'Late' } })
  t.equal(refused.statusCode, 429)
  t.match(refused.json().message, /from this caller: at most 5 of the tenant's 10/)
  t.equal(await userCount(ctx, ACME), 0, 'a refused write wrote nothing')
})

t.test('one tenant holding connections cannot take the pool: past TENANT_MAX_CONNECTIONS it waits, then 503; others are served', async (t) => {
  const ctx = await setupApp(t, { PG_POOL_MAX: '4', TENANT_MAX_CONNECTIONS: '2', PG_ACQUIRE_TIMEOUT_MS: '500' })
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
  // acme's writes block on a lock held outside the service, each holding a pooled connection.
  const locker = await ctx.admin.connect()
  t.teardown(() => locker.release())
  await locker.query('BEGIN')
  await locker.query(`LOCK TABLE "${ACME}".users IN ACCESS EXCLUSIVE MODE`)
  const write = (tenant: string, email: string) =>
    ctx.app.inject({ method: 'POST', url: '/users', headers: ctx.auth.tenantUser(tenant), payload: { email, name: 'N' } })
  const blocked = [write(ACME, 'one@acme.test'), write(ACME, 'two@acme.test')]
  const waiting = async () =>
    (
      await ctx.admin.query<{ count: number }>(
        `SELECT count(*)::int AS count FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`
      )
    ).rows[0].count
  t.ok(await eventually(async () => (await waiting()) === 2, 10_000), "two of acme's writes hold connections, waiting on the lock")

  const third = await write(ACME, 'three@acme.test')
  t.equal(third.statusCode, 503, "a third waited for one of acme's connections, none came back in time: refused, while the pool had two free")
  t.equal(third.json().code, 'DATABASE_BUSY')
  const neighbour = await write(GLOBEX, 'one@globex.test')
  t.equal(neighbour.statusCode, 201, 'another tenant is served meanwhile')

  await locker.query('COMMIT')
  t.same(
    (await Promise.all(blocked)).map((response) => response.statusCode),
    [201, 201],
    'the held writes complete'
  )
  t.equal(await userCount(ctx, ACME), 2, 'the refused write wrote nothing')
  t.equal((await write(ACME, 'four@acme.test')).statusCode, 201, 'and acme is served again once its connections are back')
})

t.test("a mutation's transaction carries idle_in_transaction_session_timeout", async (t) => {
  const ctx = await setupApp(t, { PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: '7000' })
  await createTenant(ctx, ACME)
  const tenant = await ctx.app.tenantDb.lookup(ACME)
  const handle = ctx.app.tenantDb.open(tenant!, false)
  const { rows } = await handle.query<{ timeout: string }>("SELECT current_setting('idle_in_transaction_session_timeout') AS timeout")
  await handle.finish(false)
  t.equal(rows[0].timeout, '7s')
})

t.test('a control-plane transaction left idle is ended by PostgreSQL after PG_IDLE_IN_TRANSACTION_TIMEOUT_MS', async (t) => {
  const ctx = await setupApp(t, { PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: '300' })
  const sessionGone = (pid: number) => async () => (await ctx.admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 0
  const stalled = runInTransaction(ctx.app.pg.pool, async (client) => {
    const { rows } = await client.query<{ pid: number; timeout: string }>(
      "SELECT pg_backend_pid() AS pid, current_setting('idle_in_transaction_session_timeout') AS timeout"
    )
    t.equal(rows[0].timeout, '300ms', 'set in the transaction')
    // Whatever the work waits for outside the database, the server does not wait with it.
    t.ok(await eventually(sessionGone(rows[0].pid), 5000, 50), 'PostgreSQL ended the idle session')
    await client.query('SELECT 1')
  })
  await t.rejects(stalled, 'the stalled transaction fails; nothing of it is committed')
  const { rows } = await ctx.admin.query(
    `SELECT count(*)::int AS count FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`
  )
  t.equal(rows[0].count, 0, 'no session is left idle in a transaction')
  await createTenant(ctx, ACME)
  t.pass('and the control plane keeps working')
})

t.test('a write re-checks its tenant at its first query: suspended meanwhile is 403, deleted meanwhile is 404, never a 5xx', async (t) => {
  // Requests whose tenant was resolved, and whose body is now awaited.
  let awaitingBody = 0
  const ctx = await setupApp(
    t,
    {},
    { beforeRegister: (app) => app.addHook('preParsing', async (request) => void (request.url === '/users' && awaitingBody++)) }
  )
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const port = (ctx.app.server.address() as AddressInfo).port

  const slowWrite = await trickle(port, '/users', ctx.auth.tenantUser(ACME), JSON.stringify({ email: 'slow@acme.test', name: 'Slow' }))
  t.ok(await eventually(() => awaitingBody === 1), 'the write was let in; its body is on its way')
  const suspend = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${ACME}`, headers: ctx.auth.admin(), payload: { status: 'suspended' } })
  t.equal(suspend.statusCode, 200)
  const suspended = await slowWrite()
  t.equal(suspended.status, 403, suspended.body)
  t.match(JSON.parse(suspended.body), { code: 'TENANT_SUSPENDED' })
  t.equal(await userCount(ctx, ACME), 0, 'the write of a tenant suspended while its body arrived wrote nothing')

  const doomedWrite = await trickle(port, '/users', ctx.auth.tenantUser(GLOBEX), JSON.stringify({ email: 'slow@globex.test', name: 'Slow' }))
  t.ok(await eventually(() => awaitingBody === 2), 'the second write was let in too')
  const deleted = await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${GLOBEX}`, headers: ctx.auth.admin() })
  t.equal(deleted.statusCode, 204)
  const vanished = await doomedWrite()
  t.equal(vanished.status, 404, `a tenant deleted while the body arrived is 404: ${vanished.body}`)
  t.match(JSON.parse(vanished.body), { code: 'TENANT_NOT_FOUND' })
  const schemas = await ctx.admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [GLOBEX])
  t.equal(schemas.rowCount, 0, 'and nothing of it came back')
})

t.test('forged pagination cursors are 400 INVALID_CURSOR on every listing', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, ACME)
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const uuid = '00000000-0000-0000-0000-000000000000'
  const instant = '2024-01-01T00:00:00.000Z'
  /** Refused on every listing, whatever its ids are. */
  const forged = [
    encode(['-271821-04-20T00:00:00Z', uuid]),
    encode(['2024-01-01T00:00:00.000+14:30', uuid]),
    encode(['Mon Jan 01 2024 00:00:00 GMT+1400', uuid]),
    encode(['+275760-09-13T00:00:00.000Z', 'acme-corp']),
    encode(['+275760-09-13T00:00:00.000Z', uuid]),
    encode(['2024-02-30T00:00:00.000Z', 'acme-corp']),
    encode([instant, "x' OR 1=1 --"]),
    // Wrong lengths and shapes.
    encode([instant, uuid, 'extra']),
    encode([instant]),
    encode([]),
    encode([[instant, uuid]]),
    encode({ createdAt: instant, id: 'acme-corp' }),
    encode(null),
    encode(instant),
    // Elements that are not strings.
    encode([1704067200000, uuid]),
    encode([instant, 42]),
    encode([instant, null]),
    encode([{ instant }, uuid]),
    encode([instant, [uuid]]),
    encode([true, 'acme-corp']),
    encode(12),
    // Years PostgreSQL cannot take, or not in the four digits the service writes.
    encode(['0000-01-01T00:00:00.000Z', uuid]),
    encode(['0000-01-01T00:00:00.000Z', 'acme-corp']),
    encode(['10000-01-01T00:00:00.000Z', uuid]),
    encode(['+010000-01-01T00:00:00.000Z', 'acme-corp']),
    encode(['999999-01-01T00:00:00.000Z', uuid]),
    encode(['-000001-01-01T00:00:00.000Z', 'acme-corp']),
    // Ids that are neither a UUID nor a tenant id.
    encode([instant, '00000000-0000-0000-0000-00000000000g']),
    encode([instant, '00000000000000000000000000000000']),
    encode([instant, '{00000000-0000-0000-0000-000000000000}']),
    encode([instant, '00000000-0000-0000-0000-0000000000000']),
    encode([instant, '00000000-0000-0000-0000-000000000000 ']),
    encode([instant, '']),
    'bm90IGpzb24'
  ]
  /** A tenant id where a UUID belongs, and a UUID where a tenant id does. */
  const wrongKind = { uuid: [encode([instant, 'acme-corp']), encode(['9999-12-31T23:59:59.999Z', 'a-b'])], tenant: [encode([instant, uuid])] }
  const listings = [
    { url: '/users', headers: ctx.auth.tenantUser(ACME), ids: 'uuid' },
    { url: '/files', headers: ctx.auth.tenantUser(ACME), ids: 'uuid' },
    { url: '/auth/tenants', headers: ctx.auth.admin(), ids: 'tenant' }
  ] as const
  for (const { url, headers, ids } of listings) {
    for (const cursor of [...forged, ...wrongKind[ids]]) {
      const response = await ctx.app.inject({ method: 'GET', url: `${url}?cursor=${cursor}`, headers })
      const label = `${url} with ${Buffer.from(cursor, 'base64url').toString()}`
      t.equal(response.statusCode, 400, label)
      t.equal(response.json().code, 'INVALID_CURSOR', label)
    }
  }
  // The form the service writes, at the ends of the years it can write, is accepted.
  for (const at of [instant, '0001-01-01T00:00:00.000Z', '9999-12-31T23:59:59.999Z']) {
    for (const { url, headers, ids } of listings) {
      const cursor = encode([at, ids === 'uuid' ? uuid : 'acme-corp'])
      const response = await ctx.app.inject({ method: 'GET', url: `${url}?cursor=${cursor}`, headers })
      t.equal(response.statusCode, 200, `${url} after ${at}`)
    }
  }
})

t.test('token issue times: required, not in the future, a lifetime within JWT_MAX_AGE, and never before the tenant', async (t) => {
  // No clock tolerance, so that two seconds are enough to tell a token from before a tenant.
  const ctx = await setupApp(t, { JWT_MAX_AGE: '1 hour', JWT_CLOCK_TOLERANCE_MS: '0' })
  await createTenant(ctx, ACME)
  const now = Math.floor(Date.now() / 1000)
  const call = (claims: Record<string, unknown>) =>
    ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(ctx.issuer.token({ tenant: ACME, claims })), 'x-tenant-id': ACME } })
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['no iat', { iat: undefined }, /issue time/],
    ['an iat an hour ahead', { iat: now + 3600, exp: now + 3700 }, /future/],
    ['a lifetime of two hours', { iat: now, exp: now + 7200 }, /longer/]
  ]
  for (const [label, claims, message] of cases) {
    const response = await call(claims)
    t.equal(response.statusCode, 401, label)
    t.match(response.json(), { code: 'TOKEN_INVALID', message }, label)
  }
  t.equal((await call({ iat: now, exp: now + 3600 })).statusCode, 200, 'an hour is within JWT_MAX_AGE')

  // A token of the tenant's earlier incarnation: issued, then the tenant deleted and created again.
  const earlier = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers: earlier })).statusCode, 200, 'it works while its tenant lives')
  t.equal((await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${ACME}`, headers: ctx.auth.admin() })).statusCode, 204)
  // The id is taken again once the recreation interval (here 1 s: no tolerance) has passed.
  t.ok(await eventually(async () => (await recreate(ctx, ACME)).statusCode === 201, 10_000, 100), 'the tenant is created again')
  const replayed = await ctx.app.inject({ method: 'POST', url: '/users', headers: earlier, payload: { email: 'ghost@acme.test', name: 'Ghost' } })
  t.equal(replayed.statusCode, 401, 'the old token is refused by the new tenant of the same id')
  t.match(replayed.json(), { code: 'TOKEN_INVALID', message: /before its tenant was created/ })
  t.equal(await userCount(ctx, ACME), 0, 'and wrote nothing')
  const fresh = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers: fresh })).statusCode, 200, 'a token issued since is accepted')
})

t.test('a deleted tenant id is refused 409 TENANT_RECENTLY_DELETED until tokens of its two lives can be told apart; then old tokens are 401', async (t) => {
  // The interval is 2 × JWT_CLOCK_TOLERANCE_MS + 1 s: 1.4 s here (11 s with the default 5 s).
  const ctx = await setupApp(t, { JWT_CLOCK_TOLERANCE_MS: '200' })
  await createTenant(ctx, ACME)
  const earlier = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers: earlier })).statusCode, 200, 'the token works while its tenant lives')
  t.equal((await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${ACME}`, headers: ctx.auth.admin() })).statusCode, 204)

  const refused = await recreate(ctx, ACME)
  t.equal(refused.statusCode, 409, `created again at once: ${refused.body}`)
  t.match(refused.json(), { code: 'TENANT_RECENTLY_DELETED', message: /retry in \d+ s/ })
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 2, `Retry-After is the whole seconds left (${refused.headers['retry-after']})`)
  t.same(await traces(ctx, ACME), { row: false, schema: false, role: false }, 'no registry row, schema or role was created')
  const meanwhile = await ctx.app.inject({ method: 'POST', url: '/users', headers: earlier, payload: { email: 'ghost@acme.test', name: 'Ghost' } })
  t.equal(meanwhile.statusCode, 404, 'the old token finds no tenant meanwhile')

  await sleep(retryAfter * 1000)
  const created = await recreate(ctx, ACME)
  t.equal(created.statusCode, 201, `created again after Retry-After: ${created.body}`)
  const read = await ctx.app.inject({ method: 'GET', url: '/users', headers: earlier })
  t.equal(read.statusCode, 401, 'the old token is refused by the new tenant')
  t.match(read.json(), { code: 'TOKEN_INVALID', message: /before its tenant was created/ })
  const write = await ctx.app.inject({ method: 'POST', url: '/users', headers: earlier, payload: { email: 'ghost@acme.test', name: 'Ghost' } })
  t.equal(write.statusCode, 401, 'and cannot write')
  t.equal(await userCount(ctx, ACME), 0, 'nothing was written in the new tenant')
  const fresh = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers: fresh })).statusCode, 200, "the new tenant's tokens work")
  const { rows } = await ctx.admin.query('SELECT count(*)::int AS count FROM public.tenant_tombstones WHERE tenant_id = $1', [ACME])
  t.equal(rows[0].count, 0, 'the creation pruned the tombstone it outlived')
})

t.test('a write let in under a tenant that is deleted and created again before its body arrives lands nowhere: 404', async (t) => {
  let awaitingBody = 0
  // No tolerance: the id may be taken again 1 s after the deletion.
  const ctx = await setupApp(
    t,
    { JWT_CLOCK_TOLERANCE_MS: '0' },
    { beforeRegister: (app) => app.addHook('preParsing', async (request) => void (request.url === '/users' && awaitingBody++)) }
  )
  await createTenant(ctx, ACME)
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const port = (ctx.app.server.address() as AddressInfo).port

  const slowWrite = await trickle(port, '/users', ctx.auth.tenantUser(ACME), JSON.stringify({ email: 'ghost@acme.test', name: 'Ghost' }))
  t.ok(await eventually(() => awaitingBody === 1), 'the write was let in; its body is on its way')
  t.equal((await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${ACME}`, headers: ctx.auth.admin() })).statusCode, 204)
  t.ok(await eventually(async () => (await recreate(ctx, ACME)).statusCode === 201, 10_000, 100), 'the id is taken again, same schema and role names')
  const landed = await slowWrite()
  t.equal(landed.status, 404, `the write of the earlier tenant is 404: ${landed.body}`)
  t.match(JSON.parse(landed.body), { code: 'TENANT_NOT_FOUND' })
  t.equal(await userCount(ctx, ACME), 0, 'nothing reached the new tenant')
})

t.test('/metrics and readiness details are not for anonymous callers; per-tenant counts only count verified callers', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, ACME)
  t.equal((await ctx.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401, 'anonymous /metrics is refused')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/metrics', headers: ctx.auth.tenantUser(ACME) })).statusCode, 403, "a tenant's token is not enough")

  for (let i = 0; i < 20; i++) await ctx.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': ACME } })
  await ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(ACME) })
  const exposition = (await ctx.app.inject({ method: 'GET', url: '/metrics', headers: ctx.auth.admin() })).body
  t.match(exposition, `tenant_service_tenant_requests_total{tenant="${ACME}"} 1`, 'anonymous GET / did not inflate the count')

  const headsBefore = ctx.s3!.requests.filter((request) => request.method === 'HEAD').length
  const answers = await Promise.all(Array.from({ length: 200 }, () => ctx.app.inject({ method: 'GET', url: '/health/ready' })))
  t.same(tally(answers.map((answer) => answer.statusCode)), { 200: 200 })
  t.same(Object.keys(answers[0].json()), ['status'], 'anonymous readiness tells the status only')
  t.notMatch(answers[0].body, /bucket|http:|jwks/i, 'no bucket, issuer or reason')
  const heads = ctx.s3!.requests.filter((request) => request.method === 'HEAD').length - headsBefore
  t.ok(heads <= 2, `200 probes made ${heads} bucket checks, not 200`)
})

t.test('METRICS_PORT: /metrics and readiness details on their own port, and not on the public one', async (t) => {
  const ctx = await setupApp(t, { METRICS_PORT: '0' })
  await createTenant(ctx, ACME)
  t.equal((await ctx.app.inject({ method: 'GET', url: '/metrics', headers: ctx.auth.admin() })).statusCode, 404, 'the public port has no /metrics')
  const port = ctx.app.metricsAddress()!.port
  const scrape = await fetch(`http://127.0.0.1:${port}/metrics`)
  t.equal(scrape.status, 200)
  t.match(await scrape.text(), /http_request_duration_seconds/)
  const details = await readinessDetails(ctx.app)
  t.equal(details.statusCode, 200)
  t.match(details.body.checks, { database: { ok: true }, jwks: { ok: true } })
  t.same(await (await fetch(`http://127.0.0.1:${port}/health/ready`)).json(), { status: 'ready' }, 'without ?verbose, the status only')
  t.equal((await fetch(`http://127.0.0.1:${port}/users`)).status, 404, 'nothing of the API is served there')
})

t.test('JSON bodies are validated strictly: no value is coerced into the type the schema wants', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, ACME)
  const headers = ctx.auth.tenantUser(ACME)
  for (const payload of [
    { email: 'a@acme.test', name: 12 },
    { email: ['a@acme.test'], name: 'A' },
    { email: 'a@acme.test', name: ['A'] },
    { email: 'a@acme.test', name: true }
  ]) {
    const response = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
  }
  t.equal(await userCount(ctx, ACME), 0, 'no user was written')
  for (const size of ['1e3', '1000', true, [1000], null]) {
    const response = await ctx.app.inject({ method: 'POST', url: '/files', headers, payload: { filename: 'a.txt', contentType: 'text/plain', size } })
    t.equal(response.statusCode, 400, `size ${JSON.stringify(size)}`)
  }
  const files = await ctx.admin.query(`SELECT 1 FROM "${ACME}".files`)
  t.equal(files.rowCount, 0, 'no file was declared')

  // The PATCH routes and the tenant creation: a value of the wrong type is refused, never coerced.
  const admin = ctx.auth.admin()
  const created = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload: { email: 'ada@acme.test', name: 'Ada' } })
  t.equal(created.statusCode, 201)
  const user = created.json()
  for (const payload of [
    { name: 12 },
    { name: true },
    { name: ['Ada'] },
    { name: null },
    { email: ['ada@acme.test'] },
    { email: 12 },
    { role: ['admin'] },
    { role: 1 },
    { role: true },
    { name: { toString: 'Eve' } }
  ]) {
    const response = await ctx.app.inject({ method: 'PATCH', url: `/users/${user.id}`, headers: { ...admin, 'x-tenant-id': ACME }, payload })
    t.equal(response.statusCode, 400, `PATCH /users/:id ${JSON.stringify(payload)}`)
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  const stored = await ctx.admin.query(`SELECT email, name, role, updated_at FROM "${ACME}".users`)
  t.same(
    stored.rows.map(({ email, name, role }) => ({ email, name, role })),
    [{ email: 'ada@acme.test', name: 'Ada', role: 'member' }],
    'the user is unchanged'
  )
  t.equal(stored.rows[0].updated_at.toISOString(), user.updatedAt, 'and was not written at all')

  const tenantBefore = (await ctx.admin.query('SELECT name, status, updated_at FROM public.tenants WHERE id = $1', [ACME])).rows[0]
  for (const payload of [
    { name: 12 },
    { name: ['Acme'] },
    { name: true },
    { status: ['active'] },
    { status: ['suspended'] },
    { status: 1 },
    { status: null },
    { status: true }
  ]) {
    const response = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${ACME}`, headers: admin, payload })
    t.equal(response.statusCode, 400, `PATCH /auth/tenants/:id ${JSON.stringify(payload)}`)
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  t.same((await ctx.admin.query('SELECT name, status, updated_at FROM public.tenants WHERE id = $1', [ACME])).rows[0], tenantBefore, 'the tenant is unchanged')

  const tenantsBefore = (await ctx.admin.query('SELECT id FROM public.tenants ORDER BY id')).rows
  for (const payload of [
    { id: 'numbers', name: 12 },
    { id: 'arrays', name: ['Arrays'] },
    { id: 'booleans', name: true },
    { id: ['wrapped'], name: 'Wrapped' },
    { id: 12345, name: 'Digits' },
    { id: 'admins', name: 'Admins', admin: { email: ['boss@admins.test'], name: 'Boss' } },
    { id: 'admins', name: 'Admins', admin: { email: 'boss@admins.test', name: 7 } },
    { id: 'admins', name: 'Admins', admin: [{ email: 'boss@admins.test', name: 'Boss' }] },
    { id: 'admins', name: 'Admins', admin: 'boss@admins.test' }
  ]) {
    const response = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: admin, payload })
    t.equal(response.statusCode, 400, `POST /auth/tenants ${JSON.stringify(payload)}`)
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  t.same((await ctx.admin.query('SELECT id FROM public.tenants ORDER BY id')).rows, tenantsBefore, 'no tenant was created')
  const schemas = await ctx.admin.query(`SELECT nspname FROM pg_namespace WHERE nspname IN ('numbers', 'arrays', 'booleans', 'wrapped', '12345', 'admins')`)
  t.same(schemas.rows, [], 'and no schema')

  const limit = await ctx.app.inject({ method: 'GET', url: '/users?limit=5', headers })
  t.equal(limit.statusCode, 200, 'query strings still read "5" as a number')
})
