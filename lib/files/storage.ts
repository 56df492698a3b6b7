import {
  CopyObjectCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client
} from '@aws-sdk/client-s3'
import { getSignedUrl } from '@aws-sdk/s3-request-presigner'
import { ApiError } from '../../schemas/errors.ts'
import { awsErrorClassifier } from '../aws-errors.ts'
import type { UploadInstructions } from '../../schemas/file.ts'

export interface StorageOptions {
  bucket: string
  region: string
  /** An S3-compatible endpoint; AWS's own when absent. */
  endpoint?: string
  forcePathStyle?: boolean
  presignExpiresSeconds: number
  /**
   * How long one attempt may take to connect, and then to be answered, before it is abandoned
   * (retried, 3 attempts in all, then 503 `STORAGE_UNAVAILABLE`). Defaults: 3000 and 10_000 ms.
   */
  timeouts?: { connectionMs?: number; requestMs?: number }
}

/**
 * What an S3 failure means to a client: no answer, a 5xx, throttling or missing credentials is 503
 * `STORAGE_UNAVAILABLE` (worth retrying); any other refusal (access denied, no such bucket) is 502
 * `STORAGE_ERROR`.
 */
export const storageError = awsErrorClassifier({
  unavailable: 'STORAGE_UNAVAILABLE',
  refused: 'STORAGE_ERROR',
  service: 'Object storage',
  transient: ['RequestTimeout', 'RequestTimeTooSkewed', 'SlowDown', 'ServiceUnavailable', 'InternalError']
})

const isNotFound = (error: unknown) => {
  const failure = error as { name?: string; $metadata?: { httpStatusCode?: number } }
  return failure?.name === 'NotFound' || failure?.name === 'NoSuchKey' || failure?.$metadata?.httpStatusCode === 404
}

/**
 * The S3 operations the service needs, on one bucket. Credentials come from the AWS default
 * provider chain (environment, shared config, web identity, container or instance role); none
 * are passed here.
 */
