import { Type, type Static } from '@sinclair/typebox'

/** The one error body every failure uses, 404 and validation included. */
export const ErrorBody = Type.Object(
  {
    statusCode: Type.Integer({ minimum: 400, maximum: 599, examples: [404] }),
    code: Type.String({ pattern: '^[A-Z][A-Z0-9_]*$', examples: ['TENANT_NOT_FOUND'] }),
    error: Type.String({ examples: ['Not Found'] }),
    message: Type.String({ examples: ['Tenant "acme-corp" does not exist'] })
  },
  { $id: 'ErrorBody', title: 'Error' }
)
export type ErrorBody = Static<typeof ErrorBody>

export const ErrorRef = Type.Unsafe<ErrorBody>(Type.Ref('ErrorBody'))

/** Response schemas for the error statuses a route can answer with. */
export function errorResponses(...statusCodes: number[]) {
  return Object.fromEntries(statusCodes.map((statusCode) => [statusCode, ErrorRef]))
}

/**
 * An error meant for the client: its status, stable code and message reach the response as they
 * are. Anything else that is thrown becomes a generic 500.
 */
export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {}
  ) {
    super(message)
    this.name = 'ApiError'
  }
}

export const serviceUnavailable = (code: string, message: string, retryAfterSeconds = 1) =>
  new ApiError(503, code, message, { 'retry-after': String(retryAfterSeconds) })
