import type { FastifyBaseLogger } from 'fastify'
import pg from 'pg'
import t from 'tap'
import { latestVersion, loadMigrations, provisionTenant, TenantSpares } from '../lib/tenants/index.ts'
import { eventually } from './helpers/wait.ts'
import { createTenant, setupApp, TENANT_ROLE_RIGHTS, tenantRoleRights, type TestContext } from './helpers/app.ts'

/**
 * Tenant schemas built ahead of need (TENANT_SPARES): creating a tenant renames one. Each test
 * checks what a tenant made from a spare is, and that a spare can be neither named nor reached.
 */

const SPARES = 3
let ctx: TestContext
let version: number

t.before(async () => {
  ctx = await setupApp(t, { TENANT_SPARES: String(SPARES) })
  version = latestVersion(await loadMigrations('tenant'))
})

interface Spare {
  schema: string
  role: string
  oid: number
}

async function spares(): Promise<Spare[]> {
  const { rows } = await ctx.admin.query<Spare>(
    `SELECT s.schema, s.role, n.oid::int AS oid FROM public.tenant_spares s
       JOIN pg_namespace n ON n.nspname = s.schema WHERE s.schema_version = $1 ORDER BY s.schema`,
    [version]
  )
  return rows
}

/** At least SPARES ready (two builders may briefly make one more). */
const stocked = () => eventually(async () => (await spares()).length >= SPARES)

const schemaOid = async (schema: string) =>
  (await ctx.admin.query<{ oid: number }>('SELECT oid::int AS oid FROM pg_namespace WHERE nspname = $1', [schema])).rows[0]?.oid

const exists = async (spare: Pick<Spare, 'schema' | 'role'>) => {
  const { rows } = await ctx.admin.query<{ schema: boolean; role: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2) AS role`,
    [spare.schema, spare.role]
  )
  return rows[0]
}

const post = (id: string, name = id) => ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: ctx.auth.admin(), payload: { id, name } })

t.test('spares are built before the service starts, each a schema and a role made as a tenant', async (t) => {
  t.ok((await spares()).length >= SPARES, `${SPARES} spares ready once the service is`)
  for (const spare of await spares()) {
    t.match(spare.schema, /^_spare_[0-9a-f]{12}$/)
    t.ok(spare.role.startsWith(ctx.config.TENANT_ROLE_PREFIX), 'its role carries the deployment prefix (dropped with its roles)')
    const { rows: tables } = await ctx.admin.query(`SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, [spare.schema])
    t.same(
      tables.map((row) => row.tablename),
      ['file_quota_lock', 'files', 'users'],
      'every tenant migration ran in it'
    )
  }
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS n FROM public.tenants`)
  t.equal(rows[0].n, 0, 'no spare is a tenant')
})

t.test('creating a tenant renames a spare: its rights, its data path, and the stock refilled', async (t) => {
  t.ok(await stocked())
  const before = await spares()
  const response = await post('from-spare', 'From Spare')
  t.equal(response.statusCode, 201)
  t.match(response.json(), { id: 'from-spare', schema: 'from-spare', schemaVersion: version, status: 'active' })

  const oid = await schemaOid('from-spare')
  const spare = before.find((candidate) => candidate.oid === oid)
  t.ok(spare, 'the tenant schema is one of the spares, renamed')
  t.same(await exists(spare!), { schema: false, role: false }, 'the spare names are gone')

  const role = `${ctx.config.TENANT_ROLE_PREFIX}from-spare`
  t.same(await tenantRoleRights(ctx.admin, 'from-spare', role), TENANT_ROLE_RIGHTS)

  const headers = ctx.auth.tenantUser('from-spare')
  const created = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload: { email: 'ada@spare.test', name: 'Ada' } })
  t.equal(created.statusCode, 201)
  const read = await ctx.app.inject({ method: 'GET', url: `/users/${created.json().id}`, headers })
  t.equal(read.statusCode, 200)
  t.equal(read.json().email, 'ada@spare.test')
  const health = await ctx.app.inject({ method: 'GET', url: '/', headers })
  t.equal(health.json().database.currentSchema, 'from-spare', 'requests run in the renamed schema')

  t.ok(await stocked(), 'the stock is topped up again')
  t.notOk(
    (await spares()).some((candidate) => candidate.oid === oid),
    'with a new spare'
  )

  const deleted = await ctx.app.inject({ method: 'DELETE', url: '/auth/tenants/from-spare', headers: ctx.auth.admin() })
  t.equal(deleted.statusCode, 204, 'and it is deleted like any tenant')
  t.same(await exists({ schema: 'from-spare', role }), { schema: false, role: false })
})

t.test('a spare cannot be named by a request or a creation, nor reached by a tenant role', async (t) => {
  await createTenant(ctx, 'spare-probe')
  t.ok(await stocked())
  const [spare] = await spares()

  const asHeader = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...ctx.auth.tenantUser('spare-probe'), 'x-tenant-id': spare.schema } })
  t.equal(asHeader.statusCode, 400)
  t.equal(asHeader.json().code, 'TENANT_ID_INVALID')

  const asId = await post(spare.schema)
  t.equal(asId.statusCode, 400, "no tenant can be created under a spare's name")
  const { rows: registered } = await ctx.admin.query(`SELECT count(*)::int AS n FROM public.tenants WHERE id = $1`, [spare.schema])
  t.equal(registered[0].n, 0)

  const role = `${ctx.config.TENANT_ROLE_PREFIX}spare-probe`
  const client = await ctx.admin.connect()
  try {
    await client.query('BEGIN')
    await client.query(`SET LOCAL ROLE "${role}"`)
    await t.rejects(client.query(`INSERT INTO "${spare.schema}".users (email, name) VALUES ('x@x.test', 'x')`), { code: '42501' }, 'no write into a spare')
    await client.query('ROLLBACK')
    await client.query('BEGIN')
    await client.query(`SET LOCAL ROLE "${role}"`)
    await t.rejects(client.query(`SELECT * FROM "${spare.schema}".users`), { code: '42501' }, 'no read of a spare')
  } finally {
    await client.query('ROLLBACK')
    client.release()
  }
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS n FROM "${spare.schema}".users`)
  t.equal(rows[0].n, 0, 'nothing was written into the spare')
  t.ok(
    (await spares()).some((candidate) => candidate.schema === spare.schema),
    'and it is still a spare'
  )
})

