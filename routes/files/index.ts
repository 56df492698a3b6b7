import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  checkUpload,
  claimCompletion,
  contentDisposition,
  createPendingFile,
  findFileRow,
  getFile,
  isTenantKey,
  listFiles,
  markDeleted,
  markUploaded,
  newFileId,
  releaseCompletion,
  requestSweep,
  stagingKey,
  toFile,
  type FileRow,
  type LiveFileRow
} from '../../lib/files/index.ts'
import type { ResolvedTenant } from '../../lib/tenant-db/index.ts'
import { IdParams, Page, PageQuery, ref, TenantHeaders } from '../../schemas/common.ts'
import { ApiError, DATABASE_ERRORS, errors, serviceUnavailable, errorResponses, TENANT_SCOPE_ERRORS, WRITE_ERRORS } from '../../schemas/errors.ts'
import { CreatedFile, CreateFileBody, Download, File } from '../../schemas/file.ts'

/**
 * How long a completion may hold its claim on a file. Past it, the completion is presumed dead and
 * another may take over; it must be longer than the S3 calls of a completion can last (a HEAD and
 * a copy, each at most 3 attempts of 10 s).
 */
const COMPLETION_CLAIM_MS = 120_000
/** How long a completion waits for another one of the same file before answering 503. */
const COMPLETION_WAIT_MS = 10_000
/** A commit later than this after asking for a sweep asks again; well within the sweep's grace (DEFAULT_SWEEP_GRACE_MS). */
const COMMIT_AFTER_ASKING_MS = 2_000

/**
 * Files of the tenant named in X-Tenant-ID. The bytes never pass through the service: clients PUT
 * to and GET from presigned S3 URLs under the tenant's prefix; the service keeps the metadata in
 * the tenant's `files` table and checks the object before a file counts as uploaded.
 *
 * No S3 call is made inside a database transaction: a slow store must not hold pooled connections
 * (or row locks) that other requests and tenants need. Where a route needs both, it reads the row
 * first (a read: no transaction), calls S3, then re-checks and writes in a short transaction,
 * committed explicitly, and calls S3 again only after the commit. `complete` writes through
 * transactions of its own rather than the request's handle, which is rolled back if the client
 * leaves: a copy it made is recorded, and its claim on the file never outlives it.
 */
