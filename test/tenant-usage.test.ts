import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { createTenantUsage, USAGE_RETENTION_DAYS } from '../lib/tenants/index.ts'
import { buildApp, createTenant, setupApp, type TestContext } from './helpers/app.ts'

/**
 * GET /auth/tenants/:id/usage against real numbers: two instances of the service on one database
 * count requests and add them up; a file uploaded to a real S3-compatible store; the schema's size
 * as PostgreSQL measures it; a flush that cannot write keeps its counts; a deleted tenant's rows go.
 */

const HOUR_MS = 3_600_000
const DAY_MS = 24 * HOUR_MS

// Flushes happen when the test says (or the endpoint asks), never on a timer in between.
const ctx: TestContext = await setupApp(t, { USAGE_FLUSH_INTERVAL_MS: String(HOUR_MS) }, { s3: true })
const { auth, admin } = ctx
const a = ctx.app
const b: FastifyInstance = await buildApp(ctx.config)
let bClosed = false
t.teardown(async () => {
  if (!bClosed) await b.close()
})

await createTenant(ctx, 'acme')
await createTenant(ctx, 'globex')

const call = (app: FastifyInstance, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, headers: Record<string, string>, payload?: object) =>
  app.inject({ method, url, headers, ...(payload && { payload }) })

interface Window {
  from: string
  to: string
  requests: number
}
interface Usage {
  tenant: string
  at: string
  requests: { currentHour: Window; lastHour: Window; currentDay: Window; lastDay: Window }
  storage: { files: number; bytes: number }
  database: { bytes: number }
  users: number
}

async function usageOf(app: FastifyInstance, tenant: string): Promise<Usage> {
  const response = await call(app, 'GET', `/auth/tenants/${tenant}/usage`, auth.admin())
  if (response.statusCode !== 200) throw new Error(`usage of ${tenant}: ${response.statusCode} ${response.body}`)
  return response.json<Usage>()
}

/** Requests of `tenant` in the table, whatever the hour. */
const stored = async (tenant: string) =>
  Number((await admin.query('SELECT coalesce(sum(requests), 0)::int AS n FROM public.tenant_usage WHERE tenant_id = $1', [tenant])).rows[0].n)

/** The schema's size, measured here from the catalog's list of tables, independently of the service's query. */
async function schemaBytes(schema: string): Promise<number> {
  const { rows } = await admin.query(
    `SELECT (SELECT coalesce(sum(pg_total_relation_size(format('%I.%I', schemaname, tablename)::regclass)), 0) FROM pg_tables WHERE schemaname = $1)
          + (SELECT coalesce(sum(pg_total_relation_size(format('%I.%I', schemaname, sequencename)::regclass)), 0) FROM pg_sequences WHERE schemaname = $1)
          AS bytes`,
    [schema]
  )
  return Number(rows[0].bytes)
}

/** Requests made so far, as each tenant should be billed for them. */
const expected = { acme: 0, globex: 0 }

/** A request the tenant is billed for: it checks the status, and counts it. */
async function billed(app: FastifyInstance, tenant: 'acme' | 'globex', method: 'GET' | 'POST', url: string, status: number, payload?: object) {
  const response = await call(app, method, url, auth.tenantUser(tenant), payload)
  if (response.statusCode !== status) throw new Error(`${method} ${url}: ${response.statusCode} ${response.body}`)
  expected[tenant]++
  return response
}

const fileBytes = Buffer.from(Array.from({ length: 54_321 }, (_, i) => (i * 7) % 256))

