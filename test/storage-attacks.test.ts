import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { sweepDue } from '../lib/files/index.ts'
import { ageTombstone, buildApp, createTenant, setupApp } from './helpers/app.ts'
import { eventually } from './helpers/wait.ts'

/**
 * The storage attacks of an outside review, replayed over HTTP: each one ran against the service
 * as a client would, and each is refused or made harmless here. The upload URLs live a few
 * seconds, so that their expiry (after which the sweep may finish its work) comes within the test.
 */

const PRESIGN_EXPIRES_SECONDS = 8
const QUOTA = 10_000

const ctx = await setupApp(
  t,
  {
    PRESIGN_EXPIRES_SECONDS: String(PRESIGN_EXPIRES_SECONDS),
    TENANT_STORAGE_QUOTA_BYTES: String(QUOTA),
    MAX_UPLOAD_BYTES: String(QUOTA),
    // The tests run the sweep themselves, when they need it.
    FILE_SWEEP_INTERVAL_MS: '0',
    PG_POOL_MAX: '6'
  },
  { s3: true }
)
const { app, auth, admin } = ctx
const s3 = ctx.s3!

interface Upload {
  file: { id: string }
  upload: { url: string; method: string; headers: Record<string, string>; expiresAt: string }
}

const startUpload = (tenant: string, size: number) =>
  app.inject({ method: 'POST', url: '/files', headers: auth.tenantUser(tenant), payload: { filename: 'f.bin', contentType: 'application/octet-stream', size } })
const put = (upload: Upload['upload'], bytes: Buffer) => fetch(upload.url, { method: 'PUT', headers: upload.headers, body: new Uint8Array(bytes) })
const complete = (tenant: string, id: string) => app.inject({ method: 'POST', url: `/files/${id}/complete`, headers: auth.tenantUser(tenant) })
const remove = (tenant: string, id: string) => app.inject({ method: 'DELETE', url: `/files/${id}`, headers: auth.tenantUser(tenant) })

/** The sweep as the service runs it, with no grace: the store, the database and the service share this machine's clock. */
const sweep = () => sweepDue({ pool: app.pg.pool, storage: app.storage!, tenantDb: app.tenantDb, graceMs: 0 })

/** Bytes stored under `prefix`, object by object. */
async function storedBytes(prefix: string): Promise<number> {
  let total = 0
  for (const key of await s3.keys(prefix)) total += (await s3.get(key))?.length ?? 0
  return total
}

const rowsOf = async (tenant: string) =>
  (await admin.query(`SELECT id, status, size::int AS size FROM "${tenant}".files ORDER BY created_at`)).rows as { id: string; status: string; size: number }[]

/** Until every URL handed out so far has expired. */
const afterExpiry = (uploads: Upload[]) => {
  const last = Math.max(...uploads.map((upload) => Date.parse(upload.upload.expiresAt)))
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, last - Date.now()) + 1100))
}

