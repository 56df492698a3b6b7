import pg from 'pg'
import t from 'tap'
import { createTenantDb, databaseKind, type ResolvedTenant, type TenantDb, UNCACHED_WORKER_CONNECTIONS } from '../lib/tenant-db/index.ts'
import { checkPgInternals } from '../lib/tenant-db/pg-internals.ts'
import { CONTEXT, CONTEXT_READ_ONLY, createScope, scopeMode } from '../lib/tenant-db/scope.ts'
import { migrateControlPlane, provisionTenant } from '../lib/tenants/index.ts'
import { createTestDatabase, type TestDatabase } from './helpers/database.ts'

/**
 * The tenant-scoped client on a bare pg.Pool, with no Fastify anywhere: the handle, the read lanes
 * and the tenant switch (lib/tenant-db/scope.ts), and the parts of pg below its public API that
 * they rely on, so that an upgrade of pg fails here, naming what moved.
 */

const STATEMENT_TIMEOUT_MS = 3000
let database: TestDatabase
let pool: pg.Pool
let admin: pg.Pool

t.before(async () => {
  database = await createTestDatabase()
  admin = new pg.Pool({ connectionString: database.url, max: 2 })
  admin.on('error', () => undefined)
  await migrateControlPlane(admin)
  for (const id of ['alpha-co', 'beta-co']) await provisionTenant(admin, { id, name: id }, { rolePrefix: database.rolePrefix })
  // As the service builds it (plugins/external/postgres.ts): pipelining on.
  pool = new pg.Pool({ connectionString: database.url, max: 3, pipeline: true } as pg.PoolConfig)
  pool.on('error', () => undefined)
})

t.teardown(async () => {
  await pool?.end()
  await admin?.end()
  await database?.drop()
})

function tenantDb(options: { readLanes?: number; onContextSwitch?: (seconds: number) => void; on?: pg.Pool } = {}): TenantDb {
  const db = createTenantDb(options.on ?? pool, { statementTimeoutMs: STATEMENT_TIMEOUT_MS, cacheTtlMs: 1000, readLanes: options.readLanes ?? 0, ...options })
  t.teardown(async () => {
    await db.closeLanes()
    await db.stop()
  })
  return db
}

async function resolve(db: TenantDb, id: string): Promise<ResolvedTenant> {
  const tenant = await db.lookup(id)
  if (!tenant) throw new Error(`no tenant ${id}`)
  return tenant
}

/** What a connection carries when nothing is scoped: the session's own settings. */
async function sessionState(client: pg.ClientBase) {
  const { rows } = await client.query<{ search_path: string; role: string; read_only: string; timeout: string; in_transaction: boolean }>(
    `SELECT current_setting('search_path') AS search_path, current_user AS role,
            current_setting('transaction_read_only') AS read_only, current_setting('statement_timeout') AS timeout,
            now() <> statement_timestamp() AS in_transaction`
  )
  return rows[0]
}

t.test('the pg internals the client relies on are all there', async (t) => {
  t.same(checkPgInternals(), [], 'pg exports what pg-internals.ts names')
  const client = await pool.connect()
  try {
    t.same(checkPgInternals(client), [], "and a pooled client's connection has its socket")
  } finally {
    client.release()
  }
})

