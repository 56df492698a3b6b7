import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  contentDisposition,
  createPendingFile,
  deleteFileRow,
  getFile,
  isTenantKey,
  listFiles,
  markUploaded,
  toFile,
  type FileRow
} from '../../lib/files/index.ts'
import { IdParams, Page, PageQuery, ref, TenantHeaders } from '../../schemas/common.ts'
import { ApiError, DATABASE_ERRORS, errorResponses, TENANT_SCOPE_ERRORS, WRITE_ERRORS } from '../../schemas/errors.ts'
import { CreatedFile, CreateFileBody, Download, File } from '../../schemas/file.ts'

/**
 * Files of the tenant named in X-Tenant-ID. The bytes never pass through the service: clients PUT
 * to and GET from presigned S3 URLs under the tenant's prefix; the service keeps the metadata in
 * the tenant's `files` table and checks the object before a file counts as uploaded.
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
      const row = await createPendingFile(request.db!, tenant.id, request.body, {
        maxUploadBytes: config.MAX_UPLOAD_BYTES,
        quotaBytes: config.TENANT_STORAGE_QUOTA_BYTES
      })
      const upload = await storage.presignUpload(keyOf(tenant.id, row), { contentType: row.content_type, size: Number(row.size) })
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
          'Checks that the object exists with the declared size and marks the file uploaded. ' + 'Calling it again for an uploaded file answers the same.',
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
      const row = await getFile(request.db!, request.params.id, { lock: true })
      if (row.status === 'uploaded') return toFile(row)
      const storage = fastify.requireStorage()
      const key = keyOf(tenant.id, row)
      const object = await storage.headObject(key)
      if (!object) throw new ApiError('UPLOAD_MISSING', 'Nothing was uploaded for this file yet; PUT the bytes to the upload URL first')
      if (object.size !== Number(row.size)) {
        // Only a store that does not enforce the signed Content-Length lets this through; the
        // object is removed so the declared size stays the truth and the upload can be redone.
        await storage.deleteObject(key)
        throw new ApiError('UPLOAD_SIZE_MISMATCH', `The uploaded object has ${object.size} bytes, not the declared ${row.size}; it was discarded`)
      }
      return toFile(await markUploaded(request.db!, row.id))
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
        description: 'Deletes the object and the metadata. When the object cannot be deleted, nothing is.',
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
      const storage = fastify.requireStorage()
      // The row goes first, inside the request's transaction; if the object cannot be deleted the
      // request fails and the transaction rolls back, so the file is never lost from the listing
      // while its bytes remain.
      const row = await deleteFileRow(request.db!, request.params.id)
      await storage.deleteObject(keyOf(request.tenant!.id, row))
      return reply.code(204).send()
    }
  )
}

export default files
