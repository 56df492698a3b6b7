import type { FastifyError, FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { REQUEST_ID_HEADER } from '../lib/http/request-id.ts'
import { databaseFailure, RequestFinishedError, toApiError } from '../lib/tenant-db/index.ts'
import { BODY_ERRORS, errorBody, statusOf, withErrorCodes, type ErrorBody, type ErrorCode } from '../schemas/errors.ts'

/**
 * The client errors of Fastify and of its plugins that reach this handler, by their code, each
 * named in the catalogue. A method no route serves never gets here: Fastify answers it 404, through
 * the not-found handler below, and Node's parser refuses a method it does not know (BAD_REQUEST).
 * Request and header timeouts and oversized headers are Node's too (lib/http/client-errors.ts).
 */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_CONTENT_LENGTH',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_BODY',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_BODY',
  FST_ERR_BAD_URL: 'INVALID_URL',
  FST_ERR_ASYNC_CONSTRAINT: 'INVALID_REQUEST',
  // A QUERY without Content-Type, refused before routing (RFC 10008 requires one).
  FST_ERR_ROUTE_MISSING_CONTENT_TYPE: 'INVALID_REQUEST',
  // @fastify/static, serving the files of /docs: a path out of its folder, or a hidden file.
  FST_STATIC_FORBIDDEN_PATH: 'PATH_FORBIDDEN'
}

/** Client errors with a status and no code: @fastify/send's (http-errors), for the files of /docs. */
const UNNAMED_CODES: Partial<Record<number, ErrorCode>> = {
  403: 'PATH_FORBIDDEN',
  412: 'PRECONDITION_FAILED',
  416: 'RANGE_NOT_SATISFIABLE'
}

/**
 * The catalogue's code of a client error. One that nothing above names (a body whose stream broke
 * off, a plugin's new error) is BAD_REQUEST: a code of the catalogue with its one status, never a
 * code made up from the error's own status.
 */
const clientErrorCode = (error: FastifyError): ErrorCode =>
  FASTIFY_CODES[error.code] ?? (error.code === undefined ? UNNAMED_CODES[error.statusCode!] : undefined) ?? 'BAD_REQUEST'

/** The codes the error handler itself can answer a route with, from what the route declares. */
function handlerCodes(route: RouteOptions): ErrorCode[] {
  const schema = route.schema ?? {}
  const codes: ErrorCode[] = ['INTERNAL_ERROR']
  if (schema.body || schema.querystring || schema.params || schema.headers) codes.push('VALIDATION_ERROR')
  if (schema.body) codes.push(...BODY_ERRORS)
  return codes
}

/**
 * The one error handler: every failure leaves as `{statusCode, code, error, message}`. Client
 * errors keep their message; a 5xx tells the client nothing but its request id, and is logged in
 * full under that id. Every answer carries the id in X-Request-Id, so a user's report of any
 * answer can be matched to its log lines.
 */
export default fp(
  async function errorHandler(fastify: FastifyInstance) {
    // Registered first (app.ts), so this runs for every route, third-party plugins' and 404s included.
    fastify.addHook('onRequest', (request, reply, done) => {
      reply.header(REQUEST_ID_HEADER, request.id)
      done()
    })

    // Every route documents the codes this handler may answer it with.
    fastify.addHook('onRoute', (route) => {
      if (!route.schema?.response) return
      route.schema = { ...route.schema, response: withErrorCodes(route.schema.response as Record<string, unknown>, ...handlerCodes(route)) }
    })

    fastify.setErrorHandler(function handleError(error: FastifyError, request, reply) {
      if (error instanceof RequestFinishedError && reply.raw.destroyed) {
        // The connection closed (the client left, or its socket timed out: REQUEST_TIMEOUT_MS)
        // while the handler still had queries to run, and they were not run. Nobody hears the
        // answer and nothing failed on our side, so the log says so at info rather than as an
        // error. 499 is nginx's "client closed request".
        request.log.info({ tenant: request.tenant?.id, code: 'CLIENT_CLOSED_REQUEST' }, 'the connection closed before the answer')
        return reply
          .code(499)
          .type('application/json; charset=utf-8')
          .send(errorBody(499, 'CLIENT_CLOSED_REQUEST', 'The connection closed before the answer', request.id))
      }
      const apiError = toApiError(error)
      let payload: ErrorBody
      if (apiError) {
        payload = errorBody(apiError.statusCode, apiError.code, apiError.message, request.id)
        reply.headers(apiError.headers)
      } else if (error.validation) {
        payload = errorBody(400, 'VALIDATION_ERROR', error.message)
      } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
        const code = clientErrorCode(error)
        payload = errorBody(statusOf(code), code, error.message)
      } else {
        payload = errorBody(500, 'INTERNAL_ERROR', 'Something went wrong on our side', request.id)
      }

      if (payload.statusCode >= 500) {
        // The client hears only the generic answer; the log has what PostgreSQL said, and where.
        const database = databaseFailure(apiError ?? error)
        request.log.error({ err: error, tenant: request.tenant?.id, code: payload.code, ...(database && { database }) }, 'request failed')
      } else {
        // The error's own code beside ours: a catch-all BAD_REQUEST says what the catalogue lacks.
        request.log.info({ tenant: request.tenant?.id, code: payload.code, cause: error.code, message: payload.message }, 'request rejected')
      }
      return reply.code(payload.statusCode).type('application/json; charset=utf-8').send(payload)
    })

    fastify.setNotFoundHandler(function notFound(request, reply) {
      return reply.code(404).send(errorBody(404, 'ROUTE_NOT_FOUND', `Route ${request.method} ${request.url.split('?')[0]} not found`))
    })
  },
  { name: 'error-handler' }
)
