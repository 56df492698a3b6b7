import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import {
  deleteTenant,
  latestVersion,
  loadMigrations,
  migrateAll,
  type Migration,
  MIGRATIONS_ROOT,
  provisionTenant,
  TenantSpares
} from '../lib/tenants/index.ts'
import { splitStatements } from '../lib/tenants/split-sql.ts'
import { setupApp, type TestContext } from './helpers/app.ts'
import { startPgProxy, type PgProxy } from './helpers/pg-proxy.ts'
import { runScript, serverEnv } from './helpers/server.ts'

/**
 * Citus forwards a DDL statement's original text to its workers, which refuse a message holding
 * several commands (DESIGN §9). Seen through a proxy that records every message on the wire, the
 * tenant lifecycle sends one statement per message, on plain PostgreSQL as on Citus; and what a
 * migration waits for and needs is bounded.
 */

let ctx: TestContext
let proxy: PgProxy
let pool: pg.Pool
const quiet = { info: () => undefined, warn: () => undefined }

t.before(async () => {
  ctx = await setupApp(t)
  proxy = await startPgProxy(ctx.database.url)
  // Pipelined, as the service's own pool.
  pool = new pg.Pool({ connectionString: proxy.url, max: 4, pipeline: true } as pg.PoolConfig)
  pool.on('error', () => undefined)
})

t.teardown(async () => {
  await pool?.end()
  await proxy?.close()
})

/** The messages sent since `from` that carried more than one statement. */
function multiStatement(from: number) {
  return proxy.messages
    .slice(from)
    .filter((message) => splitStatements(message.sql).length > 1)
    .map((message) => message.sql)
}

const rolePrefix = () => ctx.config.TENANT_ROLE_PREFIX

async function traces(id: string) {
  const { rows } = await ctx.admin.query<{ row: boolean; schema: boolean; role: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM public.tenants WHERE id = $1) AS row,
            EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2) AS role`,
    [id, `${rolePrefix()}${id}`]
  )
  return rows[0]
}

t.test('provisioning on the spot, and deletion, send one statement per message', async (t) => {
  const from = proxy.messages.length
  await provisionTenant(pool, { id: 'ddl-one', name: 'DDL one' }, { rolePrefix: rolePrefix() })
  t.same(await traces('ddl-one'), { row: true, schema: true, role: true })
  const sent = proxy.messages.slice(from).map((message) => message.sql)
  t.ok(
    sent.some((sql) => /^CREATE INDEX/i.test(sql.trim())),
    'the tenant migrations went through the proxy, CREATE INDEX among them'
  )
  await deleteTenant(pool, 'ddl-one')
  t.same(await traces('ddl-one'), { row: false, schema: false, role: false })
  t.same(multiStatement(from), [], 'no message carried two statements')
})

t.test('a failure part-way leaves neither schema, role nor row', async (t) => {
  const migrations = await loadMigrations('tenant')
  const broken: Migration[] = [
    ...migrations,
    {
      version: latestVersion(migrations) + 1,
      name: 'broken',
      sql: 'CREATE TABLE half_done (x bigint);\nCREATE INDEX half_done_x ON half_done (x);\nSELECT 1/0;'
    }
  ]
  const from = proxy.messages.length
  await t.rejects(provisionTenant(pool, { id: 'ddl-broken', name: 'x' }, { rolePrefix: rolePrefix(), migrations: broken }), { code: '22012' })
  t.same(await traces('ddl-broken'), { row: false, schema: false, role: false })
  t.same(multiStatement(from), [])
})

t.test('spare schemas are built, taken and dropped one statement per message', async (t) => {
  const migrations = await loadMigrations('tenant')
  const spares = new TenantSpares(pool, { target: 2, rolePrefix: rolePrefix(), migrations, log: quiet })
  t.teardown(() => spares.close())
  const from = proxy.messages.length
  await spares.check()
  const { rows } = await ctx.admin.query<{ ready: number }>('SELECT count(*)::int AS ready FROM public.tenant_spares')
  t.equal(rows[0].ready, 2, 'two spares built')
  await provisionTenant(pool, { id: 'ddl-spare', name: 'from a spare' }, { rolePrefix: rolePrefix(), spares })
  t.same(await traces('ddl-spare'), { row: true, schema: true, role: true })
  await spares.close()
  t.same(multiStatement(from), [])
  await deleteTenant(pool, 'ddl-spare')
  // The spares left are dropped with the database.
})

t.test('npm run migrate sends each statement of a migration file as a message of its own', async (t) => {
  await provisionTenant(pool, { id: 'ddl-migrate', name: 'x' }, { rolePrefix: rolePrefix() })
  t.teardown(() => deleteTenant(ctx.admin, 'ddl-migrate'))
  const shipped = await loadMigrations('tenant')
  const next = latestVersion(shipped) + 1
  const root = await mkdtemp(path.join(tmpdir(), 'ddl-migrate-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  await cp(MIGRATIONS_ROOT, root, { recursive: true })
  await writeFile(
    path.join(root, 'tenant', `${String(next).padStart(4, '0')}_labels.sql`),
    `-- Two statements, one of them an index: one message on Citus would fail.
