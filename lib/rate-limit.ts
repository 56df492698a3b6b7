import { isIPv6 } from 'node:net'
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { Redis } from 'ioredis'
import { ApiError } from '../schemas/errors.ts'
import type { Log } from './log.ts'

/**
 * Whose budget a request spends, decided before its tenant is looked up, so that every request to
 * a limited route counts, those refused for an unknown or suspended tenant included, and a flood of
 * made-up tenant ids costs no database work past the budget. Only what a guard verified counts: a
 * token bound to a tenant spends that tenant's budget (and its caller's share of it, see
 * callerShareKey); an admin's token, or one bound to no tenant, its caller's own. Requests without
 * a verified token, and requests a guard refused (see createRateLimit's countRefusal), are counted
 * per client address, never per the X-Tenant-ID they claim, so nobody can spend another tenant's
 * budget by naming it.
 */
export function rateLimitKey(request: FastifyRequest): string {
  // Routes of plugins registered before the decorators (Swagger UI's) see them as undefined.
  const caller = request.principal ?? null
  if (caller === null) return addressKey(request)
  if (caller.tenant !== null && !caller.admin) return `tenant:${caller.tenant}`
  return `caller:${caller.subject}`
}

/** The budget of the request's client address: anonymous requests, and every request a guard refused. */
export const addressKey = (request: FastifyRequest) => `ip:${clientAddressKey(request.ip)}`

/** The key of a tenant-bound caller's own share of its tenant's budget; null for every other request. */
export function callerShareKey(request: FastifyRequest): string | null {
  const caller = request.principal ?? null
  if (caller === null || caller.tenant === null || caller.admin) return null
  return `tenant:${caller.tenant}:caller:${caller.subject}`
}

/**
 * The budget of a client address: an IPv4 address as it is, an IPv4-mapped IPv6 address as its IPv4
 * address, any other IPv6 address by its /56 prefix, because a single client usually holds a whole
 * prefix and could otherwise spend a fresh budget from each of its addresses.
 */
export function clientAddressKey(ip: string): string {
  if (!ip.includes(':')) return ip
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(ip)
  if (mapped) return mapped[1]
  const address = ip.replace(/%.*$/, '').toLowerCase()
  if (!isIPv6(address)) return address
  const [before, after] = address.split('::')
  const groups = (part: string | undefined) => (part ? part.split(':') : [])
  // A dotted IPv4 tail stands for two groups; it lies past the prefix, whose 56 bits are in the first four.
  const width = (list: string[]) => list.reduce((sum, group) => sum + (group.includes('.') ? 2 : 1), 0)
  const head = groups(before)
  const tail = groups(after)
  const full = after === undefined ? head : [...head, ...Array<string>(8 - width(head) - width(tail)).fill('0'), ...tail]
  const prefix = full.slice(0, 4).map((group) => parseInt(group, 16))
  prefix[3] &= 0xff00
  return `${prefix.map((group) => group.toString(16)).join(':')}::/56`
}

/**
 * A request counted in a window: how many the key has made in it, and the milliseconds it has
 * left; `overShare` when it was refused by the caller's share and the key was not counted.
 */
type Counted = (error: Error | null, current: number, ttlMs: number, overShare: boolean) => void

/** A caller's share of a key's budget: its own counter, and the most it may count in a window. */
export interface Share {
  key: string
  max: number
}

/**
 * Fixed-window counters. `incr` may call back synchronously (memory) or later (Redis). With a
 * share, the share's counter is counted first, and the key only when the share is not spent: a
 * caller past its share spends nothing more of the budget it shares with others.
 */
export interface WindowStore {
  incr(key: string, windowMs: number, counted: Counted, share?: Share | null): void
}

/** Distinct keys counted in memory; past it the windows that started longest ago are forgotten. */
const MEMORY_STORE_KEYS = 50_000

/**
 * Fixed-window counters in memory, for instances without Redis. Answers synchronously. A key is
 * (re)inserted only when its window starts, so the map's order is the order windows started and
 * a request within a window is one lookup and one increment: moving the key on every request
 * (delete and set) measured slower than everything else this hook does (BENCHMARKS.md, C5).
 */
export class MemoryStore implements WindowStore {
  readonly #windows = new Map<string, { count: number; endsAt: number }>()

