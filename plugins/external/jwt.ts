import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../../schemas/env.ts'
import { createKeyStore, DETERMINISTIC_TOKEN_ERRORS, KeyLookupError, type KeyStore } from '../../lib/auth/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The issuer's signing keys; null when no issuer is configured (only possible outside production). */
    signingKeys: KeyStore | null
  }
}

/**
 * How long a verified token is remembered. A repeated token then skips the RSA check; this also
 * bounds how long a key the issuer withdrew keeps working for tokens already seen.
 */
export const VERIFIED_TOKEN_TTL_MS = 60_000
const VERIFIED_TOKEN_CACHE_SIZE = 10_000
const FAILED_TOKEN_TTL_MS = 10 * 60_000

type KeyFor = KeyStore['keyFor']

/** @fastify/jwt options: RS256 only, the exact issuer, `exp` required, keys from the issuer's JWKS. */
export function jwtOptions(config: Config, keyFor: KeyFor): FastifyJWTOptions {
  const tolerance = config.JWT_CLOCK_TOLERANCE_MS
  return {
    secret: keyFor as FastifyJWTOptions['secret'],
    verify: {
      algorithms: ['RS256'],
      ...(config.JWT_ISSUER === undefined ? {} : { allowedIss: config.JWT_ISSUER }),
      // fast-jwt skips a claim check when the claim is absent; requiring them makes the checks bite.
      requiredClaims: ['iss', 'exp'],
      clockTolerance: tolerance,
      cache: VERIFIED_TOKEN_CACHE_SIZE,
      cacheTTL: VERIFIED_TOKEN_TTL_MS,
      // fast-jwt adds the clock tolerance to an error's lifetime; -(tolerance + 1) means "not kept".
      errorCacheTTL: (error: { code?: string }) =>
        error.code !== undefined && DETERMINISTIC_TOKEN_ERRORS.has(error.code) ? FAILED_TOKEN_TTL_MS : -(tolerance + 1)
    } as FastifyJWTOptions['verify']
  }
}

const noIssuer: KeyFor = async () => {
  throw new KeyLookupError('unavailable', 'No token issuer is configured')
}

/** @fastify/jwt, verifying the configured issuer's RS256 tokens against its JWKS, as `fastify.jwt`. */
export default fp(
  async function jwt(fastify: FastifyInstance) {
    const { config } = fastify
    const keys = config.JWT_ISSUER ? createKeyStore({ issuer: config.JWT_ISSUER, refetchIntervalMs: config.JWKS_REFETCH_INTERVAL_MS, log: fastify.log }) : null
    fastify.decorate('signingKeys', keys)
    await fastify.register(fastifyJwt, jwtOptions(config, keys ? keys.keyFor : noIssuer))
  },
  { name: 'jwt' }
)
