import t from 'tap'
import { freePort } from '../lib/embedded/postgres.ts'
import { setupApp, type TestContext } from './helpers/app.ts'
import { HAS_REDIS_SERVER, ownRedis } from './helpers/redis.ts'
import { serverEnv, startServer, type ServerProcess } from './helpers/server.ts'
import { eventually } from './helpers/wait.ts'

/**
 * Two real service processes on one database and one Redis, as two replicas run: what one does to
 * a tenant, the other learns within a second (even after answering 404 for it), they spend one
 * rate-limit budget, and Redis going away leaves both serving. With TEST_PGBOUNCER=1 both reach the
 * database through PgBouncer in transaction mode, their tenant-change listeners through
 * DATABASE_DIRECT_URL.
 */

const CHANGE_SEEN_WITHIN_MS = 1000
const BUDGET = 6

t.test('two instances on one database and one Redis', { skip: HAS_REDIS_SERVER ? false : 'redis-server is not installed' }, async (t) => {
  const redis = await ownRedis(await freePort())
  t.teardown(() => redis.stop())
  const ctx: TestContext = await setupApp(t, {}, { s3: true })
  const env = serverEnv(ctx, { REDIS_URL: redis.url, RATE_LIMIT_MAX: String(BUDGET), RATE_LIMIT_CALLER_SHARE: '1', PG_POOL_MIN: '0' })
  const [a, b] = await Promise.all([startServer(env), startServer(env)])
  t.teardown(async () => {
    await a.kill()
    await b.kill()
  })

  const admin = ctx.auth.admin()
  const call = (server: ServerProcess, method: string, path: string, headers: Record<string, string>, body?: unknown) =>
    fetch(`${server.url}${path}`, {
      method,
      headers: { ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body)
    })
  const statusOn = async (server: ServerProcess, tenant: string) => (await call(server, 'GET', '/', { 'x-tenant-id': tenant })).status
  const seenWithin = (server: ServerProcess, tenant: string, status: number) =>
    eventually(async () => (await statusOn(server, tenant)) === status, CHANGE_SEEN_WITHIN_MS, 20)

  t.test('a tenant created, suspended, resumed and deleted on one is seen by the other within a second', async (t) => {
    t.equal(await statusOn(a, 'late-co'), 404, 'A answers 404 for a tenant that does not exist yet')
    t.equal((await call(b, 'POST', '/auth/tenants', admin, { id: 'late-co', name: 'Late' })).status, 201, 'B creates it')
    t.ok(await seenWithin(a, 'late-co', 200), 'A serves it within a second, its 404 forgotten')

    t.equal((await call(a, 'PATCH', '/auth/tenants/late-co', admin, { status: 'suspended' })).status, 200, 'A suspends it')
    t.ok(await seenWithin(b, 'late-co', 403), 'B refuses it within a second')
    t.equal((await call(b, 'PATCH', '/auth/tenants/late-co', admin, { status: 'active' })).status, 200, 'B resumes it')
    t.ok(await seenWithin(a, 'late-co', 200), 'A serves it again within a second')
    t.equal((await call(a, 'DELETE', '/auth/tenants/late-co', admin)).status, 204, 'A deletes it')
    t.ok(await seenWithin(b, 'late-co', 404), 'B answers 404 within a second')
  })

  t.test('one rate-limit budget for the tenant across both', async (t) => {
    t.equal((await call(a, 'POST', '/auth/tenants', admin, { id: 'budget-co', name: 'Budget' })).status, 201)
    const user = ctx.auth.tenantUser('budget-co')
    const statuses: number[] = []
    for (let i = 0; i < BUDGET + 2; i++) statuses.push((await call(i % 2 ? b : a, 'GET', '/users', user)).status)
    t.same(statuses, [...Array(BUDGET).fill(200), 429, 429], `${BUDGET} requests served, alternating between the instances, then 429 on both`)
  })

  t.test('Redis down: both keep serving', async (t) => {
    await redis.stop()
    const user = ctx.auth.tenantUser('budget-co')
    for (const server of [a, b, a, b]) t.equal((await call(server, 'GET', '/users', user)).status, 200, 'served, unlimited while Redis is away')
  })
})
