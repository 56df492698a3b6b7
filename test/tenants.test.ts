import t from 'tap'
import { latestVersion, loadMigrations, provisionTenant } from '../lib/tenants/index.ts'
import { ageTombstone, createTenant, setupApp, TENANT_ROLE_RIGHTS, tenantRoleRights, type TestContext } from './helpers/app.ts'

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

let ctx: TestContext

t.before(async () => {
  ctx = await setupApp(t)
})

const roleOf = (id: string) => `${ctx.config.TENANT_ROLE_PREFIX}${id}`

/** What exists in the database for a tenant id: registry row, schema, role. */
async function traces(id: string) {
  const { rows } = await ctx.admin.query<{ row: boolean; schema: boolean; role: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM public.tenants WHERE id = $1) AS row,
            EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS schema,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2) AS role`,
    [id, roleOf(id)]
  )
  return rows[0]
}

const post = (payload: unknown) => ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: ctx.auth.admin(), payload: payload as object })

t.test('POST /auth/tenants creates the row, the schema and the role', async (t) => {
  const response = await post({ id: 'acme-corp', name: 'Acme Corp' })
  t.equal(response.statusCode, 201)
  const tenant = response.json()
  t.match(tenant, { id: 'acme-corp', name: 'Acme Corp', schema: 'acme-corp', status: 'active', createdAt: ISO, updatedAt: ISO })
  t.equal(tenant.schemaVersion, latestVersion(await loadMigrations('tenant')), 'at the latest tenant migration')
  t.equal(response.headers.location, '/auth/tenants/acme-corp')
  t.same(await traces('acme-corp'), { row: true, schema: true, role: true })

  t.same(await tenantRoleRights(ctx.admin, 'acme-corp', roleOf('acme-corp')), TENANT_ROLE_RIGHTS)
  const { rows: tables } = await ctx.admin.query(`SELECT tablename FROM pg_tables WHERE schemaname = 'acme-corp' ORDER BY 1`)
  t.ok(
    tables.some((row) => row.tablename === 'users'),
    'the tenant migrations ran in the schema'
  )
})

t.test('a duplicate id is 409 TENANT_EXISTS and changes nothing', async (t) => {
  await createTenant(ctx, 'dupe-co', 'Original')
  const response = await post({ id: 'dupe-co', name: 'Impostor' })
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'TENANT_EXISTS')
  const { rows } = await ctx.admin.query(`SELECT name FROM public.tenants WHERE id = 'dupe-co'`)
  t.same(rows, [{ name: 'Original' }])

  // Concurrent creations of one id: exactly one wins.
  const racing = await Promise.all(Array.from({ length: 5 }, (_, i) => post({ id: 'race-co', name: `racer ${i}` })))
  t.same(racing.map((r) => r.statusCode).sort(), [201, 409, 409, 409, 409])
  for (const r of racing.filter((r) => r.statusCode === 409)) t.equal(r.json().code, 'TENANT_EXISTS')
  t.same(await traces('race-co'), { row: true, schema: true, role: true })
})

t.test('invalid and reserved ids are 400 and create nothing', async (t) => {
  const invalid = ['Acme', 'ab', `a${'b'.repeat(63)}`, 'acme_corp', '1acme', 'acme-', '-acme', 'acme corp', 'acmé', 'a"b', '']
  for (const id of invalid) {
    const response = await post({ id, name: 'X' })
    t.equal(response.statusCode, 400, JSON.stringify(id))
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  for (const id of ['public', 'pg-catalog', 'pg-toast', 'citus', 'columnar']) {
    const response = await post({ id, name: 'X' })
    t.equal(response.statusCode, 400, id)
    t.equal(response.json().code, 'TENANT_ID_RESERVED')
  }
  for (const id of [...invalid, 'pg-catalog', 'pg-toast', 'citus', 'columnar']) {
    if (id === '') continue
    t.same(await traces(id), { row: false, schema: false, role: false }, `nothing for ${JSON.stringify(id)}`)
  }
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM public.tenants WHERE name = 'X'`)
  t.equal(rows[0].count, 0)

  for (const payload of [{ id: 'no-name' }, { name: 'No id' }, { id: 'extra-field', name: 'X', status: 'suspended' }, { id: 'empty-name', name: '' }]) {
    const response = await post(payload)
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  t.same(await traces('extra-field'), { row: false, schema: false, role: false })
})

t.test('GET /auth/tenants pages through every tenant exactly once', async (t) => {
  const ids = Array.from({ length: 12 }, (_, i) => `page-${String(i).padStart(2, '0')}`)
  await Promise.all(ids.map((id) => createTenant(ctx, id)))
  const { rows } = await ctx.admin.query<{ id: string }>('SELECT id FROM public.tenants ORDER BY created_at, id')
  const all = rows.map((row) => row.id)

  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const query: Record<string, string> = { limit: '4', ...(cursor ? { cursor } : {}) }
    const response = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', query, headers: ctx.auth.admin() })
    t.equal(response.statusCode, 200)
    const page = response.json() as { items: { id: string; schemaVersion: number }[]; nextCursor: string | null }
    t.ok(page.items.length <= 4)
    seen.push(...page.items.map((item) => item.id))
    cursor = page.nextCursor
    pages++
  } while (cursor && pages < 50)
  t.same(seen, all, 'every tenant once, in (created_at, id) order')
  t.equal(pages, Math.ceil(all.length / 4))

  const bad = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', query: { cursor: 'garbage' }, headers: ctx.auth.admin() })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'INVALID_CURSOR')
  const badLimit = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', query: { limit: '1000' }, headers: ctx.auth.admin() })
  t.equal(badLimit.statusCode, 400)
})

