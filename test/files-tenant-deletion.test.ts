import t from 'tap'
import { deleteTenantObjects } from '../lib/files/index.ts'
import { deleteTenant } from '../lib/tenants/index.ts'
import { createTenant, setupApp } from './helpers/app.ts'

const ctx = await setupApp(t, {}, { s3: true })
const { app, auth, admin } = ctx
const s3 = ctx.s3!
const storage = app.storage!

const isDeleteObjects = (request: { method: string; query: URLSearchParams }) => request.method === 'POST' && request.query.has('delete')
const isListV2 = (request: { method: string; query: URLSearchParams }) => request.method === 'GET' && request.query.get('list-type') === '2'

/** A file uploaded the way a client does it. */
async function upload(tenant: string, name: string, content: string) {
  const bytes = Buffer.from(content)
  const created = await app.inject({
    method: 'POST',
    url: '/files',
    headers: auth.tenantUser(tenant),
    payload: { filename: name, contentType: 'text/plain', size: bytes.length }
  })
  if (created.statusCode !== 201) throw new Error(`POST /files: ${created.body}`)
  const { file, upload } = created.json()
  const stored = await fetch(upload.url, { method: 'PUT', headers: upload.headers, body: new Uint8Array(bytes) })
  if (stored.status !== 200) throw new Error(`PUT: ${stored.status}`)
  const done = await app.inject({ method: 'POST', url: `/files/${file.id}/complete`, headers: auth.tenantUser(tenant) })
  if (done.statusCode !== 200) throw new Error(`complete: ${done.body}`)
}

/** Objects under the prefix that no row describes, as interrupted uploads leave behind. */
async function seed(tenant: string, count: number) {
  for (let i = 0; i < count; i++) await s3.put(`tenants/${tenant}/${String(i).padStart(4, '0')}/orphan.bin`, `orphan ${i}`)
}

async function tenantState(id: string) {
  const [row, schema, role] = await Promise.all([
    admin.query('SELECT status FROM public.tenants WHERE id = $1', [id]),
    admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [id]),
    admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [ctx.config.TENANT_ROLE_PREFIX + id])
  ])
  return { status: row.rows[0]?.status as string | undefined, schema: schema.rowCount === 1, role: role.rowCount === 1 }
}

t.test('deleting a tenant empties its prefix, and only its prefix', async (t) => {
  for (const id of ['acme', 'acme-2', 'acm', 'globex']) await createTenant(ctx, id)
  await upload('acme', 'a.txt', 'acme one')
  await upload('acme', '../../globex/b.txt', 'acme two')
  await seed('acme', 5)
  await upload('acme-2', 'neighbour.txt', 'longer id, same start')
  await upload('acm', 'neighbour.txt', 'shorter id')
  await upload('globex', 'g.txt', 'globex')
  const others = [...(await s3.keys('tenants/acme-2/')), ...(await s3.keys('tenants/acm/')), ...(await s3.keys('tenants/globex/'))]
  t.equal((await s3.keys('tenants/acme/')).length, 7)
  t.equal(others.length, 3)

  const response = await app.inject({ method: 'DELETE', url: '/auth/tenants/acme', headers: auth.admin() })
  t.equal(response.statusCode, 204)
  t.same(await s3.keys('tenants/acme/'), [], 'every object of the tenant is gone')
  t.same([...(await s3.keys('tenants/acme-2/')), ...(await s3.keys('tenants/acm/')), ...(await s3.keys('tenants/globex/'))], others, 'the others are untouched')
  t.same(await tenantState('acme'), { status: undefined, schema: false, role: false }, 'schema, role and row are gone')
  const after = await app.inject({ method: 'GET', url: '/files', headers: auth.tenantUser('acme') })
  t.equal(after.statusCode, 404)
  const globex = await app.inject({ method: 'GET', url: '/files', headers: auth.tenantUser('globex') })
  t.equal(globex.json().items.length, 1, "another tenant's files still list")
})

