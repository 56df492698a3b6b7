import t from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { HOSTILE_NAMES, type TestS3 } from './helpers/s3.ts'
import { parseQuery, verifyPresigned, type Verified } from './helpers/sigv4.ts'

const PRESIGN_EXPIRES_SECONDS = 600

interface UploadAnswer {
  file: { id: string; filename: string; contentType: string; size: number; status: string }
  upload: { method: string; url: string; headers: Record<string, string>; expiresAt: string }
}

const ctx: TestContext = await setupApp(t, { PRESIGN_EXPIRES_SECONDS: String(PRESIGN_EXPIRES_SECONDS), MAX_UPLOAD_BYTES: '1048576' }, { s3: true })
const s3: TestS3 = ctx.s3!
const { app, auth, admin } = ctx
await createTenant(ctx, 'acme')
await createTenant(ctx, 'globex')

async function startUpload(tenant: string, body: Record<string, unknown>) {
  return app.inject({ method: 'POST', url: '/files', headers: auth.tenantUser(tenant), payload: body })
}

async function started(tenant: string, filename: string, bytes: Buffer, contentType = 'application/octet-stream'): Promise<UploadAnswer> {
  const response = await startUpload(tenant, { filename, contentType, size: bytes.length })
  if (response.statusCode !== 201) throw new Error(`POST /files: ${response.statusCode} ${response.body}`)
  return response.json<UploadAnswer>()
}

/** A real HTTP PUT to the presigned URL, as a client would send it. */
const put = (upload: UploadAnswer['upload'], bytes: Buffer, headers: Record<string, string> = upload.headers) =>
  fetch(upload.url, { method: upload.method, headers, body: new Uint8Array(bytes) })

const complete = (tenant: string, id: string) => app.inject({ method: 'POST', url: `/files/${id}/complete`, headers: auth.tenantUser(tenant) })

async function uploaded(tenant: string, filename: string, bytes: Buffer, contentType?: string) {
  const answer = await started(tenant, filename, bytes, contentType)
  const stored = await put(answer.upload, bytes)
  if (stored.status !== 200) throw new Error(`PUT: ${stored.status} ${await stored.text()}`)
  const done = await complete(tenant, answer.file.id)
  if (done.statusCode !== 200) throw new Error(`complete: ${done.statusCode} ${done.body}`)
  return answer
}

async function row(tenant: string, id: string) {
  const { rows } = await admin.query(`SELECT key, filename, content_type, size::int AS size, status FROM "${tenant}".files WHERE id = $1`, [id])
  return rows[0] as { key: string; filename: string; content_type: string; size: number; status: string } | undefined
}

const fileCount = async (tenant: string) => (await admin.query(`SELECT count(*)::int AS n FROM "${tenant}".files`)).rows[0].n as number

