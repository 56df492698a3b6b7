import { createPublicKey, type JsonWebKey } from 'node:crypto'
import buildGetJwks from 'get-jwks'

/** Keys kept without a successful refresh confirming them: past this, a long JWKS outage fails closed. */
const KEY_TTL_MS = 24 * 60 * 60 * 1000
const MAX_KEYS = 100
const MIN_RSA_BITS = 2048

export interface KeyStoreLog {
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}

export interface KeyStoreOptions {
  /** The issuer exactly as tokens carry it in `iss`. */
  issuer: string
  /** At most one fetch for unknown key ids per this interval. */
  refetchIntervalMs: number
  fetchTimeoutMs?: number
  /** How often the key set is reloaded in the background once it is in hand. */
  refreshIntervalMs?: number
  /** Backoff of the background retries while the issuer cannot be reached. */
  retryInitialMs?: number
  retryMaxMs?: number
  log?: KeyStoreLog
}

/** Why no key was found for a token: `unavailable` means no key set was ever loaded. */
export class KeyLookupError extends Error {
  constructor(
    readonly reason: 'algorithm' | 'issuer' | 'unknown-key' | 'unavailable',
    message: string
  ) {
    super(message)
    this.name = 'KeyLookupError'
  }
}

/** A JWKS fetch that failed, with a reason an operator can act on. */
export class JwksFetchError extends Error {
  constructor(
    readonly url: string,
    readonly reason: string
  ) {
    super(`GET ${url} failed: ${reason}`)
    this.name = 'JwksFetchError'
  }
}

export const jwksUrl = (issuer: string) => `${issuer.replace(/\/+$/, '')}/.well-known/jwks.json`

const withTrailingSlash = (url: string) => (url.endsWith('/') ? url : `${url}/`)

interface SigningJwk extends JsonWebKey {
  kid: string
}

function networkReason(error: unknown, timeoutMs: number): string {
  const err = error as { name?: string; message?: string; cause?: { message?: string; code?: string } }
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return `no answer within ${timeoutMs} ms`
  return err.cause?.message ?? err.message ?? String(error)
}

/** Cognito names the failure in x-amzn-ErrorType and the body; a 404 there means no such user pool. */
function httpReason(response: Response, text: string): string {
  const amazonType = response.headers.get('x-amzn-errortype')?.split(':')[0]
  let message: string | undefined
  try {
    const body = JSON.parse(text) as { message?: unknown; __type?: unknown }
    if (typeof body.message === 'string') message = body.message
  } catch {
    // not JSON: the status says enough
  }
  const detail = [amazonType, message].filter(Boolean).join(': ').slice(0, 300)
  const hint = response.status === 404 ? ' (no key set at this URL: is the issuer, or the Cognito user pool id, right?)' : ''
  return `HTTP ${response.status}${detail ? ` ${detail}` : ''}${hint}`
}

/** An RSA key meant for signatures with RS256, at least 2048 bits, with its PEM form. */
function usableKey(candidate: unknown): { jwk: SigningJwk; pem: string } | null {
  const jwk = candidate as Partial<SigningJwk> | null
  if (!jwk || typeof jwk !== 'object' || jwk.kty !== 'RSA') return null
  if (typeof jwk.kid !== 'string' || jwk.kid.length === 0 || typeof jwk.n !== 'string' || typeof jwk.e !== 'string') return null
  if ((jwk.use !== undefined && jwk.use !== 'sig') || (jwk.alg !== undefined && jwk.alg !== 'RS256')) return null
  try {
    const key = createPublicKey({ key: { kty: 'RSA', n: jwk.n, e: jwk.e }, format: 'jwk' })
    if ((key.asymmetricKeyDetails?.modulusLength ?? 0) < MIN_RSA_BITS) return null
    return { jwk: jwk as SigningJwk, pem: key.export({ type: 'spki', format: 'pem' }) as string }
  } catch {
    return null
  }
}

