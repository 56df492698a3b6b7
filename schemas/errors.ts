import { STATUS_CODES } from 'node:http'
import { Type, type Static, type TSchema } from '@sinclair/typebox'

/**
 * The error catalogue: every code the API answers with, its one status, and what it means.
 * The OpenAPI document's per-route lists are read from it; schemas/README.md's table is checked
 * against it (test/openapi.test.ts).
 */
export const ERROR_CATALOGUE = {
  // The tenant header, and the tenant it names
  TENANT_ID_MISSING: [400, 'no X-Tenant-ID header on a tenant-scoped route'],
  TENANT_ID_INVALID: [400, 'the tenant id is not 3–63 characters of a-z, 0-9 and -, starting with a letter'],
  TENANT_ID_RESERVED: [400, 'the tenant id is a reserved schema name (public, pg_*, information_schema, …)'],
  TENANT_NOT_FOUND: [404, 'no such tenant'],
  TENANT_SUSPENDED: [403, 'the tenant is suspended'],
  TENANT_DELETING: [403, 'the tenant is being deleted: it refuses requests and cannot be changed; repeat the DELETE to finish'],
  TENANT_EXISTS: [409, 'a tenant with that id already exists'],
  TENANT_RECENTLY_DELETED: [
    409,
    "a tenant with that id was deleted less than 2 × JWT_CLOCK_TOLERANCE_MS + 1 s ago: its tokens could not be told from the new tenant's; see Retry-After"
  ],
  TENANT_MIGRATING: [
    503,
    "the tenant's schema is older than the route needs and is being migrated (or waits for npm run migrate, or its migration failed); see Retry-After"
  ],
  // Tokens
  TOKEN_MISSING: [401, 'no Authorization: Bearer <token> header (a token anywhere else is ignored)'],
  TOKEN_EXPIRED: [401, "the token's exp has passed"],
  TOKEN_INVALID: [
    401,
    'the token is malformed, not RS256, not signed by a key of the issuer, from another issuer or app client, not valid yet, or of a kind not accepted; the message says which'
  ],
  TENANT_MISMATCH: [403, 'the token is bound to another tenant than X-Tenant-ID'],
  TENANT_CLAIM_MISSING: [403, 'a tenant route with a token that names no tenant (and is not an admin’s)'],
  ADMIN_REQUIRED: [403, 'a control-plane route with a token of someone outside ADMIN_GROUP'],
  AUTH_UNAVAILABLE: [503, "the issuer's keys have never been loaded, so no token can be verified; see Retry-After"],
  // Users and files
  USER_NOT_FOUND: [404, 'no such user in this tenant'],
  USER_EMAIL_EXISTS: [409, 'the email is taken in this tenant'],
  // Members backed by the user pool
  MEMBER_NOT_FOUND: [404, "GET /users/me: the token's sub is no member of this tenant"],
  TENANT_ADMIN_REQUIRED: [403, 'inviting, changing or removing members takes a member with role admin (or a platform admin)'],
  MEMBER_IN_OTHER_TENANT: [409, 'the user pool already holds a user with this email, bound to another tenant'],
  MEMBER_EMAIL_FIXED: [409, 'the email of a member backed by the user pool is its login and is not changed here'],
  USER_POOL_NOT_CONFIGURED: [400, 'invite: true (or a tenant admin) without a user pool configured (COGNITO_USER_POOL_ID)'],
  USER_POOL_UNAVAILABLE: [503, 'the user pool did not answer, answered 5xx or throttled, or credentials could not be found; see Retry-After'],
  USER_POOL_ERROR: [502, 'the user pool refused the operation (access denied, no such pool): a deployment problem, details in the log'],
  FILE_NOT_FOUND: [404, 'no such file in this tenant'],
  FILE_TOO_LARGE: [413, 'the declared size exceeds MAX_UPLOAD_BYTES'],
  CONTENT_TYPE_NOT_ALLOWED: [400, 'contentType is not application, audio, font, image, model, text or video /*'],
  QUOTA_EXCEEDED: [409, 'the upload would take the tenant past TENANT_STORAGE_QUOTA_BYTES'],
  UPLOAD_MISSING: [409, 'complete before the object was uploaded'],
  UPLOAD_SIZE_MISMATCH: [409, "the uploaded object's size is not the declared one; it was discarded: upload again"],
  FILE_NOT_UPLOADED: [409, 'a download of a file whose upload is not complete'],
  // Requests
  VALIDATION_ERROR: [400, 'the body, query, params or headers do not match the schema'],
  INVALID_CURSOR: [400, 'cursor is not a value the API returned'],
  INVALID_INPUT: [400, 'a value PostgreSQL could not parse'],
  CONFLICT: [409, 'a unique value is taken'],
  BODY_TOO_LARGE: [413, 'the body exceeds BODY_LIMIT_BYTES'],
  RATE_LIMITED: [429, 'more than RATE_LIMIT_MAX requests in RATE_LIMIT_WINDOW for this tenant (without a token: from this address); see Retry-After'],
  REQUEST_TIMEOUT: [408, 'the request did not arrive within REQUEST_TIMEOUT_MS (its headers within 10 s); the connection is closed'],
  HEADERS_TOO_LARGE: [431, 'the request headers exceed 16 KiB'],
  BAD_REQUEST: [400, 'the request is not valid HTTP (a method Node does not know included), or is refused for a reason no other code names'],
  INVALID_URL: [400, 'a path segment is not correctly percent-encoded'],
  URI_TOO_LONG: [414, 'a path parameter is longer than 100 characters'],
  INVALID_BODY: [400, 'the body is not the JSON its Content-Type says (or carries a __proto__ or constructor key)'],
  UNSUPPORTED_MEDIA_TYPE: [415, 'a body in a Content-Type other than application/json'],
  INVALID_CONTENT_LENGTH: [400, 'Content-Length does not match the body'],
  INVALID_REQUEST: [400, 'the request could not be routed (for example a malformed constrained header, or a QUERY without Content-Type)'],
  ROUTE_NOT_FOUND: [404, 'no such route, or no route for this method on this path'],
  // The files of /docs (Swagger UI's)
  PATH_FORBIDDEN: [403, 'a /docs file path that leaves its folder or names a hidden file'],
  PRECONDITION_FAILED: [412, "a /docs file's If-Match or If-Unmodified-Since does not hold"],
  RANGE_NOT_SATISFIABLE: [416, 'a Range of a /docs file past its end'],
  // Dependencies
  DATABASE_BUSY: [503, 'no pooled connection became free within PG_ACQUIRE_TIMEOUT_MS; see Retry-After'],
  DATABASE_UNAVAILABLE: [503, 'the database cannot be reached; see Retry-After'],
  STORAGE_UNAVAILABLE: [503, 'S3 did not answer, answered 5xx or throttled, or credentials could not be found; see Retry-After'],
  STORAGE_ERROR: [502, 'S3 refused the operation (access denied, no such bucket): a deployment problem, details in the log'],
  STATEMENT_TIMEOUT: [504, 'a statement ran past PG_STATEMENT_TIMEOUT_MS'],
  TRANSACTION_FAILED: [500, "the request's transaction could not be committed; nothing was saved"],
  INTERNAL_ERROR: [500, 'a bug; the details are in the log, under the requestId of the body'],
  CLIENT_CLOSED_REQUEST: [499, 'never received: the connection closed while the request still had queries to run, which were not run']
} as const satisfies Record<string, readonly [number, string]>