t.test('upload through the returned URL, complete, download: the same bytes come back', async (t) => {
  const bytes = Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251))
  const created = await startUpload('acme', { filename: 'Quarterly report é.pdf', contentType: 'application/pdf', size: bytes.length })
  t.equal(created.statusCode, 201)
  const answer = created.json<UploadAnswer>()
  t.match(answer.file, { filename: 'Quarterly report é.pdf', contentType: 'application/pdf', size: bytes.length, status: 'pending' })
  t.equal(created.headers.location, `/files/${answer.file.id}`)
  t.equal(answer.upload.method, 'PUT')
  t.same(answer.upload.headers, { 'content-type': 'application/pdf', 'content-length': String(bytes.length) })
  const key = (await row('acme', answer.file.id))!.key
  t.equal(key, `tenants/acme/${answer.file.id}/Quarterly_report_é.pdf`)

  const stored = await put(answer.upload, bytes)
  t.equal(stored.status, 200, 'the store accepts the PUT with the returned headers')
  const staging = `tenants/acme/${answer.file.id}/.upload`
  t.same(await s3.keys(`tenants/acme/${answer.file.id}/`), [staging], 'the upload lands at the staging key the service chose')
  t.same(await s3.get(staging), bytes)

  const done = await complete('acme', answer.file.id)
  t.equal(done.statusCode, 200)
  t.match(done.json(), { id: answer.file.id, status: 'uploaded', size: bytes.length })
  t.equal((await row('acme', answer.file.id))!.status, 'uploaded')
  t.same(await s3.keys(`tenants/acme/${answer.file.id}/`), [key], 'completion moved the object to the file key')
  t.same(await s3.get(key), bytes)
  const again = await complete('acme', answer.file.id)
  t.equal(again.statusCode, 200, 'completing twice answers the same')
  t.match(again.json(), { id: answer.file.id, status: 'uploaded' })

  const got = await app.inject({ method: 'GET', url: `/files/${answer.file.id}`, headers: auth.tenantUser('acme') })
  t.match(got.json(), { id: answer.file.id, filename: 'Quarterly report é.pdf', status: 'uploaded' })

  const link = await app.inject({ method: 'GET', url: `/files/${answer.file.id}/download`, headers: auth.tenantUser('acme') })
  t.equal(link.statusCode, 200)
  const { url, expiresAt } = link.json<{ url: string; expiresAt: string }>()
  const verdict = verifyPresigned({ method: 'GET', url, headers: {} }, s3.credentials) as Verified
  t.equal(verdict.ok, true, 'the download URL verifies')
  t.equal(verdict.expiresAt?.toISOString(), expiresAt, 'expiresAt is when the signature stops working')
  const download = await fetch(url)
  t.equal(download.status, 200)
  t.same(Buffer.from(await download.arrayBuffer()), bytes, 'the bytes downloaded are the bytes uploaded')
  t.equal(download.headers.get('content-disposition'), `attachment; filename="Quarterly report e.pdf"; filename*=UTF-8''Quarterly%20report%20%C3%A9.pdf`)
  t.equal(download.headers.get('content-type'), 'application/pdf')
})

