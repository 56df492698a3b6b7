import t from 'tap'
import { buildApp, createTenant, setupApp, testConfig } from './helpers/app.ts'
import { PGBOUNCER_BINARY, startPgBouncer } from './helpers/pgbouncer.ts'
import { runScript, serverEnv } from './helpers/server.ts'

/**
 * Behind PgBouncer in transaction mode (Debian's 1.18, which carries no prepared statements), with
 * PG_PREPARED_STATEMENTS=false: consecutive transactions of one client may run on different server
 * connections, so nothing may rely on a statement prepared, or a setting made, by an earlier one.
 * `.ci/run` also runs the tenant, user, file, soak and multi-instance files through it
 * (TEST_PGBOUNCER=1).
 */

const skip = PGBOUNCER_BINARY ? false : 'PgBouncer is not installed (apt-get install pgbouncer; .ci/run installs it)'

t.test('mixed reads and writes of several tenants through the pooler: no 5xx, every row in its tenant', { skip }, async (t) => {
  const ctx = await setupApp(t)
  const bouncer = await startPgBouncer(ctx.database.url, { poolSize: 4 })
  t.teardown(() => bouncer.stop())
  const app = await buildApp(
    testConfig(ctx.database, {
      JWT_ISSUER: ctx.config.JWT_ISSUER!,
      JWT_CLIENT_ID: ctx.config.JWT_CLIENT_ID!,
      DATABASE_URL: bouncer.through(ctx.database.url),
      DATABASE_DIRECT_URL: ctx.database.url,
      PG_PREPARED_STATEMENTS: 'false',
      PG_POOL_MAX: '8'
    })
  )
  t.teardown(() => app.close())
  const tenants = ['pooled-a', 'pooled-b', 'pooled-c']
  for (const tenant of tenants) await createTenant({ app, auth: ctx.auth }, tenant)

  const statuses: Record<number, number> = {}
  for (let round = 0; round < 30; round++) {
    const answers = await Promise.all(
      tenants.flatMap((tenant) => [
        app.inject({ method: 'POST', url: '/users', headers: ctx.auth.tenantUser(tenant), payload: { email: `u${round}@${tenant}.test`, name: 'U' } }),
        app.inject({ method: 'GET', url: '/users?limit=100', headers: ctx.auth.tenantUser(tenant) }),
        app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': tenant } })
      ])
    )
    for (const answer of answers) statuses[answer.statusCode] = (statuses[answer.statusCode] ?? 0) + 1
  }
  t.same(statuses, { 200: 180, 201: 90 }, 'every request answered, none 5xx')
  for (const tenant of tenants) {
    const { rows } = await ctx.admin.query(`SELECT email FROM "${tenant}".users`)
    t.equal(rows.length, 30, `${tenant} holds its 30 users`)
    t.ok(
      rows.every((row: { email: string }) => row.email.endsWith(`@${tenant}.test`)),
      `and only its own`
    )
  }
  const { rows: open } = await ctx.admin.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`
  )
  t.equal(open[0].n, 0, 'no server connection is left in a transaction')
})

t.test('npm run migrate needs only the direct connection, never the pooler', { skip }, async (t) => {
  const ctx = await setupApp(t)
  await createTenant(ctx, 'direct-co')
  const env = serverEnv(ctx, {
    NODE_ENV: 'production',
    // Where the pooler would be: nothing listens, so anything sent there fails.
    DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere',
    DATABASE_DIRECT_URL: ctx.database.url
  })
  const result = await runScript('scripts/migrate.ts', [], env)
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /already current: +1\n/)
})
