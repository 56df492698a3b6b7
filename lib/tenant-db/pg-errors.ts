import { ApiError, errors, serviceUnavailable } from '../../schemas/errors.ts'

/** Errors of the driver or the network that mean "the database is not there right now". */
const UNAVAILABLE_MESSAGES = ['Connection terminated', 'connection timeout', 'Client has encountered a connection error', 'Connection terminated unexpectedly']
const UNAVAILABLE_SYSCALL_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN'])

/**
 * Translates what PostgreSQL or the driver threw into what it means to a client, or null when it
 * means nothing to them (a bug: it stays a logged 500). What was thrown stays attached as the
 * answer's `cause`, for the log (databaseFailure).
 */
export function toApiError(error: unknown): ApiError | null {
  if (error instanceof ApiError) return error
  const mapped = mapDatabaseError(error)
  if (mapped) mapped.cause = error
  return mapped
}

function mapDatabaseError(error: unknown): ApiError | null {
  if (!(error instanceof Error)) return null
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string') {
    switch (code) {
      case '23505':
        return new ApiError('CONFLICT', 'A record with the same unique value already exists')
      // The registry refused a mutation's tenant at its first query (public.tenant_accepts_writes).
      case 'TS404':
        return errors.tenantNotFound(quotedName(error.message))
      case 'TS403': {
        const id = quotedName(error.message)
        return (error as { detail?: string }).detail === 'deleting' ? errors.tenantDeleting(id) : errors.tenantSuspended(id)
      }
      case '22023':
        // A missing tenant role is the handle's to explain (a deleted tenant, or a role to repair).
        if (isMissingRole(error)) return null
        return new ApiError('INVALID_INPUT', 'A value is out of range')
      case '22P02':
      case '22007':
      case '22008':
      // A time zone offset PostgreSQL does not know (e.g. +14:30).
      case '22009':
      // A character the database cannot store (NUL, or one outside its encoding).
      case '22021':
      case '22P05':
        return new ApiError('INVALID_INPUT', 'A value has the wrong format')
      case '57014':
        return new ApiError('STATEMENT_TIMEOUT', 'The database took too long to answer')
      case '53300':
      case '57P01':
      case '57P02':
      case '57P03':
        return errors.databaseUnavailable()
    }
    if (code.startsWith('08') || UNAVAILABLE_SYSCALL_CODES.has(code)) {
      return errors.databaseUnavailable()
    }
  }
  if (error.message.startsWith('timeout exceeded when trying to connect')) {
    return serviceUnavailable('DATABASE_BUSY', 'No database connection became free in time; retry shortly')
  }
  if (UNAVAILABLE_MESSAGES.some((message) => error.message.includes(message))) {
    return errors.databaseUnavailable()
  }
  return null
}

/** PostgreSQL could not switch to a role: it does not exist. */
export const isMissingRole = (error: unknown) =>
  error instanceof Error && (error as { code?: unknown }).code === '22023' && /^role ".*" does not exist$/.test(error.message)

/** The first double-quoted name of a message. */
const quotedName = (message: string) => /"([^"]*)"/.exec(message)?.[1] ?? ''

/** Citus names the node a forwarded command failed on, in the message or in the context. */
const REMOTE_NODE = /(?:remote node|command on|connection to) "?(?:[^@\s"]+@)?([\w.-]+:\d+)/

/**
 * What PostgreSQL (or the driver) said about a failure behind an answer, for the log line of a
 * 5xx: its message, code and severity, detail and context, and the remote node when a Citus worker
 * failed or refused. Null when the answer has no database failure behind it.
 */
export function databaseFailure(error: unknown): Record<string, string> | null {
  const cause = error instanceof ApiError ? error.cause : error
  if (!(cause instanceof Error)) return null
  const failure = cause as Error & Partial<Record<'code' | 'severity' | 'detail' | 'hint' | 'where', string>>
  if (!failure.code && !UNAVAILABLE_MESSAGES.some((message) => failure.message.includes(message))) return null
  const described: Record<string, string> = { message: failure.message }
  for (const field of ['code', 'severity', 'detail', 'hint', 'where'] as const) {
    if (typeof failure[field] === 'string') described[field] = failure[field]
  }
  const node = REMOTE_NODE.exec(`${failure.message} ${failure.where ?? ''}`)?.[1]
  if (node) described.node = node
  return described
}