t.test('the presigned PUT verifies, and pins the key, the type and the length', async (t) => {
  const bytes = Buffer.from('pinned content')
  const before = Date.now()
  const answer = await started('acme', 'pinned.txt', bytes, 'text/plain')
  const { url, headers } = answer.upload
  const request = { method: 'PUT', url, headers }
  const verdict = verifyPresigned(request, s3.credentials)
  t.equal(verdict.ok, true, 'the returned URL and headers verify')
  const verified = verdict as Verified
  const params = new Map(parseQuery(new URL(url).search.slice(1)))
  t.equal(params.get('X-Amz-Expires'), String(PRESIGN_EXPIRES_SECONDS), 'X-Amz-Expires is PRESIGN_EXPIRES_SECONDS')
  t.equal(verified.expiresSeconds, PRESIGN_EXPIRES_SECONDS)
  t.equal(verified.expiresAt?.toISOString(), answer.upload.expiresAt)
  t.ok(verified.expiresAt!.getTime() >= Math.floor(before / 1000) * 1000 + PRESIGN_EXPIRES_SECONDS * 1000)
  t.match(verified.scope, /^\d{8}\/us-east-1\/s3\/aws4_request$/, 'credential scope is <date>/<region>/s3/aws4_request')
  t.equal(verified.scope.slice(0, 8), verified.amzDate.slice(0, 8))
  t.ok(verified.signedHeaders.includes('content-length'), 'content-length is signed')
  t.ok(verified.signedHeaders.includes('content-type'), 'content-type is signed')
  t.ok(verified.signedHeaders.includes('host'))
  const path = decodeURIComponent(new URL(url).pathname)
  t.ok(path.startsWith(`/${s3.bucket}/tenants/acme/${answer.file.id}/`), 'the key is under the tenant prefix')

  const elsewhere = url.replace('/tenants/acme/', '/tenants/globex/')
  t.match(verifyPresigned({ ...request, url: elsewhere }, s3.credentials), { ok: false, code: 'SignatureDoesNotMatch' }, "another tenant's key")
  t.equal(path, `/${s3.bucket}/tenants/acme/${answer.file.id}/.upload`, 'the URL writes the staging key, never the file key')
  const renamed = url.replace('/.upload?', '/pinned.txt?')
  t.match(verifyPresigned({ ...request, url: renamed }, s3.credentials), { ok: false }, 'another name')
  const retyped = { ...headers, 'content-type': 'text/html' }
  t.match(verifyPresigned({ ...request, headers: retyped }, s3.credentials), { ok: false }, 'another content type')
  const resized = { ...headers, 'content-length': String(bytes.length + 1) }
  t.match(verifyPresigned({ ...request, headers: resized }, s3.credentials), { ok: false }, 'another length')
  const longer = url.replace(`X-Amz-Expires=${PRESIGN_EXPIRES_SECONDS}`, 'X-Amz-Expires=604800')
  t.match(verifyPresigned({ ...request, url: longer }, s3.credentials), { ok: false }, 'a longer lifetime')
  t.match(verifyPresigned(request, s3.credentials, new Date(Date.now() + (PRESIGN_EXPIRES_SECONDS + 1) * 1000)), { ok: false, reason: 'Request has expired' })

  // The same tampering against the store, which checks signatures as S3 does: nothing lands.
  t.equal((await fetch(elsewhere, { method: 'PUT', headers, body: new Uint8Array(bytes) })).status, 403)
  t.equal((await put(answer.upload, bytes, retyped)).status, 403, 'a PUT with another Content-Type is refused')
  t.equal(
    (await put(answer.upload, Buffer.from('pinned content, and more'), { 'content-type': 'text/plain' })).status,
    403,
    'a PUT of another length is refused'
  )
  t.same(await s3.keys('tenants/globex/'), [])
  t.same(await s3.keys(`tenants/acme/${answer.file.id}/`), [], 'no object for the file yet')

  const missing = await complete('acme', answer.file.id)
  t.equal(missing.statusCode, 409)
  t.equal(missing.json().code, 'UPLOAD_MISSING')
  t.equal((await row('acme', answer.file.id))!.status, 'pending')
})

t.test('an object of the wrong size is refused at completion and discarded', async (t) => {
  // A store that does not enforce the signed length would let this through; the service does not.
  const answer = await started('acme', 'sized.bin', Buffer.alloc(100))
  const key = `tenants/acme/${answer.file.id}/.upload`
  await s3.put(key, Buffer.alloc(150))
  const mismatch = await complete('acme', answer.file.id)
  t.equal(mismatch.statusCode, 409)
  t.equal(mismatch.json().code, 'UPLOAD_SIZE_MISMATCH')
  t.equal(await s3.get(key), null, 'the wrong object is deleted')
  t.equal((await row('acme', answer.file.id))!.status, 'pending', 'the file stays pending')
  t.equal((await put(answer.upload, Buffer.alloc(100))).status, 200, 'the URL can still be used')
  t.equal((await complete('acme', answer.file.id)).statusCode, 200)
})

t.test('a file from before staging (its URL writes the file key) is completed in place', async (t) => {
  const bytes = Buffer.from('uploaded before the upgrade')
  const answer = await started('acme', 'legacy.txt', bytes, 'text/plain')
  // As a row written before the tenant migration that brought staging, or by an older replica.
  await admin.query('UPDATE acme.files SET staged = false WHERE id = $1', [answer.file.id])
  const key = (await row('acme', answer.file.id))!.key
  await s3.put(key, bytes, 'text/plain')
  const done = await complete('acme', answer.file.id)
  t.equal(done.statusCode, 200)
  t.match(done.json(), { status: 'uploaded' })
  t.same(await s3.keys(`tenants/acme/${answer.file.id}/`), [key])
  t.same(await s3.get(key), bytes)
})