t.test('a creation that fails puts its spare back', async (t) => {
  await createTenant(ctx, 'dupe-spare', 'Original')
  t.ok(await stocked())
  const before = await spares()
  const response = await post('dupe-spare', 'Impostor')
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'TENANT_EXISTS')
  const after = new Set((await spares()).map((spare) => spare.schema))
  t.ok(
    before.every((spare) => after.has(spare.schema)),
    'every spare is still there, under its own name'
  )
  const { rows } = await ctx.admin.query(`SELECT name FROM public.tenants WHERE id = 'dupe-spare'`)
  t.same(rows, [{ name: 'Original' }])
})

t.test('a creation refused for an id deleted moments ago takes no spare', async (t) => {
  await createTenant(ctx, 'reborn-spare')
  const deleted = await ctx.app.inject({ method: 'DELETE', url: '/auth/tenants/reborn-spare', headers: ctx.auth.admin() })
  t.equal(deleted.statusCode, 204)
  t.ok(await stocked())
  const before = await spares()
  const response = await post('reborn-spare', 'Too soon')
  t.equal(response.statusCode, 409, response.body)
  t.equal(response.json().code, 'TENANT_RECENTLY_DELETED')
  t.ok(Number(response.headers['retry-after']) >= 1, 'with Retry-After')
  const after = new Set((await spares()).map((spare) => spare.schema))
  t.ok(
    before.every((spare) => after.has(spare.schema)),
    'every spare is still there, under its own name'
  )
  t.same(await exists({ schema: 'reborn-spare', role: `${ctx.config.TENANT_ROLE_PREFIX}reborn-spare` }), { schema: false, role: false })
  const { rows } = await ctx.admin.query(`SELECT 1 FROM public.tenants WHERE id = 'reborn-spare'`)
  t.same(rows, [], 'and no registry row')
})

