import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { errorBody, statusOf, type ErrorCode } from '../../schemas/errors.ts'
import { REQUEST_ID_HEADER } from './request-id.ts'

/**
 * What is refused before a route's hooks run, answered in the one error shape: by Node's HTTP
 * parser (Fastify's clientErrorHandler) and by the router (its frameworkErrors).
 */

/** Larger request headers are refused by Node's parser (431 HEADERS_TOO_LARGE); tokens are at most 8 KiB. */
export const MAX_HEADER_BYTES = 16 * 1024

const CLIENT_ERRORS: Record<string, [ErrorCode, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: ['REQUEST_TIMEOUT', 'The request was not received in time'],
  HPE_HEADER_OVERFLOW: ['HEADERS_TOO_LARGE', `The request headers exceed ${MAX_HEADER_BYTES} bytes`]
}

/**
 * Malformed HTTP, oversized headers, a client too slow to send its request: answered on the
 * socket, which is then closed. There is no request yet, so no request id either.
 */
export function clientErrorHandler(this: FastifyInstance, error: Error & { code?: string }, socket: Socket) {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const [code, message] = CLIENT_ERRORS[error.code ?? ''] ?? ['BAD_REQUEST', 'The request is not valid HTTP']
  const body = errorBody(statusOf(code), code, message)
  const payload = JSON.stringify(body)
  this.log.debug({ err: error, code }, 'client error')
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${body.statusCode} ${body.error}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(payload)}\r\nConnection: close\r\n\r\n${payload}`
    )
  }
  socket.destroy(error)
}

const ROUTER_ERRORS: Record<string, [ErrorCode, string]> = {
  FST_ERR_BAD_URL: ['INVALID_URL', 'The URL is not valid: a path segment is not correctly percent-encoded'],
  FST_ERR_MAX_PARAM_LENGTH: ['URI_TOO_LONG', 'A path parameter is longer than 100 characters']
}

/** A malformed URL, an overlong path parameter: refused by the router before any route is chosen. */
export function frameworkErrors(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const [code, message] = ROUTER_ERRORS[error.code] ?? ['INTERNAL_ERROR', 'Something went wrong on our side']
  const body = errorBody(statusOf(code), code, message, request.id)
  if (body.statusCode >= 500) request.log.error({ err: error }, 'request failed in the router')
  return reply.code(body.statusCode).header(REQUEST_ID_HEADER, request.id).type('application/json; charset=utf-8').send(body)
}