t.test('complete without an upload is 409 and downloads wait for completion', async (t) => {
  const answer = await started('acme', 'never.txt', Buffer.from('x'), 'text/plain')
  const response = await complete('acme', answer.file.id)
  t.equal(response.statusCode, 409)
  t.match(response.json(), { statusCode: 409, code: 'UPLOAD_MISSING' })
  const link = await app.inject({ method: 'GET', url: `/files/${answer.file.id}/download`, headers: auth.tenantUser('acme') })
  t.equal(link.statusCode, 409)
  t.equal(link.json().code, 'FILE_NOT_UPLOADED')
})

t.test('sizes and content types are checked before anything is written', async (t) => {
  const before = await fileCount('acme')
  const requestsBefore = s3.requests.length
  const too = await startUpload('acme', { filename: 'big.bin', contentType: 'application/octet-stream', size: 1048577 })
  t.equal(too.statusCode, 413)
  t.match(too.json(), { code: 'FILE_TOO_LARGE', message: /1048576/ })
  t.equal(
    (await startUpload('acme', { filename: 'max.bin', contentType: 'application/octet-stream', size: 1048576 })).statusCode,
    201,
    'the limit itself is allowed'
  )

  for (const size of [0, -1, 1.5, 'abc', null, 1e300]) {
    const response = await startUpload('acme', { filename: 'x.bin', contentType: 'application/octet-stream', size })
    t.equal(response.statusCode, 400, `size ${JSON.stringify(size)}`)
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  for (const contentType of [
    '',
    'pdf',
    'text/',
    '/plain',
    'text/plain; charset=utf-8',
    'text/plain\r\nx-evil: 1',
    'text /plain',
    'a/b/c',
    'text/pl ain',
    `text/${'a'.repeat(200)}`,
    'tëxt/plain'
  ]) {
    const response = await startUpload('acme', { filename: 'x.txt', contentType, size: 1 })
    t.equal(response.statusCode, 400, `content type ${JSON.stringify(contentType)}`)
    t.equal(response.json().code, 'VALIDATION_ERROR')
  }
  for (const contentType of ['x-evil/thing', 'multipart/form-data', 'message/rfc822', 'inode/directory']) {
    const response = await startUpload('acme', { filename: 'x.txt', contentType, size: 1 })
    t.equal(response.statusCode, 400, `content type ${contentType}`)
    t.equal(response.json().code, 'CONTENT_TYPE_NOT_ALLOWED')
  }
  const upper = await startUpload('acme', { filename: 'x.svg', contentType: 'Image/SVG+XML', size: 1 })
  t.equal(upper.statusCode, 201)
  t.equal(upper.json().file.contentType, 'image/svg+xml', 'stored lowercase')
  for (const body of [
    { filename: '', contentType: 'text/plain', size: 1 },
    { contentType: 'text/plain', size: 1 },
    { filename: 'x', contentType: 'text/plain', size: 1, key: 'tenants/globex/x' }
  ]) {
    t.equal((await startUpload('acme', body)).statusCode, 400, JSON.stringify(body))
  }
  t.equal(await fileCount('acme'), before + 2, 'only the two valid requests wrote a row')
  t.equal(s3.requests.length, requestsBefore, 'nothing reached the store: presigning is local')
})

t.test('hostile file names: the key stays under the prefix and the object lands there', async (t) => {
  for (const [label, filename] of Object.entries(HOSTILE_NAMES)) {
    const bytes = Buffer.from(`content of ${label}`)
    const answer = await started('acme', filename, bytes, 'text/plain')
    const stored = (await row('acme', answer.file.id))!
    const prefix = `tenants/acme/${answer.file.id}/`
    t.ok(stored.key.startsWith(prefix), `${label}: key under the file's own prefix`)
    t.notOk(
      stored.key.split('/').some((segment) => segment === '..' || segment === '.'),
      `${label}: no dot segment`
    )
    t.notOk(stored.key.includes('\\'), `${label}: no backslash`)
    t.equal(stored.key.split('/').length, 4, `${label}: exactly tenants/<tenant>/<file>/<name>`)
    t.notMatch(answer.file.filename, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u200b-\u200f\ufeff/\\]/, `${label}: clean display name`)
    t.ok(answer.file.filename.length > 0)
    const response = await put(answer.upload, bytes)
    t.equal(response.status, 200, `${label}: the upload is accepted`)
    t.same(await s3.keys(prefix), [`${prefix}.upload`], `${label}: the upload is exactly at the staging key`)
    t.equal((await complete('acme', answer.file.id)).statusCode, 200)
    t.same(await s3.keys(prefix), [stored.key], `${label}: the object is exactly at the key`)
  }
  t.same(await s3.keys('tenants/globex/'), [], "nothing reached another tenant's prefix")
  t.same(
    (await s3.keys('')).filter((key) => !key.startsWith('tenants/acme/')),
    [],
    'nothing outside the prefix at all'
  )
})

