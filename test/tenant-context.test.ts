import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { buildApp, createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { eventually } from './helpers/wait.ts'

const ACME = 'acme-corp'
const GLOBEX = 'globex'

/**
 * Statements run through `request.db` to see what a tenant's request can reach. Each request runs
 * one, because a failed statement ends the transaction.
 */
const PROBES: Record<string, string> = {
  session: `SELECT current_setting('search_path') AS search_path, current_user AS role, current_schema() AS schema,
                   to_regclass('tenants') IS NULL AS tenants_hidden, current_setting('transaction_read_only') AS read_only`,
  'unqualified-registry': 'SELECT count(*) FROM tenants',
  'qualified-registry': 'SELECT count(*) FROM public.tenants',
  'other-tenant': `SELECT count(*) FROM "${GLOBEX}".users`,
  'own-users': 'SELECT count(*)::int AS count FROM users'
}

/** Test-only routes: tenant-scoped exactly as the service's own routes are. */
function probeRoutes(app: FastifyInstance) {
  app.get<{ Params: { probe: string } }>('/test/probe/:probe', { onRequest: app.resolveTenant }, async (request, reply) => {
    const sql = PROBES[request.params.probe]
    try {
      const { rows } = await request.db!.query(sql)
      return { ok: true, row: rows[0] }
    } catch (error) {
      // Report what PostgreSQL said instead of failing the request: the test asserts the SQLSTATE.
      return reply.code(200).send({ ok: false, code: (error as { code?: string }).code ?? null })
    }
  })
}

let ctx: TestContext

t.before(async () => {
  ctx = await setupApp(t, {}, { beforeReady: probeRoutes })
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
})

/** A tenant user's headers for ACME, with X-Tenant-ID replaced (or removed, with `undefined`). */
function tenantHeader(value: string | string[] | undefined): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = { ...ctx.auth.tenantUser(ACME) }
  if (value === undefined) delete headers['x-tenant-id']
  else headers['x-tenant-id'] = value
  return headers
}

const TENANT_ROUTES = [
  { method: 'GET' as const, url: '/' },
  { method: 'GET' as const, url: '/users' },
  { method: 'POST' as const, url: '/users', payload: { email: 'probe@example.test', name: 'Probe' } }
]

async function expectError(tt: Test, headers: Record<string, string | string[]>, statusCode: number, code: string, label: string) {
  for (const route of TENANT_ROUTES) {
    const response = await ctx.app.inject({ ...route, headers })
    tt.equal(response.statusCode, statusCode, `${label}: ${route.method} ${route.url} status`)
    const body = response.json()
    tt.equal(body.code, code, `${label}: ${route.method} ${route.url} code`)
    tt.equal(body.statusCode, statusCode, `${label}: body carries the status`)
    tt.type(body.message, 'string')
  }
}

t.test('a missing X-Tenant-ID is 400 TENANT_ID_MISSING', async (t) => {
  await expectError(t, tenantHeader(undefined), 400, 'TENANT_ID_MISSING', 'no header')
  await expectError(t, tenantHeader(''), 400, 'TENANT_ID_MISSING', 'empty header')
})

t.test('a malformed X-Tenant-ID is 400 TENANT_ID_INVALID', async (t) => {
  const malformed: Record<string, string | string[]> = {
    uppercase: 'Acme-Corp',
    'too short': 'ab',
    'too long': `a${'b'.repeat(63)}`,
    underscore: 'acme_corp',
    'leading digit': '1acme',
    'leading hyphen': '-acme',
    'trailing hyphen': 'acme-',
    'two comma-joined values': `${ACME},${GLOBEX}`,
    'the header twice': [ACME, GLOBEX],
    'inner space': 'acme corp',
    tab: 'acme\tcorp',
    dot: 'acme.corp',
    slash: 'acme/corp',
    quote: 'acme"corp',
    'SQL in it': "acme'; drop schema public--",
    // What arrives when a client sends UTF-8: its bytes, read as latin1.
    'unicode (Cyrillic a)': Buffer.from('аcme-corp', 'utf8').toString('latin1'),
    'unicode (latin1 accent)': 'acmé-corp',
    'fullwidth letters': Buffer.from('ａｃｍｅ', 'utf8').toString('latin1')
  }
  for (const [label, value] of Object.entries(malformed)) {
    await expectError(t, tenantHeader(value), 400, 'TENANT_ID_INVALID', label)
  }
  // The longest valid id is well-formed, just unknown.
  const longest = `a${'b'.repeat(62)}`
  const response = await ctx.app.inject({ method: 'GET', url: '/', headers: tenantHeader(longest) })
  t.equal(response.json().code, 'TENANT_NOT_FOUND', '63 characters is within the limit')
})

t.test('a reserved X-Tenant-ID is 400 TENANT_ID_RESERVED', async (t) => {
  for (const value of ['public', 'information_schema', 'pg_catalog', 'pg_toast', 'pg-catalog', 'pg-temp-1', 'citus', 'columnar']) {
    await expectError(t, tenantHeader(value), 400, 'TENANT_ID_RESERVED', value)
  }
})

