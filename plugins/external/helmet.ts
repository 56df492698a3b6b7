import fastifyHelmet, { type FastifyHelmetOptions } from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

/**
 * Security headers on every response. The API itself serves only JSON; the one HTML page is the
 * Swagger UI at /docs, whose scripts, styles and fonts are all served from here, so the policy
 * allows this origin alone. Its `'unsafe-inline'` for styles is for Swagger UI's style
 * attributes; scripts stay restricted to files from this origin.
 */
export const helmetOptions: FastifyHelmetOptions = {
  global: true,
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

/** @fastify/helmet with a Content-Security-Policy that Swagger UI works under. */
export default fp(
  async function helmet(fastify: FastifyInstance) {
    await fastify.register(fastifyHelmet, helmetOptions)
  },
  { name: 'helmet' }
)