t.test('quota: delete then PUT anyway, 15 times, cannot store more than the quota', async (t) => {
  await createTenant(ctx, 'pending-attack')
  await createTenant(ctx, 'complete-attack')
  const bytes = Buffer.alloc(9000, 1)
  const handedOut: Upload[] = []

  // Pending uploads: POST, DELETE, PUT anyway. And completed ones: POST, PUT, complete, DELETE, PUT again.
  for (const [tenant, completeFirst] of [
    ['pending-attack', false],
    ['complete-attack', true]
  ] as const) {
    const answers: number[] = []
    for (let round = 0; round < 15; round++) {
      const created = await startUpload(tenant, bytes.length)
      answers.push(created.statusCode)
      if (created.statusCode !== 201) {
        t.equal(created.json().code, 'QUOTA_EXCEEDED', `${tenant}: round ${round} is refused for the quota`)
        // Every URL handed out so far is tried again: none stores more than its own file's bytes.
        for (const upload of handedOut) await put(upload.upload, bytes)
        continue
      }
      const upload = created.json<Upload>()
      handedOut.push(upload)
      if (completeFirst) {
        t.equal((await put(upload.upload, bytes)).status, 200)
        t.equal((await complete(tenant, upload.file.id)).statusCode, 200)
      }
      t.equal((await remove(tenant, upload.file.id)).statusCode, 204)
      t.equal((await put(upload.upload, bytes)).status, 200, `${tenant}: the URL still works after the DELETE (a URL cannot be revoked)`)
    }
    t.equal(answers.filter((status) => status === 201).length, 1, `${tenant}: only the first upload was accepted`)
    t.ok((await storedBytes(`tenants/${tenant}/`)) <= QUOTA, `${tenant}: the prefix holds no more than the quota`)
    t.same(
      (await rowsOf(tenant)).map((row) => row.status),
      ['deleted'],
      `${tenant}: the deleted file keeps its reservation`
    )
    const list = await app.inject({ method: 'GET', url: '/files', headers: auth.tenantUser(tenant) })
    t.same(list.json().items, [], `${tenant}: and is gone from the API`)
  }

  // Before the URLs expire, the sweep is not due and the reservations hold. (On a machine so
  // loaded that the URLs expired meanwhile, this part is skipped.)
  const earliest = Math.min(...handedOut.map((upload) => Date.parse(upload.upload.expiresAt)))
  if (Date.now() < earliest - 1000) {
    await sweep()
    for (const tenant of ['pending-attack', 'complete-attack']) {
      t.equal((await rowsOf(tenant)).length, 1, `${tenant}: the row stays while its URL works`)
      t.equal((await startUpload(tenant, bytes.length)).json().code, 'QUOTA_EXCEEDED')
    }
  }

  await afterExpiry(handedOut)
  for (const upload of handedOut) t.equal((await put(upload.upload, bytes)).status, 403, 'an expired URL stores nothing')
  const swept = await sweep()
  t.ok(swept.rows >= 2, 'the rows of the deleted files are removed once their URLs have expired')
  for (const tenant of ['pending-attack', 'complete-attack']) {
    t.same(await s3.keys(`tenants/${tenant}/`), [], `${tenant}: nothing is stored`)
    t.same(await rowsOf(tenant), [], `${tenant}: no row is left`)
    t.equal((await startUpload(tenant, bytes.length)).statusCode, 201, `${tenant}: the quota is free again`)
  }
})

t.test('quota: a completed file keeps its upload reservation while its URL works: complete, then PUT again, cannot store past the quota', async (t) => {
  await createTenant(ctx, 'refill')
  const bytes = Buffer.alloc(6000, 2)
  const first = (await startUpload('refill', bytes.length)).json<Upload>()
  t.equal((await put(first.upload, bytes)).status, 200)
  t.equal((await complete('refill', first.file.id)).statusCode, 200)
  const { rows } = await admin.query('SELECT key FROM refill.files WHERE id = $1', [first.file.id])
  t.same(await s3.keys('tenants/refill/'), [rows[0].key], 'completing moved the bytes and deleted the staging object')

  // The URL cannot be revoked: until it expires it refills the staging key. So the file counts
  // twice meanwhile, and no new upload may take the room the refill can use.
  t.equal((await put(first.upload, bytes)).status, 200, 'the URL still stores after the completion')
  for (const size of [QUOTA - bytes.length, 1]) {
    const refused = await startUpload('refill', size)
    t.equal(refused.statusCode, 409, `an upload of ${size} bytes is refused while the URL works`)
    t.equal(refused.json().code, 'QUOTA_EXCEEDED')
    // Where the service let it in, its bytes land too: what the attack would store.
    if (refused.statusCode === 201) await put(refused.json<Upload>().upload, Buffer.alloc(size, 3))
  }
  t.same(
    (await rowsOf('refill')).map((row) => [row.id, row.status]),
    [[first.file.id, 'uploaded']],
    'no other file was declared'
  )
  const stored = await storedBytes('tenants/refill/')
  t.ok(stored <= 2 * bytes.length, `the prefix holds the file and the refill its reservation covers, nothing more (${stored} bytes)`)
  t.same(await s3.keys('tenants/refill/'), [`tenants/refill/${first.file.id}/.upload`, rows[0].key].sort())

  // Once the URL has expired the sweep removes the refill, and the reservation is free again.
  await afterExpiry([first])
  t.equal((await put(first.upload, bytes)).status, 403, 'the expired URL stores nothing')
  await sweep()
  t.same(await s3.keys('tenants/refill/'), [rows[0].key], 'the late staging object is swept')
  t.equal(await storedBytes('tenants/refill/'), bytes.length)
  t.equal((await startUpload('refill', QUOTA - bytes.length)).statusCode, 201, 'the rest of the quota is free again')
})

