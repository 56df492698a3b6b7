import { randomUUID } from 'node:crypto'
import t from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'

const A = 'tenant-a'
const B = 'tenant-b'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

let ctx: TestContext

t.before(async () => {
  ctx = await setupApp(t)
  await createTenant(ctx, A)
  await createTenant(ctx, B)
})

async function createUser(tenant: string, email: string, name = 'Someone') {
  return ctx.app.inject({ method: 'POST', url: '/users', headers: ctx.auth.tenantUser(tenant), payload: { email, name } })
}

const rowsIn = async (tenant: string, where = 'true', values: unknown[] = []) =>
  (await ctx.admin.query(`SELECT id, email, name, created_at, updated_at FROM "${tenant}".users WHERE ${where} ORDER BY created_at, id`, values)).rows

t.test('POST /users creates a user: 201 with its representation', async (t) => {
  const response = await createUser(A, 'ada@example.test', 'Ada Lovelace')
  t.equal(response.statusCode, 201)
  const user = response.json()
  t.same(Object.keys(user).sort(), ['createdAt', 'email', 'id', 'name', 'role', 'status', 'sub', 'updatedAt'])
  t.match(user, { email: 'ada@example.test', name: 'Ada Lovelace', id: UUID, createdAt: ISO, updatedAt: ISO })
  t.equal(response.headers.location, `/users/${user.id}`)

  const rows = await rowsIn(A, 'id = $1', [user.id])
  t.equal(rows.length, 1, 'the row is in the tenant schema')
  t.equal(rows[0].email, 'ada@example.test')
  t.equal(rows[0].created_at.toISOString(), user.createdAt)
  t.equal((await rowsIn(B)).length, 0, 'and nowhere else')
})

t.test('POST /users validates the body', async (t) => {
  const bad = [
    {},
    { email: 'not-an-email', name: 'X' },
    { email: 'x@example.test' },
    { email: 'x@example.test', name: '' },
    { email: 'x@example.test', name: 'X', admin: true },
    { email: `${'x'.repeat(320)}@example.test`, name: 'X' }
  ]
  for (const payload of bad) {
    const response = await ctx.app.inject({ method: 'POST', url: '/users', headers: ctx.auth.tenantUser(A), payload })
    t.equal(response.statusCode, 400, JSON.stringify(payload).slice(0, 60))
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  const notJson = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: { ...ctx.auth.tenantUser(A), 'content-type': 'application/json' },
    payload: '{"email":'
  })
  t.equal(notJson.statusCode, 400)
  t.equal(notJson.json().code, 'INVALID_BODY')
  t.equal((await rowsIn(A, `email <> 'ada@example.test'`)).length, 0, 'nothing was written')
})

t.test('a duplicate email is 409 USER_EMAIL_EXISTS, case-insensitively, per tenant', async (t) => {
  t.equal((await createUser(A, 'grace@example.test')).statusCode, 201)
  for (const email of ['grace@example.test', 'Grace@Example.TEST']) {
    const response = await createUser(A, email)
    t.equal(response.statusCode, 409, email)
    t.equal(response.json().code, 'USER_EMAIL_EXISTS')
  }
  t.equal((await rowsIn(A, `lower(email) = 'grace@example.test'`)).length, 1, 'still one row')

  const elsewhere = await createUser(B, 'grace@example.test')
  t.equal(elsewhere.statusCode, 201, 'the same email in another tenant is fine')

  // Changing an email onto a taken one is the same conflict.
  const other = (await createUser(A, 'hopper@example.test')).json()
  const patch = await ctx.app.inject({
    method: 'PATCH',
    url: `/users/${other.id}`,
    headers: ctx.auth.tenantUser(A),
    payload: { email: 'GRACE@example.test' }
  })
  t.equal(patch.statusCode, 409)
  t.equal(patch.json().code, 'USER_EMAIL_EXISTS')
  t.equal((await rowsIn(A, 'id = $1', [other.id]))[0].email, 'hopper@example.test', 'the row is unchanged')
})