CREATE TABLE labels (id bigint PRIMARY KEY, name text NOT NULL);
CREATE INDEX labels_name ON labels (name);
COMMENT ON TABLE labels IS 'a; semicolon inside';`
  )
  const from = proxy.messages.length
  // Production mode, and nothing configured but the database: migrate needs nothing else.
  const env = { ...serverEnv(undefined, { NODE_ENV: 'production' }), DATABASE_URL: proxy.url }
  const result = await runScript('scripts/migrate.ts', ['--migrations-dir', root], env)
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /migrated: +1\n/)
  t.same(multiStatement(from), [], 'no message carried two statements')
  const { rows } = await ctx.admin.query(`SELECT obj_description('"ddl-migrate".labels'::regclass) AS comment`)
  t.equal(rows[0].comment, 'a; semicolon inside', 'a semicolon inside a string stayed inside it')
})

t.test('a tenant migration gives up on a lock after lock_timeout, is tried again, and reported if it never gets it', async (t) => {
  await provisionTenant(pool, { id: 'ddl-busy', name: 'busy' }, { rolePrefix: rolePrefix() })
  await provisionTenant(pool, { id: 'ddl-idle', name: 'idle' }, { rolePrefix: rolePrefix() })
  t.teardown(async () => {
    await deleteTenant(ctx.admin, 'ddl-busy')
    await deleteTenant(ctx.admin, 'ddl-idle')
  })
  const shipped = await loadMigrations('tenant')
  const next = latestVersion(shipped) + 1
  const migrations: Migration[] = [...shipped, { version: next, name: 'busy_column', sql: 'ALTER TABLE users ADD COLUMN nickname text;' }]

  // A long transaction of the busy tenant holds its users table.
  const holder = await ctx.admin.connect()
  t.teardown(() => holder.release())
  await holder.query('BEGIN')
  await holder.query('LOCK TABLE "ddl-busy".users IN ACCESS SHARE MODE')

  const started = Date.now()
  const summary = await migrateAll(ctx.admin, { tenantMigrations: migrations, lockTimeoutMs: 200, concurrency: 2 })
  t.ok(Date.now() - started < 30_000, 'the run did not wait for the lock holder')
  t.equal(summary.lockRetries, 2, 'tried twice more before giving up')
  t.same(
    summary.failed.map((failure) => failure.tenant),
    ['ddl-busy'],
    'the busy tenant is reported'
  )
  t.match(summary.failed[0].error, /lock timeout/)
  const { rows } = await ctx.admin.query<{ id: string; schema_version: number }>(
    `SELECT id, schema_version FROM public.tenants WHERE id IN ('ddl-busy', 'ddl-idle') ORDER BY id`
  )
  t.same(rows, [
    { id: 'ddl-busy', schema_version: next - 1 },
    { id: 'ddl-idle', schema_version: next }
  ])

  await holder.query('COMMIT')
  const rerun = await migrateAll(ctx.admin, { tenantMigrations: migrations, lockTimeoutMs: 200 })
  t.same(rerun.failed, [], 'once the lock is free, the next run migrates it')
})