/** GET the issuer's key set, keeping only the keys that can verify RS256 tokens. */
export async function fetchSigningKeys(url: string, timeoutMs: number): Promise<{ jwk: SigningJwk; pem: string }[]> {
  let response: Response
  let text: string
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } })
    text = await response.text()
  } catch (error) {
    throw new JwksFetchError(url, networkReason(error, timeoutMs))
  }
  if (!response.ok) throw new JwksFetchError(url, httpReason(response, text))
  let body: { keys?: unknown }
  try {
    body = JSON.parse(text) as { keys?: unknown }
  } catch {
    throw new JwksFetchError(url, 'the answer is not JSON')
  }
  const keys = (Array.isArray(body?.keys) ? body.keys : []).map(usableKey).filter((key) => key !== null)
  if (keys.length === 0) throw new JwksFetchError(url, 'the key set holds no RSA key usable for RS256 signatures')
  return keys
}

/**
 * The issuer's signing keys, as the token verifier asks for them (DESIGN §5).
 *
 * get-jwks holds the keys and checks every lookup against the allowlisted issuer. Its own fetch is
 * not used: it learns one key id per fetch, has no throttle, and its `timeout` option is not a
 * fetch option, so a hanging issuer would hang the lookup. The whole key set is fetched here
 * instead, with a timeout, and written into get-jwks's cache:
 * - at start, and again every `refreshIntervalMs` (keys the issuer dropped are dropped here too);
 * - with backoff while the issuer cannot be reached, logging the URL and the reason;
 * - when a token names an unknown key id, at most once per `refetchIntervalMs`, however many such
 *   tokens arrive; concurrent ones wait for the fetch under way.
 * A failed fetch leaves the keys in hand untouched, so an outage of the issuer does not fail
 * tokens signed with a key already known.
 */
