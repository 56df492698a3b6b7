import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import { ApiError, errors, withErrorCodes } from '../../schemas/errors.ts'
import type { Log } from '../log.ts'
import { checkTenantId } from '../tenants/index.ts'
import { bearerToken, tokenInvalid, verificationError, type AcceptedTokens, type Principal } from './token-claims.ts'

/** What any guard answers a caller it cannot verify with. */
const TOKEN_CODES = ['TOKEN_MISSING', 'TOKEN_INVALID', 'TOKEN_EXPIRED', 'AUTH_UNAVAILABLE'] as const
/** What each guard answers a verified caller it refuses with. */
const GUARD_CODES = {
  any: [],
  tenant: ['TENANT_CLAIM_MISSING', 'TENANT_MISMATCH'],
  admin: ['ADMIN_REQUIRED']
} as const

type VerifyToken = (token: string) => Promise<Record<string, unknown>>

/**
 * What becomes of a guard's refusal: `done(refusal)` answers it, `done(other)` answers something
 * else instead (the rate limit's 429). Called only for refused requests.
 */
export type RefusalHook = (request: FastifyRequest, reply: FastifyReply, refusal: Error, done: HookHandlerDoneFunction) => void

const answerRefusal: RefusalHook = (_request, _reply, refusal, done) => done(refusal)

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
  log: Log & { error(obj: object, msg?: string): void },
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

  let refused = answerRefusal

  /** A guard as an onRequest hook: `check` throws to refuse the caller. */
  function guard(check: (request: FastifyRequest, caller: Principal) => void) {
    const checked = (request: FastifyRequest, reply: FastifyReply, caller: Principal, done: HookHandlerDoneFunction) => {
      try {
        check(request, caller)
      } catch (error) {
        return refused(request, reply, error as Error, done)
      }
      done()
    }
    return function guardHook(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
      if (isPublic(request)) return done()
      let caller: Principal | Promise<Principal>
      try {
        caller = principal(request)
      } catch (error) {
        return refused(request, reply, error as Error, done)
      }
      if (caller instanceof Promise) {
        caller.then(
          (known) => checked(request, reply, known, done),
          (error: Error) => refused(request, reply, error, done)
        )
      } else checked(request, reply, caller, done)
    }
  }

  return {
    /**
     * Hands every refusal of the guards to `hook` before it is answered (the rate limit counts it
     * there). Accepted requests never reach it.
     */
    onRefusal(hook: RefusalHook): void {
      refused = hook
    },

    authenticate: guard(() => undefined),

    /**
     * Whether the request carries a valid admin token; false for none, an invalid one or any other
     * caller. For public routes that tell admins more than anyone else (readiness details).
     */
    async callerIsAdmin(request: FastifyRequest): Promise<boolean> {
      if (request.headers.authorization === undefined) return false
      try {
        return (await principal(request)).admin
      } catch {
        return false
      }
    },

    requireTenantAccess: guard((request, caller) => {
      if (caller.admin) return
      if (caller.tenant === null) {
        throw new ApiError('TENANT_CLAIM_MISSING', 'The token is not bound to any tenant')
      }
      // Anything but one well-formed id is left to tenant resolution, which answers 400 for it and
      // resolves nothing; resolution checks the caller against the tenant it resolved, too.
      const header = request.headers['x-tenant-id']
      if (typeof header === 'string' && header !== caller.tenant && checkTenantId(header) === null) {
        throw errors.tenantMismatch()
      }
    }),

    requireAdmin: guard((_request, caller) => {
      if (!caller.admin) throw new ApiError('ADMIN_REQUIRED', 'Only administrators may do this')
    }),

    /**
     * An onRoute hook for a guarded folder: documents the bearer requirement of its routes, and the
     * codes the guard answers with, in OpenAPI.
     */
    declareBearerAuth(guard: keyof typeof GUARD_CODES) {
      return function declareBearerAuth(route: RouteOptions): void {
        if (route.config?.auth === false) return
        const schema = route.schema ?? {}
        route.schema = {
          ...schema,
          security: [{ bearerAuth: [] }],
          response: withErrorCodes(schema.response as Record<string, unknown> | undefined, ...TOKEN_CODES, ...GUARD_CODES[guard])
        }
      }
    }
  }
}