t.test('concurrent creations take different spares, and more creations than spares all succeed', async (t) => {
  t.ok(await stocked())
  const ids = Array.from({ length: SPARES * 2 }, (_, i) => `burst-${i}`)
  const answers = await Promise.all(ids.map((id) => post(id)))
  t.same(
    answers.map((answer) => answer.statusCode),
    ids.map(() => 201)
  )
  const oids = await Promise.all(ids.map(schemaOid))
  t.equal(new Set(oids).size, ids.length, 'each its own schema')
  for (const id of ids) {
    const { rows } = await ctx.admin.query(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = $1`, [id])
    t.equal(rows[0].n, 3, `${id} has its tables`)
  }
  t.ok(await stocked(), 'the stock is topped up again')
})

t.test('a spare of an older migration version is never taken, and is dropped once it is not fresh', async (t) => {
  t.ok(await stocked())
  const [old, fresh] = await spares()
  // An hour old: left over from before a deploy. Just built: the stock of an instance still running the older code.
  await ctx.admin.query(
    `UPDATE public.tenant_spares SET schema_version = schema_version - 1,
       created_at = CASE WHEN schema = $1 THEN now() - interval '1 hour' ELSE now() END
      WHERE schema IN ($1, $2)`,
    [old.schema, fresh.schema]
  )
  for (let i = 0; i < SPARES; i++) t.equal((await post(`newer-${i}`)).statusCode, 201)
  const oids = await Promise.all(Array.from({ length: SPARES }, (_, i) => schemaOid(`newer-${i}`)))
  t.notOk(oids.includes(old.oid) || oids.includes(fresh.oid), 'no tenant got an older spare')
  await ctx.app.tenantSpares.check()
  t.same(await exists(old), { schema: false, role: false }, 'the old spare was dropped')
  t.same(await exists(fresh), { schema: true, role: true }, 'the fresh one is left to the instances that can use it')
  t.ok(await stocked(), 'and the stock is whole at the current version')
  await ctx.admin.query(`UPDATE public.tenant_spares SET created_at = now() - interval '1 hour' WHERE schema = $1`, [fresh.schema])
  await ctx.app.tenantSpares.check()
  t.same(await exists(fresh), { schema: false, role: false }, 'until it is not fresh either')
})

t.test('a burst of creations is served from the stock; replacements wait for a pause, or for the stock to run low', async (t) => {
  const target = 8 // low water: 2
  const log = { info: () => undefined, warn: () => undefined } as unknown as FastifyBaseLogger
  const migrations = await loadMigrations('tenant')
  // Creations never pause during this test: only a low stock starts the builders.
  const burst = new TenantSpares(ctx.admin, { target, rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations, log, quietMs: 60_000 })
  t.teardown(() => burst.close())
  await burst.start()
  t.ok((await spares()).length >= target, 'the stock is built at start')
  const create = async (id: string) => {
    await provisionTenant(ctx.admin, { id, name: id }, { rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations, spares: burst })
    burst.replace()
  }

  const before = (await spares()).length
  for (let i = 0; i < 4; i++) await create(`quick-${i}`)
  await burst.check()
  t.equal((await spares()).length, before - 4, 'four creations took four spares, and nothing was built meanwhile')

  let low = 0
  while ((await spares()).length > 2) await create(`quick-low-${low++}`)
  await burst.check()
  t.ok((await spares()).length > 2, 'once the stock ran low, building started at once, and keeps it above the low water')
})

t.test('without the control-plane table of spares (migrations pending), tenants are built on the spot', async (t) => {
  await ctx.admin.query('DROP TABLE public.tenant_spares')
  const response = await post('no-spares-table')
  t.equal(response.statusCode, 201)
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'no-spares-table'`)
  t.equal(rows[0].n, 3, 'with its tables')
})

t.test('a database that does not answer stops building quietly: logged, never thrown', async (t) => {
  // Nothing listens on port 1: every connection is refused, as during an outage.
  const pool = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres', connectionTimeoutMillis: 500 })
  pool.on('error', () => undefined)
  const warnings: string[] = []
  const log = { warn: (_details: unknown, message: string) => warnings.push(message) } as unknown as FastifyBaseLogger
  const spares = new TenantSpares(pool, { target: 2, rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations: await loadMigrations('tenant'), log })
  spares.replace()
  spares.check()
  t.ok(await eventually(() => warnings.length >= 2), 'both the builders and the check reported the failure')
  await spares.close()
  await pool.end()
})
