import { mkdir } from 'node:fs/promises'
import http from 'node:http'
import type net from 'node:net'
import { createRequire } from 'node:module'

/** The parts of s3rver (a CommonJS package without types) used here. */
interface S3rverObject {
  key: string
  size: number
  lastModifiedDate: Date
  metadata: Record<string, string>
}
interface S3rverInstance {
  store: {
    getBucket(name: string): Promise<unknown>
    listObjects(bucket: string, options: { prefix?: string; startAfter?: string; maxKeys?: number }): Promise<{ objects: S3rverObject[]; isTruncated: boolean }>
    deleteObject(bucket: string, key: string): Promise<void>
  }
  callback(): http.RequestListener
  configureBuckets(): Promise<void>
  logger: { close(): void }
}
type S3rverConstructor = new (options: { silent: boolean; directory: string; configureBuckets: { name: string; configs: string[] }[] }) => S3rverInstance

export interface EmbeddedS3Options {
  /** Objects live here, kept across restarts. */
  dataDir: string
  bucket?: string
  region?: string
  /** 0 (the default) lets the kernel choose. */
  port?: number
  /** The secret is not checked by s3rver; a test can check signatures itself in `intercept`. */
  secretAccessKey?: string
  /**
   * Sees every request first; answers it and returns true to keep it from the store. A promise
   * holds the request until it settles (a test's slow store), then the same applies.
   */
  intercept?: (request: http.IncomingMessage, response: http.ServerResponse) => boolean | Promise<boolean>
}

export interface EmbeddedS3 {
  endpoint: string
  port: number
  bucket: string
  region: string
  credentials: { accessKeyId: string; secretAccessKey: string }
  /** False when the bucket was already there from an earlier run. */
  createdBucket: boolean
  /** The settings that point the service at this store. */
  config: { S3_BUCKET: string; S3_REGION: string; S3_ENDPOINT: string; S3_FORCE_PATH_STYLE: true }
  stop(): Promise<void>
}

/** Browsers PUT and GET the presigned URLs from any page served in development. */
const DEVELOPMENT_CORS = `<CORSConfiguration>
  <CORSRule>
    <AllowedOrigin>*</AllowedOrigin>
    <AllowedMethod>PUT</AllowedMethod>
    <AllowedMethod>GET</AllowedMethod>
    <AllowedMethod>HEAD</AllowedMethod>
    <AllowedHeader>*</AllowedHeader>
    <ExposeHeader>ETag</ExposeHeader>
    <MaxAgeSeconds>3000</MaxAgeSeconds>
  </CORSRule>
</CORSConfiguration>`

const escapeXml = (text: string) => text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!)

/**
 * ListObjectsV2, answered here from s3rver's store. s3rver encrypts its continuation tokens with
 * DES, which the OpenSSL 3 of Node 17 and later no longer offers, so every truncated listing of
 * its own fails with a 500. Path-style requests without a delimiter are all the service makes.
 */
async function listObjectsV2(s3rver: S3rverInstance, bucket: string, query: URLSearchParams, response: http.ServerResponse) {
  const xml = (status: number, body: string) => {
    response.writeHead(status, { 'content-type': 'application/xml' })
    response.end(`<?xml version="1.0" encoding="UTF-8"?>\n${body}`)
  }
  if (!(await s3rver.store.getBucket(bucket))) {
    return xml(
      404,
      `<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>${escapeXml(bucket)}</BucketName></Error>`
    )
  }
  const prefix = query.get('prefix') ?? ''
  const maxKeys = Math.min(Math.max(Number(query.get('max-keys') ?? 1000) || 0, 0), 1000)
  const token = query.get('continuation-token')
  const startAfter = token ? Buffer.from(token, 'base64url').toString('utf8') : (query.get('start-after') ?? '')
  const result = maxKeys === 0 ? { objects: [], isTruncated: false } : await s3rver.store.listObjects(bucket, { prefix, startAfter, maxKeys })
  const last = result.objects.at(-1)
  const contents = result.objects
    .map(
      (object) =>
        `<Contents><Key>${escapeXml(object.key)}</Key><LastModified>${object.lastModifiedDate.toISOString()}</LastModified>` +
        `<ETag>${escapeXml(object.metadata.etag ?? '')}</ETag><Size>${object.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`
    )
    .join('')
  xml(
    200,
    `<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${escapeXml(bucket)}</Name>` +
      `<Prefix>${escapeXml(prefix)}</Prefix><KeyCount>${result.objects.length}</KeyCount><MaxKeys>${maxKeys}</MaxKeys>` +
      `<IsTruncated>${result.isTruncated}</IsTruncated>` +
      (token ? `<ContinuationToken>${escapeXml(token)}</ContinuationToken>` : '') +
      (result.isTruncated && last ? `<NextContinuationToken>${Buffer.from(last.key).toString('base64url')}</NextContinuationToken>` : '') +
      `${contents}</ListBucketResult>`
  )
}

