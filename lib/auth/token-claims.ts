import { ApiError, serviceUnavailable } from '../../schemas/errors.ts'
import { KeyLookupError } from './jwks.ts'

/** Who is calling, as an accepted token says. */
export interface Principal {
  subject: string
  username: string | null
  tokenUse: 'access' | 'id'
  /** The tenant the token is bound to (TENANT_CLAIM), null when it names none. */
  tenant: string | null
  /** `cognito:groups`, the only claim groups are read from. */
  groups: readonly string[]
  admin: boolean
  /** `iat`: when the token was issued, in seconds since the epoch. */
  issuedAt: number
}

export interface ClaimRules {
  clientId: string
  tokenUse: 'access' | 'id' | 'any'
  tenantClaim: string
  adminGroup: string
  /** The longest lifetime (`exp` − `iat`) accepted (JWT_MAX_AGE). */
  maxAgeMs: number
  /** Leeway for an `iat` ahead of this clock. */
  clockToleranceMs: number
  now?: () => number
}

const REALM = 'tenant-service'

/** RFC 6750: every 401 says which scheme to use and, when a token was sent, why it was refused. */
const challenge = (error?: string, description?: string) =>
  `Bearer realm="${REALM}"${error ? `, error="${error}"` : ''}${description ? `, error_description="${description}"` : ''}`

export const tokenMissing = () =>
  new ApiError('TOKEN_MISSING', 'Send a token in the Authorization header: Bearer <token>', {
    'www-authenticate': challenge()
  })