t.test('requests on two instances add up; uploaded bytes, schema size and users are what S3 and PostgreSQL say', async (t) => {
  // Verified callers of acme, on both instances, answers of every kind.
  await billed(a, 'acme', 'POST', '/users', 201, { email: 'ada@acme.test', name: 'Ada' })
  await billed(b, 'acme', 'POST', '/users', 201, { email: 'bob@acme.test', name: 'Bob' })
  await billed(a, 'acme', 'POST', '/users', 409, { email: 'ADA@acme.test', name: 'Ada again' })
  await billed(b, 'acme', 'GET', '/users', 200)
  await billed(a, 'acme', 'GET', '/users/00000000-0000-4000-8000-000000000000', 404)

  // A real upload: declared, PUT to the presigned URL, completed.
  const started = await billed(b, 'acme', 'POST', '/files', 201, { filename: 'data.bin', contentType: 'application/octet-stream', size: fileBytes.length })
  const { file, upload } = started.json<{ file: { id: string }; upload: { method: string; url: string; headers: Record<string, string> } }>()
  const put = await fetch(upload.url, { method: upload.method, headers: upload.headers, body: new Uint8Array(fileBytes) })
  t.equal(put.status, 200, 'the store took the bytes')
  await billed(a, 'acme', 'POST', `/files/${file.id}/complete`, 200)
  // A pending upload is not stored bytes.
  await billed(a, 'acme', 'POST', '/files', 201, { filename: 'never.bin', contentType: 'application/octet-stream', size: 999 })

  await billed(b, 'globex', 'GET', '/users', 200)

  // Not billed to anyone: no token, an admin's token, another tenant's token, no token on a guarded route.
  for (const app of [a, b]) {
    for (let i = 0; i < 3; i++) t.equal((await call(app, 'GET', '/', { 'x-tenant-id': 'acme' })).statusCode, 200, 'anonymous GET / is served')
    t.equal((await call(app, 'GET', '/users', { ...auth.admin(), 'x-tenant-id': 'acme' })).statusCode, 200, "an admin's request is served")
    t.equal((await call(app, 'GET', '/users', { ...auth.tenantUser('globex'), 'x-tenant-id': 'acme' })).statusCode, 403, "globex's token on acme")
    t.equal((await call(app, 'GET', '/users', { 'x-tenant-id': 'acme' })).statusCode, 401, 'no token')
  }

  t.ok(b.usage.pendingRequests() > 0, 'B holds its counts in memory until it flushes')
  t.equal(await stored('acme'), 0, 'nothing is written before a flush')
  await b.usage.flush()
  t.equal(b.usage.pendingRequests(), 0, "B's counts are written")

  const sizeBefore = await schemaBytes('acme')
  // A's own counts are written by the call itself, before it reads.
  const usage = await usageOf(a, 'acme')
  const sizeAfter = await schemaBytes('acme')
  t.equal(await stored('acme'), expected.acme, 'the table holds both instances’ requests')
  t.equal(a.usage.pendingRequests(), 0, 'A flushed before answering')

  const at = Date.parse(usage.at)
  const hour = at - (at % HOUR_MS)
  const day = at - (at % DAY_MS)
  const iso = (ms: number) => new Date(ms).toISOString()
  t.same(
    Object.fromEntries(Object.entries(usage.requests).map(([name, w]) => [name, [w.from, w.to]])),
    {
      currentHour: [iso(hour), iso(hour + HOUR_MS)],
      lastHour: [iso(hour - HOUR_MS), iso(hour)],
      currentDay: [iso(day), iso(day + DAY_MS)],
      lastDay: [iso(day - DAY_MS), iso(day)]
    },
    'the windows are the current and the previous UTC hour and day'
  )
  // The test may straddle an hour (or midnight): the two windows of each length hold every request.
  t.equal(usage.requests.currentHour.requests + usage.requests.lastHour.requests, expected.acme, `${expected.acme} verified requests in the hours`)
  t.equal(usage.requests.currentDay.requests + usage.requests.lastDay.requests, expected.acme, `${expected.acme} verified requests in the days`)

  const { rows: keys } = await admin.query(`SELECT key FROM acme.files WHERE status = 'uploaded'`)
  t.equal(keys.length, 1)
  const object = await ctx.s3!.get(keys[0].key)
  t.equal(object?.length, fileBytes.length, 'S3 holds the uploaded bytes')
  t.same(usage.storage, { files: 1, bytes: fileBytes.length }, 'one uploaded file, its bytes; the pending one is not counted')

  t.ok(usage.database.bytes > 0)
  t.ok([sizeBefore, sizeAfter].includes(usage.database.bytes), `the schema's size is pg_total_relation_size summed over its tables (${usage.database.bytes})`)
  t.equal(usage.users, 2, 'two users')
  t.equal(usage.tenant, 'acme')

  const globex = await usageOf(b, 'globex')
  t.equal(globex.requests.currentDay.requests + globex.requests.lastDay.requests, expected.globex, 'globex: its one request')
  t.same([globex.storage, globex.users], [{ files: 0, bytes: 0 }, 0])
  t.equal(globex.database.bytes, await schemaBytes('globex'), 'an empty schema still has its tables’ and indexes’ pages')
})

