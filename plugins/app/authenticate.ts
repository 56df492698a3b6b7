import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createAcceptedTokens, createGuards, createPrincipalReader, type Principal } from '../../lib/auth/index.ts'
import { durationMs } from '../../schemas/env.ts'
import { VERIFIED_TOKEN_TTL_MS } from '../external/jwt.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** `false` makes a route public even inside a guarded folder. */
    auth?: boolean
  }
  interface FastifyInstance {
    /** onRequest hook: a valid token (any tenant). */
    authenticate: ReturnType<typeof createGuards>['authenticate']
    /** onRequest hook: a token bound to the tenant in X-Tenant-ID, or an admin's. */
    requireTenantAccess: ReturnType<typeof createGuards>['requireTenantAccess']
    /** onRequest hook: a token of a member of ADMIN_GROUP. */
    requireAdmin: ReturnType<typeof createGuards>['requireAdmin']
    /** Whether the request carries a valid admin token (never throws): for public routes that tell admins more. */
    callerIsAdmin: ReturnType<typeof createGuards>['callerIsAdmin']
    /** onRoute hook of a guarded folder: documents the bearer requirement and the guard's codes in OpenAPI. */
    declareBearerAuth: ReturnType<typeof createGuards>['declareBearerAuth']
    /** Where the guards' refusals go before they are answered (the rate limit counts them). */
    onGuardRefusal: ReturnType<typeof createGuards>['onRefusal']
  }
  interface FastifyRequest {
    /** The caller, once a guard accepted its token; null on public routes. */
    principal: Principal | null
  }
}

/**
 * Authentication: Cognito (or any OIDC issuer's) tokens verified against its JWKS and bound to
 * the tenant. The keys are loaded at start; until they are, readiness is 503.
 */
export default fp(
  async function authenticate(fastify: FastifyInstance) {
    const { config } = fastify
    const principalOf = createPrincipalReader({
      clientId: config.JWT_CLIENT_ID ?? '',
      tokenUse: config.JWT_TOKEN_USE,
      tenantClaim: config.TENANT_CLAIM,
      adminGroup: config.ADMIN_GROUP,
      maxAgeMs: durationMs(config.JWT_MAX_AGE),
      clockToleranceMs: config.JWT_CLOCK_TOLERANCE_MS
    })
    // With a key fetcher, fast-jwt verifies asynchronously; @fastify/jwt's types only know the sync form.
    const verify = (token: string) => fastify.jwt.verify(token) as unknown as Promise<Record<string, unknown>>
    const accepted = createAcceptedTokens({ ttlMs: VERIFIED_TOKEN_TTL_MS, clockToleranceMs: config.JWT_CLOCK_TOLERANCE_MS })
    const guards = createGuards(verify, principalOf, fastify.log, accepted)

    fastify.decorateRequest('principal', null)
    fastify.decorate('authenticate', guards.authenticate)
    fastify.decorate('requireTenantAccess', guards.requireTenantAccess)
    fastify.decorate('requireAdmin', guards.requireAdmin)
    fastify.decorate('declareBearerAuth', guards.declareBearerAuth)
    fastify.decorate('callerIsAdmin', guards.callerIsAdmin)
    fastify.decorate('onGuardRefusal', guards.onRefusal)

    const keys = fastify.signingKeys
    if (!keys) {
      fastify.log.warn('no token issuer is configured: every route that needs a token answers 503 AUTH_UNAVAILABLE')
      return
    }
    keys.observeFetches((ok) => {
      fastify.metrics.jwksFetches.inc()
      if (!ok) fastify.metrics.jwksFailures.inc()
    })
    fastify.readiness.addCheck('jwks', async () => {
      const status = keys.status()
      if (!status.loaded) {
        throw new Error(`no signing keys yet from ${keys.jwksUrl}${status.lastError ? `: ${status.lastError}` : ''}`)
      }
      return `${status.keys} signing key${status.keys === 1 ? '' : 's'} from ${keys.issuer}`
    })
    // Waits for the first attempt only: an unreachable issuer must not stop the service from
    // starting (readiness says 503 and the store keeps retrying).
    fastify.addHook('onReady', async () => {
      await keys.start()
    })
    fastify.addHook('onClose', async () => {
      keys.stop()
    })
  },
  { name: 'authenticate', dependencies: ['jwt', 'readiness', 'metrics'] }
)
