import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { createTenant, readinessDetails, setupApp, type TestContext } from './helpers/app.ts'
import { startTestIssuer, type TestIssuer } from './helpers/issuer.ts'

const ACME = 'acme-corp'

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

/** Polls readiness until it answers 200; false if it never does within `attempts`. */
async function eventuallyReady(app: FastifyInstance, attempts = 200): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    if ((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode === 200) return true
    await sleep(150)
  }
  return false
}

/** An issuer that is not listening: connections to it are refused until `start()`. */
async function unreachableIssuer(t: Test): Promise<TestIssuer> {
  const issuer = await startTestIssuer()
  await issuer.stop()
  t.teardown(() => issuer.close())
  return issuer
}

type LogLine = { level: number; msg: string; [key: string]: unknown }

function logCollector() {
  const lines: LogLine[] = []
  return { lines, stream: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) } }
}

t.test('unknown key ids: a flood causes at most one JWKS fetch per interval', async (t) => {
  const ctx = await setupApp(t, { JWKS_REFETCH_INTERVAL_MS: '1500' })
  await createTenant(ctx, ACME)
  // The fetch made at start closes the window for one interval; let it pass so the flood may fetch.
  await sleep(1600)
  const before = ctx.issuer.jwksFetches

  const flood = Array.from({ length: 200 }, (_, i) =>
    ctx.app.inject({
      method: 'POST',
      url: '/users',
      headers: { ...bearer(ctx.issuer.token({ tenant: ACME, groups: ['admin'], header: { kid: `unknown-${i}-${randomUUID()}` } })), 'x-tenant-id': ACME },
      payload: { email: `flood-${i}@example.test`, name: 'Flood' }
    })
  )
  const legit = Array.from({ length: 20 }, () => ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(ACME) }))
  const [refused, served] = await Promise.all([Promise.all(flood), Promise.all(legit)])

  t.same([...new Set(refused.map((response) => `${response.statusCode} ${response.json().code}`))], ['401 TOKEN_INVALID'])
  t.same([...new Set(served.map((response) => response.statusCode))], [200], 'callers with known keys are served throughout')
  const fetched = ctx.issuer.jwksFetches - before
  t.ok(fetched >= 1, `an unknown kid does make the service look for new keys (${fetched})`)
  t.ok(fetched <= 2, `200 unknown kids caused ${fetched} JWKS fetches`)
  const written = await ctx.admin.query(`SELECT 1 FROM "${ACME}".users WHERE email LIKE 'flood-%'`)
  t.equal(written.rowCount, 0, 'nothing was written')
})

t.test('key rotation: a new key is learned by one fetch, a withdrawn key stops verifying', async (t) => {
  const ctx = await setupApp(t, { JWKS_REFETCH_INTERVAL_MS: '300' })
  await createTenant(ctx, ACME)
  const oldKey = ctx.issuer.key
  await sleep(350)

  ctx.issuer.rotate({ keepOld: true })
  const before = ctx.issuer.jwksFetches
  const fresh = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME } })
  t.equal(fresh.statusCode, 200, 'a token signed with the new key is accepted')
  t.equal(ctx.issuer.jwksFetches - before, 1, 'after exactly one fetch')
  const old = await ctx.app.inject({
    method: 'GET',
    url: '/users',
    headers: { ...bearer(ctx.issuer.token({ tenant: ACME, key: oldKey })), 'x-tenant-id': ACME }
  })
  t.equal(old.statusCode, 200, 'the old key still verifies while the issuer publishes it')

  await sleep(350)
  ctx.issuer.rotate({ keepOld: false })
  const newest = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME } })
  t.equal(newest.statusCode, 200, 'the newest key is learned')
  const withdrawn = await ctx.app.inject({
    method: 'GET',
    url: '/users',
    headers: { ...bearer(ctx.issuer.token({ tenant: ACME, key: oldKey })), 'x-tenant-id': ACME }
  })
  t.equal(withdrawn.statusCode, 401, 'a key the issuer no longer publishes is refused')
  t.equal(withdrawn.json().code, 'TOKEN_INVALID')
})

