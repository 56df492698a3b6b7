/**
 * lib/readiness.ts on its own: checks run at most once per cache period whoever asks, and a check
 * that starts or stops failing is told once, not at every probe. Then /health/ready as served, on
 * the public port and on METRICS_PORT: what a 503 says and the request id it carries.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createReadiness } from '../lib/readiness.ts'
import { setupApp } from './helpers/app.ts'
import { createSigningKey, signToken } from './helpers/issuer.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

t.test('checks are shared for the cache period, and each change of a check is told once', async (t) => {
  const changes: [string, boolean, string | undefined, boolean][] = []
  const readiness = createReadiness({ cacheMs: 100, onChange: (...change) => changes.push(change) })
  let calls = 0
  let up = false
  readiness.addCheck('store', async () => {
    calls++
    if (!up) throw new Error('not there yet')
  })

  const first = await Promise.all(Array.from({ length: 50 }, () => readiness.evaluate()))
  t.equal(calls, 1, '50 probes at once, one check')
  t.same(first[0], { ready: false, checks: { store: { ok: false, detail: 'not there yet' } } })
  await readiness.evaluate()
  t.equal(calls, 1, 'a probe within the period is answered from it')

  await sleep(120)
  up = true
  t.equal((await readiness.evaluate()).ready, true)
  await sleep(120)
  up = false
  await readiness.evaluate()
  await sleep(120)
  await readiness.evaluate()
  t.same(
    changes,
    [
      ['store', false, 'not there yet', true],
      ['store', true, undefined, false],
      ['store', false, 'not there yet', false]
    ],
    'not passing yet at start, then passing, then failing: three changes, the failure told once'
  )

  readiness.markShuttingDown()
  t.same((await readiness.evaluate()).checks.shutdown, { ok: false, detail: 'shutting down' }, 'shutdown shows at once, cache or not')
})

t.test('a 503 from /health/ready carries its request id, in the body and in X-Request-Id, on both ports', async (t) => {
  const ctx = await setupApp(t, { METRICS_PORT: '0' })
  ctx.app.readiness.addCheck('store', async () => {
    throw new Error('bucket gone')
  })

  const echoed = await ctx.app.inject({ method: 'GET', url: '/health/ready', headers: { 'x-request-id': 'probe-41' } })
  t.equal(echoed.statusCode, 503)
  t.equal(echoed.headers['retry-after'], '1')
  t.equal(echoed.headers['x-request-id'], 'probe-41')
  t.same(echoed.json(), { status: 'unavailable', requestId: 'probe-41' }, 'anonymous: the status and the request id, no checks')

  const fresh = await ctx.app.inject({ method: 'GET', url: '/health/ready?verbose', headers: ctx.auth.admin() })
  t.equal(fresh.statusCode, 503)
  const body = fresh.json()
  t.match(body.requestId, UUID, 'without an incoming id, a new one')
  t.equal(body.requestId, fresh.headers['x-request-id'], 'the one in the header')
  t.match(body.checks, { store: { ok: false, detail: 'bucket gone' } }, 'an admin still gets the checks')

  const port = ctx.app.metricsAddress()!.port
  const probe = await fetch(`http://127.0.0.1:${port}/health/ready?verbose`, { headers: { 'x-request-id': 'scrape-7' } })
  t.equal(probe.status, 503)
  t.equal(probe.headers.get('x-request-id'), 'scrape-7', 'the metrics port echoes a sane id')
  t.match(await probe.json(), { status: 'unavailable', requestId: 'scrape-7', checks: { store: { ok: false } } })

  const anonymous = await fetch(`http://127.0.0.1:${port}/health/ready`, { headers: { 'x-request-id': 'no spaces allowed' } })
  const id = anonymous.headers.get('x-request-id')
  t.match(id, UUID, 'and replaces an insane one')
  t.same(await anonymous.json(), { status: 'unavailable', requestId: id })
})

t.test('every answer of the METRICS_PORT listener carries X-Request-Id', async (t) => {
  const ctx = await setupApp(t, { METRICS_PORT: '0' })
  const port = ctx.app.metricsAddress()!.port
  const scrape = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { 'x-request-id': 'prometheus-1' } })
  t.equal(scrape.status, 200)
  t.equal(scrape.headers.get('x-request-id'), 'prometheus-1')
  await scrape.text()
  const ready = await fetch(`http://127.0.0.1:${port}/health/ready`)
  t.equal(ready.status, 200)
  t.match(ready.headers.get('x-request-id'), UUID)
  t.same(await ready.json(), { status: 'ready' }, 'a 200 carries no request id in its body')
  for (const [method, path, status] of [
    ['GET', '/users', 404],
    ['POST', '/metrics', 405]
  ] as const) {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, { method })
    t.equal(response.status, status, `${method} ${path}`)
    t.match(response.headers.get('x-request-id'), UUID, `${method} ${path} carries one`)
    await response.text()
  }
})

t.test('/health/ready verifies a token only when details are asked for (?verbose)', async (t) => {
  const ctx = await setupApp(t)
  // Every verification the service asks of its verifier, counted.
  let verifications = 0
  const jwt = ctx.app.jwt as unknown as { verify: (...args: unknown[]) => unknown }
  const verify = jwt.verify
  jwt.verify = (...args) => {
    verifications++
    return verify.apply(jwt, args)
  }
  t.teardown(() => {
    jwt.verify = verify
  })
  // Well formed, of the issuer's key id and claims, signed by a key of the attacker's own.
  const forged = `Bearer ${signToken({ alg: 'RS256', kid: ctx.issuer.key.kid, typ: 'JWT' }, ctx.issuer.claims({ groups: [ctx.config.ADMIN_GROUP] }), { rsa: createSigningKey().privateKey })}`

  const probes = await Promise.all(
    Array.from({ length: 20 }, () => ctx.app.inject({ method: 'GET', url: '/health/ready', headers: { authorization: forged } }))
  )
  for (const probe of probes) t.same([probe.statusCode, probe.json()], [200, { status: 'ready' }])
  t.equal(verifications, 0, 'without ?verbose, 20 forged tokens cost no verification')
  const admin = await ctx.app.inject({ method: 'GET', url: '/health/ready', headers: ctx.auth.admin() })
  t.same(admin.json(), { status: 'ready' }, "without ?verbose, even an admin's token gets the status only")
  t.equal(verifications, 0, 'and is not verified')

  const forgedVerbose = await ctx.app.inject({ method: 'GET', url: '/health/ready?verbose', headers: { authorization: forged } })
  t.equal(forgedVerbose.statusCode, 200)
  t.same(forgedVerbose.json(), { status: 'ready' }, 'with ?verbose, a forged token gets no details')
  t.equal(verifications, 1, 'with ?verbose, the token is verified')
  t.same((await ctx.app.inject({ method: 'GET', url: '/health/ready?verbose' })).json(), { status: 'ready' }, 'and no token none')

  const details = await ctx.app.inject({ method: 'GET', url: '/health/ready?verbose', headers: ctx.auth.admin() })
  t.equal(details.statusCode, 200)
  t.match(details.json(), { status: 'ready', checks: { database: { ok: true }, jwks: { ok: true } }, migrations: { controlPlane: {} } })
})
