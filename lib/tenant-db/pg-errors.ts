import { ApiError, errors, serviceUnavailable } from '../../schemas/errors.ts'

/** Errors of the driver or the network that mean "the database is not there right now". */
const UNAVAILABLE_MESSAGES = ['Connection terminated', 'connection timeout', 'Client has encountered a connection error', 'Connection terminated unexpectedly']
const UNAVAILABLE_SYSCALL_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN'])

/**
 * Translates what PostgreSQL or the driver threw into what it means to a client, or null when it
 * means nothing to them (a bug: it stays a logged 500).
 */
export function toApiError(error: unknown): ApiError | null {
  if (error instanceof ApiError) return error
  if (!(error instanceof Error)) return null
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string') {
    switch (code) {
      case '23505':
        return new ApiError('CONFLICT', 'A record with the same unique value already exists')
      case '22P02':
      case '22007':
      case '22008':
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
