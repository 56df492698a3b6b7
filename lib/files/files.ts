import { randomUUID } from 'node:crypto'
import { ApiError, errors } from '../../schemas/errors.ts'
import { ALLOWED_TOP_LEVEL_TYPES, type File, type FileStatus } from '../../schemas/file.ts'
import { keysetSql, readPage } from '../pagination.ts'
import type { Queryable } from '../tenant-db/index.ts'
import { checkTenantId } from '../tenants/index.ts'
import { storageError, type Storage } from './storage.ts'

/**
 * Files of one tenant: object keys, file names, and the `files` table in the tenant's schema.
 *
 * Keys are built here and nowhere else (DESIGN §6, layer 4): `tenants/<tenant id>/<file id>/<name>`,
 * where the name is reduced to letters, marks, digits, `.`, `-` and `_`, so no client input can
 * add a path segment, climb out of the prefix, or smuggle in an encoding that a later tool decodes.
 *
 * The presigned PUT targets the file's staging key, `tenants/<tenant id>/<file id>/.upload` (a
 * name no sanitised file name can take, since those never start with a dot); completing the
 * upload copies it to the file's key, which no URL can write, so a completed file's bytes never
 * change.
 */

const FALLBACK_NAME = 'file'
/** Display names are capped like file names on common filesystems. */
const MAX_FILENAME_BYTES = 255
/** Leaves room under S3's 1024-byte key limit and under the 255-byte file name limit of stores backed by a filesystem. */
const MAX_KEY_NAME_BYTES = 200
const MAX_EXTENSION_CHARS = 16

/**
 * Code points that are invisible or change how the text around them is shown: controls (NUL, CR,
 * LF, DEL, C1), format characters (bidi overrides and isolates such as U+202E, zero-width
 * characters, BOM), line and paragraph separators, surrogates, private use and unassigned ones.
 */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]/gu

const graphemes = new Intl.Segmenter('en', { granularity: 'grapheme' })

/** Cuts `text` to at most `maxBytes` of UTF-8 without splitting a character. */
function cutToBytes(text: string, maxBytes: number): string {
  let out = ''
  let bytes = 0
  for (const { segment } of graphemes.segment(text)) {
    const size = Buffer.byteLength(segment)
    if (bytes + size > maxBytes) break
    out += segment
    bytes += size
  }
  return out
}

/** Cuts a name to `maxBytes`, keeping a short extension so the type stays recognisable. */
function capName(name: string, maxBytes: number): string {
  if (Buffer.byteLength(name) <= maxBytes) return name
  const dot = name.lastIndexOf('.')
  const extension = dot > 0 && name.length - dot <= MAX_EXTENSION_CHARS ? name.slice(dot) : ''
  const base = extension ? name.slice(0, dot) : name
  return cutToBytes(base, maxBytes - Buffer.byteLength(extension)) + extension
}

/**
 * The name the API stores and shows: NFKC-normalised (fullwidth `．／` become `./`, ligatures
 * split), invisible and bidi-control characters removed, path separators replaced, whitespace
 * collapsed, at most 255 bytes. Never empty.
 */
export function cleanFilename(input: string): string {
  let name = input.normalize('NFKC').replace(INVISIBLE, '')
  name = name.replace(/[/\\]/g, '_').replace(/\s+/gu, ' ').trim()
  name = capName(name, MAX_FILENAME_BYTES).trim()
  return name === '' || name === '.' || name === '..' ? FALLBACK_NAME : name
}

/**
 * The last segment of an object key. Only letters, combining marks, digits, `.`, `-` and `_`
 * survive; every other run of characters (separators, `%`, spaces, symbols) becomes one `_`.
 * Dot runs collapse and leading or trailing dots go, so the segment is never `.` or `..`.
 */