t.test('the switch: one context statement, its values per tenant, and when it rides', async (t) => {
  t.equal(scopeMode(true, false), 'read', 'every read carries the read-only context')
  t.equal(scopeMode(false, false), 'begin', "a mutation's first query opens the transaction with the context")
  t.equal(scopeMode(false, true), 'none', 'its later queries ride in that transaction')
  const scope = createScope(
    { id: 'acme-corp', schema: 'acme-corp', role: 't_acme-corp', created_at: new Date() },
    { statementTimeoutMs: 1500, idleInTransactionTimeoutMs: 10_000, prepared: true, tenantRoles: true }
  )
  t.same(scope.values, ['"acme-corp"', 't_acme-corp', '1500'], 'search_path is the quoted schema only, then the role and the timeout')
  t.match(CONTEXT.text, /set_config\('search_path', \$1, true\).*set_config\('role', \$2, true\).*set_config\('statement_timeout', \$3, true\)/)
  t.match(CONTEXT_READ_ONLY.text, /set_config\('transaction_read_only', 'on', true\)/)
  t.notMatch(CONTEXT.text, /transaction_read_only/, 'a mutation is not read-only')
  t.match(CONTEXT.text, /public\.tenant_accepts_writes\(\$5, \$6\)/, 'and asks the registry about the tenant it resolved: its id and its creation')
})

t.test('a tenant as a request sees it carries no driver state', async (t) => {
  const db = tenantDb()
  const tenant = await resolve(db, 'alpha-co')
  t.same(Object.keys(tenant).sort(), ['createdAt', 'id', 'name', 'role', 'schema', 'schemaVersion', 'status'])
  t.ok(Object.isFrozen(tenant))
  t.equal(await db.lookup('no-such-co'), null, 'an unknown id is null')
  t.throws(() => db.open({ ...tenant }, true), /not resolved by a tenant cache/, 'only a tenant from lookup can be opened')

  // The context's Bind bytes and statement names stay inside lib/tenant-db: a route sees no scope.
  const handle = db.open(tenant, true)
  t.notOk('scope' in handle, 'a handle exposes no scope')
  t.equal((handle as unknown as Record<string, unknown>).scope, undefined)
  t.same(Object.keys(handle), [], 'nor any other own property')
  handle.finish(false)
})

t.test('a read runs in its tenant, read-only, and leaves nothing on the connection', async (t) => {
  const db = tenantDb()
  const handle = db.open(await resolve(db, 'alpha-co'), true)
  const { rows } = await handle.query<{ schema: string; role: string; read_only: string; timeout: string }>(
    `SELECT current_schema() AS schema, current_user AS role, current_setting('transaction_read_only') AS read_only,
            current_setting('statement_timeout') AS timeout`
  )
  t.same(rows[0], { schema: 'alpha-co', role: `${database.rolePrefix}alpha-co`, read_only: 'on', timeout: '3s' })
  await t.rejects(handle.query('INSERT INTO users (email, name) VALUES ($1, $2)', ['a@x.test', 'A']), { code: '25006' }, 'PostgreSQL refuses a write')
  t.equal(handle.finish(false), undefined, 'a read ends at once: nothing to commit')
  await t.rejects(handle.query('SELECT 1'), { name: 'RequestFinishedError' }, 'a finished handle runs nothing')

  // Every connection of the pool, as the next request would get it.
  const clients = await Promise.all([pool.connect(), pool.connect(), pool.connect()])
  for (const client of clients) {
    t.match(await sessionState(client), { search_path: '"$user", public', role: 'postgres', read_only: 'off', timeout: '0', in_transaction: false })
    client.release()
  }
})

t.test('a mutation is one transaction: committed by finish(true), rolled back by finish(false)', async (t) => {
  const db = tenantDb()
  const alpha = await resolve(db, 'alpha-co')
  const kept = db.open(alpha, false)
  await kept.query('INSERT INTO users (email, name) VALUES ($1, $2)', ['kept@alpha.test', 'Kept'])
  const { rows } = await kept.query<{ count: number }>('SELECT count(*)::int AS count FROM users')
  t.equal(rows[0].count, 1, 'its later queries see its writes')
  await kept.finish(true)

  const dropped = db.open(alpha, false)
  await dropped.query('INSERT INTO users (email, name) VALUES ($1, $2)', ['dropped@alpha.test', 'Dropped'])
  await dropped.finish(false)

  const failed = db.open(alpha, false)
  await failed.query('INSERT INTO users (email, name) VALUES ($1, $2)', ['failed@alpha.test', 'Failed'])
  await t.rejects(failed.query('SELECT * FROM no_such_table'))
  await t.rejects(failed.finish(true) as Promise<void>, { code: 'TRANSACTION_FAILED' }, 'a commit after a failed statement is refused')

  const { rows: stored } = await admin.query('SELECT email FROM "alpha-co".users ORDER BY email')
  t.same(stored, [{ email: 'kept@alpha.test' }], 'only the committed write is there')
  const { rows: other } = await admin.query('SELECT count(*)::int AS count FROM "beta-co".users')
  t.equal(other[0].count, 0, 'and nothing reached the other tenant')

  const client = await pool.connect()
  t.match(await sessionState(client), { search_path: '"$user", public', role: 'postgres', in_transaction: false }, 'the connection is clean')
  client.release()
})