export function createStorage(options: StorageOptions) {
  const { bucket, presignExpiresSeconds } = options
  const client = new S3Client({
    region: options.region,
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    forcePathStyle: options.forcePathStyle ?? false,
    // By default the SDK adds a CRC32 of the (empty) body to presigned PUTs, which the real upload
    // then fails; checksums are sent only where S3 requires one (DeleteObjects).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 3,
    // An S3 that does not answer must become a 503, not hold the call (and its request) forever:
    // without throwOnRequestTimeout the SDK only warns past requestTimeout and keeps waiting.
    requestHandler: {
      connectionTimeout: options.timeouts?.connectionMs ?? 3000,
      requestTimeout: options.timeouts?.requestMs ?? 10_000,
      throwOnRequestTimeout: true
    }
  })

  async function send<T>(action: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation()
    } catch (error) {
      throw storageError(error, action)
    }
  }

  /** Deletes `keys` (any number), up to 1000 per DeleteObjects; gone already counts as deleted. */
  async function deleteKeys(keys: readonly string[]): Promise<void> {
    for (let start = 0; start < keys.length; start += 1000) {
      const batch = keys.slice(start, start + 1000)
      const result = await send('delete objects', () =>
        client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true } }))
      )
      if (result.Errors && result.Errors.length > 0) {
        const first = result.Errors[0]
        throw Object.assign(new ApiError('STORAGE_ERROR', `Object storage refused to delete ${result.Errors.length} objects`), {
          cause: new Error(`${first.Code}: ${first.Message} (${first.Key})`)
        })
      }
    }
  }

  /** The signature covers X-Amz-Date, which has second precision: the expiry is exact only from a whole second. */
  const signingDate = () => new Date(Math.floor(Date.now() / 1000) * 1000)
  const expiry = (signedAt: Date) => new Date(signedAt.getTime() + presignExpiresSeconds * 1000).toISOString()

  return {
    bucket,
    presignExpiresSeconds,

    /**
     * When an upload URL signed now would be signed, and when it would stop working: the file's
     * row records the expiry before the URL is signed (presignUpload with the same `signedAt`).
     */
    uploadWindow(): { signedAt: Date; expiresAt: Date } {
      const signedAt = signingDate()
      return { signedAt, expiresAt: new Date(signedAt.getTime() + presignExpiresSeconds * 1000) }
    },

    /**
     * A presigned PUT that can only store `size` bytes of `contentType` at `key`: both headers are
     * in X-Amz-SignedHeaders, so S3 rejects any other length or type with SignatureDoesNotMatch.
     */
    async presignUpload(key: string, object: { contentType: string; size: number }, signedAt: Date = signingDate()): Promise<UploadInstructions> {
      const url = await send('sign an upload', () =>
        getSignedUrl(client, new PutObjectCommand({ Bucket: bucket, Key: key, ContentType: object.contentType, ContentLength: object.size }), {
          expiresIn: presignExpiresSeconds,
          signingDate: signedAt,
          signableHeaders: new Set(['content-type', 'content-length'])
        })
      )
      return {
        method: 'PUT',
        url,
        headers: { 'content-type': object.contentType, 'content-length': String(object.size) },
        expiresAt: expiry(signedAt)
      }
    },

    /** A presigned GET whose response carries `contentDisposition`. */
    async presignDownload(key: string, contentDisposition: string): Promise<{ url: string; expiresAt: string }> {
      const signedAt = signingDate()
      const url = await send('sign a download', () =>
        getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key, ResponseContentDisposition: contentDisposition }), {
          expiresIn: presignExpiresSeconds,
          signingDate: signedAt
        })
      )
      return { url, expiresAt: expiry(signedAt) }
    },

    /** Size and type of an object, or null when there is none. */
    async headObject(key: string): Promise<{ size: number; contentType: string | undefined } | null> {
      try {
        const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))
        return { size: head.ContentLength ?? 0, contentType: head.ContentType }
      } catch (error) {
        if (isNotFound(error)) return null
        throw storageError(error, 'look up an object')
      }
    },

    /**
     * Copies `source` to `target` in the bucket (CopyObject: the bytes never pass through the
     * service), with `contentType`. False when `source` is not there (any more).
     */
    async copyObject(source: string, target: string, contentType: string): Promise<boolean> {
      try {
        await client.send(
          new CopyObjectCommand({
            Bucket: bucket,
            Key: target,
            CopySource: `${bucket}/${encodeURIComponent(source).replace(/%2F/g, '/')}`,
            ContentType: contentType,
            MetadataDirective: 'REPLACE'
          })
        )
        return true
      } catch (error) {
        if (isNotFound(error)) return false
        throw storageError(error, 'copy an object')
      }
    },

    /** The keys under `prefix`, a page of ListObjectsV2 (up to 1000) at a time. */
    async *listKeyPages(prefix: string): AsyncGenerator<string[]> {
      if (prefix === '' || !prefix.endsWith('/')) throw new Error(`Refusing to list a prefix that is not a folder: "${prefix}"`)
      let token: string | undefined
      do {
        const page = await send('list objects', () => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token })))
        yield (page.Contents ?? []).map((object) => object.Key).filter((key): key is string => !!key && key.startsWith(prefix))
        token = page.IsTruncated ? page.NextContinuationToken : undefined
      } while (token)
    },

    deleteKeys,

    /** Succeeds when the object is already gone, as S3 does. */
    async deleteObject(key: string): Promise<void> {
      await send('delete an object', () => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })))
    },

    /**
     * Deletes every object under `prefix`: pages of ListObjectsV2 (`pageSize` keys, at most 1000,
     * followed by continuation token), each removed by one DeleteObjects. Stops at the first
     * failure, with what was deleted so far gone; running it again finishes the job.
     */
    async deletePrefix(prefix: string, options: { pageSize?: number } = {}): Promise<number> {
      if (prefix === '' || !prefix.endsWith('/')) throw new Error(`Refusing to delete under a prefix that is not a folder: "${prefix}"`)
      const pageSize = Math.min(Math.max(Math.trunc(options.pageSize ?? 1000), 1), 1000)
      let deleted = 0
      let token: string | undefined
      do {
        const page = await send('list objects', () =>
          client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, MaxKeys: pageSize, ContinuationToken: token }))
        )
        const keys = (page.Contents ?? []).map((object) => object.Key).filter((key): key is string => !!key && key.startsWith(prefix))
        // One page is at most 1000 keys: one DeleteObjects.
        await deleteKeys(keys)
        deleted += keys.length
        token = page.IsTruncated ? page.NextContinuationToken : undefined
      } while (token)
      return deleted
    },

    /** Readiness: the bucket exists and these credentials may use it. */
    async checkBucket(): Promise<void> {
      try {
        await client.send(new HeadBucketCommand({ Bucket: bucket }))
      } catch (error) {
        const failure = error as { name?: string; $metadata?: { httpStatusCode?: number } }
        const status = failure.$metadata?.httpStatusCode
        throw new Error(`bucket "${bucket}" is not reachable: ${failure.name ?? 'error'}${status ? ` (HTTP ${status})` : ''}`, {
          cause: error
        })
      }
    },

    close(): void {
      client.destroy()
    }
  }
}

export type Storage = ReturnType<typeof createStorage>