t.test('the endpoint is for admins; an unknown tenant is 404', async (t) => {
  const unknown = await call(a, 'GET', '/auth/tenants/nobody-co/usage', auth.admin())
  t.equal(unknown.statusCode, 404)
  t.match(unknown.json(), { code: 'TENANT_NOT_FOUND', message: 'Tenant "nobody-co" does not exist' })
  const invalid = await call(a, 'GET', '/auth/tenants/Not%20An%20Id/usage', auth.admin())
  t.equal(invalid.statusCode, 404, 'an id no tenant can have')
  t.equal(invalid.json().code, 'TENANT_NOT_FOUND')

  const tenantUser = await call(a, 'GET', '/auth/tenants/acme/usage', auth.tenantUser('acme'))
  t.equal(tenantUser.statusCode, 403, "the tenant's own user is not an admin")
  t.equal(tenantUser.json().code, 'ADMIN_REQUIRED')
  const anonymous = await call(a, 'GET', '/auth/tenants/acme/usage', {})
  t.equal(anonymous.statusCode, 401)
  t.equal(anonymous.json().code, 'TOKEN_MISSING')
  t.match(anonymous.headers['www-authenticate'], /^Bearer/)

  t.equal((await call(a, 'PATCH', '/auth/tenants/acme', auth.admin(), { status: 'suspended' })).statusCode, 200)
  const suspended = await usageOf(a, 'acme')
  t.same([suspended.users, suspended.storage.files], [2, 1], 'a suspended tenant still has its usage')
  t.equal((await call(a, 'PATCH', '/auth/tenants/acme', auth.admin(), { status: 'active' })).statusCode, 200)
})

t.test('a flush that cannot write keeps its counts for the next one', async (t) => {
  const before = await stored('globex')
  await billed(b, 'globex', 'GET', '/users', 200)
  await billed(b, 'globex', 'GET', '/users', 200)

  // Another session holds the table: the flush's upsert gives up after its lock timeout.
  const blocker = await admin.connect()
  try {
    await blocker.query('BEGIN')
    await blocker.query('LOCK TABLE public.tenant_usage IN EXCLUSIVE MODE')
    await t.rejects(b.usage.flush(), { code: '55P03' }, 'the flush fails on the lock')
    t.equal(b.usage.pendingRequests(), 2, 'its two requests are still counted in memory')
    t.equal(await stored('globex'), before, 'and not in the table')

    // The endpoint cannot write either, and still answers with everything this instance counted.
    const usage = await usageOf(b, 'globex')
    t.equal(usage.requests.currentDay.requests + usage.requests.lastDay.requests, expected.globex, 'stored plus pending')
    t.equal(b.usage.pendingRequests(), 2, 'still pending after the failed attempt')
  } finally {
    await blocker.query('ROLLBACK')
    blocker.release()
  }

  await b.usage.flush()
  t.equal(b.usage.pendingRequests(), 0)
  t.equal(await stored('globex'), before + 2, 'the next flush wrote them, once')
})

t.test('closing an instance writes what it counted', async (t) => {
  const before = await stored('globex')
  await billed(b, 'globex', 'GET', '/users', 200)
  await b.close()
  bClosed = true
  t.equal(await stored('globex'), before + 1)
  t.equal(await stored('globex'), expected.globex)
})