t.test('an unknown tenant is 404 TENANT_NOT_FOUND', async (t) => {
  for (const route of TENANT_ROUTES) {
    const response = await ctx.app.inject({ ...route, headers: ctx.auth.tenantUser('no-such-tenant') })
    t.equal(response.statusCode, 404, `${route.method} ${route.url}`)
    t.equal(response.json().code, 'TENANT_NOT_FOUND')
  }
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM pg_namespace WHERE nspname = 'no-such-tenant'`)
  t.equal(rows[0].count, 0, 'asking for a tenant creates nothing')
})

t.test('GET / runs in the tenant schema', async (t) => {
  for (const tenant of [ACME, GLOBEX]) {
    const response = await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser(tenant) })
    t.equal(response.statusCode, 200)
    const body = response.json()
    t.equal(body.status, 'ok')
    t.equal(body.tenant, tenant)
    t.equal(body.schema, tenant)
    t.equal(body.database.currentSchema, tenant, 'current_schema() inside the request is the tenant')
    t.type(body.database.latencyMs, 'number')
  }
})

t.test('a suspended tenant is 403 TENANT_SUSPENDED until it is reactivated', async (t) => {
  const tenant = 'suspend-me'
  await createTenant(ctx, tenant)
  const before = await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser(tenant) })
  t.equal(before.statusCode, 200, 'active first (and now cached)')

  const suspend = await ctx.app.inject({
    method: 'PATCH',
    url: `/auth/tenants/${tenant}`,
    headers: ctx.auth.admin(),
    payload: { status: 'suspended' }
  })
  t.equal(suspend.statusCode, 200)
  t.equal(suspend.json().status, 'suspended')
  for (const route of TENANT_ROUTES) {
    const response = await ctx.app.inject({ ...route, headers: ctx.auth.tenantUser(tenant) })
    t.equal(response.statusCode, 403, `${route.method} ${route.url}`)
    t.equal(response.json().code, 'TENANT_SUSPENDED')
  }
  const { rows: written } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "${tenant}".users`)
  t.equal(written[0].count, 0, 'the refused POST wrote nothing')

  const reactivate = await ctx.app.inject({
    method: 'PATCH',
    url: `/auth/tenants/${tenant}`,
    headers: ctx.auth.admin(),
    payload: { status: 'active' }
  })
  t.equal(reactivate.statusCode, 200)
  const after = await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser(tenant) })
  t.equal(after.statusCode, 200, 'active again')
  t.equal(after.json().database.currentSchema, tenant)
})

t.test('request.db sees only the tenant schema, as the tenant role', async (t) => {
  const probe = async (name: string, tenant = ACME) => {
    const response = await ctx.app.inject({ method: 'GET', url: `/test/probe/${name}`, headers: ctx.auth.tenantUser(tenant) })
    t.equal(response.statusCode, 200, `${name} answered`)
    return response.json() as { ok: boolean; row?: Record<string, unknown>; code?: string }
  }

  const session = await probe('session')
  t.same(
    session.row,
    {
      search_path: `"${ACME}"`,
      role: `${ctx.config.TENANT_ROLE_PREFIX}${ACME}`,
      schema: ACME,
      tenants_hidden: true,
      read_only: 'on'
    },
    'search_path is the tenant schema alone, the role is the tenant role, a GET is read-only'
  )
  t.same(await probe('unqualified-registry'), { ok: false, code: '42P01' }, 'unqualified "tenants" does not exist for a tenant')
  t.same(await probe('qualified-registry'), { ok: false, code: '42501' }, 'public.tenants is refused to the tenant role')
  t.same(await probe('other-tenant'), { ok: false, code: '42501' }, "another tenant's schema is refused")
  t.same(await probe('own-users'), { ok: true, row: { count: 0 } }, 'its own tables are readable')
})

t.test('a released connection carries no tenant context', async (t) => {
  for (let i = 0; i < 10; i++) {
    await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser(i % 2 ? ACME : GLOBEX) })
    await ctx.app.inject({ method: 'GET', url: '/test/probe/qualified-registry', headers: ctx.auth.tenantUser(ACME) })
  }
  const pool = ctx.app.pg.pool
  // Check out every connection the pool holds, so none escapes the check.
  const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()))
  t.ok(clients.length > 0)
  try {
    for (const client of clients) {
      const { rows } = await client.query(
        `SELECT current_setting('search_path') AS search_path, current_user = session_user AS own_role,
                current_setting('transaction_read_only') AS read_only, now() = statement_timestamp() AS own_transaction`
      )
      t.same(rows[0], { search_path: '"$user", public', own_role: true, read_only: 'off', own_transaction: true })
    }
  } finally {
    for (const client of clients) client.release()
  }
})