t.test("a tenant's role cannot reach another tenant's schema", async (t) => {
  const db = tenantDb()
  const handle = db.open(await resolve(db, 'alpha-co'), true)
  await t.rejects(handle.query('SELECT * FROM "beta-co".users'), { code: '42501' }, 'permission denied')
  handle.finish(false)
})

t.test('read lanes carry the reads of many requests and tenants on one connection, each in its own tenant', async (t) => {
  const switches: number[] = []
  const own = new pg.Pool({ connectionString: database.url, max: 3, pipeline: true } as pg.PoolConfig)
  t.teardown(() => own.end())
  const db = tenantDb({ readLanes: 1, onContextSwitch: (seconds) => switches.push(seconds), on: own })
  const tenants = [await resolve(db, 'alpha-co'), await resolve(db, 'beta-co')]
  // Fewer than a lane takes at once (MAX_LANE_DEPTH), all asked for in one turn of the event loop.
  const answers = await Promise.all(
    Array.from({ length: 30 }, async (_, i) => {
      const handle = db.open(tenants[i % 2], true)
      const { rows } = await handle.query<{ schema: string }>('SELECT current_schema() AS schema')
      handle.finish(false)
      return [tenants[i % 2].schema, rows[0].schema]
    })
  )
  t.ok(
    answers.every(([asked, answered]) => asked === answered),
    'every read answered from its own schema'
  )
  // One for the tenant cache's lookups, one for the lane: not one per read.
  t.ok(own.totalCount <= 2, `the reads shared the lane rather than a connection each (${own.totalCount} open)`)
  t.equal(switches.length, 30, 'the observer passed in saw every context switch')
  t.ok(switches.every((seconds) => seconds >= 0 && seconds < 60))
})

t.test('TENANT_ISOLATION=search_path: the tenant schema, as the service role', async (t) => {
  const db = createTenantDb(pool, { statementTimeoutMs: STATEMENT_TIMEOUT_MS, cacheTtlMs: 1000, readLanes: 0, tenantRoles: false })
  t.teardown(() => db.stop())
  const handle = db.open(await resolve(db, 'beta-co'), true)
  const { rows } = await handle.query<{ schema: string; role: string; session: string }>(
    'SELECT current_schema() AS schema, current_user AS role, session_user AS session'
  )
  handle.finish(false)
  t.equal(rows[0].schema, 'beta-co')
  t.equal(rows[0].role, rows[0].session, "no tenant role: the service's own")
})

t.test('the Citus connection setting is a no-op on plain PostgreSQL', async (t) => {
  const client = await pool.connect()
  try {
    await client.query(UNCACHED_WORKER_CONNECTIONS)
    const { rows } = await client.query(`SELECT current_setting('citus.max_cached_conns_per_worker', true) AS setting`)
    t.equal(rows[0].setting, null, 'nothing set where Citus is not installed')
    t.same(await databaseKind(client), { citus: null, workers: 0, postgres: (await client.query('SHOW server_version')).rows[0].server_version })
  } finally {
    client.release()
  }
})