t.test('GET /users pages through every row exactly once', async (t) => {
  const tenant = 'paged'
  await createTenant(ctx, tenant)
  const created = new Set<string>()
  // Concurrent inserts share timestamps, so the (created_at, id) tie-break is exercised.
  for (let batch = 0; batch < 3; batch++) {
    const responses = await Promise.all(Array.from({ length: 9 }, (_, i) => createUser(tenant, `user-${batch}-${i}@example.test`)))
    for (const response of responses) {
      t.equal(response.statusCode, 201)
      created.add(response.json().id)
    }
  }
  t.equal(created.size, 27)

  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const query: Record<string, string> = { limit: '5', ...(cursor ? { cursor } : {}) }
    const response = await ctx.app.inject({ method: 'GET', url: '/users', query, headers: ctx.auth.tenantUser(tenant) })
    t.equal(response.statusCode, 200)
    const page = response.json() as { items: { id: string }[]; nextCursor: string | null }
    t.ok(page.items.length <= 5)
    seen.push(...page.items.map((item) => item.id))
    cursor = page.nextCursor
    pages++
  } while (cursor && pages < 20)
  t.equal(pages, 6, '27 rows in pages of 5')
  t.equal(seen.length, 27, 'no row twice')
  t.equal(new Set(seen).size, 27)
  t.same(new Set(seen), created, 'every row once')
  const ordered = (await rowsIn(tenant)).map((row) => row.id)
  t.same(seen, ordered, 'in (created_at, id) order')

  const all = await ctx.app.inject({ method: 'GET', url: '/users', query: { limit: '100' }, headers: ctx.auth.tenantUser(tenant) })
  t.equal(all.json().items.length, 27)
  t.equal(all.json().nextCursor, null, 'the last page has no cursor')
  const defaults = await ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(tenant) })
  t.equal(defaults.json().items.length, 20, 'the default page size is 20')
})

t.test('bad list parameters are 400', async (t) => {
  const badCursors = [
    'not-a-cursor',
    '!!!',
    Buffer.from('{"a":1}').toString('base64url'),
    Buffer.from('["yesterday","x"]').toString('base64url'),
    Buffer.from('[1,2]').toString('base64url')
  ]
  for (const cursor of badCursors) {
    const response = await ctx.app.inject({ method: 'GET', url: '/users', query: { cursor }, headers: ctx.auth.tenantUser(A) })
    t.equal(response.statusCode, 400, cursor)
    t.equal(response.json().code, 'INVALID_CURSOR')
  }
  // Well-formed, but its id is not a user id (a tenant list cursor, say): refused before any query.
  const foreign = Buffer.from(JSON.stringify([new Date().toISOString(), 'acme-corp'])).toString('base64url')
  const response = await ctx.app.inject({ method: 'GET', url: '/users', query: { cursor: foreign }, headers: ctx.auth.tenantUser(A) })
  t.equal(response.statusCode, 400)
  t.equal(response.json().code, 'INVALID_CURSOR')

  for (const limit of ['0', '101', '-1', 'ten', '1.5']) {
    const bad = await ctx.app.inject({ method: 'GET', url: '/users', query: { limit }, headers: ctx.auth.tenantUser(A) })
    t.equal(bad.statusCode, 400, `limit=${limit}`)
    t.equal(bad.json().code, 'VALIDATION_ERROR')
  }
})