/**
 * A local S3-compatible store for development and tests: s3rver (objects as files under
 * `dataDir`) on loopback, with the bucket created and CORS open for browser uploads. It never runs
 * in production. s3rver accepts any SigV4 signature from its access key `S3RVER` without checking
 * it, so this is not a place to prove that signing works: the tests do that themselves.
 */
export async function startEmbeddedS3(options: EmbeddedS3Options): Promise<EmbeddedS3> {
  if (process.env.NODE_ENV === 'production') throw new Error('The embedded S3 server does not run with NODE_ENV=production')
  const bucket = options.bucket ?? 'tenant-service'
  const region = options.region ?? 'us-east-1'
  await mkdir(options.dataDir, { recursive: true })

  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor
  const s3rver = new S3rver({
    silent: true,
    directory: options.dataDir,
    configureBuckets: [{ name: bucket, configs: [DEVELOPMENT_CORS] }]
  })
  // After removing an object's files, s3rver removes the folders left empty, checking then removing
  // each one. The keys of one DeleteObjects are removed in parallel, so two of them can race over a
  // shared folder and the loser fails the whole request with a 500. The object is gone by then.
  const deleteObject = s3rver.store.deleteObject.bind(s3rver.store)
  s3rver.store.deleteObject = (bucketName, key) =>
    deleteObject(bucketName, key).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT' && error.code !== 'ENOTEMPTY') throw error
    })

  const createdBucket = !(await s3rver.store.getBucket(bucket))
  await s3rver.configureBuckets()
  const store = s3rver.callback()

  const serve = (request: http.IncomingMessage, response: http.ServerResponse) => {
    const url = new URL(request.url ?? '/', 'http://localhost')
    const bucketOnly = /^\/([^/]+)\/?$/.exec(url.pathname)
    if (request.method === 'GET' && bucketOnly && url.searchParams.get('list-type') === '2' && !url.searchParams.has('delimiter')) {
      listObjectsV2(s3rver, bucketOnly[1], url.searchParams, response).catch((error: Error) => {
        if (!response.headersSent) response.writeHead(500, { 'content-type': 'application/xml' })
        response.end(`<Error><Code>InternalError</Code><Message>${escapeXml(error.message)}</Message></Error>`)
      })
      return
    }
    store(request, response)
  }
  const server = http.createServer((request, response) => {
    const intercepted = options.intercept?.(request, response)
    if (intercepted instanceof Promise) {
      intercepted.then(
        (answered) => answered || serve(request, response),
        () => response.destroy()
      )
      return
    }
    if (!intercepted) serve(request, response)
  })
  const sockets = new Set<net.Socket>()
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve())
  })
  const { port } = server.address() as net.AddressInfo
  const endpoint = `http://127.0.0.1:${port}`

  return {
    endpoint,
    port,
    bucket,
    region,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: options.secretAccessKey ?? 'S3RVER' },
    createdBucket,
    config: { S3_BUCKET: bucket, S3_REGION: region, S3_ENDPOINT: endpoint, S3_FORCE_PATH_STYLE: true },
    async stop() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      // Clients keep connections alive; they must not hold the shutdown.
      for (const socket of sockets) socket.destroy()
      await closed
      s3rver.logger.close()
    }
  }
}
