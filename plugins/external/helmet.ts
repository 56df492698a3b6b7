import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'

/**
 * For the one HTML page, the Swagger UI at /docs: its scripts, styles and fonts are all served
 * from here, so the policy allows this origin alone. Its `'unsafe-inline'` for styles is for
 * Swagger UI's style attributes; scripts stay restricted to files from this origin.
 */
export const documentOptions: HelmetOptions = {
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
 * For JSON answers, as OWASP recommends for REST APIs: a JSON answer opened as a document may load
 * nothing and be framed by nobody.
 */
export const apiOptions: HelmetOptions = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
  frameguard: { action: 'deny' }
}

/**
 * The headers helmet sets with these options, computed once. None of them depends on the request
 * (no directive is a function), so running helmet per request, as @fastify/helmet does (it
 * rebuilds the middleware and re-parses the policy every time), only costs CPU and garbage
 * (BENCHMARKS.md, C2).
 */
export function securityHeaders(options: HelmetOptions): Record<string, string> {
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
export const documentHeaders = securityHeaders(documentOptions)

/**
 * The headers that mean something on a JSON answer: OWASP's set for REST APIs (the policy, HSTS,
 * nosniff and X-Frame-Options; Content-Type is Fastify's). The rest of helmet's set stays on the
 * docs page: Referrer-Policy governs the requests a document makes, and a JSON answer may make
 * none (`default-src 'none'`); Cross-Origin-Resource-Policy keeps out another origin's no-cors
 * loads, but such a load carries no token (tokens travel in Authorization, never in cookies), and
 * browsers withhold nosniff JSON from it anyway; Cross-Origin-Opener-Policy, Origin-Agent-Cluster,
 * X-DNS-Prefetch-Control, X-Download-Options, X-Permitted-Cross-Domain-Policies and
 * X-XSS-Protection only affect HTML documents or browsers long gone. Each header line is written
 * and parsed at both ends of every answer: with helmet's whole set an answer carried more header
 * than body, and each line cost the load generator of a paired run a measurable share of
 * `GET /`'s throughput (BENCHMARKS.md, C3 and C4).
 */
const API_HEADER_NAMES = ['content-security-policy', 'strict-transport-security', 'x-content-type-options', 'x-frame-options']
const apiHelmetHeaders = securityHeaders(apiOptions)
export const apiHeaders = Object.fromEntries(API_HEADER_NAMES.map((name) => [name, apiHelmetHeaders[name]]))

/** Security headers on every response: helmet's, for a JSON API; the docs page adds the rest (swagger.ts). */
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
