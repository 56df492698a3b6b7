import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import t from 'tap'
import {
  cleanFilename,
  contentDisposition,
  createStorage,
  fileIdOfKey,
  fileKey,
  isTenantKey,
  keySafeName,
  stagingKey,
  storageError,
  tenantPrefix
} from '../lib/files/index.ts'
import { startEmbeddedS3 } from '../lib/embedded/s3.ts'
import { ApiError } from '../schemas/errors.ts'
import { ConfigError, loadConfig } from '../schemas/env.ts'
import { HOSTILE_NAMES, startTestS3 } from './helpers/s3.ts'
import { canonicalRequest, verifyAuthorizationHeader, verifyPresigned } from './helpers/sigv4.ts'

const FILE_ID = '3f1c2b9a-7d4e-4c1a-9b2f-0e6d5c4b3a21'

t.test('file keys stay under the tenant prefix whatever the name', async (t) => {
  for (const [label, name] of Object.entries(HOSTILE_NAMES)) {
    const key = fileKey('acme', FILE_ID, cleanFilename(name))
    const segment = key.slice(`tenants/acme/${FILE_ID}/`.length)
    t.ok(key.startsWith(`tenants/acme/${FILE_ID}/`), `${label}: prefix`)
    t.notOk(
      key.split('/').some((part) => part === '..' || part === '.'),
      `${label}: no dot segment`
    )
    t.notOk(key.includes('\\') || key.includes('%'), `${label}: no backslash or percent`)
    t.notOk(segment.includes('/'), `${label}: one segment`)
    t.match(segment, /^[\p{L}\p{M}\p{N}][\p{L}\p{M}\p{N}._-]*$/u, `${label}: safe characters only (${segment.slice(0, 40)})`)
    t.notOk(segment.includes('..'), `${label}: no dot run`)
    t.ok(Buffer.byteLength(segment) <= 200, `${label}: at most 200 bytes`)
    t.ok(isTenantKey('acme', key), `${label}: recognised as the tenant's key`)
    t.notOk(isTenantKey('other', key), `${label}: not another tenant's key`)
    t.not(key, stagingKey('acme', FILE_ID), `${label}: never the staging key`)
    t.equal(fileIdOfKey('acme', key), FILE_ID, `${label}: the file id is read back`)
  }
  t.equal(stagingKey('acme', FILE_ID), `tenants/acme/${FILE_ID}/.upload`, 'the upload URL writes the staging key')
  t.ok(isTenantKey('acme', stagingKey('acme', FILE_ID)))
  t.throws(() => stagingKey('acme', '../x'), /Not a file id/)
  t.equal(fileIdOfKey('acme', `tenants/acme/0000/orphan.bin`), null, 'a folder that is no file id names no file')
  t.equal(fileIdOfKey('acme', `tenants/acme-2/${FILE_ID}/x`), null, "another tenant's key names no file of this one")
  t.equal(keySafeName('report 2024.PDF'), 'report_2024.PDF', 'ordinary names stay readable')
  t.equal(keySafeName('....'), 'file', 'empty after cleaning falls back')
  t.equal(keySafeName(`${'a'.repeat(300)}.tar`).slice(-4), '.tar', 'a cut name keeps its extension')
})

t.test('display names lose invisible and bidi characters, never their meaning', async (t) => {
  t.equal(cleanFilename('invoice\u202egpj.exe'), 'invoicegpj.exe')
  t.equal(cleanFilename('a\u0000b\r\nc.txt'), 'abc.txt')
  t.equal(cleanFilename('\uff0e\uff0e\uff0fsecret'), '.._secret', 'fullwidth forms are NFKC-normalised, separators replaced')
  t.equal(cleanFilename('..'), 'file')
  t.equal(cleanFilename('\u0000'), 'file')
  t.equal(cleanFilename('  résumé  final.pdf '), 'résumé final.pdf')
  t.ok(Buffer.byteLength(cleanFilename(`${'😀'.repeat(200)}.pdf`)) <= 255)
  t.equal(cleanFilename(`${'😀'.repeat(200)}.pdf`).slice(-4), '.pdf')
  t.throws(() => tenantPrefix('../x'), 'a prefix is only built for a valid tenant id')
  t.throws(() => fileKey('acme', '../x', 'a'), 'a key is only built for a uuid')
})

