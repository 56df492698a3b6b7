import { randomUUID } from 'node:crypto'
import type { FastifyInstance, RouteOptions } from 'fastify'
import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { createTenantCatchUp, latestVersion, loadMigrations, type Migration, provisionTenant, USAGE_TENANT_SCHEMA_VERSION } from '../lib/tenants/index.ts'
import { LOCK_TENANT_SCHEMA } from '../lib/tenants/migrations.ts'
import type { Config } from '../schemas/env.ts'
import type { ApiError } from '../schemas/errors.ts'
import { buildApp, setupApp, type TestContext } from './helpers/app.ts'
import { runScript, serverEnv } from './helpers/server.ts'
import { eventually } from './helpers/wait.ts'

/**
 * An upgrade as it happens: tenants at older schema versions, instances of the new code started on
 * the same database, requests arriving while `npm run migrate` runs. Routes need the version their
 * SQL reads (GET / any, /users 0004, /files 0003, an admin's usage 0002), and a tenant behind is
 * migrated by its first request, or answered 503 TENANT_MIGRATING, never 500.
 */

let ctx: TestContext
let shipped: Migration[]
let latest: number

t.before(async () => {
  ctx = await setupApp(t)
  shipped = await loadMigrations('tenant')
  latest = latestVersion(shipped)
})

/** Tenants as an older release made them: only the tenant migrations up to `version`. */
const provisionAt = (ids: string[], version: number) =>
  Promise.all(
    ids.map((id) =>
      provisionTenant(
        ctx.admin,
        { id, name: id },
        { rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations: shipped.filter((migration) => migration.version <= version) }
      )
    )
  )

async function registry(ids: string[]) {
  const { rows } = await ctx.admin.query<{ id: string; schema_version: number; migration_status: string; migration_error: string | null }>(
    'SELECT id, schema_version, migration_status, migration_error FROM public.tenants WHERE id = ANY($1) ORDER BY id',
    [ids]
  )
  return Object.fromEntries(rows.map((row) => [row.id, row]))
}

/** Another instance of the service on the same database, with some settings changed; closed at the end of `t`. */
async function instance(t: Test, changes: Partial<Config> = {}, logStream?: { write(line: string): void }): Promise<FastifyInstance> {
  const app = await buildApp({ ...ctx.config, ...changes }, { logStream })
  t.teardown(() => app.close())
  return app
}

const get = (app: FastifyInstance, tenant: string, url: string) => app.inject({ method: 'GET', url, headers: ctx.auth.tenantUser(tenant) })

t.test('the routes declare what they need, and a version no migration reaches is refused at start', async (t) => {
  t.ok(latest >= 2, 'the shipped tenant migrations reach the files table')
  const routes = new Map<string, RouteOptions>()
  const app = await buildApp(ctx.config, {
    // The options object each route is made from: its folder's declaration lands on it after this hook.
    beforeRegister: (app) =>
      app.addHook('onRoute', (route) => {
        routes.set(`${route.method} ${route.url}`, route)
      })
  })
  t.teardown(() => app.close())
  const version = (route: string) => routes.get(route)?.config?.tenantSchemaVersion
  t.equal(version('GET /'), 0)
  t.equal(version('GET /users'), 4)
  t.equal(version('GET /files'), 3)

  const tooNew = buildApp(ctx.config, {
    beforeReady: (app) => {
      app.get('/too-new', { config: { tenantSchemaVersion: latest + 1 } }, async () => 'never')
    }
  })
  await t.rejects(tooNew, new RegExp(`GET /too-new: config.tenantSchemaVersion ${latest + 1} is not a tenant migration of this build`))
})

