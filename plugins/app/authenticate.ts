import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { ApiError, errorResponses } from '../../schemas/error.ts'
import { checkTenantId } from '../domain/tenant-sql.ts'
import { bearerToken, createPrincipalReader, tokenInvalid, verificationError, type Principal } from '../domain/token-claims.ts'

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

const tenantMismatch = () => new ApiError(403, 'TENANT_MISMATCH', 'The token is bound to another tenant')

type VerifyToken = (token: string) => Promise<Record<string, unknown>>

const isPublic = (request: FastifyRequest) => request.routeOptions.config.auth === false

/**
 * The guards a folder's autohooks add (DESIGN §3 step 2, §6 layer 3). Each verifies the token
 * itself when no guard did yet, so they work in any order and alone. They run in onRequest,
 * before the tenant is looked up and before the body is read: an anonymous caller learns nothing
 * about which tenants exist, and a rejected request costs no parsing and no database work.
 */
export function createGuards(verify: VerifyToken, principalOf: (payload: Record<string, unknown>) => Principal, log: FastifyInstance['log']) {
  async function principal(request: FastifyRequest): Promise<Principal> {
    if (request.principal) return request.principal
    const token = bearerToken(request.headers.authorization)
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
    request.principal = principalOf(payload)
    return request.principal
  }

  return {
    async authenticate(request: FastifyRequest): Promise<void> {
      if (isPublic(request)) return
      await principal(request)
    },

    async requireTenantAccess(request: FastifyRequest): Promise<void> {
      if (isPublic(request)) return
      const caller = await principal(request)
      if (caller.admin) return
      if (caller.tenant === null) {
        throw new ApiError(403, 'TENANT_CLAIM_MISSING', 'The token is not bound to any tenant')
      }
      // Anything but one well-formed id is left to tenant resolution, which answers 400 for it and
      // resolves nothing; the preValidation check below holds even if that ever changed.
      const header = request.headers['x-tenant-id']
      if (typeof header === 'string' && checkTenantId(header) === null && header !== caller.tenant) {
        throw tenantMismatch()
      }
    },

    /** The invariant, once the tenant is resolved: a non-admin caller acts on its own tenant only. */
    async checkResolvedTenant(request: FastifyRequest): Promise<void> {
      const caller = request.principal
      if (caller && request.tenant && !caller.admin && caller.tenant !== request.tenant.id) throw tenantMismatch()
    },

    async requireAdmin(request: FastifyRequest): Promise<void> {
      if (isPublic(request)) return
      const caller = await principal(request)
      if (!caller.admin) throw new ApiError(403, 'ADMIN_REQUIRED', 'Only administrators may do this')
    },

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
    const guards = createGuards(verify, principalOf, fastify.log)

    fastify.decorateRequest('principal', null)
    fastify.decorate('authenticate', guards.authenticate)
    fastify.decorate('requireTenantAccess', guards.requireTenantAccess)
    fastify.decorate('requireAdmin', guards.requireAdmin)
    fastify.decorate('declareBearerAuth', guards.declareBearerAuth)
    fastify.addHook('preValidation', guards.checkResolvedTenant)

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