const files: FastifyPluginAsyncTypebox = async (fastify) => {
  const tags = ['files']
  const headers = TenantHeaders
  const { config } = fastify

  /** A stored key outside the tenant's prefix is a bug or tampering; it never reaches S3. */
  const keyOf = (tenantId: string, row: FileRow) => {
    if (!isTenantKey(tenantId, row.key)) throw new Error(`File ${row.id} has a key outside tenant ${tenantId}'s prefix`)
    return row.key
  }

  /** The file, read outside the request's transaction (a read-only handle of its own: no transaction, no lock). */
  async function readFile(tenant: ResolvedTenant, id: string) {
    const reader = fastify.tenantDb.open(tenant, true)
    try {
      return await getFile(reader, id)
    } finally {
      await reader.finish(false)
    }
  }

  const inTransaction = fastify.tenantDb.transaction

  /**
   * Removes objects after the change that made them unreachable has committed. What fails is left
   * to the sweep, which is asked to visit the prefix at once (a visit asked for earlier may have
   * come and gone before the commit).
   */
  async function deleteAfterCommit(request: { log: { warn(obj: object, msg: string): void } }, tenantId: string, keys: string[]) {
    try {
      await fastify.requireStorage().deleteKeys(keys)
    } catch (error) {
      request.log.warn({ err: error, tenant: tenantId, keys }, 'deleting objects failed; the file sweep removes them later')
      await requestSweep(fastify.pg.pool, tenantId, new Date()).catch(() => undefined)
    }
  }

  fastify.post(
    '/',
    {
      schema: {
        operationId: 'startUpload',
        summary: 'Start an upload',
        description:
          'Records a pending file and returns a presigned PUT. Send the bytes with exactly the returned headers ' +
          '(Content-Type and Content-Length are signed), then call POST /files/{id}/complete.',
        tags,
        headers,
        body: CreateFileBody,
        response: {
          201: CreatedFile,
          ...errorResponses(
            ...TENANT_SCOPE_ERRORS,
            ...WRITE_ERRORS,
            'FILE_TOO_LARGE',
            'CONTENT_TYPE_NOT_ALLOWED',
            'QUOTA_EXCEEDED',
            'STORAGE_UNAVAILABLE',
            'STORAGE_ERROR'
          )
        }
      }
    },
    async (request, reply) => {
      const storage = fastify.requireStorage()
      const tenant = request.tenant!
      const limits = { maxUploadBytes: config.MAX_UPLOAD_BYTES, quotaBytes: config.TENANT_STORAGE_QUOTA_BYTES }
      const { id, contentType, size } = checkUpload({ ...request.body, id: newFileId() }, limits)
      // Signed before the transaction (resolving credentials may call out), for the staging key:
      // the final key has no URL, so once completed a file's bytes cannot change.
      const window = storage.uploadWindow()
      const upload = await storage.presignUpload(stagingKey(tenant.id, id), { contentType, size }, window.signedAt)
      const row = await createPendingFile(request.db!, tenant.id, { ...request.body, id, uploadExpiresAt: window.expiresAt }, limits)
      return reply
        .code(201)
        .header('location', `/files/${row.id}`)
        .send({ file: toFile(row), upload })
    }
  )

  fastify.post(
    '/:id/complete',
    {
      schema: {
        operationId: 'completeUpload',
        summary: 'Finish an upload',
        description:
          'Checks that the object exists with the declared size, moves it where no upload URL can write, and marks ' +
          'the file uploaded: its bytes cannot change any more. Calling it again for an uploaded file answers the same.',
        tags,
        headers,
        params: IdParams,
        response: {
          200: ref(File),
          ...errorResponses(
            ...TENANT_SCOPE_ERRORS,
            ...WRITE_ERRORS,
            'FILE_NOT_FOUND',
            'UPLOAD_MISSING',
            'UPLOAD_SIZE_MISMATCH',
            'STORAGE_UNAVAILABLE',
            'STORAGE_ERROR'
          )
        }
      }
    },
    async (request) => {
      const tenant = request.tenant!
      const id = request.params.id
      const storage = fastify.requireStorage()

      // Only the holder of the file's claim copies the upload: two completions copying at once
      // could let bytes PUT after the first had finished replace the file's. Another completion
      // under way is waited for (no connection is held meanwhile), then answered as it ended.
      const claim = randomUUID()
      const waitUntil = Date.now() + COMPLETION_WAIT_MS
      let row = await readFile(tenant, id)
      while (row.status !== 'uploaded' && !(await inTransaction(tenant, (db) => claimCompletion(db, id, claim, COMPLETION_CLAIM_MS)))) {
        if (Date.now() > waitUntil) throw serviceUnavailable('STORAGE_UNAVAILABLE', 'Another completion of this file is still under way; retry shortly')
        await sleep(250)
        row = await readFile(tenant, id)
      }
      if (row.status === 'uploaded') return toFile(row)

      const key = keyOf(tenant.id, row)
      const staging = stagingKey(tenant.id, row.id)
      // A row from before staging was given a URL that writes its key: it is completed in place.
      const uploadedTo = row.staged ? staging : key
      // From here on the claim is this completion's: it is either spent by the commit that marks
      // the file uploaded or given back, both in transactions of their own. The request's handle
      // is rolled back when its client leaves, and a claim left behind would hold every retry back
      // for COMPLETION_CLAIM_MS.
      let settled: { done: LiveFileRow | null; current: FileRow | null }
      try {
        const object = await storage.headObject(uploadedTo)
        if (!object) throw new ApiError('UPLOAD_MISSING', 'Nothing was uploaded for this file yet; PUT the bytes to the upload URL first')
        if (object.size !== Number(row.size)) {
          // Only a store that does not enforce the signed Content-Length lets this through; the
          // object is removed so the declared size stays the truth and the upload can be redone.
          await storage.deleteObject(uploadedTo)
          throw new ApiError('UPLOAD_SIZE_MISMATCH', `The uploaded object has ${object.size} bytes, not the declared ${row.size}; it was discarded`)
        }
        if (row.staged && !(await storage.copyObject(staging, key, row.content_type))) {
          throw new ApiError('UPLOAD_MISSING', 'Nothing was uploaded for this file yet; PUT the bytes to the upload URL first')
        }
        // The staging key can be refilled until the URL expires: the sweep removes what lands there.
        await requestSweep(fastify.pg.pool, tenant.id, row.upload_expires_at)
        // Recorded whether or not the client is still there: the copy is made.
        settled = await inTransaction(tenant, async (db) => {
          const done = await markUploaded(db, id, claim)
          return { done, current: done ?? (await findFileRow(db, id)) }
        })
      } catch (error) {
        // Every failure gives the claim back (a no-op if the commit above went through after all).
        await inTransaction(tenant, (db) => releaseCompletion(db, id, claim)).catch(() => undefined)
        // The upload may be gone because the file was deleted meanwhile: then that is the answer.
        if (error instanceof ApiError && error.code === 'UPLOAD_MISSING') await readFile(tenant, id)
        throw error
      }

      const { done, current } = settled
      if (done) {
        if (row.staged) await deleteAfterCommit(request, tenant.id, [staging])
        return toFile(done)
      }
      // Deleted meanwhile: the copy just made must not outlive the file. (Or this completion
      // stalled past its claim and another took over: it has copied the same upload since.)
      if (current?.status === 'uploaded') return toFile({ ...current, status: 'uploaded' })
      if (current?.status === 'pending') throw serviceUnavailable('STORAGE_UNAVAILABLE', 'Completing the upload took too long; retry shortly')
      await deleteAfterCommit(request, tenant.id, [key, staging])
      throw errors.fileNotFound(id)
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        operationId: 'listFiles',
        summary: 'List files',
        tags,
        headers,
        querystring: PageQuery,
        response: { 200: Page(ref(File)), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'INVALID_CURSOR') }
      }
    },
    async (request) => listFiles(request.db!, request.query)
  )

  fastify.get(
    '/:id',
    {
      schema: {
        operationId: 'getFile',
        summary: 'Get a file',
        tags,
        headers,
        params: IdParams,
        response: { 200: ref(File), ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'FILE_NOT_FOUND') }
      }
    },
    async (request) => toFile(await getFile(request.db!, request.params.id))
  )

  fastify.get(
    '/:id/download',
    {
      schema: {
        operationId: 'getDownloadUrl',
        summary: 'Get a download URL',
        description: 'A presigned GET, valid until expiresAt, whose response is an attachment carrying the file name.',
        tags,
        headers,
        params: IdParams,
        response: {
          200: Download,
          ...errorResponses(...TENANT_SCOPE_ERRORS, ...DATABASE_ERRORS, 'FILE_NOT_FOUND', 'FILE_NOT_UPLOADED', 'STORAGE_UNAVAILABLE', 'STORAGE_ERROR')
        }
      }
    },
    async (request) => {
      const row = await getFile(request.db!, request.params.id)
      if (row.status !== 'uploaded') throw new ApiError('FILE_NOT_UPLOADED', 'The upload of this file has not been completed')
      const storage = fastify.requireStorage()
      return storage.presignDownload(keyOf(request.tenant!.id, row), contentDisposition(row.filename))
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        operationId: 'deleteFile',
        summary: 'Delete a file',
        description:
          'Deletes the file: it is gone from the API at once and its bytes are deleted. Until its upload URL has ' +
          'expired the file still counts toward the storage quota, and whatever a late PUT stores is removed.',
        tags,
        headers,
        params: IdParams,
        response: {
          204: { type: 'null', description: 'Deleted' },
          ...errorResponses(...TENANT_SCOPE_ERRORS, ...WRITE_ERRORS, 'FILE_NOT_FOUND', 'STORAGE_UNAVAILABLE', 'STORAGE_ERROR')
        }
      }
    },
    async (request, reply) => {
      fastify.requireStorage()
      const tenant = request.tenant!
      const id = request.params.id
      const found = await readFile(tenant, id)
      // Asked for before the change, so that a crash after it cannot lose the visit: once the
      // file's URL has expired, the sweep removes what a late PUT stored, and then the row.
      const askedAt = Date.now()
      await requestSweep(fastify.pg.pool, tenant.id, new Date(Math.max(found.upload_expires_at.getTime(), askedAt)))
      const db = request.db!
      const row = await markDeleted(db, id)
      await db.finish(true)
      // A visit due at once could have come before this commit and found nothing to do.
      if (Date.now() - askedAt > COMMIT_AFTER_ASKING_MS) await requestSweep(fastify.pg.pool, tenant.id, new Date())
      // Gone for the API from now on; the bytes follow. A late PUT to the file's URL is removed by
      // the sweep, and the row keeps counting toward the quota until the URL has expired.
      await deleteAfterCommit(request, tenant.id, [keyOf(tenant.id, row), stagingKey(tenant.id, row.id)])
      return reply.code(204).send()
    }
  )
}

export default files