  incr(key: string, windowMs: number, counted: Counted, share?: Share | null): void {
    const now = Date.now()
    if (share) {
      const own = this.#count(share.key, windowMs, now)
      if (own.count > share.max) return counted(null, own.count, own.endsAt - now, true)
    }
    const window = this.#count(key, windowMs, now)
    counted(null, window.count, window.endsAt - now, false)
  }

  #count(key: string, windowMs: number, now: number) {
    let window = this.#windows.get(key)
    if (window === undefined || window.endsAt <= now) {
      window = { count: 0, endsAt: now + windowMs }
      this.#windows.delete(key)
      this.#windows.set(key, window)
      if (this.#windows.size > MEMORY_STORE_KEYS) this.#windows.delete(this.#windows.keys().next().value as string)
    }
    window.count++
    return window
  }
}

/**
 * INCR, starting the window's expiry on its first request; answers the count and the time left.
 * With a second key (a caller's share, whose most is ARGV[2]), that one is counted first, and the
 * first only when the share is not spent; the third answer is 1 when the share refused.
 */
const COUNT_IN_WINDOW = `
local function count(key)
  local current = redis.call('INCR', key)
  if current == 1 then
    redis.call('PEXPIRE', key, ARGV[1])
    return current, tonumber(ARGV[1])
  end
  return current, redis.call('PTTL', key)
end
if KEYS[2] then
  local own, ownTtl = count(KEYS[2])
  if own > tonumber(ARGV[2]) then return {own, ownTtl, 1} end
end
local current, ttl = count(KEYS[1])
return {current, ttl, 0}
`

type CountAnswer = (error: Error | null | undefined, result?: [number, number, number]) => void
type RedisWithWindows = Redis & {
  countInWindow(key: string, windowMs: number, callback: CountAnswer): void
  countInWindowShared(key: string, shareKey: string, windowMs: number, shareMax: number, callback: CountAnswer): void
}

/** Counters shared by every instance through Redis: one atomic script call per request. */
export class RedisStore implements WindowStore {
  readonly #redis: RedisWithWindows
  readonly #prefix: string

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand('countInWindow', { numberOfKeys: 1, lua: COUNT_IN_WINDOW })
    redis.defineCommand('countInWindowShared', { numberOfKeys: 2, lua: COUNT_IN_WINDOW })
    this.#redis = redis as RedisWithWindows
    this.#prefix = prefix
  }

  incr(key: string, windowMs: number, counted: Counted, share?: Share | null): void {
    const answer: CountAnswer = (error, result) => {
      if (error || !result) counted(error ?? new Error('no answer from Redis'), 0, 0, false)
      else counted(null, result[0], result[1], result[2] === 1)
    }
    if (share) this.#redis.countInWindowShared(this.#prefix + key, this.#prefix + share.key, windowMs, share.max, answer)
    else this.#redis.countInWindow(this.#prefix + key, windowMs, answer)
  }
}

const REDIS_CONNECT_TIMEOUT_MS = 2000

/**
 * A Redis client that never makes a request wait for Redis: while it is disconnected commands
 * fail at once (no offline queue), a command that hangs gives up after half a second, and it
 * reconnects in the background. Each failure lets the request through: an outage of Redis
 * loosens the limit for its duration instead of taking the service down with it.
 */
export function createRedis(url: string, log: Log) {
  const redis = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: 500,
    connectTimeout: REDIS_CONNECT_TIMEOUT_MS,
    retryStrategy: (attempt) => Math.min(attempt * 200, 5000)
  })
  let healthy = true
  let closing = false
  // Logged once per outage, not once per reconnection attempt or per request.
  const lost = (error?: Error) => {
    if (!healthy || closing) return
    healthy = false
    log.warn({ err: error }, 'rate-limit store (Redis) unreachable: requests are not rate limited until it is back')
  }
  redis.on('error', lost)
  redis.on('close', () => lost())
  redis.on('ready', () => {
    if (healthy) return
    healthy = true
    log.info('rate-limit store (Redis) reachable again')
  })
  return {
    redis,
    /**
     * Settles once Redis is ready, or after the connect timeout and a little more, whichever comes
     * first: long enough for a few attempts (a slow first answer to the ready check fails an
     * attempt, and the client retries within 200 ms), and short enough for a start with Redis down
     * to go on, its requests served unlimited. Without this wait a new instance would serve its
     * first requests uncounted while it connects (commands fail at once, with no offline queue).
     */
    connected(): Promise<void> {
      if (redis.status === 'ready') return Promise.resolve()
      return new Promise((resolve) => {
        const settle = () => {
          clearTimeout(timer)
          redis.off('ready', settle)
          redis.off('end', settle)
          resolve()
        }
        const timer = setTimeout(settle, REDIS_CONNECT_TIMEOUT_MS + 500)
        redis.once('ready', settle)
        redis.once('end', settle)
      })
    },
    close() {
      closing = true
      redis.disconnect()
    }
  }
}

