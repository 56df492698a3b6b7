import type { FastifyInstance } from 'fastify'
import type pg from 'pg'
import t from 'tap'
import { buildApp, createTenant, readinessDetails, setupApp, testConfig, type TestContext } from './helpers/app.ts'
import { eventually } from './helpers/wait.ts'

/**
 * PG_POOL_MIN connections (unset: PG_POOL_MAX) are opened at start, each having made its first
 * switch to a tenant role (PostgreSQL 15 builds the login's membership list then, in time that
 * grows with the square of the tenants), and /health/ready waits for them.
 */

let ctx: TestContext

t.before(async () => {
  ctx = await setupApp(t, { METRICS_PORT: '0' })
  for (const tenant of ['warm-alpha', 'warm-beta']) await createTenant(ctx, tenant)
})

/** Backends of `database` whose last statement was the first switch to a tenant role. */
async function firstSwitches(admin: pg.Pool, database: string): Promise<number> {
  const { rows } = await admin.query<{ count: number }>(
    `SELECT count(*)::int AS count FROM pg_stat_activity
      WHERE datname = $1 AND query LIKE 'SELECT set_config(''role''%pg_auth_members%'`,
    [database]
  )
  return rows[0].count
}

async function readiness(app: FastifyInstance) {
  const { statusCode, body } = await readinessDetails(app)
  return { statusCode, checks: body.checks }
}

t.test('PG_POOL_MIN connections are opened and switched once before the service says ready', async (t) => {
  // The service's whole pool is held by a hook that runs before the warm-up's, so that the moment
  // before it is done can be seen; releasing it lets the warm-up take three of its four
  // connections, and the readiness probe's own query the fourth.
  let held: pg.PoolClient[] = []
  const app = await buildApp(
    testConfig(ctx.database, {
      JWT_ISSUER: ctx.issuer.url,
      JWT_CLIENT_ID: ctx.issuer.clientId,
      PG_POOL_MIN: '3',
      PG_POOL_MAX: '4',
      PG_ACQUIRE_TIMEOUT_MS: '30000',
      METRICS_PORT: '0'
    }),
    {
      beforeRegister: (app) =>
        app.addHook('onReady', async () => {
          held = await Promise.all([1, 2, 3, 4].map(() => app.pg.pool.connect()))
        })
    }
  )
  t.teardown(async () => {
    for (const client of held) client.release()
    await app.close()
  })

  const warming = await readiness(app)
  t.equal(warming.statusCode, 503, 'not ready while the connections are being opened')
  t.same(warming.checks.connections, { ok: false, detail: 'opening 3 connections (PG_POOL_MIN)' })
  t.equal(await firstSwitches(ctx.admin, ctx.database.name), 0)

  for (const client of held) client.release()
  held = []
  // Watched from outside first: any probe would run its query on one of them.
  t.ok(await eventually(async () => (await firstSwitches(ctx.admin, ctx.database.name)) === 3, 10_000), 'three connections switched to a tenant role')
  t.ok(await eventually(async () => (await readiness(app)).statusCode === 200, 10_000), 'ready once they are open')
  const ready = await readiness(app)
  t.equal(ready.checks.connections.ok, true)
  t.match(ready.checks.connections.detail, /^3 connections opened at start, in \d+ ms$/)

  // The switch lasted its own statement: the connections carry nothing of it.
  const { rows } = await app.pg.pool.query<{ role: string; session: string; path: string }>(
    `SELECT current_user AS role, session_user AS session, current_setting('search_path') AS path`
  )
  t.equal(rows[0].role, rows[0].session)
  t.equal(rows[0].path, '"$user", public')
})

t.test('PG_POOL_MIN unset: the whole pool is opened and switched before ready', async (t) => {
  const app = await buildApp(
    testConfig(ctx.database, { JWT_ISSUER: ctx.issuer.url, JWT_CLIENT_ID: ctx.issuer.clientId, PG_POOL_MIN: '', PG_POOL_MAX: '3', METRICS_PORT: '0' })
  )
  t.teardown(() => app.close())
  t.ok(await eventually(async () => (await readiness(app)).statusCode === 200, 10_000), 'ready once they are open')
  t.match((await readiness(app)).checks.connections, { ok: true, detail: /^3 connections opened at start, in \d+ ms$/ })
  t.equal(app.pg.pool.totalCount, 3, 'and kept')
})

t.test('PG_POOL_MIN=0: nothing is opened ahead and readiness has no such check', async (t) => {
  const { checks } = await readiness(ctx.app)
  t.notOk('connections' in checks)
  t.equal(ctx.config.PG_POOL_MIN, 0)
})

t.test('a database that cannot be reached at start: reported, and readiness is left to the database check', async (t) => {
  const app = await buildApp(
    testConfig(ctx.database, {
      JWT_ISSUER: ctx.issuer.url,
      JWT_CLIENT_ID: ctx.issuer.clientId,
      DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nothing',
      MIGRATE_ON_START: 'false',
      PG_POOL_MIN: '2',
      METRICS_PORT: '0'
    })
  )
  t.teardown(() => app.close())
  t.ok(await eventually(async () => (await readiness(app)).checks.connections?.ok === true, 10_000))
  const { statusCode, checks } = await readiness(app)
  t.match(checks.connections.detail, /^not all 2 connections could be opened at start: /)
  t.equal(checks.database.ok, false)
  t.equal(statusCode, 503)
})