t.test('Content-Disposition is ASCII, an attachment, and carries the exact name', async (t) => {
  for (const name of ['rapport "final" 😀;name=x.pdf', 'résumé.pdf', "it's (1)*.txt", 'a\\b%20c.txt', '日本語.txt']) {
    const value = contentDisposition(name)
    t.match(value, /^attachment; filename="[\x20-\x7e]*"; filename\*=UTF-8''[A-Za-z0-9%!#$&+\-.^_`|~]+$/, `${name}: shape`)
    t.notOk(/[\r\n]/.test(value), 'no line breaks')
    const quoted = /filename="([^"]*)"/.exec(value)![1]
    t.notOk(/["\\]/.test(quoted), 'no quote or backslash inside the quoted name')
    const extended = /filename\*=UTF-8''(.*)$/.exec(value)![1]
    t.equal(decodeURIComponent(extended), name, `${name}: filename* decodes to the name`)
  }
})

t.test('S3 failures map to 503 when transient and 502 otherwise', async (t) => {
  const unreachable = storageError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), 'x')
  t.equal(unreachable.statusCode, 503)
  t.equal(unreachable.code, 'STORAGE_UNAVAILABLE')
  t.equal(unreachable.headers['retry-after'], '1')
  const throttled = storageError(Object.assign(new Error('slow'), { name: 'SlowDown', $metadata: { httpStatusCode: 503 } }), 'x')
  t.equal(throttled.code, 'STORAGE_UNAVAILABLE')
  const denied = storageError(Object.assign(new Error('denied'), { name: 'AccessDenied', $metadata: { httpStatusCode: 403 } }), 'x')
  t.equal(denied.statusCode, 502)
  t.equal(denied.code, 'STORAGE_ERROR')
  const timedOut = storageError(Object.assign(new Error('connect ETIMEDOUT'), { code: 'ETIMEDOUT' }), 'x')
  t.match(timedOut, { statusCode: 503, code: 'STORAGE_UNAVAILABLE', message: 'did not answer in time (x)' }, 'a timeout is named as one')
  const kept = new ApiError('FILE_NOT_FOUND', 'y')
  t.equal(storageError(kept, 'x'), kept, 'client errors pass through')
})

t.test(
  'an S3 that accepts connections and never answers: a call fails with 503 STORAGE_UNAVAILABLE, naming the timeout, instead of hanging',
  { timeout: 8000 },
  async (t) => {
    // Reads the requests and never writes a byte back.
    const sockets = new Set<net.Socket>()
    const server = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => undefined)
      socket.resume()
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    t.teardown(() => {
      for (const socket of sockets) socket.destroy()
      server.close()
    })
    // Credentials, so the calls reach the network (without any the SDK fails before connecting).
    for (const [name, value] of [
      ['AWS_ACCESS_KEY_ID', 'silent'],
      ['AWS_SECRET_ACCESS_KEY', 'silent']
    ]) {
      const before = process.env[name]
      process.env[name] ??= value
      t.teardown(() => {
        if (before === undefined) delete process.env[name]
      })
    }
    const storage = createStorage({
      bucket: 'silent',
      region: 'us-east-1',
      endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
      forcePathStyle: true,
      presignExpiresSeconds: 60,
      timeouts: { connectionMs: 500, requestMs: 200 }
    })
    t.teardown(() => storage.close())

    const attempts = async (call: () => Promise<unknown>) => {
      const before = sockets.size
      const failure = await call().then(
        () => null,
        (error: unknown) => error
      )
      return { failure, attempts: sockets.size - before }
    }
    for (const [action, call] of [
      ['look up an object', () => storage.headObject('tenants/acme/x')],
      ['delete an object', () => storage.deleteObject('tenants/acme/x')]
    ] as const) {
      const { failure, attempts: made } = await attempts(call)
      t.type(failure, ApiError, action)
      t.match(failure, { statusCode: 503, code: 'STORAGE_UNAVAILABLE', headers: { 'retry-after': '1' }, message: `did not answer in time (${action})` }, action)
      t.match((failure as ApiError).cause, { name: 'TimeoutError', message: /200 ms requestTimeout/ }, `${action}: the SDK's timeout is the cause, for the log`)
      t.equal(made, 3, `${action}: three attempts reached the store`)
    }
    // Readiness: the bucket check fails too, saying why.
    const { failure } = await attempts(() => storage.checkBucket())
    t.match(failure, { message: /bucket "silent" is not reachable: TimeoutError/ })
  }
)