t.test('~40 tenants behind, two instances of the new code, requests during npm run migrate: no 5xx, every tenant current', async (t) => {
  // Half of them from before the first tenant migration, half from before the files table.
  const ids = Array.from({ length: 40 }, (_, i) => `up-${String(i).padStart(2, '0')}`)
  await provisionAt(
    ids.filter((_, i) => i % 2 === 0),
    0
  )
  await provisionAt(
    ids.filter((_, i) => i % 2 === 1),
    1
  )
  const b = await instance(t)
  const instances = [ctx.app, b]
  const ready = await b.inject({ method: 'GET', url: '/health/ready?verbose', headers: ctx.auth.admin() })
  t.equal(ready.statusCode, 200, 'ready with tenants behind')
  t.ok(ready.json().migrations.tenants.behind >= ids.length, 'and reports them')

  const statuses = new Map<number, number>()
  const failures: string[] = []
  let sent = 0
  let stop = false
  async function client(worker: number) {
    for (let i = 0; !stop; i++) {
      const app = instances[(worker + i) % 2]
      // Any tenant, any route: every pairing of a version with a route that needs more comes up.
      const tenant = ids[Math.floor(Math.random() * ids.length)]
      const kind = Math.floor(Math.random() * 5)
      const response =
        kind === 0
          ? await app.inject({
              method: 'POST',
              url: '/users',
              headers: ctx.auth.tenantUser(tenant),
              payload: { email: `${randomUUID()}@example.com`, name: 'U' }
            })
          : kind === 4
            ? // An admin's route, with no request.tenant: it brings the tenant up to what it reads itself.
              await app.inject({ method: 'GET', url: `/auth/tenants/${tenant}/usage`, headers: ctx.auth.admin() })
            : await get(app, tenant, kind === 1 ? '/users' : kind === 2 ? '/files' : '/')
      sent++
      statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1)
      if (response.statusCode >= 500) failures.push(`${tenant} ${kind}: ${response.statusCode} ${response.body}`)
      // A steady stream rather than a flood: the job, not only the requests, has tenants to migrate.
      await sleep(10)
    }
  }
  const clients = Array.from({ length: 4 }, (_, worker) => client(worker))

  // The job starts once requests are under way, and they go on after it.
  t.ok(await eventually(() => sent >= 10, 30_000), 'requests are being served before the migration starts')
  const before = sent
  const migrate = await runScript('scripts/migrate.ts', ['--concurrency', '4'], serverEnv(ctx, { NODE_ENV: 'test' }))
  const after = sent
  t.ok(after > before, `requests were answered while it ran (${after - before})`)
  await eventually(() => sent >= after + 60, 30_000)
  stop = true
  await Promise.all(clients)

  t.comment(`responses by status: ${JSON.stringify(Object.fromEntries(statuses))}`)
  // Which tenants the job found done already (by requests) and which it migrated itself.
  t.comment(`npm run migrate: ${migrate.stdout.match(/(migrated|already current): +\d+/g)?.join(', ')}`)
  if (migrate.code !== 0) t.comment(`${migrate.stdout}${migrate.stderr}`)
  t.equal(migrate.code, 0, 'npm run migrate exits 0')
  t.match(migrate.stdout, new RegExp(`tenants: ${ids.length}, latest tenant version ${latest}`))
  t.same(failures, [], 'no 5xx answer')
  t.same([...statuses.keys()].sort(), [200, 201], 'every request served')

  const state = await registry(ids)
  t.same(
    ids.filter((id) => state[id].schema_version !== latest || state[id].migration_status !== 'ok'),
    [],
    `every tenant at version ${latest}, status ok`
  )
  // Both instances serve every tenant at the new version.
  for (const app of instances) {
    const answers = await Promise.all(ids.map((id) => get(app, id, '/files')))
    t.same(
      answers.map((response) => response.statusCode),
      ids.map(() => 200)
    )
  }
})

t.test('requests migrate their tenant once, whichever instance they reach, and the other instance learns the new version', async (t) => {
  const lines: Record<string, unknown>[] = []
  const log = { write: (line: string) => lines.push(JSON.parse(line)) }
  const [a, b] = [await instance(t, { LOG_LEVEL: 'info' }, log), await instance(t, { LOG_LEVEL: 'info' }, log)]
  const migratedOnRequest = (tenant: string) => lines.filter((line) => line.msg === 'tenant schema migrated on request' && line.tenant === tenant)
  const cachedVersion = async (app: FastifyInstance, tenant: string) => (await app.tenantDb.lookup(tenant))?.schemaVersion

  await provisionAt(['lag-a'], 1)
  t.equal((await get(b, 'lag-a', '/')).statusCode, 200, 'B serves GET / at version 1')
  t.equal(await cachedVersion(b, 'lag-a'), 1, 'and caches the tenant at version 1')
  t.equal((await get(a, 'lag-a', '/files')).statusCode, 200, 'A migrates it for /files')
  t.ok(await eventually(async () => (await cachedVersion(b, 'lag-a')) === latest, 2000), 'B drops its cached version on the notification')
  t.equal((await get(b, 'lag-a', '/files')).statusCode, 200, 'B serves /files')
  t.equal(migratedOnRequest('lag-a').length, 1, 'migrated once, by A')

  const ids = ['lag-b', 'lag-c']
  await provisionAt(ids, 0)
  // Both instances read the tenants at version 0 first: GET / needs nothing.
  for (const app of [a, b]) for (const id of ids) t.equal((await get(app, id, '/')).statusCode, 200)
  const answers = await Promise.all(ids.flatMap((id) => Array.from({ length: 6 }, (_, i) => get(i % 2 ? b : a, id, i % 3 ? '/files' : '/users'))))
  t.same(
    answers.map((response) => response.statusCode),
    answers.map(() => 200),
    'every concurrent request served, once its tenant was migrated'
  )
  const state = await registry(ids)
  for (const id of ids) {
    t.match(state[id], { schema_version: latest, migration_status: 'ok' })
    t.equal(migratedOnRequest(id).length, 1, `${id} migrated once for the requests of both instances`)
  }
  let migrated = 0
  for (const app of [a, b]) {
    for (const { labels, value } of (await app.metrics.tenantMigrationsOnRequest.get()).values) if (labels.outcome === 'migrated') migrated += value
  }
  t.equal(migrated, 3, 'counted in tenant_service_tenant_migrations_on_request_total{outcome="migrated"}')
})