export function createKeyStore(options: KeyStoreOptions) {
  const { issuer, refetchIntervalMs } = options
  const fetchTimeoutMs = options.fetchTimeoutMs ?? 5000
  const refreshIntervalMs = options.refreshIntervalMs ?? 10 * 60 * 1000
  const retryInitialMs = options.retryInitialMs ?? 500
  const retryMaxMs = options.retryMaxMs ?? 30_000
  const log = options.log
  const domain = withTrailingSlash(issuer)
  const url = jwksUrl(issuer)

  const jwks = buildGetJwks({
    max: MAX_KEYS,
    ttl: KEY_TTL_MS,
    issuersWhitelist: [issuer],
    checkIssuer: (candidate: string) => candidate === domain
  } as buildGetJwks.GetJwksOptions)
  const pems = new WeakMap<object, string>()
  let cacheKeys = new Set<string>()
  let loadedAt: number | null = null
  let lastError: JwksFetchError | null = null
  let lastFetchAt = -Infinity
  let inflight: Promise<void> | null = null
  let timer: NodeJS.Timeout | null = null
  let failures = 0
  let stopped = false
  let observeFetch: ((ok: boolean) => void) | null = null

  const cacheKey = (kid: string) => jwks.generateCacheKey('RS256', kid, domain)
  const held = (key: string) => jwks.cache.get(key) !== undefined

  async function fetchAndStore(): Promise<void> {
    lastFetchAt = performance.now()
    try {
      const keys = await fetchSigningKeys(url, fetchTimeoutMs)
      const next = new Set<string>()
      for (const { jwk, pem } of keys) {
        const key = cacheKey(jwk.kid)
        pems.set(jwk, pem)
        jwks.cache.set(key, jwk as buildGetJwks.JWK)
        next.add(key)
      }
      for (const key of cacheKeys) {
        if (next.has(key)) continue
        jwks.cache.delete(key)
        jwks.staleCache.delete(key)
      }
      cacheKeys = next
      loadedAt = Date.now()
      lastError = null
    } catch (error) {
      lastError = error instanceof JwksFetchError ? error : new JwksFetchError(url, String(error))
      observeFetch?.(false)
      throw lastError
    }
    observeFetch?.(true)
  }

  /** Fetches the key set, or joins the fetch under way. */
  function load(): Promise<void> {
    inflight ??= fetchAndStore().finally(() => (inflight = null))
    return inflight
  }

  function schedule(delayMs: number) {
    if (stopped) return
    if (timer) clearTimeout(timer)
    timer = setTimeout(() => void cycle(), delayMs)
    timer.unref()
  }

  async function cycle(): Promise<void> {
    const hadKeys = loadedAt !== null
    try {
      await load()
      if (failures > 0 || !hadKeys) log?.info({ issuer, jwksUrl: url, keys: cacheKeys.size }, `signing keys loaded from ${url}`)
      failures = 0
      schedule(refreshIntervalMs)
    } catch (error) {
      failures++
      const { reason } = error as JwksFetchError
      const retryInMs = Math.min(retryMaxMs, retryInitialMs * 2 ** (failures - 1))
      const line = { issuer, jwksUrl: url, reason, attempt: failures, retryInMs }
      if (loadedAt === null) {
        log?.error(line, `cannot load the signing keys of issuer ${issuer} from ${url}: ${reason}; tokens cannot be verified until it answers`)
      } else {
        log?.warn(line, `refreshing the signing keys from ${url} failed: ${reason}; the keys in hand stay in use`)
      }
      schedule(retryInMs)
    }
  }

  /** A token naming a key id not in hand: one fetch per interval learns the issuer's current keys. */
  async function refetch(): Promise<void> {
    if (!inflight && performance.now() - lastFetchAt >= refetchIntervalMs) load().catch(() => undefined)
    if (inflight) await inflight.catch(() => undefined)
  }

  function notFound(): KeyLookupError {
    if (loadedAt === null) {
      return new KeyLookupError('unavailable', `The signing keys of the issuer are not available${lastError ? ` (${lastError.reason})` : ''}`)
    }
    return new KeyLookupError('unknown-key', 'The token is signed with a key the issuer does not publish')
  }

  return {
    issuer,
    jwksUrl: url,

    /**
     * The PEM public key for a decoded token (fast-jwt's key fetcher). Only RS256 tokens from the
     * configured issuer get this far, so nothing else can make the service fetch.
     */
    async keyFor(decoded: { header: { alg?: unknown; kid?: unknown }; payload: unknown }): Promise<string> {
      const { alg, kid } = decoded.header
      if (alg !== 'RS256') throw new KeyLookupError('algorithm', 'Only RS256 tokens are accepted')
      if (typeof kid !== 'string' || kid.length === 0 || kid.length > 256) {
        throw new KeyLookupError('unknown-key', 'The token names no usable key id')
      }
      const iss = (decoded.payload as { iss?: unknown } | null)?.iss
      if (iss !== issuer) throw new KeyLookupError('issuer', 'The token comes from another issuer')
      const key = cacheKey(kid)
      if (!held(key)) {
        await refetch()
        // Checked again right before the lookup, in the same tick: on a miss get-jwks would fetch by itself.
        if (!held(key)) throw notFound()
      }
      const jwk = await jwks.getJwk({ domain: iss, alg: 'RS256', kid })
      const pem = pems.get(jwk)
      if (!pem) throw new KeyLookupError('unknown-key', 'The token is signed with a key the issuer does not publish')
      return pem
    },

    /** Loads the key set now, then keeps it fresh (or keeps retrying) in the background. */
    async start(): Promise<void> {
      stopped = false
      await cycle()
    },

    stop(): void {
      stopped = true
      if (timer) clearTimeout(timer)
      timer = null
    },

    get loaded(): boolean {
      return loadedAt !== null
    },

    status() {
      return { loaded: loadedAt !== null, keys: cacheKeys.size, loadedAt, lastError: lastError?.reason ?? null }
    },

    /** Told of every fetch of the key set, and whether it succeeded (for metrics). */
    observeFetches(observer: (ok: boolean) => void): void {
      observeFetch = observer
    }
  }
}

export type KeyStore = ReturnType<typeof createKeyStore>
