import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError, errorResponses } from '../../schemas/error.ts'
import { checkTenantId } from '../../lib/tenants/sql.ts'
import { VERIFIED_TOKEN_TTL_MS } from '../external/jwt.ts'
import {
  bearerToken,
  createAcceptedTokens,
  createPrincipalReader,
  tenantMismatch,
  tokenInvalid,
  verificationError,
  type AcceptedTokens,
  type Principal
} from '../../lib/auth/token-claims.ts'

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
    /** onRoute hook: documents the bearer requirement (and its 401/403) in OpenAPI. */
    declareBearerAuth: ReturnType<typeof createGuards>['declareBearerAuth']
  }
  interface FastifyRequest {
    /** The caller, once a guard accepted its token; null on public routes. */
    principal: Principal | null
  }
}

type VerifyToken = (token: string) => Promise<Record<string, unknown>>

const isPublic = (request: FastifyRequest) => request.routeOptions.config.auth === false

/**
 * The guards a folder's autohooks add (DESIGN §3 step 2, §6 layer 3). Each verifies the token
 * itself when no guard did yet, so they work in any order and alone. They run in onRequest,
 * before the tenant is looked up and before the body is read: an anonymous caller learns nothing
 * about which tenants exist, and a rejected request costs no parsing and no database work.
 *
 * They are callback-style hooks: a token accepted recently is found in `accepted` and the guard
 * completes synchronously, with no promise; only a token seen for the first time waits for the
 * verifier.
 */
export function createGuards(
  verify: VerifyToken,
  principalOf: (payload: Record<string, unknown>) => Principal,
  log: FastifyInstance['log'],
  accepted: AcceptedTokens
) {
  async function verified(token: string): Promise<Principal> {
    let payload: Record<string, unknown>
    try {
      payload = await verify(token)
    } catch (error) {
      const apiError = verificationError(error)
      if (apiError) throw apiError
      // Not a verdict on the token but a failure inside the verifier: logged, and still a refusal.
      log.error({ err: error }, 'token verification failed unexpectedly')
      throw tokenInvalid('The token could not be verified')
    }
    const caller = principalOf(payload)
    accepted.remember(token, caller, payload.exp)
    return caller
  }

  /** The caller, at once when a guard or the cache knows it, else once the token is verified. Throws ApiError. */
  function principal(request: FastifyRequest): Principal | Promise<Principal> {
    if (request.principal) return request.principal
    const token = bearerToken(request.headers.authorization)
    const known = accepted.get(token)
    if (known) return (request.principal = known)
    return verified(token).then((caller) => (request.principal = caller))
  }

  /** A guard as an onRequest hook: `check` throws to refuse the caller. */
  function guard(check: (request: FastifyRequest, caller: Principal) => void) {
    const checked = (request: FastifyRequest, caller: Principal, done: HookHandlerDoneFunction) => {
      try {
        check(request, caller)
      } catch (error) {
        return done(error as Error)
      }
      done()
    }
    return function guardHook(request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction): void {
      if (isPublic(request)) return done()
      let caller: Principal | Promise<Principal>
      try {
        caller = principal(request)
      } catch (error) {
        return done(error as Error)
      }
      if (caller instanceof Promise) caller.then((known) => checked(request, known, done), done)
      else checked(request, caller, done)
    }
  }

  return {
    authenticate: guard(() => undefined),

    requireTenantAccess: guard((request, caller) => {
      if (caller.admin) return
      if (caller.tenant === null) {
        throw new ApiError(403, 'TENANT_CLAIM_MISSING', 'The token is not bound to any tenant')
      }
      // Anything but one well-formed id is left to tenant resolution, which answers 400 for it and
      // resolves nothing; resolution checks the caller against the tenant it resolved, too.
      const header = request.headers['x-tenant-id']
      if (typeof header === 'string' && header !== caller.tenant && checkTenantId(header) === null) {
        throw tenantMismatch()
      }
    }),

    requireAdmin: guard((_request, caller) => {
      if (!caller.admin) throw new ApiError(403, 'ADMIN_REQUIRED', 'Only administrators may do this')
    }),

    declareBearerAuth(route: RouteOptions): void {
      if (route.config?.auth === false) return
      const schema = route.schema ?? {}
      route.schema = {
        ...schema,
        security: [{ bearerAuth: [] }],
        response: { ...errorResponses(401, 403), ...(schema.response as object | undefined) }
      }
    }
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
      adminGroup: config.ADMIN_GROUP
    })
    // With a key fetcher, fast-jwt verifies asynchronously; @fastify/jwt's types only know the sync form.
    const verify: VerifyToken = (token) => fastify.jwt.verify(token) as unknown as Promise<Record<string, unknown>>
    const accepted = createAcceptedTokens({ ttlMs: VERIFIED_TOKEN_TTL_MS, clockToleranceMs: config.JWT_CLOCK_TOLERANCE_MS })
    const guards = createGuards(verify, principalOf, fastify.log, accepted)

    fastify.decorateRequest('principal', null)
    fastify.decorate('authenticate', guards.authenticate)
    fastify.decorate('requireTenantAccess', guards.requireTenantAccess)
    fastify.decorate('requireAdmin', guards.requireAdmin)
    fastify.decorate('declareBearerAuth', guards.declareBearerAuth)

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
