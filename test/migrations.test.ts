import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import {
  controlPlaneVersion,
  deleteTenant,
  latestVersion,
  loadMigrations,
  migrateAll,
  migrateControlPlane,
  type Migration,
  MIGRATIONS_ROOT,
  provisionTenant
} from '../lib/tenants/index.ts'
import { createProgressReporter } from '../scripts/migrate.ts'
import { setupApp, type TestContext } from './helpers/app.ts'
import { runScript, serverEnv } from './helpers/server.ts'

let ctx: TestContext
let shipped: Migration[]
let next: number

t.before(async () => {
  ctx = await setupApp(t)
  shipped = await loadMigrations('tenant')
  next = latestVersion(shipped) + 1
})

const provision = (ids: string[]) => Promise.all(ids.map((id) => provisionTenant(ctx.admin, { id, name: id }, { rolePrefix: ctx.config.TENANT_ROLE_PREFIX })))

const removeTenants = async (ids: string[]) => {
  for (const id of ids) await deleteTenant(ctx.admin, id)
}

async function registry(ids: string[]) {
  const { rows } = await ctx.admin.query<{ id: string; schema_version: number; migration_status: string; migration_error: string | null }>(
    'SELECT id, schema_version, migration_status, migration_error FROM public.tenants WHERE id = ANY($1) ORDER BY id',
    [ids]
  )
  return Object.fromEntries(rows.map((row) => [row.id, row]))
}

/** A new tenant migration that cannot be applied twice, and records which connection applied it. */
const notesMigration = (sleepSeconds = 0.05): Migration => ({
  version: next,
  name: 'notes',
  sql: `SELECT pg_sleep(${sleepSeconds});
        CREATE TABLE notes (id bigint PRIMARY KEY, applied_by integer NOT NULL DEFAULT pg_backend_pid());
        INSERT INTO notes (id) VALUES (1);`
})

t.test('control-plane migrations are recorded in public.schema_migrations and idempotent', async (t) => {
  const migrations = await loadMigrations('public')
  const { rows } = await ctx.admin.query('SELECT version, name FROM public.schema_migrations ORDER BY version')
  t.same(
    rows,
    migrations.map(({ version, name }) => ({ version, name })),
    'one row per migration'
  )
  t.equal(await controlPlaneVersion(ctx.admin), latestVersion(migrations))

  t.same(await migrateControlPlane(ctx.admin), [], 'a second run applies nothing')
  const concurrent = await Promise.all([migrateControlPlane(ctx.admin), migrateControlPlane(ctx.admin), migrateControlPlane(ctx.admin)])
  t.same(concurrent, [[], [], []], 'nor do concurrent runs')
  const { rows: after } = await ctx.admin.query('SELECT version, name FROM public.schema_migrations ORDER BY version')
  t.same(after, rows)

  // A failing control-plane migration is rolled back with its bookkeeping row, and reported.
  const broken = [...migrations, { version: 9000, name: 'broken', sql: 'CREATE TABLE public.half_done (x int); SELECT 1/0' }]
  await t.rejects(migrateControlPlane(ctx.admin, broken), /9000_broken failed: division by zero/)
  const { rows: state } = await ctx.admin.query(
    `SELECT to_regclass('public.half_done') AS half_done, (SELECT count(*)::int FROM public.schema_migrations WHERE version = 9000) AS recorded`
  )
  t.same(state[0], { half_done: null, recorded: 0 })
})