t.test('a slow store holds no database connection: other tenants keep writing', async (t) => {
  await createTenant(ctx, 'slow')
  await createTenant(ctx, 'bystander')
  const bytes = Buffer.from('a small file')
  const uploads: Upload[] = []
  for (let i = 0; i < 12; i++) {
    const upload = (await startUpload('slow', bytes.length)).json<Upload>()
    t.equal((await put(upload.upload, bytes)).status, 200)
    uploads.push(upload)
  }

  // Every request about the tenant's objects now waits 4 s at the store.
  const slow = s3.delayWhen((request) => request.path.includes('/tenants/slow/'), 4000)
  const completes = Promise.all(uploads.map((upload) => complete('slow', upload.file.id)))
  t.ok(await eventually(() => slow.failed >= 12, 10_000), 'every completion is waiting for the store')

  const idleInTransaction = async () =>
    (
      await admin.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'`
      )
    ).rows[0].n as number
  t.equal(await idleInTransaction(), 0, 'no connection sits in a transaction while the store answers')
  const user = await app.inject({ method: 'POST', url: '/users', headers: auth.tenantUser('bystander'), payload: { email: 'b@example.com', name: 'B' } })
  t.equal(user.statusCode, 201, "another tenant's write goes through")
  t.equal(await idleInTransaction(), 0)

  const answers = await completes
  slow.clear()
  t.same(
    answers.map((answer) => answer.statusCode),
    Array(12).fill(200),
    'the slow completions finish'
  )
  t.same(
    (await rowsOf('slow')).map((row) => row.status),
    Array(12).fill('uploaded')
  )
  t.equal((await admin.query('SELECT count(*)::int AS n FROM bystander.users')).rows[0].n, 1, 'exactly the one user was written')

  // Deleting the tenant against the slow store: its S3 calls hold no transaction either.
  const slowDelete = s3.delayWhen((request) => request.query.get('prefix') === 'tenants/slow/' || request.query.has('delete'), 1500)
  const deletion = app.inject({ method: 'DELETE', url: '/auth/tenants/slow', headers: auth.admin() })
  t.ok(await eventually(() => slowDelete.failed >= 1, 10_000), 'the deletion is waiting for the store')
  t.equal(await idleInTransaction(), 0, 'no connection sits in a transaction while the deletion lists the prefix')
  t.equal(
    (await app.inject({ method: 'POST', url: '/users', headers: auth.tenantUser('bystander'), payload: { email: 'c@example.com', name: 'C' } })).statusCode,
    201
  )
  t.equal((await deletion).statusCode, 204)
  slowDelete.clear()
  t.same(await s3.keys('tenants/slow/'), [])
})