export const tokenInvalid = (message: string) =>
  new ApiError('TOKEN_INVALID', message, {
    'www-authenticate': challenge('invalid_token', message.replace(/["\\]/g, ''))
  })

export const tokenExpired = () =>
  new ApiError('TOKEN_EXPIRED', 'The token has expired', {
    'www-authenticate': challenge('invalid_token', 'The token has expired')
  })

// A compact JWS: three base64url segments, the signature possibly empty (alg "none"; refused later
// with a precise reason).
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/
const MAX_TOKEN_LENGTH = 8192

/**
 * The token from `Authorization: Bearer <token>`, the only place one is read from: never the
 * query string, a cookie or the body.
 */
export function bearerToken(authorization: string | undefined): string {
  if (authorization === undefined || !/^bearer(\s|$)/i.test(authorization)) throw tokenMissing()
  const token = authorization.slice(6).trim()
  if (token === '') throw tokenMissing()
  if (token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) throw tokenInvalid('The token is malformed')
  return token
}

const KEY_REASONS: Record<KeyLookupError['reason'], string> = {
  algorithm: 'Only RS256 tokens are accepted',
  issuer: 'The token is not from the trusted issuer',
  'unknown-key': 'The token is signed with a key the issuer does not publish',
  unavailable: 'The signing keys of the issuer are not available yet'
}

/** fast-jwt's verdicts in the words of the API; the message never repeats the token. */
const VERIFY_REASONS: Record<string, string> = {
  FAST_JWT_MALFORMED: 'The token is malformed',
  FAST_JWT_INVALID_PAYLOAD: 'The token is malformed',
  FAST_JWT_INVALID_TYPE: 'The token is malformed',
  FAST_JWT_INVALID_ALGORITHM: 'Only RS256 tokens are accepted',
  FAST_JWT_MISSING_SIGNATURE: 'The token is not signed',
  FAST_JWT_INVALID_SIGNATURE: 'The token signature is invalid',
  FAST_JWT_INVALID_KEY: 'The token signature is invalid',
  FAST_JWT_INACTIVE: 'The token is not valid yet',
  FAST_JWT_INVALID_CLAIM_VALUE: 'The token is not from the trusted issuer',
  FAST_JWT_INVALID_CLAIM_TYPE: 'The token has a claim of the wrong type',
  FAST_JWT_MISSING_REQUIRED_CLAIM: 'The token lacks a required claim (iss, exp, iat)',
  FAST_JWT_INVALID_CRIT_HEADER: 'The token has a critical header this service does not understand'
}

/**
 * Errors that depend only on the token's bytes, so remembering them for a repeated token is safe.
 * A missing key or a not-yet-valid token may succeed later and is never remembered.
 */
export const DETERMINISTIC_TOKEN_ERRORS = new Set([
  'FAST_JWT_INVALID_ALGORITHM',
  'FAST_JWT_MISSING_SIGNATURE',
  'FAST_JWT_INVALID_SIGNATURE',
  'FAST_JWT_EXPIRED',
  'FAST_JWT_INVALID_CLAIM_VALUE',
  'FAST_JWT_INVALID_CLAIM_TYPE',
  'FAST_JWT_MISSING_REQUIRED_CLAIM',
  'FAST_JWT_INVALID_CRIT_HEADER'
])

/** The client-facing error for a failed verification; null when it is not a verification failure. */
export function verificationError(error: unknown): ApiError | null {
  const err = error as { code?: unknown; originalError?: unknown }
  if (err?.code === 'FAST_JWT_EXPIRED') return tokenExpired()
  if (err?.code === 'FAST_JWT_KEY_FETCHING_ERROR') {
    const cause = err.originalError
    if (cause instanceof KeyLookupError) {
      if (cause.reason === 'unavailable') {
        return serviceUnavailable('AUTH_UNAVAILABLE', 'Tokens cannot be verified right now: the signing keys of the issuer are not available', 5)
      }
      return tokenInvalid(KEY_REASONS[cause.reason])
    }
    return null
  }
  if (typeof err?.code === 'string' && err.code in VERIFY_REASONS) return tokenInvalid(VERIFY_REASONS[err.code])
  return null
}

const isStringArray = (value: unknown): value is string[] => Array.isArray(value) && value.every((item) => typeof item === 'string')

/**
 * Turns a verified payload into the caller, applying the Cognito rules (DESIGN §5): an access token
 * must carry `client_id` = JWT_CLIENT_ID, an ID token `aud` = JWT_CLIENT_ID, as JWT_TOKEN_USE
 * allows; anything else (`refresh`, none) is refused. Admin comes from `cognito:groups` only.
 *
 * The verifier hands back the same payload object for a token it has already verified, so the
 * verdict is remembered per payload and a repeated token costs a WeakMap lookup.
 */
export function createPrincipalReader(rules: ClaimRules) {
  const now = rules.now ?? Date.now
  const verdicts = new WeakMap<object, Principal | ApiError>()

  function read(payload: Record<string, unknown>): Principal | ApiError {
    const tokenUse = payload.token_use
    if (tokenUse === 'access') {
      if (rules.tokenUse === 'id') return tokenInvalid('Only ID tokens are accepted')
      if (payload.client_id !== rules.clientId) return tokenInvalid('The token was not issued to this app client')
    } else if (tokenUse === 'id') {
      if (rules.tokenUse === 'access') return tokenInvalid('Only access tokens are accepted')
      const aud = payload.aud
      if (!(aud === rules.clientId || (isStringArray(aud) && aud.includes(rules.clientId)))) {
        return tokenInvalid('The token was not issued to this app client')
      }
    } else {
      return tokenInvalid('Only access and ID tokens are accepted (token_use)')
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') return tokenInvalid('The token names no subject (sub)')
    // When it was issued bounds what it may do: no later than now, no longer than JWT_MAX_AGE, and
    // never before its tenant was created (checked where the tenant is known: tenant-context).
    const iat = payload.iat
    if (typeof iat !== 'number' || !Number.isFinite(iat)) return tokenInvalid('The token lacks its issue time (iat)')
    if (iat * 1000 > now() + rules.clockToleranceMs) return tokenInvalid('The token is issued in the future (iat)')
    if (typeof payload.exp === 'number' && (payload.exp - iat) * 1000 > rules.maxAgeMs) {
      return tokenInvalid('The token lives longer than this service accepts (exp - iat)')
    }

    const groupsClaim = payload['cognito:groups']
    const groups = isStringArray(groupsClaim) ? Object.freeze([...groupsClaim]) : Object.freeze([] as string[])
    const tenant = payload[rules.tenantClaim]
    const username = payload.username ?? payload['cognito:username']
    return Object.freeze({
      subject: payload.sub,
      username: typeof username === 'string' ? username : null,
      tokenUse,
      tenant: typeof tenant === 'string' && tenant !== '' ? tenant : null,
      groups,
      admin: groups.includes(rules.adminGroup),
      issuedAt: iat
    })
  }

  return function principalOf(payload: Record<string, unknown>): Principal {
    let verdict = verdicts.get(payload)
    if (verdict === undefined) {
      verdict = read(payload)
      verdicts.set(payload, verdict)
    }
    if (verdict instanceof ApiError) throw verdict
    return verdict
  }
}

export interface AcceptedTokensOptions {
  /** The longest a token is remembered; it also bounds how long a key the issuer withdrew keeps working. */
  ttlMs?: number
  /** Leeway past `exp`, as the verifier allows it. */
  clockToleranceMs: number
  /** Bytes of token text remembered at most; past it the oldest entries go. */
  maxBytes?: number
  now?: () => number
}

/**
 * Callers of tokens accepted recently, by the token's text. The verifier keeps a cache too, but
 * finds a token by its SHA-256 and hands back a payload still to be read: together more CPU per
 * request than everything else authentication does (BENCHMARKS.md, C10). A Map keyed by the token text
 * costs a string hash. An entry lives for `ttlMs` at most and never past the token's `exp` (plus
 * the clock tolerance the verifier grants), so nothing is accepted that the verifier would refuse,
 * but for a key withdrawn less than `ttlMs` ago. Only accepted tokens enter: a flood of forged ones
 * cannot fill it.
 */
export function createAcceptedTokens(options: AcceptedTokensOptions) {
  const ttlMs = options.ttlMs ?? 60_000
  const maxBytes = options.maxBytes ?? 16 * 1024 * 1024
  const now = options.now ?? Date.now
  const entries = new Map<string, { caller: Principal; until: number }>()
  let bytes = 0

  const forget = (token: string) => {
    if (entries.delete(token)) bytes -= token.length
  }

  return {
    get(token: string): Principal | undefined {
      const entry = entries.get(token)
      if (entry === undefined) return undefined
      if (entry.until > now()) return entry.caller
      forget(token)
      return undefined
    },
    /** `exp` is the token's claim, in seconds. */
    remember(token: string, caller: Principal, exp: unknown): void {
      const at = now()
      const until = Math.min(at + ttlMs, typeof exp === 'number' ? exp * 1000 + options.clockToleranceMs : at)
      if (until <= at || token.length > maxBytes) return
      forget(token)
      while (bytes + token.length > maxBytes) forget(entries.keys().next().value as string)
      entries.set(token, { caller, until })
      bytes += token.length
    },
    get size() {
      return entries.size
    }
  }
}

export type AcceptedTokens = ReturnType<typeof createAcceptedTokens>