t.test('an outage of the issuer does not fail tokens whose key is in hand', async (t) => {
  const ctx = await setupApp(t, { JWKS_REFETCH_INTERVAL_MS: '200' })
  await createTenant(ctx, ACME)
  await sleep(250)

  ctx.issuer.setMode('unavailable')
  const unknown = await ctx.app.inject({
    method: 'GET',
    url: '/users',
    headers: { ...bearer(ctx.issuer.token({ tenant: ACME, header: { kid: 'rotated-away' } })), 'x-tenant-id': ACME }
  })
  t.equal(unknown.statusCode, 401, 'an unknown kid during the outage is refused, not a 5xx')
  t.equal(unknown.json().code, 'TOKEN_INVALID')

  const during = async (label: string) => {
    // A fresh token each time: a repeated one would be served from the verified-token cache.
    const read = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME } })
    t.equal(read.statusCode, 200, `${label}: a read is served`)
    const email = `${label.replace(/\W+/g, '-')}@acme.test`
    const write = await ctx.app.inject({
      method: 'POST',
      url: '/users',
      headers: { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME },
      payload: { email, name: 'During the outage' }
    })
    t.equal(write.statusCode, 201, `${label}: a write is served`)
    t.equal((await ctx.admin.query(`SELECT 1 FROM "${ACME}".users WHERE email = $1`, [email])).rowCount, 1, `${label}: and stored`)
    const ready = await ctx.app.inject({ method: 'GET', url: '/health/ready' })
    t.equal(ready.statusCode, 200, `${label}: still ready, the keys are in hand`)
  }
  await during('issuer answering 503')
  await ctx.issuer.stop()
  await sleep(250)
  await ctx.app.inject({
    method: 'GET',
    url: '/users',
    headers: { ...bearer(ctx.issuer.token({ tenant: ACME, header: { kid: 'another-unknown' } })), 'x-tenant-id': ACME }
  })
  await during('issuer refusing connections')
})

t.test('an unreachable issuer at start: readiness 503 and an error naming it, then ready once it answers', async (t) => {
  const down = await unreachableIssuer(t)
  const logs = logCollector()
  const ctx = await setupApp(t, { JWT_ISSUER: down.url, JWT_CLIENT_ID: down.clientId, LOG_LEVEL: 'info', METRICS_PORT: '0' }, { logStream: logs.stream })

  const ready = await readinessDetails(ctx.app)
  t.equal(ready.statusCode, 503, 'not ready without keys')
  const check = ready.body.checks.jwks
  t.equal(check.ok, false)
  t.match(check.detail, down.jwksUrl, 'the check names the JWKS URL')
  t.match(check.detail, /ECONNREFUSED/, 'and the reason')

  const errors = logs.lines.filter((line) => line.level >= 50 && line.msg.includes(down.url))
  t.ok(errors.length >= 1, 'an error is logged naming the issuer')
  t.match(errors[0]?.msg, /ECONNREFUSED/, 'with the reason')

  const admin = bearer(down.token({ groups: ['admin'] }))
  const early = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: admin })
  t.equal(early.statusCode, 503, 'a token cannot be verified yet: 503, not a verdict on the token')
  t.equal(early.json().code, 'AUTH_UNAVAILABLE')
  t.ok(early.headers['retry-after'], 'with Retry-After')
  const anonymous = await ctx.app.inject({ method: 'GET', url: '/auth/tenants' })
  t.equal(anonymous.json().code, 'TOKEN_MISSING', 'no token is still 401')

  await down.start()
  t.ok(await eventuallyReady(ctx.app), 'ready once the issuer answers, by the background retries')
  const later = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: admin })
  t.equal(later.statusCode, 200, 'and tokens verify')
  t.ok(
    logs.lines.some((line) => line.level === 30 && line.msg.includes(down.jwksUrl)),
    'the recovery is logged'
  )
})

