import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'

/** The header a request id arrives in and is sent back in, on every answer. */
export const REQUEST_ID_HEADER = 'x-request-id'

// A client-chosen request id ends up in every log line of its request: only short, plain ones are kept.
const SANE_REQUEST_ID = /^[\w.:-]{1,128}$/

/** The request's id (Fastify's genReqId): the client's X-Request-Id when it is sane, else a new UUID. */
export function requestId(request: IncomingMessage): string {
  const header = request.headers[REQUEST_ID_HEADER]
  return typeof header === 'string' && SANE_REQUEST_ID.test(header) ? header : randomUUID()
}