t.test('migrateAll: one failing tenant is recorded while the others reach the latest version; a rerun resumes', async (t) => {
  const ids = ['mig-a', 'mig-b', 'mig-c', 'mig-d', 'mig-e', 'mig-f']
  await provision(ids)
  t.teardown(() => removeTenants(ids))
  // A table in the way: mig-c cannot take the new migration.
  await ctx.admin.query('CREATE TABLE "mig-c".notes (x int)')

  const migrations = [...shipped, notesMigration()]
  const progress: number[] = []
  const first = await migrateAll(ctx.admin, {
    concurrency: 3,
    tenantMigrations: migrations,
    onProgress: (p) => {
      t.equal(p.total, ids.length)
      progress.push(p.done)
    }
  })
  t.same(progress, [1, 2, 3, 4, 5, 6], 'progress is reported once per tenant')
  t.match(first, { total: 6, migrated: 5, upToDate: 0, gone: 0, skipped: 0, interrupted: false, latestVersion: next })
  t.equal(first.failed.length, 1)
  t.equal(first.failed[0].tenant, 'mig-c')
  t.match(first.failed[0].error, new RegExp(`migration ${String(next).padStart(4, '0')}_notes: relation "notes" already exists`))

  let state = await registry(ids)
  t.match(state['mig-c'], { schema_version: next - 1, migration_status: 'failed', migration_error: /relation "notes" already exists/ })
  for (const id of ids.filter((id) => id !== 'mig-c')) {
    t.match(state[id], { schema_version: next, migration_status: 'ok', migration_error: null }, `${id} is at the latest version`)
  }
  const { rows: halfDone } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "mig-c".notes`)
  t.equal(halfDone[0].count, 0, "the failed tenant's schema is as it was")

  // Concurrency: several connections did the work, never more than the budget.
  const pids = new Set<number>()
  for (const id of ids.filter((id) => id !== 'mig-c')) {
    const { rows } = await ctx.admin.query<{ applied_by: number }>(`SELECT applied_by FROM ${pg.escapeIdentifier(id)}.notes`)
    pids.add(rows[0].applied_by)
  }
  t.ok(pids.size > 1, `tenants were migrated in parallel (${pids.size} connections)`)
  t.ok(pids.size <= 3, 'within the connection budget')

  // The tenant role can use the new table: grants are re-applied after migrating.
  const { rows: grants } = await ctx.admin.query<{ allowed: boolean }>(`SELECT has_table_privilege($1, '"mig-a".notes', 'SELECT, INSERT') AS allowed`, [
    `${ctx.config.TENANT_ROLE_PREFIX}mig-a`
  ])
  t.equal(grants[0].allowed, true)

  await ctx.admin.query('DROP TABLE "mig-c".notes')
  const second = await migrateAll(ctx.admin, { concurrency: 3, tenantMigrations: migrations })
  t.match(second, { total: 6, migrated: 1, upToDate: 5, failed: [] }, 'the rerun finishes only what was left')
  state = await registry(ids)
  for (const id of ids) t.match(state[id], { schema_version: next, migration_status: 'ok', migration_error: null })

  const third = await migrateAll(ctx.admin, { concurrency: 3, tenantMigrations: migrations })
  t.match(third, { migrated: 0, upToDate: 6, failed: [] }, 'and then there is nothing to do')
})

t.test('two migrators at once never apply a migration twice', async (t) => {
  const ids = Array.from({ length: 8 }, (_, i) => `twice-${i}`)
  await provision(ids)
  t.teardown(() => removeTenants(ids))
  const migrations = [...shipped, notesMigration(0.02)]
  const [one, two] = await Promise.all([
    migrateAll(ctx.admin, { concurrency: 2, tenantMigrations: migrations }),
    migrateAll(ctx.admin, { concurrency: 2, tenantMigrations: migrations })
  ])
  t.same([one.failed, two.failed], [[], []], 'no "already exists" failure: the advisory lock serialised them')
  t.equal(one.migrated + two.migrated, ids.length, 'each tenant was migrated by exactly one of them')
  t.equal(one.migrated + one.upToDate, ids.length)
  t.equal(two.migrated + two.upToDate, ids.length)
  const state = await registry(ids)
  for (const id of ids) t.equal(state[id].schema_version, next)
})

t.test('an aborted run stops taking tenants, and the next run finishes', async (t) => {
  const ids = Array.from({ length: 6 }, (_, i) => `abort-${i}`)
  await provision(ids)
  t.teardown(() => removeTenants(ids))
  const migrations = [...shipped, notesMigration(0.02)]
  const abort = new AbortController()
  const interrupted = await migrateAll(ctx.admin, {
    concurrency: 1,
    tenantMigrations: migrations,
    signal: abort.signal,
    onProgress: (p) => p.done === 2 && abort.abort()
  })
  t.match(interrupted, { total: 6, migrated: 2, skipped: 4, interrupted: true, failed: [] })
  const state = await registry(ids)
  t.same(
    ids.map((id) => state[id].schema_version),
    [next, next, next - 1, next - 1, next - 1, next - 1]
  )
  const resumed = await migrateAll(ctx.admin, { concurrency: 2, tenantMigrations: migrations })
  t.match(resumed, { migrated: 4, upToDate: 2, interrupted: false, failed: [] })
})

t.test('a tenant deleted during a run is neither migrated nor a failure', async (t) => {
  const ids = ['gone-a', 'gone-b', 'gone-c']
  await provision(ids)
  t.teardown(() => removeTenants(ids.filter((id) => id !== 'gone-c')))
  // gone-c's deletion is under way (uncommitted) when the run lists the tenants, and commits once
  // the run has started: whichever comes first, the run must find gone-c gone.
  const deleting = await ctx.admin.connect()
  const role = pg.escapeIdentifier(`${ctx.config.TENANT_ROLE_PREFIX}gone-c`)
  await deleting.query('BEGIN')
  await deleting.query(`SELECT 1 FROM public.tenants WHERE id = 'gone-c' FOR UPDATE`)
  await deleting.query(`DROP SCHEMA "gone-c" CASCADE; DELETE FROM public.tenants WHERE id = 'gone-c'; DROP OWNED BY ${role}; DROP ROLE ${role}`)
  let committed: Promise<unknown> | undefined
  const summary = await migrateAll(ctx.admin, {
    concurrency: 1,
    tenantMigrations: [...shipped, notesMigration(0.01)],
    onProgress: () => {
      committed ??= deleting.query('COMMIT')
    }
  })
  await committed
  deleting.release()
  t.match(summary, { total: 3, migrated: 2, gone: 1, failed: [] })
  t.same(Object.keys(await registry(ids)), ['gone-a', 'gone-b'])
})

t.test('progress: a redrawn bar on a terminal, a line per tenth otherwise', async (t) => {
  const stream = (isTTY: boolean) => {
    const writes: string[] = []
    return { writes, stream: { isTTY, columns: 100, write: (chunk: string) => writes.push(chunk) } as unknown as NodeJS.WriteStream }
  }
  const plain = stream(false)
  const reporter = createProgressReporter(plain.stream)
  for (let done = 1; done <= 200; done++) reporter.update({ total: 200, done, failed: done > 100 ? 1 : 0, tenant: `t-${done}` })
  reporter.end()
  t.equal(plain.writes.length, 10, 'ten lines for 200 tenants')
  t.match(plain.writes[0], /^tenants: 20\/200 \(10%\), 0 failed, [\d.]+\/s\n$/)
  t.match(plain.writes[9], /^tenants: 200\/200 \(100%\), 1 failed, /)

  const tty = stream(true)
  const bar = createProgressReporter(tty.stream)
  for (let done = 1; done <= 200; done++) bar.update({ total: 200, done, failed: 0, tenant: `t-${done}` })
  bar.end()
  t.ok(tty.writes.length < 200, 'redraws are throttled')
  const last = tty.writes.at(-2)!
  t.match(last, /^\r\x1b\[2K\[#+\] 200\/200 100% {2}0 failed {2}[\d.]+\/s/, 'the final state is drawn in place')
  t.equal(tty.writes.at(-1), '\n', 'and left on its own line')
})

t.test('npm run migrate: exit 1 with the failure reported, then 0 once fixed', async (t) => {
  const ids = ['cli-a', 'cli-b', 'cli-c', 'cli-d', 'cli-e']
  await provision(ids)
  t.teardown(() => removeTenants(ids))
  await ctx.admin.query('CREATE TABLE "cli-d".notes (x int)')

  // The shipped migrations plus one new tenant migration and one new control-plane migration.
  const root = await mkdtemp(path.join(tmpdir(), 'migrate-test-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  await cp(MIGRATIONS_ROOT, root, { recursive: true })
  const label = String(next).padStart(4, '0')
  await writeFile(path.join(root, 'tenant', `${label}_notes.sql`), notesMigration(0.01).sql)
  await writeFile(path.join(root, 'public', '8000_probe.sql'), 'CREATE TABLE public.migrate_probe (x int);')

  const env = serverEnv(ctx, { NODE_ENV: 'test' })
  const run = () => runScript('scripts/migrate.ts', ['--concurrency', '3', '--migrations-dir', root], env)

  const first = await run()
  t.equal(first.code, 1, 'a failed tenant makes the exit status 1')
  t.match(first.stdout, /control plane: 1 migration\(s\) applied \(8000\)/)
  t.match(first.stdout, new RegExp(`tenants: 5, latest tenant version ${next}`))
  t.match(first.stdout, /migrated: +4\n/)
  t.match(first.stdout, /failed: +1\n +cli-d: migration \d+_notes: relation "notes" already exists/)
  t.match(first.stdout, /duration: /)
  t.match(first.stderr, /tenants: 5\/5 \(100%\), 1 failed/, 'progress lines when stderr is not a terminal')

  const { rows: recorded } = await ctx.admin.query('SELECT name FROM public.schema_migrations WHERE version = 8000')
  t.same(recorded, [{ name: 'probe' }])
  let state = await registry(ids)
  t.equal(state['cli-d'].migration_status, 'failed')
  t.equal(state['cli-d'].schema_version, next - 1)
  t.same(
    ids.filter((id) => id !== 'cli-d').map((id) => state[id].schema_version),
    [next, next, next, next]
  )

  await ctx.admin.query('DROP TABLE "cli-d".notes')
  const second = await run()
  t.equal(second.code, 0, 'exit 0 once every tenant is migrated')
  t.match(second.stdout, /control plane: already current/)
  t.match(second.stdout, /migrated: +1\n +already current: +4\n +failed: +0\n/)
  state = await registry(ids)
  for (const id of ids) t.match(state[id], { schema_version: next, migration_status: 'ok', migration_error: null })
})

t.test('npm run migrate: usage and configuration errors exit 2', async (t) => {
  const env = serverEnv(ctx, { NODE_ENV: 'test' })
  const help = await runScript('scripts/migrate.ts', ['--help'], env)
  t.equal(help.code, 0)
  t.match(help.stdout, /Usage: npm run migrate/)
  t.match(help.stdout, /--concurrency N/)

  for (const args of [['--concurrency', '0'], ['--concurrency', 'many'], ['--concurrency'], ['--bogus'], ['extra'], ['--migrations-dir', '/nonexistent']]) {
    const result = await runScript('scripts/migrate.ts', args, env)
    t.equal(result.code, 2, args.join(' '))
    t.match(result.stderr, /^migrate: .+\n\nUsage:/, 'says what is wrong, then how to use it')
  }

  const noDatabase = await runScript('scripts/migrate.ts', [], serverEnv(undefined, { NODE_ENV: 'production' }))
  t.equal(noDatabase.code, 2)
  t.match(noDatabase.stderr, /^config error: DATABASE_URL: /m)
  const badUrl = await runScript('scripts/migrate.ts', [], serverEnv(ctx, { NODE_ENV: 'test', DATABASE_URL: 'mysql://x' }))
  t.equal(badUrl.code, 2)
  t.match(badUrl.stderr, /^config error: DATABASE_URL: /m)

  const unreachable = await runScript('scripts/migrate.ts', [], serverEnv(ctx, { NODE_ENV: 'test', DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nothing' }))
  t.equal(unreachable.code, 1, 'an unreachable database is a failure, not a usage error')
  t.match(unreachable.stderr, /^migrate: .*ECONNREFUSED/m)
})
