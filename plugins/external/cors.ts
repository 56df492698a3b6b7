import fastifyCors, { type FastifyCorsOptions } from '@fastify/cors'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { corsOrigins, type Config } from '../../schemas/env.ts'

/**
 * CORS for browser clients, or null when no origin is admitted (production without CORS_ORIGINS:
 * no CORS headers at all, so browsers keep other origins out). Tokens travel in the Authorization
 * header, never in cookies, so credentials are never allowed and `*` exposes nothing a script on
 * another origin could not already send.
 */
export function corsOptions(config: Config): FastifyCorsOptions | null {
  const origins = corsOrigins(config)
  if (origins === null) return null
  return {
    origin: origins,
    methods: ['GET', 'HEAD', 'POST', 'PATCH', 'DELETE'],
    allowedHeaders: ['authorization', 'content-type', 'x-tenant-id', 'x-request-id'],
    exposedHeaders: ['location', 'retry-after', 'www-authenticate', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'],
    credentials: false,
    maxAge: 600,
    // Strict mode answers an OPTIONS request lacking the preflight headers with a plain-text 400,
    // outside the error shape; such a request gets the (harmless) preflight answer instead.
    strictPreflight: false
  }
}

/** @fastify/cors, admitting CORS_ORIGINS (any origin outside production when unset). */
export default fp(
  async function cors(fastify: FastifyInstance) {
    const options = corsOptions(fastify.config)
    if (options) await fastify.register(fastifyCors, options)
  },
  { name: 'cors' }
)