t.test('deleting a tenant removes its usage; its counts not yet written are dropped, not an error', async (t) => {
  t.ok((await stored('globex')) > 0)
  await billed(a, 'globex', 'GET', '/users', 200)
  t.equal(a.usage.pendingRequests(), 1)
  t.equal((await call(a, 'DELETE', '/auth/tenants/globex', auth.admin())).statusCode, 204)
  t.equal(await stored('globex'), 0, 'its rows went with it')
  await a.usage.flush()
  t.equal(a.usage.pendingRequests(), 0)
  t.equal(await stored('globex'), 0, 'a later flush brings none back')
  t.equal((await call(a, 'GET', '/auth/tenants/globex/usage', auth.admin())).statusCode, 404)
})

t.test('hour buckets, windows and retention, on a clock of the test’s', async (t) => {
  await createTenant(ctx, 'clock-co')
  const started = Date.now()
  const today = started - (started % DAY_MS)
  let now = today - DAY_MS + 10 * HOUR_MS + HOUR_MS - 1 // yesterday 10:59:59.999 UTC
  const usage = createTenantUsage(admin, { flushIntervalMs: HOUR_MS, isCitus: async () => false, now: () => now })

  const old = new Date(Date.now() - (USAGE_RETENTION_DAYS + 1) * DAY_MS)
  const kept = new Date(Date.now() - (USAGE_RETENTION_DAYS - 1) * DAY_MS)
  old.setUTCMinutes(0, 0, 0)
  kept.setUTCMinutes(0, 0, 0)
  await admin.query("INSERT INTO public.tenant_usage (tenant_id, hour, requests) VALUES ('clock-co', $1, 5), ('clock-co', $2, 7)", [old, kept])

  usage.count('clock-co')
  now += 1 // 11:00:00.000
  usage.count('clock-co')
  usage.count('clock-co')
  await usage.flush()
  const { rows } = await admin.query(
    "SELECT hour, requests::int AS requests FROM public.tenant_usage WHERE tenant_id = 'clock-co' AND hour > $1 ORDER BY hour",
    [kept]
  )
  t.same(
    rows.map((row) => [row.hour.toISOString(), row.requests]),
    [
      [new Date(today - DAY_MS + 10 * HOUR_MS).toISOString(), 1],
      [new Date(today - DAY_MS + 11 * HOUR_MS).toISOString(), 2]
    ],
    'one row per tenant and UTC hour'
  )
  const { rows: retained } = await admin.query("SELECT requests::int AS requests FROM public.tenant_usage WHERE tenant_id = 'clock-co' AND hour <= $1", [kept])
  t.same(
    retained.map((row) => row.requests),
    [7],
    `the first flush deleted the row older than ${USAGE_RETENTION_DAYS} days and kept the younger one`
  )

  // Read at yesterday 11:30, then today 00:30, through a connection in clock-co's schema.
  const client = await admin.connect()
  try {
    await client.query('SET search_path TO "clock-co"')
    now = today - DAY_MS + 11 * HOUR_MS + 30 * 60_000
    usage.count('clock-co') // counted just before the read, which writes it first
    let read = await usage.read({ id: 'clock-co', schema: 'clock-co' }, client)
    t.same(
      [read.requests.currentHour.requests, read.requests.lastHour.requests, read.requests.currentDay.requests, read.requests.lastDay.requests],
      [3, 1, 4, 0],
      'at 11:30: 3 this hour, 1 the hour before, 4 today'
    )
    now = today + 30 * 60_000
    read = await usage.read({ id: 'clock-co', schema: 'clock-co' }, client)
    t.same(
      [read.requests.currentHour.requests, read.requests.lastHour.requests, read.requests.currentDay.requests, read.requests.lastDay.requests],
      [0, 0, 0, 4],
      'the next day at 00:30: all four are in the last full day'
    )
    t.equal(read.requests.lastDay.from, new Date(today - DAY_MS).toISOString())
  } finally {
    await client.query('RESET search_path')
    client.release()
  }
  await usage.close()
})
