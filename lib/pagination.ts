import { ApiError } from '../schemas/error.ts'

/**
 * Keyset pagination over (created_at, id). The cursor is opaque to clients: base64url of the last
 * row's position, so pages stay stable while rows are inserted.
 */
export function encodeCursor(createdAt: Date, id: string): string {
  return Buffer.from(JSON.stringify([createdAt.toISOString(), id])).toString('base64url')
}

export function decodeCursor(cursor: string): { createdAt: string; id: string } {
  try {
    const [createdAt, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown[]
    if (typeof createdAt === 'string' && typeof id === 'string' && !Number.isNaN(Date.parse(createdAt))) {
      return { createdAt, id }
    }
  } catch {
    // fall through to the client error
  }
  throw new ApiError(400, 'INVALID_CURSOR', 'cursor is not a value returned as nextCursor')
}

/** Splits a LIMIT n+1 result into a page and the cursor of the next one. */
export function toPage<Row extends { id: string; created_at: Date }, Item>(
  rows: Row[],
  limit: number,
  toItem: (row: Row) => Item
): { items: Item[]; nextCursor: string | null } {
  const more = rows.length > limit
  const pageRows = more ? rows.slice(0, limit) : rows
  const last = pageRows.at(-1)
  return { items: pageRows.map(toItem), nextCursor: more && last ? encodeCursor(last.created_at, last.id) : null }
}
