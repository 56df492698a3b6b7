import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import type http from 'node:http'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3'
import { startEmbeddedS3, type EmbeddedS3 } from '../../lib/embedded/s3.ts'
import { verifyRequest, type Verification } from './sigv4.ts'

export interface SeenRequest {
  method: string
  path: string
  query: URLSearchParams
  /** Set once the answer has been sent. */
  status?: number
}

export interface InjectedFailure {
  /** How many requests it has failed so far. */
  readonly failed: number
  clear(): void
}

export interface TestS3 extends EmbeddedS3 {
  /** S3_* variables for the service under test. */
  env: Record<string, string>
  /** The test's own client (same credentials as the service), for seeding and assertions. */
  client: S3Client
  /** Every request that reached the store, in order, signed or not. */
  requests: SeenRequest[]
  /** Requests refused because their signature did not verify, with the reason. */
  rejected: (SeenRequest & { verification: Verification })[]
  keys(prefix?: string): Promise<string[]>
  get(key: string): Promise<Buffer | null>
  put(key: string, body: string | Buffer, contentType?: string): Promise<void>
  /**
   * Answers matching requests with an S3 error (503 SlowDown unless told otherwise) instead of
   * serving them; the first `after` matching requests still go through.
   */
  failWhen(match: (request: SeenRequest) => boolean, options?: { after?: number; status?: number; code?: string }): InjectedFailure
  /** Holds matching requests for `ms` before serving them (a slow store); `failed` counts the requests held, `clear()` stops holding later ones. */
  delayWhen(match: (request: SeenRequest) => boolean, ms: number): InjectedFailure
}

const accessKeyId = 'S3RVER'
let secretAccessKey: string | undefined

/**
 * The service takes its credentials from the AWS default provider chain, as in production, so the
 * test process's environment carries them; a developer's own AWS settings must not leak in.
 */
function useTestCredentials(): string {
  secretAccessKey ??= randomBytes(24).toString('base64url')
  process.env.AWS_ACCESS_KEY_ID = accessKeyId
  process.env.AWS_SECRET_ACCESS_KEY = secretAccessKey
  delete process.env.AWS_SESSION_TOKEN
  delete process.env.AWS_PROFILE
  return secretAccessKey
}

