import { TENANT_ID_PATTERN } from '../schemas/common.ts'
import { ApiError } from '../schemas/errors.ts'

/**
 * Keyset pagination over (created_at, id), for users, files and tenants alike. The cursor is
 * opaque to clients: base64url of the last row's position, so pages stay stable while rows are
 * inserted.
 */

export function encodeCursor(createdAt: Date, id: string): string {
  return Buffer.from(JSON.stringify([createdAt.toISOString(), id])).toString('base64url')
}

/**
 * What encodeCursor writes: an ISO instant in milliseconds, UTC, of years 0001–9999 (toISOString
 * writes other years with a sign and six digits; year 0000 is one PostgreSQL refuses, 22008).
 */
const CURSOR_INSTANT = /^(?!0000)\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** What the ids of a listing are: the SQL type of its id column follows. */
export type CursorIdKind = 'uuid' | 'tenant'

/** The ids a cursor may carry, per listing: nothing else reaches `$2::uuid` (a 22P02) or the tenants' keyset. */
const CURSOR_ID: Record<CursorIdKind, RegExp> = {
  uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  tenant: new RegExp(TENANT_ID_PATTERN)
}

/**
 * Only the exact form encodeCursor writes, with an id of the listing's kind, is accepted, so
 * nothing else reaches the database (a year −271821, a "+14:00" offset or a tenant id where a
 * UUID belongs would otherwise be refused by PostgreSQL).
 */
export function decodeCursor(cursor: string, idKind: CursorIdKind): { createdAt: string; id: string } {
  try {
    const decoded = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown
    if (Array.isArray(decoded) && decoded.length === 2) {
      const [createdAt, id] = decoded as unknown[]
      if (
        typeof createdAt === 'string' &&
        typeof id === 'string' &&
        CURSOR_INSTANT.test(createdAt) &&
        CURSOR_ID[idKind].test(id) &&
        encodeCursor(new Date(createdAt), id) === cursor
      ) {
        return { createdAt, id }
      }
    }
  } catch {
    // fall through to the client error
  }
  throw new ApiError('INVALID_CURSOR', 'cursor is not a value returned as nextCursor')
}

/** What a page is read through: a tenant's handle or a pool. */
export interface PageSource {
  query<Row extends object>(text: string, values: unknown[]): Promise<{ rows: Row[] }>
}

/** One keyset listing: its SQL, and the kind of its ids, which its cursors must carry. */
export interface KeysetListing {
  sql: string
  idKind: CursorIdKind
}

/**
 * One keyset listing: `select` (a SELECT … FROM with no WHERE), the rows after the cursor, in
 * order. Built once per listing, so every request sends the same text.
 */
export function keysetSql(select: string, idKind: CursorIdKind): KeysetListing {
  const sql = `${select}
  WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1::timestamptz, $2::${idKind === 'uuid' ? 'uuid' : 'text'})
  ORDER BY created_at, id LIMIT $3`
  return { sql, idKind }
}

/** One page of a keyset listing (see keysetSql), its rows turned into items, and the next page's cursor. */
export async function readPage<Row extends { id: string; created_at: Date }, Item>(
  source: PageSource,
  listing: KeysetListing,
  page: { limit: number; cursor?: string },
  toItem: (row: Row) => Item
): Promise<{ items: Item[]; nextCursor: string | null }> {
  const after = page.cursor ? decodeCursor(page.cursor, listing.idKind) : null
  // One row more than the page, to know whether another follows.
  const { rows } = await source.query<Row>(listing.sql, [after?.createdAt ?? null, after?.id ?? null, page.limit + 1])
  const more = rows.length > page.limit
  const pageRows = more ? rows.slice(0, page.limit) : rows
  const last = pageRows.at(-1)
  return { items: pageRows.map(toItem), nextCursor: more && last ? encodeCursor(last.created_at, last.id) : null }
}