t.test("a completed file's bytes cannot be replaced through its upload URL", async (t) => {
  await createTenant(ctx, 'replace')
  const original = Buffer.from('the original bytes')
  const forged = Buffer.from('the replaced bytes')
  t.equal(original.length, forged.length)
  const upload = (await startUpload('replace', original.length)).json<Upload>()
  t.equal((await put(upload.upload, original)).status, 200)
  t.equal((await complete('replace', upload.file.id)).statusCode, 200)

  t.equal((await put(upload.upload, forged)).status, 200, 'the URL still answers until it expires')
  const again = await complete('replace', upload.file.id)
  t.match(again.json(), { status: 'uploaded' }, 'completing again changes nothing')
  const link = await app.inject({ method: 'GET', url: `/files/${upload.file.id}/download`, headers: auth.tenantUser('replace') })
  const download = await fetch(link.json().url)
  t.same(Buffer.from(await download.arrayBuffer()), original, 'the download serves the original bytes')

  await afterExpiry([upload])
  await sweep()
  const { rows } = await admin.query('SELECT key FROM replace.files WHERE id = $1', [upload.file.id])
  t.same(await s3.keys(`tenants/replace/`), [rows[0].key], 'the late PUT is swept; only the file remains')
  t.same(await s3.get(rows[0].key), original)
})

t.test('concurrent completions: one copies, the others answer what it did; a deletion racing a completion leaves nothing', async (t) => {
  await createTenant(ctx, 'racing')
  const bytes = Buffer.from('raced content')
  const upload = (await startUpload('racing', bytes.length)).json<Upload>()
  t.equal((await put(upload.upload, bytes)).status, 200)
  const { rows } = await admin.query('SELECT key FROM racing.files WHERE id = $1', [upload.file.id])
  const finalPath = `/${s3.bucket}/${rows[0].key}`
  // The copy to the file's key is held, so the completions overlap.
  const held = s3.delayWhen((request) => request.method === 'PUT' && request.path === finalPath, 1000)
  const answers = await Promise.all(Array.from({ length: 4 }, () => complete('racing', upload.file.id)))
  held.clear()
  t.same(
    answers.map((answer) => [answer.statusCode, answer.json().status]),
    Array(4).fill([200, 'uploaded'])
  )
  t.equal(s3.requests.filter((request) => request.method === 'PUT' && request.path === finalPath).length, 1, 'exactly one completion copied the upload')
  t.same(await s3.keys(`tenants/racing/${upload.file.id}/`), [rows[0].key])

  const other = (await startUpload('racing', bytes.length)).json<Upload>()
  t.equal((await put(other.upload, bytes)).status, 200)
  const slowCopy = s3.delayWhen((request) => request.method === 'PUT' && request.path.startsWith(`/${s3.bucket}/tenants/racing/${other.file.id}/`), 1000)
  const completing = complete('racing', other.file.id)
  t.ok(await eventually(() => slowCopy.failed >= 1), 'the completion is copying')
  t.equal((await remove('racing', other.file.id)).statusCode, 204)
  const completed = await completing
  slowCopy.clear()
  // Almost always 404: the deletion came first. On a loaded machine the completion may win the race
  // instead; either way nothing of the file is left.
  t.ok([404, 200].includes(completed.statusCode), `the completion answers ${completed.statusCode}`)
  t.same(await s3.keys(`tenants/racing/${other.file.id}/`), [], 'nothing of the deleted file is stored')
  t.same(
    (await rowsOf('racing')).map((row) => row.status),
    ['uploaded', 'deleted']
  )
})

/** POST /files/:id/complete on the listening service, on a connection of its own; answers the ClientRequest (to drop it) and its outcome. */
function completeOverHttp(tenant: string, id: string) {
  const { port } = app.server.address() as AddressInfo
  const request = http.request({ host: '127.0.0.1', port, method: 'POST', path: `/files/${id}/complete`, headers: auth.tenantUser(tenant), agent: false })
  const outcome = new Promise<string>((resolve) => {
    request.on('response', (response) => {
      response.resume()
      resolve(String(response.statusCode))
    })
    request.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'))
  })
  request.end()
  return { request, outcome }
}