t.test('a status change reaches another instance', async (t) => {
  const tenant = 'two-instances'
  await createTenant(ctx, tenant)
  const other = await buildApp(ctx.config)
  t.teardown(() => other.close())
  const statusOn = async (app: FastifyInstance) => (await app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser(tenant) })).statusCode

  t.equal(await statusOn(other), 200, 'the second instance has the tenant cached as active')
  t.equal(await statusOn(other), 200)

  const suspend = async (status: 'active' | 'suspended') => {
    const response = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${tenant}`, headers: ctx.auth.admin(), payload: { status } })
    t.equal(response.statusCode, 200)
  }
  await suspend('suspended')
  t.ok(await eventually(async () => (await statusOn(other)) === 403), 'the second instance refuses the suspended tenant')
  await suspend('active')
  t.ok(await eventually(async () => (await statusOn(other)) === 200), 'and serves it again once reactivated')

  // With the change listeners cut off, the cache falls back to its short TTL and reconnects.
  const { rowCount } = await ctx.admin.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND query = 'LISTEN tenant_changed' AND pid <> pg_backend_pid()`
  )
  t.ok((rowCount ?? 0) >= 2, 'both instances were listening')
  await suspend('suspended')
  t.ok(await eventually(async () => (await statusOn(other)) === 403), 'the change still arrives while the listener is reconnecting')
  t.ok(await eventually(async () => other.tenantDb.listening), 'the listener is back')
  await suspend('active')
  t.ok(await eventually(async () => (await statusOn(other)) === 200))
})

t.test('statements prepared before a migration changed their table keep answering', async (t) => {
  const tenant = 'stale-plans'
  const app = await buildApp(ctx.config, {
    beforeReady: (scope) => {
      scope.get('/test/names', { onRequest: scope.resolveTenant }, async (request) => {
        const { rows } = await request.db!.query('SELECT name FROM users ORDER BY name')
        return rows.map((row) => row.name)
      })
      scope.post<{ Body: { name: string } }>('/test/names', { onRequest: scope.resolveTenant }, async (request, reply) => {
        const { rows } = await request.db!.query('INSERT INTO users (email, name) VALUES ($1, $2) RETURNING name', [
          `${request.body.name}@stale.test`,
          request.body.name
        ])
        return reply.code(201).send(rows[0])
      })
    }
  })
  t.teardown(() => app.close())
  await createTenant(ctx, tenant)
  const headers = ctx.auth.tenantUser(tenant)
  const read = () => app.inject({ method: 'GET', url: '/test/names', headers })
  const write = (name: string) => app.inject({ method: 'POST', url: '/test/names', headers, payload: { name } })

  // Prepared (and their result shape learnt) on the connections the requests use.
  for (const name of ['ada', 'bob', 'cy']) t.equal((await write(name)).statusCode, 201)
  for (let i = 0; i < 3; i++) t.equal((await read()).statusCode, 200)

  // What a tenant migration may do while the service runs: the column's type, hence the
  // statements' result type, changes under them.
  await ctx.admin.query(`ALTER TABLE "${tenant}".users ALTER COLUMN name TYPE varchar(200)`)

  const reads = await Promise.all(Array.from({ length: 6 }, read))
  t.same(
    reads.map((response) => response.statusCode),
    [200, 200, 200, 200, 200, 200],
    'reads are answered, not failed'
  )
  t.same(reads[0].json(), ['ada', 'bob', 'cy'])
  const writes = []
  for (const name of ['dee', 'eve', 'fay']) writes.push((await write(name)).statusCode)
  t.same(writes, [201, 201, 201], 'so are writes that open their transaction')
  const { rows } = await ctx.admin.query(`SELECT name FROM "${tenant}".users ORDER BY name`)
  t.same(
    rows.map((row) => row.name),
    ['ada', 'bob', 'cy', 'dee', 'eve', 'fay'],
    'each write happened exactly once'
  )
})

t.test('past 256 statements a connection evicts some, and every tenant is still answered from its own schema', async (t) => {
  // One connection, so that every tenant's statements meet on it.
  const one = await setupApp(
    t,
    { PG_POOL_MAX: '1' },
    {
      beforeReady: (scope) => {
        scope.get('/test/prepared', { onRequest: scope.resolveTenant }, async (request) => {
          // Ours only: pg keeps the service's own named statements (the registry lookup) beside them.
          const { rows } = await request.db!.query("SELECT count(*)::int AS count FROM pg_prepared_statements WHERE name ~ '^(q[0-9]+_|tenant_context)'")
          return rows[0]
        })
      }
    }
  )
  const tenants = Array.from({ length: 280 }, (_, i) => `evict-${String(i).padStart(3, '0')}`)
  for (const tenant of tenants) await createTenant(one, tenant)
  const wrong: string[] = []
  for (const order of [tenants, [...tenants].reverse()]) {
    for (const tenant of order) {
      const response = await one.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': tenant } })
      if (response.statusCode !== 200 || response.json().database.currentSchema !== tenant) wrong.push(`${tenant}: ${response.body}`)
    }
  }
  t.same(wrong, [], '560 requests over 280 tenants, each in its own schema')
  const prepared = await one.app.inject({ method: 'GET', url: '/test/prepared', headers: { 'x-tenant-id': tenants[0] } })
  t.equal(prepared.statusCode, 200)
  t.ok(prepared.json().count <= 256, `the connection holds ${prepared.json().count} prepared statements, at most 256`)
})