export type ErrorCode = keyof typeof ERROR_CATALOGUE

export const statusOf = (code: ErrorCode): number => ERROR_CATALOGUE[code][0]

/** The one error body every failure uses, 404 and validation included; a 5xx also carries its request id. */
export const ErrorBody = Type.Object(
  {
    statusCode: Type.Integer({ minimum: 400, maximum: 599, examples: [404] }),
    code: Type.String({ pattern: '^[A-Z][A-Z0-9_]*$', examples: ['TENANT_NOT_FOUND'] }),
    error: Type.String({ examples: ['Not Found'] }),
    message: Type.String({ examples: ['Tenant "acme-corp" does not exist'] }),
    requestId: Type.Optional(
      Type.String({
        description: 'On 5xx answers: the request id (also sent as X-Request-Id), to find its log lines',
        examples: ['5d0f6a0e-6f3c-4c53-9a53-1b0c2c7d9e11']
      })
    )
  },
  { $id: 'ErrorBody', title: 'Error' }
)
export type ErrorBody = Static<typeof ErrorBody>

const ERROR_CODES_KEY = 'x-error-codes'

/**
 * The response headers of a 503 or a 429, as OpenAPI declares them (@fastify/swagger reads a
 * response schema's `headers`): every one of them carries Retry-After (serviceUnavailable, the
 * rate limit, readiness).
 */
export const RETRY_AFTER_HEADERS = {
  'Retry-After': { type: 'integer', minimum: 0, description: 'Seconds to wait before trying again' }
} as const

/** The statuses whose answers always carry Retry-After. */
const RETRY_AFTER_STATUSES: ReadonlySet<number> = new Set([429, 503])

/** A response schema that declares Retry-After: for a 503 whose body is not the error body (readiness). */
export const withRetryAfter = <Schema extends TSchema>(schema: Schema) => ({ ...schema, headers: RETRY_AFTER_HEADERS })

/**
 * The response schema of one error status: the error body, with the codes a route answers with
 * under that status listed in its description (for readers) and in `x-error-codes` (for tools),
 * and Retry-After declared where the status always carries it.
 */
function errorResponse(status: number, codes: readonly string[]): TSchema {
  const sorted = [...new Set(codes)].sort()
  return Type.Unsafe<ErrorBody>({
    $ref: 'ErrorBody',
    description: sorted.map((code) => `\`${code}\``).join(', '),
    [ERROR_CODES_KEY]: sorted,
    ...(RETRY_AFTER_STATUSES.has(status) && { headers: RETRY_AFTER_HEADERS })
  })
}