t.test('a completion whose client went away mid-copy is recorded; the retry answers 200 at once, and the file is uploaded once', async (t) => {
  await createTenant(ctx, 'walkaway')
  if (!app.server.listening) await app.listen({ port: 0, host: '127.0.0.1' })
  const bytes = Buffer.from('bytes of a client that left')
  const upload = (await startUpload('walkaway', bytes.length)).json<Upload>()
  t.equal((await put(upload.upload, bytes)).status, 200)
  const { rows } = await admin.query('SELECT key FROM walkaway.files WHERE id = $1', [upload.file.id])
  const finalPath = `/${s3.bucket}/${rows[0].key}`

  // The store answers the completion's calls slowly; the client gives up meanwhile.
  const slow = s3.delayWhen((request) => request.path.startsWith(`/${s3.bucket}/tenants/walkaway/`), 1500)
  const { request, outcome } = completeOverHttp('walkaway', upload.file.id)
  t.ok(await eventually(() => slow.failed >= 1, 10_000), 'the completion is waiting for the store')
  request.destroy()
  t.equal(await outcome, 'ECONNRESET', 'the client left before any answer')
  slow.clear()

  const retried = await complete('walkaway', upload.file.id)
  t.equal(retried.statusCode, 200, `the retry is answered, not held back by the abandoned claim: ${retried.body}`)
  t.match(retried.json(), { id: upload.file.id, status: 'uploaded' })
  const row = await admin.query('SELECT status, completion_claim FROM walkaway.files WHERE id = $1', [upload.file.id])
  t.same(row.rows, [{ status: 'uploaded', completion_claim: null }], 'uploaded, and no claim left')
  t.equal(s3.requests.filter((seen) => seen.method === 'PUT' && seen.path === finalPath).length, 1, 'the upload was copied once')
  t.ok(await eventually(async () => (await s3.keys('tenants/walkaway/')).join() === rows[0].key), 'the staging object is deleted')
  t.same(await s3.get(rows[0].key), bytes)
})

t.test('a completion that fails after its copy releases its claim: the retry completes at once', async (t) => {
  await createTenant(ctx, 'unswept')
  const bytes = Buffer.from('bytes whose sweep could not be asked for')
  const upload = (await startUpload('unswept', bytes.length)).json<Upload>()
  t.equal((await put(upload.upload, bytes)).status, 200)
  // Asking for the sweep of this tenant's prefix fails, once the copy is made.
  await admin.query(`CREATE FUNCTION public.refuse_sweep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no sweeps today'; END $$`)
  await admin.query(
    `CREATE TRIGGER refuse_sweep BEFORE INSERT OR UPDATE ON public.tenant_sweeps FOR EACH ROW WHEN (NEW.tenant_id = 'unswept') EXECUTE FUNCTION public.refuse_sweep()`
  )
  const failed = await complete('unswept', upload.file.id)
  t.equal(failed.statusCode, 500, 'the completion fails')
  t.same(
    (await rowsOf('unswept')).map((row) => row.status),
    ['pending'],
    'and the file stays pending'
  )
  await admin.query('DROP TRIGGER refuse_sweep ON public.tenant_sweeps')
  await admin.query('DROP FUNCTION public.refuse_sweep()')

  const retried = await complete('unswept', upload.file.id)
  t.equal(retried.statusCode, 200, `the retry is not held back by the failed completion's claim: ${retried.body}`)
  t.match(retried.json(), { status: 'uploaded' })
  const { rows } = await admin.query('SELECT key, status, completion_claim FROM unswept.files')
  t.match(rows, [{ status: 'uploaded', completion_claim: null }])
  t.same(await s3.keys('tenants/unswept/'), [rows[0].key])
  t.same(await s3.get(rows[0].key), bytes)
})