t.test('GET one tenant; unknown or malformed ids are 404', async (t) => {
  await createTenant(ctx, 'get-me', 'Get Me')
  const response = await ctx.app.inject({ method: 'GET', url: '/auth/tenants/get-me', headers: ctx.auth.admin() })
  t.equal(response.statusCode, 200)
  t.match(response.json(), { id: 'get-me', name: 'Get Me', schema: 'get-me', status: 'active' })
  for (const id of ['nope-nope', 'Bad_Id', 'public', 'x']) {
    const missing = await ctx.app.inject({ method: 'GET', url: `/auth/tenants/${id}`, headers: ctx.auth.admin() })
    t.equal(missing.statusCode, 404, id)
    t.equal(missing.json().code, 'TENANT_NOT_FOUND')
  }
})

t.test('PATCH renames, suspends and reactivates; bad bodies are 400', async (t) => {
  await createTenant(ctx, 'patch-me', 'Before')
  const url = '/auth/tenants/patch-me'
  const patch = (payload: unknown) => ctx.app.inject({ method: 'PATCH', url, headers: ctx.auth.admin(), payload: payload as object })

  const renamed = await patch({ name: 'After' })
  t.equal(renamed.statusCode, 200)
  t.match(renamed.json(), { id: 'patch-me', name: 'After', status: 'active' })
  const suspended = await patch({ status: 'suspended' })
  t.match(suspended.json(), { name: 'After', status: 'suspended' })
  t.ok(suspended.json().updatedAt >= renamed.json().updatedAt)
  const { rows } = await ctx.admin.query(`SELECT name, status FROM public.tenants WHERE id = 'patch-me'`)
  t.same(rows, [{ name: 'After', status: 'suspended' }])
  const both = await patch({ name: 'Both', status: 'active' })
  t.match(both.json(), { name: 'Both', status: 'active' })

  for (const payload of [{}, { status: 'deleted' }, { status: 'ACTIVE' }, { name: '' }, { id: 'other-id' }, { schema: 'public' }]) {
    const response = await patch(payload)
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  const { rows: after } = await ctx.admin.query(`SELECT id, name, status, schema FROM public.tenants WHERE id = 'patch-me'`)
  t.same(after, [{ id: 'patch-me', name: 'Both', status: 'active', schema: 'patch-me' }], 'unchanged by the rejected requests')

  const missing = await ctx.app.inject({ method: 'PATCH', url: '/auth/tenants/nope-nope', headers: ctx.auth.admin(), payload: { name: 'X' } })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'TENANT_NOT_FOUND')
})

t.test('DELETE drops the schema, the role and the row', async (t) => {
  await createTenant(ctx, 'doomed')
  const user = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: ctx.auth.tenantUser('doomed'),
    payload: { email: 'x@doomed.test', name: 'X' }
  })
  t.equal(user.statusCode, 201)
  t.equal((await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser('doomed') })).statusCode, 200)

  const response = await ctx.app.inject({ method: 'DELETE', url: '/auth/tenants/doomed', headers: ctx.auth.admin() })
  t.equal(response.statusCode, 204)
  t.equal(response.body, '')
  t.same(await traces('doomed'), { row: false, schema: false, role: false })

  const get = await ctx.app.inject({ method: 'GET', url: '/auth/tenants/doomed', headers: ctx.auth.admin() })
  t.equal(get.statusCode, 404)
  const again = await ctx.app.inject({ method: 'DELETE', url: '/auth/tenants/doomed', headers: ctx.auth.admin() })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'TENANT_NOT_FOUND')
  const scoped = await ctx.app.inject({ method: 'GET', url: '/', headers: ctx.auth.tenantUser('doomed') })
  t.equal(scoped.statusCode, 404, 'its requests are refused at once')
  t.equal(scoped.json().code, 'TENANT_NOT_FOUND')

  const tooSoon = await post({ id: 'doomed', name: 'Reborn' })
  t.equal(tooSoon.statusCode, 409, 'the id is not taken again at once')
  t.equal(tooSoon.json().code, 'TENANT_RECENTLY_DELETED')
  t.ok(Number(tooSoon.headers['retry-after']) >= 1, 'Retry-After says when it may be')
  t.same(await traces('doomed'), { row: false, schema: false, role: false }, 'and nothing was created')
  await ageTombstone(ctx.admin, 'doomed')
  const recreated = await post({ id: 'doomed', name: 'Reborn' })
  t.equal(recreated.statusCode, 201, 'the id can be used again')
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "doomed".users`)
  t.equal(rows[0].count, 0, 'with none of the old data')
})

t.test('provisioning is atomic: a failing migration leaves no row, schema or role', async (t) => {
  const migrations = await loadMigrations('tenant')
  const broken = [...migrations, { version: latestVersion(migrations) + 1, name: 'broken', sql: 'CREATE TABLE half_done (x int); SELECT 1/0' }]
  await t.rejects(provisionTenant(ctx.admin, { id: 'atomic-co', name: 'Atomic' }, { rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations: broken }), {
    message: /division by zero/
  })
  t.same(await traces('atomic-co'), { row: false, schema: false, role: false })
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM pg_tables WHERE tablename = 'half_done'`)
  t.equal(rows[0].count, 0)
  const { rows: idle } = await ctx.admin.query(
    `SELECT count(*)::int AS count FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'`
  )
  t.equal(idle[0].count, 0, 'the failed transaction did not stay open')

  const response = await post({ id: 'atomic-co', name: 'Atomic' })
  t.equal(response.statusCode, 201, 'the tenant can then be created normally')
  t.same(await traces('atomic-co'), { row: true, schema: true, role: true })
})
