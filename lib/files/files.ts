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
  status: FileStatus
  created_at: Date
  updated_at: Date
}

const COLUMNS = 'id, key, filename, content_type, size, status, created_at, updated_at'

export const toFile = (row: FileRow): File => ({
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

// Two-key advisory locks, like the migrator's: the first key says what is locked, the second whose.
const LOCK_TENANT_STORAGE = 0x7e4a_0003

/**
 * Checks an upload request and records it as a `pending` file. The quota counts pending files
 * too, since their URLs may still be used. The sum runs under a transaction-level advisory lock
 * per tenant, taken in a statement of its own so that the sum's snapshot is taken after the lock
 * is held: concurrent requests of one tenant queue here until the previous one commits, and
 * cannot both fit under the quota on the same remaining space.
 */
export async function createPendingFile(
  db: Queryable,
  tenantId: string,
  input: { filename: string; contentType: string; size: number },
  limits: UploadLimits
): Promise<FileRow> {
  if (input.size > limits.maxUploadBytes) {
    throw new ApiError('FILE_TOO_LARGE', `A file may be at most ${limits.maxUploadBytes} bytes`)
  }
  const contentType = input.contentType.toLowerCase()
  const topLevel = contentType.slice(0, contentType.indexOf('/'))
  if (!ALLOWED_TOP_LEVEL_TYPES.includes(topLevel)) {
    throw new ApiError('CONTENT_TYPE_NOT_ALLOWED', `contentType must be one of ${ALLOWED_TOP_LEVEL_TYPES.map((t) => `${t}/*`).join(', ')}`)
  }

  if (limits.quotaBytes > 0) {
    await db.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_TENANT_STORAGE, tenantId])
    const { rows } = await db.query<{ used: string }>('SELECT coalesce(sum(size), 0)::text AS used FROM files')
    const used = Number(rows[0].used)
    if (used + input.size > limits.quotaBytes) {
      throw new ApiError('QUOTA_EXCEEDED', `This upload would exceed the tenant's storage quota: ${used} of ${limits.quotaBytes} bytes are in use`)
    }
  }

  const id = randomUUID()
  const filename = cleanFilename(input.filename)
  const { rows } = await db.query<FileRow>(`INSERT INTO files (id, key, filename, content_type, size) VALUES ($1, $2, $3, $4, $5) RETURNING ${COLUMNS}`, [
    id,
    fileKey(tenantId, id, filename),
    filename,
    contentType,
    input.size
  ])
  return rows[0]
}

const LIST_FILES = keysetSql(`SELECT ${COLUMNS} FROM files`, 'uuid')

export const listFiles = (db: Queryable, page: { limit: number; cursor?: string }) => readPage(db, LIST_FILES, page, toFile)

/** One file of the tenant; `lock` holds the row until the request's transaction ends. */
export async function getFile(db: Queryable, id: string, options: { lock?: boolean } = {}): Promise<FileRow> {
  const { rows } = await db.query<FileRow>(`SELECT ${COLUMNS} FROM files WHERE id = $1${options.lock ? ' FOR UPDATE' : ''}`, [id])
  if (!rows[0]) throw errors.fileNotFound(id)
  return rows[0]
}

export async function markUploaded(db: Queryable, id: string): Promise<FileRow> {
  const { rows } = await db.query<FileRow>(
    `UPDATE files SET status = 'uploaded', updated_at = date_trunc('milliseconds', now()) WHERE id = $1 RETURNING ${COLUMNS}`,
    [id]
  )
  if (!rows[0]) throw errors.fileNotFound(id)
  return rows[0]
}

/** Deletes the row and returns it; the object goes next, inside the same request transaction. */
export async function deleteFileRow(db: Queryable, id: string): Promise<FileRow> {
  const { rows } = await db.query<FileRow>(`DELETE FROM files WHERE id = $1 RETURNING ${COLUMNS}`, [id])
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