t.test("another tenant's file is 404 everywhere and stays intact", async (t) => {
  const bytes = Buffer.from('acme confidential')
  const answer = await uploaded('acme', 'secret.txt', bytes, 'text/plain')
  const id = answer.file.id
  const key = (await row('acme', id))!.key
  const as = auth.tenantUser('globex')
  for (const [method, url] of [
    ['GET', `/files/${id}`],
    ['GET', `/files/${id}/download`],
    ['POST', `/files/${id}/complete`],
    ['DELETE', `/files/${id}`]
  ] as const) {
    const response = await app.inject({ method, url, headers: as })
    t.equal(response.statusCode, 404, `${method} ${url}`)
    t.equal(response.json().code, 'FILE_NOT_FOUND')
  }
  const list = await app.inject({ method: 'GET', url: '/files', headers: as })
  t.notOk(
    list.json().items.some((file: { id: string }) => file.id === id),
    "not in the other tenant's list"
  )
  t.equal((await row('acme', id))!.status, 'uploaded', "the owner's row is unchanged")
  t.same(await s3.get(key), bytes, "the owner's object is still there")
})

t.test('malformed ids are 400 on every route', async (t) => {
  for (const [method, url] of [
    ['GET', '/files/not-a-uuid'],
    ['GET', '/files/not-a-uuid/download'],
    ['POST', '/files/..%2F..%2Fx/complete'],
    ['DELETE', "/files/1'%20OR%20'1'='1"]
  ] as const) {
    const response = await app.inject({ method, url, headers: auth.tenantUser('acme') })
    t.equal(response.statusCode, 400, `${method} ${url}`)
  }
  const unknown = await app.inject({ method: 'GET', url: '/files/00000000-0000-4000-8000-000000000000', headers: auth.tenantUser('acme') })
  t.equal(unknown.statusCode, 404)
})

t.test('delete hides the file and removes its object; a store failure leaves the object to the sweep', async (t) => {
  const kept = await uploaded('acme', 'kept.txt', Buffer.from('kept'), 'text/plain')
  const keptKey = (await row('acme', kept.file.id))!.key
  const failure = s3.failWhen((request) => request.method === 'POST' && request.query.has('delete'))
  const accepted = await app.inject({ method: 'DELETE', url: `/files/${kept.file.id}`, headers: auth.tenantUser('acme') })
  failure.clear()
  t.equal(accepted.statusCode, 204, 'the file is deleted even when its object cannot be removed yet')
  t.equal((await row('acme', kept.file.id))!.status, 'deleted', 'the row stays, marked deleted, until the sweep')
  t.ok(await s3.get(keptKey), 'the object is still there, for the sweep')
  for (const url of [`/files/${kept.file.id}`, `/files/${kept.file.id}/download`]) {
    t.equal((await app.inject({ method: 'GET', url, headers: auth.tenantUser('acme') })).statusCode, 404, `GET ${url}`)
  }
  t.equal((await complete('acme', kept.file.id)).statusCode, 404)
  const list = await app.inject({ method: 'GET', url: '/files', headers: auth.tenantUser('acme') })
  t.notOk(
    list.json().items.some((file: { id: string }) => file.id === kept.file.id),
    'not listed'
  )
  const again = await app.inject({ method: 'DELETE', url: `/files/${kept.file.id}`, headers: auth.tenantUser('acme') })
  t.equal(again.statusCode, 404)

  const other = await uploaded('acme', 'other.txt', Buffer.from('other'), 'text/plain')
  const otherKey = (await row('acme', other.file.id))!.key
  const response = await app.inject({ method: 'DELETE', url: `/files/${other.file.id}`, headers: auth.tenantUser('acme') })
  t.equal(response.statusCode, 204)
  t.equal((await row('acme', other.file.id))!.status, 'deleted')
  t.equal(await s3.get(otherKey), null, 'the object is gone')

  const pending = await started('acme', 'pending.txt', Buffer.from('p'), 'text/plain')
  t.equal(
    (await app.inject({ method: 'DELETE', url: `/files/${pending.file.id}`, headers: auth.tenantUser('acme') })).statusCode,
    204,
    'a pending file can be deleted'
  )
})