export function keySafeName(filename: string): string {
  const trimEdges = (text: string) => text.replace(/^[._-]+|[._-]+$/g, '')
  let name = filename
    .normalize('NFKC')
    .replace(/[^\p{L}\p{M}\p{N}._-]+/gu, '_')
    .replace(/\.{2,}/g, '.')
    .replace(/_{2,}/g, '_')
  name = trimEdges(capName(trimEdges(name), MAX_KEY_NAME_BYTES))
  return name === '' ? FALLBACK_NAME : name
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** `tenants/<id>/`: everything of one tenant, and nothing of another (ids cannot contain `/`). */
export function tenantPrefix(tenantId: string): string {
  if (checkTenantId(tenantId) !== null) throw new Error(`Not a tenant id: ${JSON.stringify(tenantId)}`)
  return `tenants/${tenantId}/`
}

export function fileKey(tenantId: string, fileId: string, filename: string): string {
  if (!UUID.test(fileId)) throw new Error(`Not a file id: ${JSON.stringify(fileId)}`)
  return `${tenantPrefix(tenantId)}${fileId}/${keySafeName(filename)}`
}

const STAGING_NAME = '.upload'

/** Where the presigned PUT of file `fileId` stores its bytes until the upload is completed. */
export function stagingKey(tenantId: string, fileId: string): string {
  if (!UUID.test(fileId)) throw new Error(`Not a file id: ${JSON.stringify(fileId)}`)
  return `${tenantPrefix(tenantId)}${fileId}/${STAGING_NAME}`
}

/** The file id of a key under `tenants/<id>/` (`<file id>/<anything>`), or null for a key of no file. */
export function fileIdOfKey(tenantId: string, key: string): string | null {
  const prefix = tenantPrefix(tenantId)
  if (!key.startsWith(prefix)) return null
  const id = key.slice(prefix.length).split('/', 1)[0]
  return UUID.test(id) ? id : null
}

/** True when `key` is a well-formed key of `tenantId`: a check on stored keys before any S3 call. */
export function isTenantKey(tenantId: string, key: string): boolean {
  const prefix = tenantPrefix(tenantId)
  if (!key.startsWith(prefix) || key.includes('\\')) return false
  const segments = key.slice(prefix.length).split('/')
  return segments.length === 2 && UUID.test(segments[0]) && segments[1] !== '' && segments[1] !== '.' && segments[1] !== '..'
}

/** RFC 8187 `ext-value` characters: everything else is percent-encoded. */
const encodeExtValue = (text: string) =>
  encodeURIComponent(text.replace(/\p{Cs}/gu, '\uFFFD')).replace(/['()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

/** An ASCII stand-in for clients that ignore `filename*`: accents dropped, the rest replaced. */
function asciiFilename(filename: string): string {
  const ascii = filename
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .replace(/[^\x20-\x7e]/g, '_')
    .replace(/["\\%]/g, '_')
    .trim()
  return ascii === '' ? FALLBACK_NAME : ascii
}

/** `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): always a download, never rendered inline. */
export function contentDisposition(filename: string): string {
  return `attachment; filename="${asciiFilename(filename)}"; filename*=UTF-8''${encodeExtValue(filename)}`
}

export interface FileRow {
  id: string
  key: string
  filename: string
  content_type: string
  /** bigint arrives as a string. */
  size: string
  /** `deleted`: gone for the API, kept until the sweep has removed what its URL may still store. */
  status: FileStatus | 'deleted'
  upload_expires_at: Date
  /** The upload URL writes the staging key (false: a row from before staging, whose URL writes `key`). */
  staged: boolean
  created_at: Date
  updated_at: Date
}

const COLUMNS = 'id, key, filename, content_type, size, status, upload_expires_at, staged, created_at, updated_at'

/** A row the API shows: not a deleted one. */
export type LiveFileRow = FileRow & { status: FileStatus }

export const toFile = (row: LiveFileRow): File => ({
  id: row.id,
  filename: row.filename,
  contentType: row.content_type,
  size: Number(row.size),
  status: row.status,
  createdAt: row.created_at.toISOString(),
  updatedAt: row.updated_at.toISOString()
})

export interface UploadLimits {
  maxUploadBytes: number
  /** 0: no quota. */
  quotaBytes: number
}

export interface UploadRequest {
  /** A new file id (newFileId()). */
  id: string
  filename: string
  contentType: string
  size: number
  /** When the file's presigned PUT stops working. */
  uploadExpiresAt: Date
}

export const newFileId = () => randomUUID()

/**
 * Refuses an upload that is too large or of a type not allowed, before anything is signed or
 * stored; answers the content type as stored (lower case).
 */
export function checkUpload(
  upload: Omit<UploadRequest, 'uploadExpiresAt' | 'filename'>,
  limits: UploadLimits
): { id: string; contentType: string; size: number } {
  if (!UUID.test(upload.id)) throw new Error(`Not a file id: ${JSON.stringify(upload.id)}`)
  if (upload.size > limits.maxUploadBytes) {
    throw new ApiError('FILE_TOO_LARGE', `A file may be at most ${limits.maxUploadBytes} bytes`)
  }
  const contentType = upload.contentType.toLowerCase()
  const topLevel = contentType.slice(0, contentType.indexOf('/'))
  if (!ALLOWED_TOP_LEVEL_TYPES.includes(topLevel)) {
    throw new ApiError('CONTENT_TYPE_NOT_ALLOWED', `contentType must be one of ${ALLOWED_TOP_LEVEL_TYPES.map((t) => `${t}/*`).join(', ')}`)
  }
  return { id: upload.id, contentType, size: upload.size }
}

/**
 * What the quota counts: every row once (uploaded and pending files, and deleted ones until the
 * sweep has removed them, which it does only once their URL has expired, so a deleted file's URL
 * cannot store bytes the quota no longer sees), and an uploaded file whose URL writes the staging
 * key a second time until that URL expires: the URL cannot be revoked, so until then it can
 * refill the staging key beside the file's bytes (the sweep removes what it stores). Completing a
 * file keeps its upload reservation, and completing then PUTting again stores nothing the quota
 * does not see.
 */
const QUOTA_USED = `SELECT (coalesce(sum(size), 0)
         + coalesce(sum(size) FILTER (WHERE status = 'uploaded' AND staged AND upload_expires_at > now()), 0))::text AS used
    FROM files`

/**
 * Checks an upload request and records it as a `pending` file whose upload URL expires at
 * `uploadExpiresAt`, if the tenant's usage (QUOTA_USED) leaves room for it. The sum runs after locking the one row
 * of the tenant's `file_quota_lock` table, in a statement of its own so that the sum's snapshot is
 * taken once the lock is held: concurrent uploads of one tenant queue there until the previous one
 * commits, and cannot both fit in the same remaining space. The lock is in the tenant's own schema,
 * where no other tenant's role can take it.
 */
export async function createPendingFile(db: Queryable, tenantId: string, upload: UploadRequest, limits: UploadLimits): Promise<LiveFileRow> {
  const { id, contentType, size } = checkUpload(upload, limits)

  if (limits.quotaBytes > 0) {
    await db.query('SELECT id FROM file_quota_lock FOR UPDATE')
    const { rows } = await db.query<{ used: string }>(QUOTA_USED)
    const used = Number(rows[0].used)
    if (used + size > limits.quotaBytes) {
      throw new ApiError(
        'QUOTA_EXCEEDED',
        `This upload would exceed the tenant's storage quota: ${used} of ${limits.quotaBytes} bytes are in use or reserved (a deleted file counts until its upload URL has expired, a completed one twice until then)`
      )
    }
  }

  const filename = cleanFilename(upload.filename)
  const { rows } = await db.query<LiveFileRow>(
    `INSERT INTO files (id, key, filename, content_type, size, upload_expires_at, staged) VALUES ($1, $2, $3, $4, $5, $6, true) RETURNING ${COLUMNS}`,
    [id, fileKey(tenantId, id, filename), filename, contentType, size, upload.uploadExpiresAt]
  )
  return rows[0]
}

// Deleted files are gone for the API; the subquery keeps keysetSql's WHERE its own.
const LIST_FILES = keysetSql(`SELECT ${COLUMNS} FROM (SELECT * FROM files WHERE status <> 'deleted') AS files`, 'uuid')

export const listFiles = (db: Queryable, page: { limit: number; cursor?: string }) => readPage(db, LIST_FILES, page, toFile)

/** One file of the tenant, not a deleted one. */
export async function getFile(db: Queryable, id: string): Promise<LiveFileRow> {
  const { rows } = await db.query<LiveFileRow>(`SELECT ${COLUMNS} FROM files WHERE id = $1 AND status <> 'deleted'`, [id])
  if (!rows[0]) throw errors.fileNotFound(id)
  return rows[0]
}

/**
 * Claims the completion of a pending file for `ms` under the token `claim`: true when this
 * completion may copy the upload to the file's key, false when the file is not pending or another
 * completion holds an unexpired claim.
 */
export async function claimCompletion(db: Queryable, id: string, claim: string, ms: number): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE files SET completion_claim = $2, completion_claim_until = now() + $3 * interval '1 millisecond'
      WHERE id = $1 AND status = 'pending' AND (completion_claim_until IS NULL OR completion_claim_until < now())`,
    [id, claim, ms]
  )
  return rowCount === 1
}

/** Gives up a claim (the completion failed), so that another can be made at once. */
export async function releaseCompletion(db: Queryable, id: string, claim: string): Promise<void> {
  await db.query('UPDATE files SET completion_claim = NULL, completion_claim_until = NULL WHERE id = $1 AND completion_claim = $2', [id, claim])
}

/**
 * Marks a pending file uploaded, if `claim` still holds its completion; null otherwise (it was
 * deleted meanwhile, or the claim expired and another completion took it). Locks the row until
 * the transaction ends.
 */
export async function markUploaded(db: Queryable, id: string, claim: string): Promise<LiveFileRow | null> {
  const { rows } = await db.query<LiveFileRow>(
    `UPDATE files SET status = 'uploaded', completion_claim = NULL, completion_claim_until = NULL, updated_at = date_trunc('milliseconds', now())
      WHERE id = $1 AND status = 'pending' AND completion_claim = $2 RETURNING ${COLUMNS}`,
    [id, claim]
  )
  return rows[0] ?? null
}

/** The row of `id` in whatever status, deleted included; null when there is none. */
export async function findFileRow(db: Queryable, id: string): Promise<FileRow | null> {
  const { rows } = await db.query<FileRow>(`SELECT ${COLUMNS} FROM files WHERE id = $1`, [id])
  return rows[0] ?? null
}

/**
 * Marks a file deleted and returns it. The row stays, counting toward the quota, until the sweep
 * has removed what a late PUT to its URL may store; its objects are deleted once this commits.
 */
export async function markDeleted(db: Queryable, id: string): Promise<FileRow> {
  const { rows } = await db.query<FileRow>(
    `UPDATE files SET status = 'deleted', updated_at = date_trunc('milliseconds', now()) WHERE id = $1 AND status <> 'deleted' RETURNING ${COLUMNS}`,
    [id]
  )
  if (!rows[0]) throw errors.fileNotFound(id)
  return rows[0]
}

/**
 * Removes every object of a tenant (the step before its schema is dropped). A failure keeps the
 * storage error's status and code, with a message saying how to finish.
 */
export async function deleteTenantObjects(storage: Pick<Storage, 'deletePrefix'>, tenantId: string, options: { pageSize?: number } = {}): Promise<number> {
  try {
    return await storage.deletePrefix(tenantPrefix(tenantId), options)
  } catch (error) {
    const failure = storageError(error, "delete the tenant's files")
    const message = `Deleting the files of tenant "${tenantId}" failed; the tenant stays in status "deleting" and refuses requests. Repeat the DELETE to finish`
    throw Object.assign(new ApiError(failure.code, message, failure.headers), { cause: failure.cause ?? error })
  }
}