t.test('a wrong user pool (404 from the issuer): readiness 503 with the reason, then ready once it exists', async (t) => {
  const missing = await startTestIssuer()
  t.teardown(() => missing.close())
  missing.setMode('not-found')
  const logs = logCollector()
  const ctx = await setupApp(t, { JWT_ISSUER: missing.url, JWT_CLIENT_ID: missing.clientId, LOG_LEVEL: 'info', METRICS_PORT: '0' }, { logStream: logs.stream })

  const ready = await readinessDetails(ctx.app)
  t.equal(ready.statusCode, 503)
  t.match(ready.body.checks.jwks.detail, /HTTP 404 ResourceNotFoundException/)
  const error = logs.lines.find((line) => line.level >= 50 && line.msg.includes(missing.jwksUrl))
  t.ok(error, 'an error names the JWKS URL')
  t.match(error?.msg, /HTTP 404 ResourceNotFoundException: User pool .* does not exist/, 'with what the issuer said')
  t.match(error?.msg, /user pool id/, 'and a hint')

  missing.setMode('up')
  t.ok(await eventuallyReady(ctx.app), 'ready once the pool answers')
})

for (const [tokenUse, accepted, refused] of [
  ['access', 'access', 'id'],
  ['id', 'id', 'access']
] as const) {
  t.test(`JWT_TOKEN_USE=${tokenUse} refuses ${refused} tokens`, async (t) => {
    const ctx: TestContext = await setupApp(t, { JWT_TOKEN_USE: tokenUse })
    await createTenant(ctx, ACME)
    const ok = await ctx.app.inject({
      method: 'GET',
      url: '/users',
      headers: { ...bearer(ctx.issuer.token({ use: accepted, tenant: ACME })), 'x-tenant-id': ACME }
    })
    t.equal(ok.statusCode, 200, `${accepted} token accepted`)

    const headers = { ...bearer(ctx.issuer.token({ use: refused, tenant: ACME, groups: ['admin'] })), 'x-tenant-id': ACME }
    const read = await ctx.app.inject({ method: 'GET', url: '/users', headers })
    t.equal(read.statusCode, 401, `${refused} token refused`)
    t.equal(read.json().code, 'TOKEN_INVALID')
    const write = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload: { email: 'wrong-use@acme.test', name: 'X' } })
    t.equal(write.statusCode, 401)
    t.equal((await ctx.admin.query(`SELECT 1 FROM "${ACME}".users`)).rowCount, 0, 'nothing written')
    const tenant = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers, payload: { id: 'wrong-use', name: 'X' } })
    t.equal(tenant.statusCode, 401)
    t.equal((await ctx.admin.query(`SELECT 1 FROM public.tenants WHERE id = 'wrong-use'`)).rowCount, 0, 'no tenant created')
  })
}

t.test('TENANT_CLAIM and ADMIN_GROUP name the claim and the group', async (t) => {
  const ctx = await setupApp(t, { TENANT_CLAIM: 'custom:org', ADMIN_GROUP: 'ops' })
  await createTenant(ctx, ACME)
  const viaConfigured = await ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(ACME) })
  t.equal(viaConfigured.statusCode, 200, 'the configured claim binds the tenant')

  const defaultClaim = { ...bearer(ctx.issuer.token({ tenant: ACME })), 'x-tenant-id': ACME }
  const unbound = await ctx.app.inject({ method: 'GET', url: '/users', headers: defaultClaim })
  t.equal(unbound.json().code, 'TENANT_CLAIM_MISSING', 'custom:tenant_id means nothing now')

  const defaultGroup = bearer(ctx.issuer.token({ groups: ['admin'] }))
  const notAdmin = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: defaultGroup })
  t.equal(notAdmin.json().code, 'ADMIN_REQUIRED', 'the admin group is ops, not admin')
})