t.test('S3 failures are 502/503 with a code, never a 500', async (t) => {
  const answer = await started('acme', 'flaky.txt', Buffer.from('f'), 'text/plain')
  const down = s3.failWhen((request) => request.method === 'HEAD', { status: 500, code: 'InternalError' })
  const unavailable = await complete('acme', answer.file.id)
  down.clear()
  t.equal(unavailable.statusCode, 503)
  t.equal(unavailable.json().code, 'STORAGE_UNAVAILABLE')
  const denied = s3.failWhen((request) => request.method === 'HEAD', { status: 403, code: 'AccessDenied' })
  const refused = await complete('acme', answer.file.id)
  denied.clear()
  t.equal(refused.statusCode, 502)
  t.equal(refused.json().code, 'STORAGE_ERROR')
  t.equal((await row('acme', answer.file.id))!.status, 'pending')
})

t.test('listing pages through the files', async (t) => {
  await createTenant(ctx, 'initech')
  const ids: string[] = []
  for (let i = 0; i < 5; i++) ids.push((await started('initech', `f${i}.txt`, Buffer.from('x'), 'text/plain')).file.id)
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const url: string = `/files?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`
    const response = await app.inject({ method: 'GET', url, headers: auth.tenantUser('initech') })
    t.equal(response.statusCode, 200)
    const page: { items: { id: string }[]; nextCursor: string | null } = response.json()
    t.ok(page.items.length <= 2)
    seen.push(...page.items.map((item) => item.id))
    cursor = page.nextCursor
  } while (cursor)
  t.same(seen.sort(), ids.sort(), 'every file exactly once')
  const bad = await app.inject({ method: 'GET', url: '/files?cursor=nonsense', headers: auth.tenantUser('initech') })
  t.equal(bad.statusCode, 400)
})

t.test('readiness includes the bucket', async (t) => {
  const ready = await app.inject({ method: 'GET', url: '/health/ready?verbose', headers: auth.admin() })
  t.equal(ready.statusCode, 200)
  t.match(ready.json(), { checks: { storage: { ok: true } } })
  const gone = s3.failWhen((request) => request.method === 'HEAD' && request.path.replace(/\/$/, '') === `/${s3.bucket}`, { status: 404, code: 'NoSuchBucket' })
  // Checks run at most once a second, whoever asks.
  await new Promise((resolve) => setTimeout(resolve, 1100))
  const notReady = await app.inject({ method: 'GET', url: '/health/ready?verbose', headers: auth.admin() })
  gone.clear()
  t.equal(notReady.statusCode, 503)
  t.match(notReady.json(), { checks: { storage: { ok: false, detail: /test-bucket/ } } })
})

t.test('every request the service made to the store was correctly signed', async (t) => {
  const serviceRejections = s3.rejected.filter((request) => request.method !== 'PUT')
  t.same(serviceRejections, [], 'only the deliberately tampered PUTs were refused')
})
