import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { toApiError } from '../lib/tenant-db/pg-errors.ts'
import { RequestFinishedError } from '../lib/tenant-db/handle.ts'
import type { ErrorBody } from '../schemas/error.ts'

/** Fastify's own client errors, renamed into our vocabulary. */
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_CONTENT_LENGTH',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_BODY',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_BODY',
  FST_ERR_BAD_URL: 'INVALID_URL',
  FST_ERR_ASYNC_CONSTRAINT: 'INVALID_REQUEST'
}

function body(statusCode: number, code: string, message: string): ErrorBody {
  return { statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message }
}

const statusAsCode = (statusCode: number) =>
  (STATUS_CODES[statusCode] ?? 'ERROR').toUpperCase().replace(/[^A-Z0-9]+/g, '_').replace(/^_|_$/g, '')

/**
 * The one error handler: every failure leaves as `{statusCode, code, error, message}`. Client
 * errors keep their message; a 5xx tells the client nothing and is logged in full.
 */
export default fp(
  async function errorHandler(fastify: FastifyInstance) {
    fastify.setErrorHandler(function handleError(error: FastifyError, request, reply) {
      if (error instanceof RequestFinishedError && reply.raw.destroyed) {
        // The connection closed (the client left, or its socket timed out: REQUEST_TIMEOUT_MS)
        // while the handler still had queries to run, and they were not run. Nobody hears the
        // answer and nothing failed on our side, so the log says so at info rather than as an
        // error. 499 is nginx's "client closed request".
        request.log.info({ tenant: request.tenant?.id, code: 'CLIENT_CLOSED_REQUEST' }, 'the connection closed before the answer')
        return reply.code(499).type('application/json; charset=utf-8').send(body(499, 'CLIENT_CLOSED_REQUEST', 'The connection closed before the answer'))
      }
      const apiError = toApiError(error)
      let payload: ErrorBody
      if (apiError) {
        payload = body(apiError.statusCode, apiError.code, apiError.message)
        reply.headers(apiError.headers)
      } else if (error.validation) {
        payload = body(400, 'VALIDATION_ERROR', error.message)
      } else if (typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 500) {
        payload = body(error.statusCode, FASTIFY_CODES[error.code] ?? statusAsCode(error.statusCode), error.message)
      } else {
        payload = body(500, 'INTERNAL_ERROR', 'Something went wrong on our side')
      }

      if (payload.statusCode >= 500) {
        request.log.error({ err: error, tenant: request.tenant?.id, code: payload.code }, 'request failed')
      } else {
        request.log.info({ tenant: request.tenant?.id, code: payload.code, message: payload.message }, 'request rejected')
      }
      return reply.code(payload.statusCode).type('application/json; charset=utf-8').send(payload)
    })

    fastify.setNotFoundHandler(function notFound(request, reply) {
      return reply.code(404).send(body(404, 'ROUTE_NOT_FOUND', `Route ${request.method} ${request.url.split('?')[0]} not found`))
    })
  },
  { name: 'error-handler' }
)