t.test('a recreated tenant id: old upload URLs store nothing the new tenant can reach', async (t) => {
  await createTenant(ctx, 'phoenix')
  const bytes = Buffer.from('from the first life')
  const pending = (await startUpload('phoenix', bytes.length)).json<Upload>()
  const done = (await startUpload('phoenix', bytes.length)).json<Upload>()
  t.equal((await put(done.upload, bytes)).status, 200)
  t.equal((await complete('phoenix', done.file.id)).statusCode, 200)

  t.equal((await app.inject({ method: 'DELETE', url: '/auth/tenants/phoenix', headers: auth.admin() })).statusCode, 204)
  t.same(await s3.keys('tenants/phoenix/'), [], 'the deletion removed every object')
  // Past the interval before an id is taken again (its tokens are test/attacks.test.ts's business).
  await ageTombstone(admin, 'phoenix')
  await createTenant(ctx, 'phoenix')

  // The old URLs still work at the store until they expire.
  t.equal((await put(pending.upload, bytes)).status, 200)
  t.equal((await put(done.upload, bytes)).status, 200)
  for (const id of [pending.file.id, done.file.id]) {
    for (const [method, url] of [
      ['GET', `/files/${id}`],
      ['GET', `/files/${id}/download`],
      ['POST', `/files/${id}/complete`]
    ] as const) {
      const response = await app.inject({ method, url, headers: auth.tenantUser('phoenix') })
      t.equal(response.statusCode, 404, `${method} ${url} in the new tenant`)
    }
  }
  t.same((await app.inject({ method: 'GET', url: '/files', headers: auth.tenantUser('phoenix') })).json().items, [])
  t.same(await rowsOf('phoenix'), [], 'no row of the new tenant')

  // The new tenant's own file is not touched by the sweep.
  const own = (await startUpload('phoenix', bytes.length)).json<Upload>()
  t.equal((await put(own.upload, bytes)).status, 200)
  await sweep()
  t.same(await s3.keys('tenants/phoenix/'), [`tenants/phoenix/${own.file.id}/.upload`], "the old life's objects are swept, the new upload stays")
  t.equal((await complete('phoenix', own.file.id)).statusCode, 200)

  // A late PUT just before the old URLs expire is swept by the visit due at their expiry.
  await put(pending.upload, bytes)
  await afterExpiry([pending, done])
  t.equal((await put(pending.upload, bytes)).status, 403, 'the old URL has expired')
  await sweep()
  const { rows } = await admin.query('SELECT key FROM phoenix.files WHERE id = $1', [own.file.id])
  t.same(await s3.keys('tenants/phoenix/'), [rows[0].key], "only the new tenant's file remains")
})

t.test('the sweep runs by itself, and two instances visit a due prefix once', async (t) => {
  await createTenant(ctx, 'timer')
  const orphans = ['00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002'].map((id) => `tenants/timer/${id}/.upload`)
  for (const key of orphans) await s3.put(key, 'left behind')
  // Due long enough ago for the default grace.
  await admin.query(`INSERT INTO public.tenant_sweeps (tenant_id, due_at) VALUES ('timer', now() - interval '1 minute')`)
  const before = s3.requests.length

  const instances = await Promise.all([1, 2].map(() => buildApp({ ...ctx.config, FILE_SWEEP_INTERVAL_MS: 100 })))
  t.teardown(() => Promise.all(instances.map((instance) => instance.close())))
  t.ok(
    await eventually(async () => (await admin.query(`SELECT 1 FROM public.tenant_sweeps WHERE tenant_id = 'timer'`)).rowCount === 0, 10_000),
    'the prefix is visited, then forgotten'
  )
  const listings = s3.requests.slice(before).filter((request) => request.query.get('list-type') === '2' && request.query.get('prefix') === 'tenants/timer/')
  t.equal(listings.length, 1, 'one visit, by one of the two instances')
  t.same(await s3.keys('tenants/timer/'), [], 'the objects without a row are swept')
  t.same(await rowsOf('timer'), [], 'nothing written to the tenant')
})