t.test('configuration', async (t) => {
  const base = { NODE_ENV: 'test', DATABASE_URL: 'postgres://u@localhost/db' }
  const config = loadConfig(base)
  t.equal(config.S3_REGION, 'us-east-1')
  t.equal(config.MAX_UPLOAD_BYTES, 100 * 1024 * 1024)
  t.equal(config.PRESIGN_EXPIRES_SECONDS, 900)
  t.equal(config.TENANT_STORAGE_QUOTA_BYTES, 10 * 1024 ** 3)
  t.equal(config.S3_FORCE_PATH_STYLE, false)
  t.equal(loadConfig({ ...base, S3_FORCE_PATH_STYLE: 'true', TENANT_STORAGE_QUOTA_BYTES: '0' }).S3_FORCE_PATH_STYLE, true)

  const problems = (env: Record<string, string>) => {
    try {
      loadConfig(env)
    } catch (error) {
      if (error instanceof ConfigError) return error.problems
      throw error
    }
    return []
  }
  t.match(problems({ ...base, PRESIGN_EXPIRES_SECONDS: '3601' }), [/^PRESIGN_EXPIRES_SECONDS: /], 'longer than an hour is refused')
  t.match(problems({ ...base, PRESIGN_EXPIRES_SECONDS: '0' }), [/^PRESIGN_EXPIRES_SECONDS: /])
  t.match(problems({ ...base, MAX_UPLOAD_BYTES: String(6 * 1024 ** 3) }), [/^MAX_UPLOAD_BYTES: /], 'more than one PUT can take')
  t.match(problems({ ...base, S3_BUCKET: 'Bad_Bucket' }), [/^S3_BUCKET: /])
  t.match(problems({ ...base, S3_ENDPOINT: 'ftp://x' }), [/^S3_ENDPOINT: /])
  const production = problems({ NODE_ENV: 'production', DATABASE_URL: 'postgres://u@localhost/db' })
  t.ok(
    production.some((problem) => problem === 'S3_BUCKET: required when NODE_ENV=production'),
    'production names the missing bucket'
  )
})

t.test('SigV4 verifier agrees with the examples of the S3 documentation', async (t) => {
  const credentials = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }
  const now = new Date('2013-05-24T00:00:10Z')
  const presigned =
    'https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256' +
    '&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z' +
    '&X-Amz-Expires=86400&X-Amz-SignedHeaders=host' +
    '&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404'
  t.match(verifyPresigned({ method: 'GET', url: presigned, headers: {} }, credentials, now), { ok: true, expiresSeconds: 86400 })
  t.match(verifyPresigned({ method: 'GET', url: presigned.replace('test.txt', 'test.txu'), headers: {} }, credentials, now), {
    ok: false,
    code: 'SignatureDoesNotMatch'
  })
  t.match(verifyPresigned({ method: 'GET', url: presigned, headers: {} }, credentials, new Date('2013-05-25T00:00:01Z')), {
    ok: false,
    reason: 'Request has expired'
  })

  const emptyHash = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
  const headers = {
    host: 'examplebucket.s3.amazonaws.com',
    range: 'bytes=0-9',
    'x-amz-content-sha256': emptyHash,
    'x-amz-date': '20130524T000000Z',
    authorization:
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,' +
      'SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,' +
      'Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41'
  }
  t.match(verifyAuthorizationHeader({ method: 'GET', url: '/test.txt', headers }, credentials, now), { ok: true, region: 'us-east-1' })
  t.match(verifyAuthorizationHeader({ method: 'GET', url: '/test.txt', headers: { ...headers, range: 'bytes=0-99' } }, credentials, now), {
    ok: false
  })
  t.equal(
    canonicalRequest({
      method: 'get',
      path: '/a b/ü',
      query: [
        ['b', '2'],
        ['a', 'x/y']
      ],
      headers: { Host: 'h' },
      signedHeaders: ['host'],
      payloadHash: 'P'
    }),
    'GET\n/a%20b/%C3%BC\na=x%2Fy&b=2\nhost:h\n\nhost\nP'
  )
})