function s3Error(response: http.ServerResponse, status: number, code: string, message: string) {
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`
  response.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) })
  response.end(body)
}

/**
 * A local S3-compatible store for one test file, in a temporary directory: the embedded s3rver
 * behind a front that verifies every SigV4 signature (header or presigned) with the independent
 * implementation in sigv4.ts, as S3 does — s3rver itself does not — and can inject failures.
 */
export async function startTestS3(): Promise<TestS3> {
  const secret = useTestCredentials()
  const dataDir = await mkdtemp(path.join(tmpdir(), 'tenant-service-test-s3-'))
  const requests: SeenRequest[] = []
  const rejected: TestS3['rejected'] = []
  const delays: { match: (request: SeenRequest) => boolean; ms: number; delayed: number; active: boolean }[] = []
  const failures: { match: (request: SeenRequest) => boolean; after: number; status: number; code: string; failed: number; active: boolean }[] = []

  const intercept = (request: http.IncomingMessage, response: http.ServerResponse): boolean | Promise<boolean> => {
    const url = new URL(request.url ?? '/', 'http://localhost')
    const seen: SeenRequest = { method: request.method ?? 'GET', path: decodeURIComponent(url.pathname), query: url.searchParams }
    requests.push(seen)
    response.on('finish', () => (seen.status = response.statusCode))
    const delay = delays.find((entry) => entry.active && entry.match(seen))
    if (delay) {
      delay.delayed++
      return new Promise((resolve) => setTimeout(resolve, delay.ms)).then(() => check(request, response, seen))
    }
    return check(request, response, seen)
  }

  const check = (request: http.IncomingMessage, response: http.ServerResponse, seen: SeenRequest): boolean => {
    const refuse = (status: number, code: string, message: string) => {
      // The body is not wanted; reading it lets the client finish sending and see the answer.
      request.resume()
      s3Error(response, status, code, message)
      return true
    }
    for (const failure of failures) {
      if (!failure.active || !failure.match(seen)) continue
      if (failure.after > 0) {
        failure.after--
        continue
      }
      failure.failed++
      return refuse(failure.status, failure.code, 'Injected failure')
    }
    // CORS preflights carry no credentials, on S3 too.
    if (request.method === 'OPTIONS') return false
    const verification = verifyRequest({ method: seen.method, url: request.url ?? '/', headers: request.headers }, { accessKeyId, secretAccessKey: secret })
    if (!verification.ok) {
      rejected.push({ ...seen, verification })
      return refuse(403, verification.code, verification.reason)
    }
    return false
  }

  const store = await startEmbeddedS3({ dataDir, bucket: 'test-bucket', secretAccessKey: secret, intercept })
  const client = new S3Client({
    region: store.region,
    endpoint: store.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId, secretAccessKey: secret },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED'
  })

  return {
    ...store,
    env: {
      S3_BUCKET: store.bucket,
      S3_REGION: store.region,
      S3_ENDPOINT: store.endpoint,
      S3_FORCE_PATH_STYLE: 'true'
    },
    client,
    requests,
    rejected,
    async keys(prefix = '') {
      const keys: string[] = []
      let token: string | undefined
      do {
        const page = await client.send(new ListObjectsV2Command({ Bucket: store.bucket, Prefix: prefix, ContinuationToken: token }))
        for (const object of page.Contents ?? []) if (object.Key) keys.push(object.Key)
        token = page.IsTruncated ? page.NextContinuationToken : undefined
      } while (token)
      return keys.sort()
    },
    async get(key) {
      try {
        const object = await client.send(new GetObjectCommand({ Bucket: store.bucket, Key: key }))
        return Buffer.from(await object.Body!.transformToByteArray())
      } catch (error) {
        if ((error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return null
        throw error
      }
    },
    async put(key, body, contentType = 'application/octet-stream') {
      await client.send(new PutObjectCommand({ Bucket: store.bucket, Key: key, Body: body, ContentType: contentType }))
    },
    delayWhen(match, ms) {
      const delay = { match, ms, delayed: 0, active: true }
      delays.push(delay)
      return {
        get failed() {
          return delay.delayed
        },
        clear() {
          delay.active = false
        }
      }
    },
    failWhen(match, options = {}) {
      const failure = { match, after: options.after ?? 0, status: options.status ?? 503, code: options.code ?? 'SlowDown', failed: 0, active: true }
      failures.push(failure)
      return {
        get failed() {
          return failure.failed
        },
        clear() {
          failure.active = false
        }
      }
    },
    async stop() {
      client.destroy()
      await store.stop()
      await rm(dataDir, { recursive: true, force: true })
    }
  }
}

/** Names a client might send to climb out of its prefix, hide an extension or break a header. */
export const HOSTILE_NAMES: Record<string, string> = {
  'parent segments': '../../other-tenant/secret.txt',
  'absolute path': '/etc/passwd',
  'windows path': '..\\..\\windows\\system32\\config',
  'encoded slashes': '..%2F..%2Fother%2Fx.txt',
  'double-encoded slashes': '..%252F..%252Fx.txt',
  'encoded backslash': '..%5c..%5cx.txt',
  'only dots': '....',
  'single dot': '.',
  'two dots': '..',
  'control characters': 'a\u0000b\u0007c\r\nd\u007f\u0085.txt',
  'NUL only': '\u0000\u0000',
  'RTL override': 'invoice\u202egpj.exe',
  'bidi isolates and zero width': 'a\u2066b\u2069\u200b\u200d\ufeff.pdf',
  'fullwidth dots and slash': '\uff0e\uff0e\uff0fsecret\uff0etxt',
  'fullwidth backslash': '\uff3c\uff0e\uff0e\uff3cx',
  'division and fraction slashes': '..\u2215..\u2044x.txt',
  'tenant prefix lookalike': 'tenants/other/00000000-0000-0000-0000-000000000000/x',
  'very long': `${'a'.repeat(1000)}.txt`,
  'very long multibyte': `${'é'.repeat(400)}${'😀'.repeat(100)}.pdf`,
  'combining marks flood': `x${'\u0301'.repeat(600)}.txt`,
  'whitespace only': ' \t \u3000 ',
  'emoji and quotes': 'rapport "final" 😀;name=x.pdf',
  'lone surrogate': 'a\ud800b.txt'
}