t.test('TENANT_MIGRATIONS=job: a lagging tenant gets 503 TENANT_MIGRATING with Retry-After until npm run migrate reaches it', async (t) => {
  await provisionAt(['job-a'], 1)
  const app = await instance(t, { TENANT_MIGRATIONS: 'job' })
  const refused = await get(app, 'job-a', '/files')
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { statusCode: 503, code: 'TENANT_MIGRATING', message: /job-a/ })
  t.match(refused.headers['retry-after'], /^[1-9]\d*$/, 'with Retry-After')
  t.equal((await get(app, 'job-a', '/')).statusCode, 200, 'routes the old schema has are served')
  t.equal((await get(app, 'job-a', '/')).statusCode, 200)
  t.equal((await registry(['job-a']))['job-a'].schema_version, 1, 'nothing migrated by the request')

  const migrate = await runScript('scripts/migrate.ts', [], serverEnv(ctx, { NODE_ENV: 'test' }))
  t.equal(migrate.code, 0)
  t.ok(await eventually(async () => (await get(app, 'job-a', '/files')).statusCode === 200, 5000), 'served once the job migrated it (heard by notification)')
})

t.test("an admin's GET /auth/tenants/:id/usage migrates a tenant behind the tables it reads, or answers 503 in job mode, never 500", async (t) => {
  const usage = (app: FastifyInstance, tenant: string) => app.inject({ method: 'GET', url: `/auth/tenants/${tenant}/usage`, headers: ctx.auth.admin() })
  await provisionAt(['usage-a'], 0)
  await provisionAt(['usage-b'], 1)
  await provisionAt(['usage-c'], USAGE_TENANT_SCHEMA_VERSION)

  const job = await instance(t, { TENANT_MIGRATIONS: 'job' })
  for (const id of ['usage-a', 'usage-b']) {
    const refused = await usage(job, id)
    t.equal(refused.statusCode, 503, `job mode: ${id} ${refused.body}`)
    t.match(refused.json(), { statusCode: 503, code: 'TENANT_MIGRATING', message: new RegExp(id) })
    t.match(refused.headers['retry-after'], /^[1-9]\d*$/, 'with Retry-After')
  }
  const served = await usage(job, 'usage-c')
  t.equal(served.statusCode, 200, `job mode: a tenant at the version the usage reads is served (${served.body})`)
  t.match(served.json(), { tenant: 'usage-c', users: 0, storage: { files: 0, bytes: 0 } })
  t.match(
    await registry(['usage-a', 'usage-b', 'usage-c']),
    {
      'usage-a': { schema_version: 0 },
      'usage-b': { schema_version: 1 },
      'usage-c': { schema_version: USAGE_TENANT_SCHEMA_VERSION }
    },
    'nothing migrated in job mode'
  )

  for (const id of ['usage-a', 'usage-b']) {
    const response = await usage(ctx.app, id)
    t.equal(response.statusCode, 200, `on request: ${id} ${response.body}`)
    t.match(response.json(), { tenant: id, users: 0, storage: { files: 0, bytes: 0 } })
    t.match((await registry([id]))[id], { schema_version: latest, migration_status: 'ok' }, `${id} migrated by the request`)
  }
})

t.test('a request waiting on the lock another session holds gets 503 TENANT_MIGRATING after the wait', async (t) => {
  await provisionAt(['lock-a'], 1)
  const app = await instance(t, { TENANT_MIGRATION_WAIT_MS: 300 })
  const holder = await ctx.admin.connect()
  t.teardown(() => holder.release())
  await holder.query('SELECT pg_advisory_lock($1, hashtext($2))', [LOCK_TENANT_SCHEMA, 'lock-a'])

  const refused = await get(app, 'lock-a', '/files')
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { code: 'TENANT_MIGRATING' })
  t.match(refused.headers['retry-after'], /^[1-9]\d*$/)
  t.equal((await registry(['lock-a']))['lock-a'].schema_version, 1, 'not migrated under the lock of another session')

  await holder.query('SELECT pg_advisory_unlock($1, hashtext($2))', [LOCK_TENANT_SCHEMA, 'lock-a'])
  t.ok(await eventually(async () => (await get(app, 'lock-a', '/files')).statusCode === 200, 5000), 'served once the lock is free')
  t.equal((await registry(['lock-a']))['lock-a'].schema_version, latest)
})