export interface RateLimitSettings {
  max: number
  /** The fraction of a tenant's budget one of its callers may spend (RATE_LIMIT_CALLER_SHARE). */
  callerShare: number
  windowMs: number
  /** The window as configured, for messages: `1 minute`, or `60000` (milliseconds). */
  windowLabel: string
}

/**
 * The rate limit's two hooks.
 *
 * `rateLimit`, the onRequest hook that counts a request against its key's budget:
 * x-ratelimit-limit, -remaining and -reset on every answer; past the budget, 429 RATE_LIMITED with
 * Retry-After. A store error lets the request through (fail open). Callback style: with counters
 * in memory it completes without a promise.
 *
 * `countRefusal`, for the requests a guard refused before `rateLimit` could run (a missing, bad or
 * forged token, another tenant's, not an admin's): each is counted against its client address,
 * the budget anonymous requests spend, whatever its token claims, since nothing it claims was
 * verified. Within the budget the refusal is answered as it is; past it, 429. So a flood of forged
 * tokens is limited like any other, while accepted requests pay nothing for it: they never reach
 * this hook, and still spend their tenant's budget only, so refusals from an address shared with
 * genuine users (a NAT, a proxy) cannot lock those users out.
 */
export function createRateLimit(store: WindowStore, settings: RateLimitSettings) {
  const { max, windowMs, windowLabel } = settings
  const limit = String(max)
  const per = /^\d+$/.test(windowLabel) ? `${windowLabel} ms` : windowLabel
  const shareMax = Math.max(1, Math.floor(max * settings.callerShare))
  const shared = shareMax < max
  const refuse = (message: string, ttlMs: number) => {
    const resetSeconds = Math.max(1, Math.ceil(ttlMs / 1000))
    return new ApiError('RATE_LIMITED', `${message}; retry in ${formatSeconds(resetSeconds)}`, { 'retry-after': String(resetSeconds) })
  }
  const headers = (reply: FastifyReply, current: number, ttlMs: number, overShare: boolean) => {
    reply.header('x-ratelimit-limit', limit)
    reply.header('x-ratelimit-remaining', overShare ? 0 : max > current ? max - current : 0)
    reply.header('x-ratelimit-reset', Math.max(0, Math.ceil(ttlMs / 1000)))
  }
  const whose = (key: string) => (key.startsWith('ip:') ? 'from this address' : key.startsWith('tenant:') ? 'for this tenant' : 'from this caller')

  return {
    rateLimit(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
      const shareKey = shared ? callerShareKey(request) : null
      const key = rateLimitKey(request)
      store.incr(
        key,
        windowMs,
        (error, current, ttlMs, overShare) => {
          if (error) return done()
          headers(reply, current, ttlMs, overShare)
          if (overShare) {
            return done(refuse(`Too many requests from this caller: at most ${shareMax} of the tenant's ${max} per ${per}`, ttlMs))
          }
          if (current <= max) return done()
          done(refuse(`Too many requests ${whose(key)}: at most ${max} per ${per}`, ttlMs))
        },
        shareKey === null ? null : { key: shareKey, max: shareMax }
      )
    },

    countRefusal(request: FastifyRequest, reply: FastifyReply, refusal: Error, done: HookHandlerDoneFunction): void {
      store.incr(addressKey(request), windowMs, (error, current, ttlMs) => {
        if (error) return done(refusal)
        headers(reply, current, ttlMs, false)
        if (current <= max) return done(refusal)
        done(refuse(`Too many requests from this address: at most ${max} per ${per}`, ttlMs))
      })
    }
  }
}

const formatSeconds = (seconds: number) => (seconds < 60 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`)
