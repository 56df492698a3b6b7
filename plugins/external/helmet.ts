import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'

/**
 * The API itself serves only JSON; the one HTML page is the Swagger UI at /docs, whose scripts,
 * styles and fonts are all served from here, so the policy allows this origin alone. Its
 * `'unsafe-inline'` for styles is for Swagger UI's style attributes; scripts stay restricted to
 * files from this origin.
 */
export const helmetOptions: HelmetOptions = {
  contentSecurityPolicy: {
    useDefaults: false,
    directives: {
      defaultSrc: ["'self'"],
      baseUri: ["'self'"],
      connectSrc: ["'self'"],
      fontSrc: ["'self'", 'data:'],
      formAction: ["'self'"],
      frameAncestors: ["'none'"],
      imgSrc: ["'self'", 'data:'],
      objectSrc: ["'none'"],
      scriptSrc: ["'self'"],
      scriptSrcAttr: ["'none'"],
      styleSrc: ["'self'", "'unsafe-inline'"]
    }
  },
  frameguard: { action: 'deny' }
}

/**
 * The headers helmet sets with these options, computed once. None of them depends on the request
 * (no directive is a function), so running helmet per request, as @fastify/helmet does (it
 * rebuilds the middleware and re-parses the policy every time), only costs CPU and garbage: it
 * measured about a tenth of the service's whole per-request cost.
 */
export function securityHeaders(options: HelmetOptions = helmetOptions): Record<string, string> {
  const headers: Record<string, string> = {}
  const response = {
    setHeader(name: string, value: unknown) {
      headers[name.toLowerCase()] = String(value)
    },
    removeHeader(name: string) {
      delete headers[name.toLowerCase()]
    }
  }
  helmet(options)({} as IncomingMessage, response as unknown as ServerResponse, (error?: unknown) => {
    if (error) throw error
  })
  return headers
}

/** helmet's whole set, for HTML documents: the Swagger UI at /docs (plugins/external/swagger.ts). */
export const documentHeaders = securityHeaders()

/**
 * The headers that mean something on a JSON answer. The rest of helmet's set (Cross-Origin-Opener-
 * Policy, Origin-Agent-Cluster, X-DNS-Prefetch-Control, X-Download-Options,
 * X-Permitted-Cross-Domain-Policies, X-XSS-Protection) only affect HTML documents or browsers long
 * gone; sent on every API answer they doubled the size of a typical response and cost its parsing
 * on both ends.
 */
const API_HEADER_NAMES = [
  'content-security-policy',
  'cross-origin-resource-policy',
  'referrer-policy',
  'strict-transport-security',
  'x-content-type-options',
  'x-frame-options'
]
export const apiHeaders = Object.fromEntries(API_HEADER_NAMES.map((name) => [name, documentHeaders[name]]))

/** Headers of `documentHeaders` that API answers do not carry. */
export const documentOnlyHeaders = Object.fromEntries(Object.entries(documentHeaders).filter(([name]) => !(name in apiHeaders)))

/** Security headers on every response: helmet's, with a Content-Security-Policy that Swagger UI works under. */
export default fp(
  async function securityHeadersPlugin(fastify: FastifyInstance) {
    // onRequest, so that every answer carries them, errors and 404s included.
    fastify.addHook('onRequest', (_request, reply, done) => {
      reply.headers(apiHeaders)
      done()
    })
  },
  { name: 'helmet' }
)