t.test('a failing migration gives 503, is logged once and not retried by every request, and the tenant recovers once fixed', async (t) => {
  await provisionAt(['fail-a'], 1)
  // Something in the way of the files migration.
  await ctx.admin.query('CREATE TABLE "fail-a".files (x int)')
  const lines: Record<string, unknown>[] = []
  const app = await instance(t, { LOG_LEVEL: 'warn', TENANT_MIGRATION_BACKOFF_MS: 400 }, { write: (line) => lines.push(JSON.parse(line)) })

  const first = await get(app, 'fail-a', '/files')
  t.equal(first.statusCode, 503)
  t.match(first.json(), { code: 'TENANT_MIGRATING' })
  t.match(first.headers['retry-after'], /^[1-9]\d*$/)
  t.match((await registry(['fail-a']))['fail-a'], { schema_version: 1, migration_status: 'failed', migration_error: /relation "files" already exists/ })

  const again = await Promise.all(Array.from({ length: 5 }, () => get(app, 'fail-a', '/files')))
  t.same(
    again.map((response) => response.statusCode),
    [503, 503, 503, 503, 503]
  )
  t.equal((await get(app, 'fail-a', '/')).statusCode, 200, 'routes its schema has are served meanwhile')
  const logged = lines.filter((line) => line.msg === 'migrating a tenant on request failed; its requests get 503 until it is retried')
  t.equal(logged.length, 1, 'logged once')
  t.match(logged[0], { tenant: 'fail-a', err: { message: /relation "files" already exists/ } })

  await ctx.admin.query('DROP TABLE "fail-a".files')
  t.ok(await eventually(async () => (await get(app, 'fail-a', '/files')).statusCode === 200, 10_000, 100), 'served once the obstacle is gone')
  t.match((await registry(['fail-a']))['fail-a'], { schema_version: latest, migration_status: 'ok', migration_error: null })
})

t.test('catch-up, without HTTP: one attempt for concurrent requests, none during the pause, and the pause doubles', async (t) => {
  const [row] = await provisionAt(['unit-a'], latest)
  // Counts the attempts: a sequence is not rolled back with the failed migration.
  await ctx.admin.query('CREATE SEQUENCE "unit-a".attempts')
  const attempts = async () => Number((await ctx.admin.query('SELECT last_value FROM "unit-a".attempts')).rows[0].last_value)
  const broken: Migration = { version: latest + 1, name: 'broken', sql: "SELECT nextval('attempts');\nSELECT 1 / 0;" }
  const catchUp = createTenantCatchUp({
    mode: 'on-request',
    migrations: [...shipped, broken],
    pool: ctx.admin,
    waitMs: 5000,
    backoffMs: 1500,
    concurrency: 2
  })
  const tenant = { id: row.id, schema: row.schema, role: row.role, schemaVersion: row.schema_version }
  t.equal(catchUp.ensure(tenant, latest), undefined, 'nothing to wait for at the version the route needs')
  const refusal = async () => {
    try {
      await catchUp.ensure(tenant, latest + 1)
      return null
    } catch (error) {
      return error as ApiError
    }
  }

  const first = await Promise.all(Array.from({ length: 5 }, refusal))
  t.same(
    first.map((error) => error?.code),
    Array(5).fill('TENANT_MIGRATING')
  )
  t.same(
    first.map((error) => error?.headers['retry-after']),
    Array(5).fill('2'),
    'Retry-After: the pause, 1.5 s, rounded up'
  )
  t.equal(await attempts(), 1, 'one attempt for five concurrent requests')
  const during = await Promise.all(Array.from({ length: 3 }, refusal))
  t.ok(
    during.every((error) => error?.code === 'TENANT_MIGRATING'),
    'refused during the pause'
  )
  t.equal(await attempts(), 1, 'and not attempted again')

  await sleep(1600)
  const second = await refusal()
  t.equal(await attempts(), 2, 'attempted again once the pause is over')
  t.equal(second?.headers['retry-after'], '3', 'the next pause is twice as long')
  t.match((await registry(['unit-a']))['unit-a'], { schema_version: latest, migration_status: 'failed', migration_error: /division by zero/ })
})