t.test('a route inside a guarded folder opts out with config: { auth: false }', async (t) => {
  const ctx = await setupApp(
    t,
    {},
    {
      beforeReady: (app) =>
        app
          .register(
            async (scope) => {
              scope.addHook('onRoute', scope.declareBearerAuth('tenant'))
              scope.addHook('onRequest', scope.requireTenantAccess)
              scope.get('/open', { config: { auth: false }, schema: { summary: 'open' } }, async (request) => ({ principal: request.principal }))
              scope.get('/guarded', { schema: { summary: 'guarded' } }, async (request) => ({ subject: request.principal?.subject }))
            },
            { prefix: '/test-guard' }
          )
          .register(
            async (scope) => {
              scope.addHook('onRequest', scope.authenticate)
              scope.get('/whoami', async (request) => ({ tenant: request.principal?.tenant ?? null }))
            },
            { prefix: '/test-any' }
          )
    }
  )
  const open = await ctx.app.inject({ method: 'GET', url: '/test-guard/open' })
  t.equal(open.statusCode, 200, 'the opted-out route needs no token')
  t.same(open.json(), { principal: null })

  const guarded = await ctx.app.inject({ method: 'GET', url: '/test-guard/guarded' })
  t.equal(guarded.statusCode, 401)
  t.equal(guarded.json().code, 'TOKEN_MISSING')
  const claims = ctx.issuer.claims({ tenant: ACME })
  const token = ctx.issuer.token({ claims })
  const withToken = await ctx.app.inject({ method: 'GET', url: '/test-guard/guarded', headers: { ...bearer(token), 'x-tenant-id': ACME } })
  t.same(withToken.json(), { subject: claims.sub }, 'the guard puts the caller on request.principal')

  const anyTenant = await ctx.app.inject({ method: 'GET', url: '/test-any/whoami', headers: bearer(ctx.issuer.token({ tenant: 'globex' })) })
  t.same(anyTenant.json(), { tenant: 'globex' }, 'fastify.authenticate wants a valid token, of any tenant')
  const noToken = await ctx.app.inject({ method: 'GET', url: '/test-any/whoami' })
  t.equal(noToken.json().code, 'TOKEN_MISSING')

  const spec = (await ctx.app.inject({ method: 'GET', url: '/docs/json' })).json()
  t.notOk(spec.paths['/test-guard/open'].get.security, 'the opted-out route is documented as public')
  t.same(spec.paths['/test-guard/guarded'].get.security, [{ bearerAuth: [] }])
})

t.test('tenant resolution refuses a caller bound to another tenant, whatever guard the route chose', async (t) => {
  const GLOBEX = 'globex'
  // A route that only authenticates (any tenant's token) before resolving the tenant and writing:
  // the guard never compares the header with the token, so resolution must.
  const ctx = await setupApp(
    t,
    {},
    {
      beforeReady: (app) =>
        app.post('/test-write', { onRequest: [app.authenticate, app.resolveTenant] }, async (request) => {
          await request.db!.query(`INSERT INTO users (email, name) VALUES ('mole@acme.test', 'Mole')`)
          return { written: true }
        })
    }
  )
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
  const acmeToken = bearer(ctx.issuer.token({ tenant: ACME }))

  const forged = await ctx.app.inject({ method: 'POST', url: '/test-write', headers: { ...acmeToken, 'x-tenant-id': GLOBEX } })
  t.equal(forged.statusCode, 403)
  t.equal(forged.json().code, 'TENANT_MISMATCH')
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "${GLOBEX}".users`)
  t.equal(rows[0].count, 0, 'nothing was written to the other tenant')

  const own = await ctx.app.inject({ method: 'POST', url: '/test-write', headers: { ...acmeToken, 'x-tenant-id': ACME } })
  t.equal(own.statusCode, 200, 'its own tenant is served')
  const admin = await ctx.app.inject({
    method: 'POST',
    url: '/test-write',
    headers: { ...bearer(ctx.issuer.token({ groups: [ctx.config.ADMIN_GROUP] })), 'x-tenant-id': GLOBEX }
  })
  t.equal(admin.statusCode, 200, 'an admin acts on any tenant')
})

t.test('a token accepted earlier is refused once it expires, and writes nothing then', async (t) => {
  const ctx = await setupApp(t, { JWT_CLOCK_TOLERANCE_MS: '0' })
  await createTenant(ctx, ACME)
  const expiresAt = Math.floor(Date.now() / 1000) + 2
  const headers = { ...bearer(ctx.issuer.token({ tenant: ACME, claims: { exp: expiresAt } })), 'x-tenant-id': ACME }
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers })).statusCode, 200, 'accepted while valid')
  t.equal((await ctx.app.inject({ method: 'GET', url: '/users', headers })).statusCode, 200, "and again, from the guard's cache")

  await sleep(Math.max(0, expiresAt * 1000 - Date.now()) + 50)
  const late = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload: { email: 'late@acme.test', name: 'Late' } })
  t.equal(late.statusCode, 401)
  t.equal(late.json().code, 'TOKEN_EXPIRED', 'the cache never outlives the token')
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "${ACME}".users`)
  t.equal(rows[0].count, 0, 'nothing was written')
})
