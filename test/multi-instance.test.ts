import t, { type Test } from 'tap'
import { freePort } from '../lib/embedded/postgres.ts'
import { setupApp, type TestContext } from './helpers/app.ts'
import { HAS_REDIS_SERVER, ownRedis, REDIS_SERVER } from './helpers/redis.ts'
import { serverEnv, startServer, type ServerProcess } from './helpers/server.ts'
import { eventually } from './helpers/wait.ts'

/**
 * Two real service processes on one database, as two replicas run. What one does to a tenant, the
 * other learns within a second (even after answering 404 for it): that travels through PostgreSQL
 * alone, so it is checked with no Redis at all. With one Redis between them, they spend one
 * rate-limit budget, and Redis going away leaves both serving: that part needs redis-server. With
 * TEST_PGBOUNCER=1 every instance reaches the database through PgBouncer in transaction mode, its
 * tenant-change listener through DATABASE_DIRECT_URL.
 */

const CHANGE_SEEN_WITHIN_MS = 1000
const BUDGET = 6

const ctx: TestContext = await setupApp(t, {}, { s3: true })
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

/**
 * Two service processes with `overrides`, killed when `t` ends. They start one after the other:
 * two processes loading the service at once on a busy 2-core machine can pass Fastify's plugin
 * timeout.
 */
async function twoInstances(t: Test, overrides: Record<string, string>): Promise<[ServerProcess, ServerProcess]> {
  const servers: ServerProcess[] = []
  t.teardown(async () => {
    for (const server of servers) await server.kill()
  })
  const env = serverEnv(ctx, { PG_POOL_MIN: '0', ...overrides })
  for (let i = 0; i < 2; i++) servers.push(await startServer(env))
  return [servers[0], servers[1]]
}

t.test('two instances on one database, without Redis', async (t) => {
  const [a, b] = await twoInstances(t, {})

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
})

t.test(
  'two instances sharing one Redis',
  { skip: HAS_REDIS_SERVER ? false : `redis-server is not installed (${REDIS_SERVER}; .ci/run installs Debian's redis-server)` },
  async (t) => {
    const redis = await ownRedis(await freePort())
    t.teardown(() => redis.stop())
    const [a, b] = await twoInstances(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: String(BUDGET), RATE_LIMIT_CALLER_SHARE: '1' })

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
  }
)
