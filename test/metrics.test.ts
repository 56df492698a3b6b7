import t from 'tap'
import { Counter, Registry } from 'prom-client'
import { createTopTenants, OTHER_TENANTS } from '../lib/metrics/top-tenants.ts'
import { latestVersion, loadMigrations } from '../lib/tenants/index.ts'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { createSigningKey } from './helpers/issuer.ts'
import { TENANT_ID_PATTERN } from '../schemas/common.ts'

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** The samples of a Prometheus text exposition. */
function parse(text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!match) throw new Error(`not a sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, key, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[key] = value
    samples.push({ name: match[1], labels, value: Number(match[3]) })
  }
  return samples
}

async function scrape(context: Pick<TestContext, 'app' | 'auth'>) {
  const response = await context.app.inject({ method: 'GET', url: '/metrics', headers: context.auth.admin() })
  if (response.statusCode !== 200) throw new Error(`/metrics answered ${response.statusCode}: ${response.body}`)
  return { response, samples: parse(response.body) }
}

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.find((sample) => sample.name === name && Object.entries(labels).every(([key, v]) => sample.labels[key] === v))?.value

const USER_ID = '0b6c1c4e-3b8a-4d5e-9f7a-2d1c0e9b8a76'
const CONTROL_PLANE_LATEST = latestVersion(await loadMigrations('public'))
const TENANT_LATEST = latestVersion(await loadMigrations('tenant'))

t.test('the top-N tenant selection', async (t) => {
  t.test('10,000 tenants produce at most N + 1 series, the busiest featured after a window', async (t) => {
    let clock = 0
    const registry = new Registry()
    const counter = new Counter({ name: 'requests_total', help: 'requests', labelNames: ['tenant'], registers: [registry] })
    const dropped: string[] = []
    const top = createTopTenants({
      size: 20,
      windowMs: 60_000,
      now: () => clock,
      onDrop: (tenants) => {
        dropped.push(...tenants)
        for (const tenant of tenants) counter.remove({ tenant })
      }
    })
    const tenants = Array.from({ length: 10_000 }, (_, i) => `tenant-${String(i).padStart(5, '0')}`)
    // Heavy hitters: tenant-09990 … tenant-09999 send 100 requests each, the rest one each.
    const heavy = tenants.slice(-10)
    for (const tenant of tenants) counter.inc({ tenant: top.record(tenant) })
    for (const tenant of heavy) for (let i = 0; i < 99; i++) counter.inc({ tenant: top.record(tenant) })

    const seriesCount = async () => (await counter.get()).values.length
    t.ok((await seriesCount()) <= 21, 'no more than N tenant series plus the other bucket')
    t.equal(top.featured().size, 20)
    t.ok(top.featured().has('tenant-00000'), 'while there is room, the first tenants seen are featured')
    t.notOk(top.featured().has(heavy[0]), 'the heavy hitters arrived after the room was taken')
    const otherCount = (await counter.get()).values.find((v) => v.labels.tenant === OTHER_TENANTS)?.value
    t.equal(otherCount, 10_000 - 20 + 10 * 99, 'everything not featured is counted under the other bucket')

    clock += 60_000
    t.equal(top.record(heavy[0]), heavy[0], 'after the window, a heavy hitter has a series of its own')
    t.same(new Set([...top.featured()].filter((tenant) => heavy.includes(tenant))), new Set(heavy), 'all ten heavy hitters are featured')
    t.equal(top.featured().size, 20, 'with ten more of the busiest (ties go to the lowest id)')
    t.equal(top.record('tenant-00500'), OTHER_TENANTS, 'a newcomer waits while the top is full')
    t.ok(dropped.includes('tenant-00019'), 'tenants that left the top are reported dropped')
    t.notOk(
      (await counter.get()).values.some((v) => v.labels.tenant === 'tenant-00019'),
      'and their series is gone'
    )

    // A window in which only the heavy hitters call leaves room for newcomers in the next.
    for (const tenant of heavy) counter.inc({ tenant: top.record(tenant) })
    clock += 60_000
    t.equal(top.record('tenant-00500'), 'tenant-00500', 'the featured set has room again for newcomers')
    t.equal(top.featured().size, 11)
    for (let round = 0; round < 50; round++) {
      clock += 60_000
      for (let i = 0; i < 1000; i++) counter.inc({ tenant: top.record(tenants[(round * 1000 + i) % tenants.length]) })
    }
    t.ok((await seriesCount()) <= 21, 'the bound holds across windows of churn')
  })

  t.test('the tenants counted per window are capped', async (t) => {
    const top = createTopTenants({ size: 2, maxTracked: 5, now: () => 0 })
    for (let i = 0; i < 100; i++) t.ok([`t-${i}`, OTHER_TENANTS].includes(top.record(`t-${i}`)))
    t.equal(top.featured().size, 2)
  })

  t.test('the other bucket cannot be a tenant id', async (t) => {
    t.notMatch(OTHER_TENANTS, new RegExp(TENANT_ID_PATTERN))
  })
})

t.test('/metrics', async (t) => {
  const context = await setupApp(t)
  const { app, auth, admin } = context

  await createTenant(context, 'acme')
  await createTenant(context, 'globex')
  await createTenant(context, 'initech')
  await app.inject({ method: 'PATCH', url: '/auth/tenants/globex', headers: auth.admin(), payload: { status: 'suspended' } })
  // A tenant left behind by a migration run that has not reached it yet.
  await admin.query(`UPDATE public.tenants SET schema_version = 0 WHERE id = 'initech'`)

  t.test('is Prometheus text with the process defaults', async (t) => {
    const { response, samples } = await scrape(context)
    t.match(response.headers['content-type'], /^text\/plain; version=0\.0\.4/)
    t.ok(value(samples, 'process_cpu_user_seconds_total') !== undefined, 'default process metrics')
    t.ok(value(samples, 'nodejs_eventloop_lag_seconds') !== undefined, 'default Node.js metrics')
  })

  t.test('durations are labelled by route pattern, never by URL', async (t) => {
    const tenant = auth.tenantUser('acme')
    t.equal((await app.inject({ method: 'GET', url: `/users/${USER_ID}`, headers: tenant })).statusCode, 404)
    t.equal((await app.inject({ method: 'GET', url: '/users/not-a-uuid', headers: tenant })).statusCode, 400)
    t.equal((await app.inject({ method: 'GET', url: `/no/such/${USER_ID}` })).statusCode, 404)
    t.equal((await app.inject({ method: 'GET', url: '/', headers: tenant })).statusCode, 200)

    const { response, samples } = await scrape(context)
    const count = 'http_request_duration_seconds_count'
    t.equal(value(samples, count, { route: '/users/:id', method: 'GET', status_code: '404' }), 1)
    t.equal(value(samples, count, { route: '/users/:id', method: 'GET', status_code: '400' }), 1)
    t.equal(value(samples, count, { route: 'unmatched', method: 'GET', status_code: '404' }), 1)
    t.equal(value(samples, count, { route: '/', method: 'GET', status_code: '200' }), 1)
    t.notMatch(response.body, USER_ID, 'no URL reaches a label')
    t.notMatch(response.body, 'not-a-uuid')
    const routes = new Set(samples.filter((s) => s.name === count).map((s) => s.labels.route))
    t.notOk(
      [...routes].some((route) => route.startsWith('/no/')),
      'unmatched URLs share one series'
    )
    const buckets = samples.filter((s) => s.name === 'http_request_duration_seconds_bucket' && s.labels.route === '/')
    t.equal(buckets.find((s) => s.labels.le === '+Inf')?.value, 1, 'a histogram, with buckets')
  })

  t.test('the tenant context switch is observed once per request that queries', async (t) => {
    const before = value((await scrape(context)).samples, 'tenant_service_tenant_context_switch_seconds_count') ?? 0
    const tenant = auth.tenantUser('acme')
    const created = await app.inject({ method: 'POST', url: '/users', headers: tenant, payload: { email: 'ada@acme.test', name: 'Ada' } })
    t.equal(created.statusCode, 201)
    t.equal((await app.inject({ method: 'GET', url: '/users', headers: tenant })).statusCode, 200)
    // Rejected before any query: no connection, no context switch.
    t.equal((await app.inject({ method: 'POST', url: '/users', headers: tenant, payload: { email: 'nope' } })).statusCode, 400)
    const { samples } = await scrape(context)
    t.equal(value(samples, 'tenant_service_tenant_context_switch_seconds_count'), before + 2)
    t.ok((value(samples, 'tenant_service_tenant_context_switch_seconds_sum') ?? 0) > 0)
  })

  t.test('tenants by status, migration lag and readiness', async (t) => {
    const { samples } = await scrape(context)
    t.equal(value(samples, 'tenant_service_tenants', { status: 'active' }), 2)
    t.equal(value(samples, 'tenant_service_tenants', { status: 'suspended' }), 1)
    t.equal(value(samples, 'tenant_service_tenants_behind_migrations'), 1)
    t.equal(value(samples, 'tenant_service_tenant_schema_latest_version'), TENANT_LATEST)
    t.equal(value(samples, 'tenant_service_control_plane_schema_version'), CONTROL_PLANE_LATEST)
    t.equal(value(samples, 'tenant_service_control_plane_schema_latest_version'), CONTROL_PLANE_LATEST)
    t.equal(value(samples, 'tenant_service_ready'), 1, 'tenants behind do not fail readiness')
    t.equal(value(samples, 'tenant_service_readiness_check', { check: 'database' }), 1)
    t.equal(value(samples, 'tenant_service_readiness_check', { check: 'migrations' }), 1)

    const ready = await app.inject({ method: 'GET', url: '/health/ready?verbose', headers: context.auth.admin() })
    t.equal(ready.statusCode, 200)
    t.same(ready.json().migrations, {
      controlPlane: { version: CONTROL_PLANE_LATEST, latest: CONTROL_PLANE_LATEST },
      tenants: { latest: TENANT_LATEST, behind: 1 }
    })
  })

  t.test('per-tenant request counts', async (t) => {
    const { samples } = await scrape(context)
    const before = value(samples, 'tenant_service_tenant_requests_total', { tenant: 'acme' }) ?? 0
    for (let i = 0; i < 3; i++) await app.inject({ method: 'GET', url: '/users', headers: auth.tenantUser('acme') })
    // Only callers a guard verified count: GET / takes no token, so even one that sends one is not counted.
    t.equal((await app.inject({ method: 'GET', url: '/', headers: auth.tenantUser('acme') })).statusCode, 200)
    // Suspended and unknown tenants are not resolved, so they are never counted.
    t.equal((await app.inject({ method: 'GET', url: '/users', headers: auth.tenantUser('globex') })).statusCode, 403)
    t.equal((await app.inject({ method: 'GET', url: '/users', headers: auth.tenantUser('nobody') })).statusCode, 404)
    const after = (await scrape(context)).samples
    t.equal(value(after, 'tenant_service_tenant_requests_total', { tenant: 'acme' }), before + 3)
    t.equal(value(after, 'tenant_service_tenant_requests_total', { tenant: 'globex' }), undefined)
    t.equal(value(after, 'tenant_service_tenant_requests_total', { tenant: 'nobody' }), undefined)
  })

  t.test('past N tenants, real requests land in the other bucket', async (t) => {
    const total = (samples: Sample[]) => samples.filter((s) => s.name === 'tenant_service_tenant_requests_total').reduce((sum, s) => sum + s.value, 0)
    const before = total((await scrape(context)).samples)
    const ids = Array.from({ length: 22 }, (_, i) => `many-${String(i).padStart(2, '0')}`)
    for (const id of ids) await createTenant(context, id)
    for (const id of ids) t.equal((await app.inject({ method: 'GET', url: '/users', headers: auth.tenantUser(id) })).statusCode, 200)
    const { samples } = await scrape(context)
    const series = samples.filter((s) => s.name === 'tenant_service_tenant_requests_total')
    t.equal(series.length, 21, '20 tenants of their own plus the other bucket')
    const other = series.find((s) => s.labels.tenant === OTHER_TENANTS)
    // acme and 19 of the new tenants took the 20 places; the last three new ones are "other".
    t.equal(other?.value, 3)
    t.equal(total(samples), before + ids.length, 'every resolved request is counted once')
  })

  t.test('the pool gauges read the pool at scrape time', async (t) => {
    const pool = app.pg.pool
    const { samples } = await scrape(context)
    t.equal(value(samples, 'tenant_service_db_pool_max_connections'), context.config.PG_POOL_MAX)
    t.ok((value(samples, 'tenant_service_db_pool_connections') ?? -1) >= 1)
    t.equal(value(samples, 'tenant_service_db_pool_waiting_requests'), 0)

    // Hold every connection, so the next request has to wait for one.
    const held = await Promise.all(Array.from({ length: context.config.PG_POOL_MAX }, () => pool.connect()))
    const waiting = app.inject({ method: 'GET', url: '/', headers: auth.tenantUser('acme') })
    while (pool.waitingCount === 0) await new Promise((resolve) => setImmediate(resolve))
    // Only the pool gauges: a full scrape would itself queue for a connection (readiness).
    const read = async (name: string) => (await app.metrics.registry.getSingleMetric(name)!.get()).values[0]?.value
    const waitingGauge = await read('tenant_service_db_pool_waiting_requests')
    const idleGauge = await read('tenant_service_db_pool_idle_connections')
    const totalGauge = await read('tenant_service_db_pool_connections')
    for (const client of held) client.release()
    t.ok((waitingGauge ?? 0) >= 1, 'a caller waiting for a connection shows')
    t.equal(idleGauge, 0, 'no idle connection while all are held')
    t.equal(totalGauge, context.config.PG_POOL_MAX)
    t.equal((await waiting).statusCode, 200, 'the waiting request is served once connections are free')
    const after = (await scrape(context)).samples
    t.equal(value(after, 'tenant_service_db_pool_waiting_requests'), 0)
  })
})

t.test('readiness fails while the control plane is older than the code, and recovers', async (t) => {
  const context = await setupApp(t)
  const { app, admin } = context
  const { rows } = await admin.query<{ version: number; name: string }>('SELECT version, name FROM public.schema_migrations')
  await admin.query('DELETE FROM public.schema_migrations')

  const behind = await app.inject({ method: 'GET', url: '/health/ready?verbose', headers: context.auth.admin() })
  t.equal(behind.statusCode, 503)
  t.equal(behind.headers['retry-after'], '1')
  const body = behind.json()
  t.equal(body.status, 'unavailable')
  t.equal(body.checks.database.ok, true)
  t.equal(body.checks.migrations.ok, false)
  t.match(body.checks.migrations.detail, new RegExp(`version 0.*needs ${CONTROL_PLANE_LATEST}`))
  t.same(body.migrations.controlPlane, { version: 0, latest: CONTROL_PLANE_LATEST })
  const metrics = (await scrape(context)).samples
  t.equal(value(metrics, 'tenant_service_ready'), 0)
  t.equal(value(metrics, 'tenant_service_readiness_check', { check: 'migrations' }), 0)
  t.equal(value(metrics, 'tenant_service_control_plane_schema_version'), 0)

  for (const row of rows) await admin.query('INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)', [row.version, row.name])
  // Readiness answers from checks at most a second old; the migration state itself is not cached while behind.
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const recovered = await app.inject({ method: 'GET', url: '/health/ready?verbose', headers: context.auth.admin() })
  t.equal(recovered.statusCode, 200, 'ready again once the checks run again, within a second')
  t.same(recovered.json().migrations.controlPlane, { version: CONTROL_PLANE_LATEST, latest: CONTROL_PLANE_LATEST })
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200)
})

t.test('JWKS fetches and failures are counted', async (t) => {
  const context = await setupApp(t, { JWKS_REFETCH_INTERVAL_MS: '100' })
  const { app, issuer, config } = context
  const read = async () => {
    const { samples } = await scrape(context)
    return {
      fetches: value(samples, 'tenant_service_jwks_fetches_total'),
      failures: value(samples, 'tenant_service_jwks_fetch_failures_total')
    }
  }
  const started = await read()
  t.ok(issuer.jwksFetches >= 1, 'the keys were fetched at start')
  t.same(started, { fetches: issuer.jwksFetches, failures: 0 }, 'every fetch the issuer answered is counted')

  issuer.setMode('unavailable')
  // A token signed with a key the service does not hold makes it refetch (once per interval).
  await new Promise((resolve) => setTimeout(resolve, 150))
  const token = issuer.token({ key: createSigningKey(), groups: [config.ADMIN_GROUP] })
  const response = await app.inject({ method: 'GET', url: '/auth/tenants', headers: { authorization: `Bearer ${token}` } })
  t.not(response.statusCode, 200, 'the unknown key is refused')
  t.same(await read(), { fetches: started.fetches! + 1, failures: 1 }, 'the failed refetch is counted as a fetch and a failure')
})

t.test('each service instance has its own registry', async (t) => {
  const one = await setupApp(t)
  const two = await setupApp(t)
  t.not(one.app.metrics.registry, two.app.metrics.registry)
  await one.app.inject({ method: 'GET', url: '/health/live' })
  const samples = (await scrape(two)).samples
  t.equal(value(samples, 'http_request_duration_seconds_count', { route: '/health/live' }), undefined, 'requests to one are not seen by the other')
})