t.test('the objects are listed page by page and deleted in batches', async (t) => {
  await createTenant(ctx, 'initech')
  await upload('initech', 'real.txt', 'a real file')
  await seed('initech', 12)
  const before = s3.requests.length
  await deleteTenant(app.pg.pool, 'initech', { beforeDrop: (tenant) => deleteTenantObjects(storage, tenant.id, { pageSize: 5 }).then(() => undefined) })
  const made = s3.requests.slice(before)
  t.equal(made.filter(isListV2).length, 3, '13 objects in pages of 5')
  t.equal(made.filter(isDeleteObjects).length, 3, 'one batch per page')
  t.ok(
    made
      .filter(isListV2)
      .slice(1)
      .every((request) => request.query.has('continuation-token')),
    'later pages continue with the token'
  )
  t.same(await s3.keys('tenants/initech/'), [])
  t.same(await tenantState('initech'), { status: undefined, schema: false, role: false })
})

t.test('a storage failure leaves a deleting tenant, and deleting again finishes', async (t) => {
  await createTenant(ctx, 'umbrella')
  await upload('umbrella', 'kept.txt', 'kept until the retry')
  await seed('umbrella', 11)

  // Through the domain function with small pages: the first batch goes, the second fails.
  const failure = s3.failWhen(isDeleteObjects, { after: 1 })
  await t.rejects(
    deleteTenant(app.pg.pool, 'umbrella', { beforeDrop: (tenant) => deleteTenantObjects(storage, tenant.id, { pageSize: 5 }).then(() => undefined) }),
    { statusCode: 503, code: 'STORAGE_UNAVAILABLE', message: /stays in status "deleting".*Repeat the DELETE/ }
  )
  t.equal((await s3.keys('tenants/umbrella/')).length, 7, 'the first page was deleted, the rest remains')
  t.same(await tenantState('umbrella'), { status: 'deleting', schema: true, role: true }, 'nothing dropped yet')

  // Through the API: still failing, reported with its code; the tenant stays deleting.
  const refused = await app.inject({ method: 'DELETE', url: '/auth/tenants/umbrella', headers: auth.admin() })
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { code: 'STORAGE_UNAVAILABLE', message: /deleting/ })
  t.ok(refused.headers['retry-after'])
  t.ok(failure.failed >= 2)

  const shown = await app.inject({ method: 'GET', url: '/auth/tenants/umbrella', headers: auth.admin() })
  t.equal(shown.json().status, 'deleting')
  for (const [method, url] of [
    ['GET', '/files'],
    ['POST', '/files'],
    ['GET', '/']
  ] as const) {
    const response = await app.inject({
      method,
      url,
      headers: auth.tenantUser('umbrella'),
      ...(method === 'POST' ? { payload: { filename: 'x', contentType: 'text/plain', size: 1 } } : {})
    })
    t.equal(response.statusCode, 403, `${method} ${url} is refused while deleting`)
    t.equal(response.json().code, 'TENANT_DELETING')
  }
  const revived = await app.inject({ method: 'PATCH', url: '/auth/tenants/umbrella', headers: auth.admin(), payload: { status: 'active' } })
  // TENANT_DELETING has one status everywhere: the data plane's 403.
  t.equal(revived.statusCode, 403, 'a deleting tenant cannot be reactivated')
  t.equal(revived.json().code, 'TENANT_DELETING')
  t.equal((await tenantState('umbrella')).status, 'deleting')

  failure.clear()
  const retried = await app.inject({ method: 'DELETE', url: '/auth/tenants/umbrella', headers: auth.admin() })
  t.equal(retried.statusCode, 204, 'the retry completes')
  t.same(await s3.keys('tenants/umbrella/'), [])
  t.same(await tenantState('umbrella'), { status: undefined, schema: false, role: false })
  t.equal((await app.inject({ method: 'DELETE', url: '/auth/tenants/umbrella', headers: auth.admin() })).statusCode, 404)
})
