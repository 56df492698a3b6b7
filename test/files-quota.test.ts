import t from 'tap'
import { createTenant, setupApp } from './helpers/app.ts'

const ctx = await setupApp(t, { TENANT_STORAGE_QUOTA_BYTES: '1000', MAX_UPLOAD_BYTES: '1000' }, { s3: true })
const { app, auth, admin } = ctx
const s3 = ctx.s3!
await createTenant(ctx, 'acme')
await createTenant(ctx, 'globex')
await createTenant(ctx, 'initech')

const startUpload = (tenant: string, size: number) =>
  app.inject({ method: 'POST', url: '/files', headers: auth.tenantUser(tenant), payload: { filename: 'f.bin', contentType: 'application/octet-stream', size } })

async function usage(tenant: string) {
  const { rows } = await admin.query(`SELECT count(*)::int AS files, coalesce(sum(size), 0)::int AS bytes FROM "${tenant}".files`)
  return rows[0] as { files: number; bytes: number }
}

t.test('an upload that would exceed the quota is refused and writes nothing', async (t) => {
  const first = await startUpload('acme', 600)
  t.equal(first.statusCode, 201)
  const requests = s3.requests.length

  const over = await startUpload('acme', 500)
  t.equal(over.statusCode, 409)
  t.match(over.json(), { statusCode: 409, code: 'QUOTA_EXCEEDED', message: /600 of 1000 bytes/ })
  t.same(await usage('acme'), { files: 1, bytes: 600 }, 'no row for the refused upload')
  t.equal(s3.requests.length, requests, 'nothing sent to the store')

  t.equal((await startUpload('acme', 400)).statusCode, 201, 'up to the quota exactly is fine (pending files count)')
  t.equal((await startUpload('acme', 1)).json().code, 'QUOTA_EXCEEDED')
  t.same(await usage('acme'), { files: 2, bytes: 1000 })

  const deleted = await app.inject({ method: 'DELETE', url: `/files/${first.json().file.id}`, headers: auth.tenantUser('acme') })
  t.equal(deleted.statusCode, 204)
  t.equal(
    (await startUpload('acme', 600)).json().code,
    'QUOTA_EXCEEDED',
    "a deleted file's bytes stay reserved while its upload URL works (test/storage-attacks.test.ts: freed by the sweep)"
  )

  t.equal((await startUpload('globex', 1000)).statusCode, 201, 'each tenant has its own quota')
})

t.test('concurrent uploads cannot together exceed the quota', async (t) => {
  const answers = await Promise.all(Array.from({ length: 14 }, () => startUpload('initech', 100)))
  const statuses = answers.map((answer) => answer.statusCode).sort()
  t.equal(statuses.filter((status) => status === 201).length, 10, 'exactly as many as fit')
  t.equal(statuses.filter((status) => status === 409).length, 4)
  for (const answer of answers.filter((a) => a.statusCode === 409)) t.equal(answer.json().code, 'QUOTA_EXCEEDED')
  t.same(await usage('initech'), { files: 10, bytes: 1000 })
})

t.test("the quota lock is the tenant's own: another tenant's role can neither take it nor stall the check", async (t) => {
  await createTenant(ctx, 'hooli')
  await createTenant(ctx, 'pied-piper')
  const client = await admin.connect()
  t.teardown(() => client.release())
  await client.query('BEGIN')
  await client.query(`SET LOCAL ROLE "${ctx.config.TENANT_ROLE_PREFIX}hooli"`)
  // What the check once took: a global advisory key any role can take for any tenant.
  await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [0x7e4a_0003, 'pied-piper'])
  await client.query('SAVEPOINT probe')
  await t.rejects(client.query('SELECT id FROM "pied-piper".file_quota_lock FOR UPDATE'), { code: '42501' }, "another tenant's lock row is out of reach")
  await client.query('ROLLBACK TO SAVEPOINT probe')
  // Holding its own lock stalls only its own uploads.
  await client.query('SELECT id FROM hooli.file_quota_lock FOR UPDATE')
  const answer = await startUpload('pied-piper', 10)
  t.equal(answer.statusCode, 201, "the other tenant's upload is not held up")
  await client.query('ROLLBACK')
  t.same(await usage('pied-piper'), { files: 1, bytes: 10 })
  t.same(await usage('hooli'), { files: 0, bytes: 0 }, 'nothing written to the tenant holding the locks')
})