t.test('GET, PATCH and DELETE one user', async (t) => {
  const user = (await createUser(A, 'linus@example.test', 'Linus')).json()
  const url = `/users/${user.id}`

  const got = await ctx.app.inject({ method: 'GET', url, headers: ctx.auth.tenantUser(A) })
  t.equal(got.statusCode, 200)
  t.same(got.json(), user)

  const patched = await ctx.app.inject({ method: 'PATCH', url, headers: ctx.auth.tenantUser(A), payload: { name: 'Linus T.' } })
  t.equal(patched.statusCode, 200)
  t.match(patched.json(), { id: user.id, email: 'linus@example.test', name: 'Linus T.', createdAt: user.createdAt })
  t.ok(patched.json().updatedAt >= user.updatedAt)
  const renamed = await ctx.app.inject({ method: 'PATCH', url, headers: ctx.auth.tenantUser(A), payload: { email: 'lt@example.test' } })
  t.equal(renamed.json().email, 'lt@example.test')
  t.equal(renamed.json().name, 'Linus T.', 'fields not sent are kept')
  t.same(
    (await rowsIn(A, 'id = $1', [user.id])).map((row) => [row.email, row.name]),
    [['lt@example.test', 'Linus T.']]
  )

  for (const payload of [{}, { name: '' }, { email: 'nope' }, { id: randomUUID() }]) {
    const bad = await ctx.app.inject({ method: 'PATCH', url, headers: ctx.auth.tenantUser(A), payload })
    t.equal(bad.statusCode, 400, JSON.stringify(payload))
    t.equal(bad.json().code, 'VALIDATION_ERROR')
  }

  const deleted = await ctx.app.inject({ method: 'DELETE', url, headers: ctx.auth.tenantUser(A) })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  t.equal((await rowsIn(A, 'id = $1', [user.id])).length, 0, 'the row is gone')
  const again = await ctx.app.inject({ method: 'GET', url, headers: ctx.auth.tenantUser(A) })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'USER_NOT_FOUND')
  const twice = await ctx.app.inject({ method: 'DELETE', url, headers: ctx.auth.tenantUser(A) })
  t.equal(twice.statusCode, 404)
})

t.test('a malformed user id is 400, an unknown one 404', async (t) => {
  for (const method of ['GET', 'PATCH', 'DELETE'] as const) {
    const payload = method === 'PATCH' ? { name: 'X' } : undefined
    for (const id of ['123', 'not-a-uuid', `${randomUUID()}x`, "1' OR '1'='1"]) {
      const response = await ctx.app.inject({ method, url: `/users/${encodeURIComponent(id)}`, headers: ctx.auth.tenantUser(A), payload })
      t.equal(response.statusCode, 400, `${method} ${id}`)
      t.equal(response.json().code, 'VALIDATION_ERROR')
    }
    const unknown = await ctx.app.inject({ method, url: `/users/${randomUUID()}`, headers: ctx.auth.tenantUser(A), payload })
    t.equal(unknown.statusCode, 404, `${method} unknown`)
    t.equal(unknown.json().code, 'USER_NOT_FOUND')
  }
})

t.test("a tenant cannot see or touch another tenant's users", async (t) => {
  const secret = (await createUser(A, 'secret@example.test', 'Only in A')).json()
  const [before] = await rowsIn(A, 'id = $1', [secret.id])

  const list = await ctx.app.inject({ method: 'GET', url: '/users', query: { limit: '100' }, headers: ctx.auth.tenantUser(B) })
  t.equal(list.statusCode, 200)
  const listed = list.json().items as { id: string; email: string }[]
  t.notOk(
    listed.some((user) => user.id === secret.id || user.email === secret.email),
    "A's user is not in B's list"
  )
  t.same(listed.map((user) => user.id).sort(), (await rowsIn(B)).map((row) => row.id).sort(), "B's list is exactly B's rows")

  const url = `/users/${secret.id}`
  const get = await ctx.app.inject({ method: 'GET', url, headers: ctx.auth.tenantUser(B) })
  t.equal(get.statusCode, 404, 'GET through B')
  t.equal(get.json().code, 'USER_NOT_FOUND')
  const patch = await ctx.app.inject({ method: 'PATCH', url, headers: ctx.auth.tenantUser(B), payload: { name: 'Hijacked', email: 'evil@example.test' } })
  t.equal(patch.statusCode, 404, 'PATCH through B')
  const del = await ctx.app.inject({ method: 'DELETE', url, headers: ctx.auth.tenantUser(B) })
  t.equal(del.statusCode, 404, 'DELETE through B')

  const [after] = await rowsIn(A, 'id = $1', [secret.id])
  t.same(after, before, "A's row is unchanged")
  t.equal((await rowsIn(B, `email = 'evil@example.test' OR name = 'Hijacked'`)).length, 0, 'nothing landed in B either')

  const own = await ctx.app.inject({ method: 'GET', url, headers: ctx.auth.tenantUser(A) })
  t.equal(own.statusCode, 200, 'A still sees it')
})