/** The codes an error response schema lists, or null when it is not one built here. */
export function errorCodesOf(schema: unknown): string[] | null {
  const codes = (schema as Record<string, unknown> | null)?.[ERROR_CODES_KEY]
  return Array.isArray(codes) ? (codes as string[]) : null
}

/** Response schemas for the codes a route can answer with, one per status. */
export function errorResponses(...codes: ErrorCode[]): Record<number, TSchema> {
  const byStatus = new Map<number, string[]>()
  for (const code of codes) {
    const status = statusOf(code)
    byStatus.set(status, [...(byStatus.get(status) ?? []), code])
  }
  return Object.fromEntries([...byStatus].map(([status, list]) => [status, errorResponse(status, list)]))
}

/**
 * A route's responses with more error codes added (the guards' and the rate limit's, added by
 * onRoute hooks): merged with the codes the route lists under the same status.
 */
export function withErrorCodes(responses: Record<string, unknown> | undefined, ...codes: ErrorCode[]): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...responses }
  for (const [status, schema] of Object.entries(errorResponses(...codes))) {
    const listed = errorCodesOf(merged[status]) ?? []
    merged[status] = errorResponse(Number(status), [...listed, ...(errorCodesOf(schema) ?? [])])
  }
  return merged
}

/**
 * An error meant for the client: its code's status, the code and the message reach the response
 * as they are. Anything else that is thrown becomes a generic 500.
 */
export class ApiError extends Error {
  readonly statusCode: number

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly headers: Record<string, string> = {}
  ) {
    super(message)
    this.name = 'ApiError'
    this.statusCode = statusOf(code)
  }
}

/** A 503 with the Retry-After that every one of them carries. */
export const serviceUnavailable = (code: ErrorCode, message: string, retryAfterSeconds = 1) =>
  new ApiError(code, message, { 'retry-after': String(retryAfterSeconds) })

/** The errors built in more than one place. */
export const errors = {
  tenantNotFound: (id: string) => new ApiError('TENANT_NOT_FOUND', `Tenant "${id}" does not exist`),
  tenantSuspended: (id: string) => new ApiError('TENANT_SUSPENDED', `Tenant "${id}" is suspended`),
  tenantDeleting: (id: string) => new ApiError('TENANT_DELETING', `Tenant "${id}" is being deleted; repeat DELETE /auth/tenants/${id} to finish`),
  tenantMismatch: () => new ApiError('TENANT_MISMATCH', 'The token is bound to another tenant'),
  userNotFound: (id: string) => new ApiError('USER_NOT_FOUND', `User ${id} does not exist in this tenant`),
  fileNotFound: (id: string) => new ApiError('FILE_NOT_FOUND', `File ${id} does not exist in this tenant`),
  databaseUnavailable: () => serviceUnavailable('DATABASE_UNAVAILABLE', 'The database is not available; retry shortly'),
  storageNotConfigured: () => serviceUnavailable('STORAGE_UNAVAILABLE', 'Object storage is not configured (S3_BUCKET)', 60)
}

/** What resolving X-Tenant-ID answers with (plugins/app/tenant-context.ts): on every tenant-scoped route. */
export const TENANT_SCOPE_ERRORS = [
  'TENANT_ID_MISSING',
  'TENANT_ID_INVALID',
  'TENANT_ID_RESERVED',
  'TENANT_NOT_FOUND',
  'TENANT_SUSPENDED',
  'TENANT_DELETING'
] as const satisfies readonly ErrorCode[]

/** What a route that queries the database can answer with. */
export const DATABASE_ERRORS = ['DATABASE_BUSY', 'DATABASE_UNAVAILABLE', 'STATEMENT_TIMEOUT'] as const satisfies readonly ErrorCode[]

/** The same for a route that writes: its transaction commits before the answer. */
export const WRITE_ERRORS = [...DATABASE_ERRORS, 'TRANSACTION_FAILED', 'INVALID_INPUT'] as const satisfies readonly ErrorCode[]

/** What a route whose body is JSON can answer with before its handler runs. */
export const BODY_ERRORS = ['INVALID_BODY', 'BODY_TOO_LARGE', 'UNSUPPORTED_MEDIA_TYPE', 'INVALID_CONTENT_LENGTH'] as const satisfies readonly ErrorCode[]

/** What Node's HTTP parser answers any request with before a route is chosen (lib/http/client-errors.ts). */
export const TRANSPORT_ERRORS = ['BAD_REQUEST', 'HEADERS_TOO_LARGE', 'REQUEST_TIMEOUT'] as const satisfies readonly ErrorCode[]

/** The body of an error answer; a 5xx carries its request id, for a bug report to be matched to the log. */
export function errorBody(statusCode: number, code: string, message: string, requestId?: string): ErrorBody {
  const body: ErrorBody = { statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message }
  if (statusCode >= 500 && requestId !== undefined) body.requestId = requestId
  return body
}