t.test('the embedded store: bucket created once, objects kept, pages listed, CORS open', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'tenant-service-embedded-s3-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))

  const first = await startEmbeddedS3({ dataDir, bucket: 'dev-bucket' })
  t.equal(first.createdBucket, true)
  t.same(first.config, { S3_BUCKET: 'dev-bucket', S3_REGION: 'us-east-1', S3_ENDPOINT: first.endpoint, S3_FORCE_PATH_STYLE: true })
  const client = new S3Client({
    region: first.region,
    endpoint: first.endpoint,
    forcePathStyle: true,
    credentials: first.credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED'
  })
  for (let i = 0; i < 7; i++) {
    await client.send(new PutObjectCommand({ Bucket: 'dev-bucket', Key: `tenants/a/${i}/f`, Body: `object ${i}` }))
  }
  await client.send(new PutObjectCommand({ Bucket: 'dev-bucket', Key: 'tenants/b/0/f', Body: 'other' }))
  const preflight = await fetch(`${first.endpoint}/dev-bucket/tenants/a/0/f`, {
    method: 'OPTIONS',
    headers: { origin: 'http://localhost:5173', 'access-control-request-method': 'PUT', 'access-control-request-headers': 'content-type' }
  })
  t.equal(preflight.status, 200, 'browser preflight for a PUT is allowed')
  t.ok(preflight.headers.get('access-control-allow-origin'))
  client.destroy()
  await first.stop()

  const second = await startEmbeddedS3({ dataDir, bucket: 'dev-bucket' })
  t.teardown(() => second.stop())
  t.equal(second.createdBucket, false, 'the bucket is found again after a restart')
  const again = new S3Client({ region: second.region, endpoint: second.endpoint, forcePathStyle: true, credentials: second.credentials })
  t.teardown(() => again.destroy())
  const keys: string[] = []
  let token: string | undefined
  let pages = 0
  do {
    const page = await again.send(new ListObjectsV2Command({ Bucket: 'dev-bucket', Prefix: 'tenants/a/', MaxKeys: 3, ContinuationToken: token }))
    pages++
    keys.push(...(page.Contents ?? []).map((object) => object.Key!))
    token = page.IsTruncated ? page.NextContinuationToken : undefined
  } while (token)
  t.equal(pages, 3, 'a truncated listing continues with its token')
  t.same(
    keys,
    [0, 1, 2, 3, 4, 5, 6].map((i) => `tenants/a/${i}/f`),
    'every object once, in order, only under the prefix'
  )
})

t.test('deletePrefix pages through the prefix and removes only it', async (t) => {
  const s3 = await startTestS3()
  t.teardown(() => s3.stop())
  const storage = createStorage({ bucket: s3.bucket, region: s3.region, endpoint: s3.endpoint, forcePathStyle: true, presignExpiresSeconds: 60 })
  t.teardown(() => storage.close())
  for (let i = 0; i < 11; i++) await s3.put(`tenants/acme/${String(i).padStart(2, '0')}/f`, 'x')
  await s3.put('tenants/acme-2/00/f', 'neighbour with a longer id')
  await s3.put('tenants/acm/00/f', 'neighbour with a shorter id')

  const before = s3.requests.length
  t.equal(await storage.deletePrefix('tenants/acme/', { pageSize: 4 }), 11)
  const made = s3.requests.slice(before)
  t.equal(made.filter((r) => r.method === 'GET' && r.query.get('list-type') === '2').length, 3, 'three pages of four')
  t.equal(made.filter((r) => r.method === 'POST' && r.query.has('delete')).length, 3, 'one DeleteObjects per page')
  t.same(await s3.keys('tenants/acme/'), [])
  t.same(await s3.keys('tenants/'), ['tenants/acm/00/f', 'tenants/acme-2/00/f'], 'neighbouring prefixes untouched')
  t.equal(s3.rejected.length, 0, 'every request of the service was correctly signed')
  await t.rejects(storage.deletePrefix('tenants'), /not a folder/, 'a prefix must end with a slash')
  await t.rejects(storage.deletePrefix(''), /not a folder/)
})
