import { isIPv6 } from 'node:net'
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import { Redis } from 'ioredis'
import { ApiError } from '../schemas/errors.ts'
import type { Log } from './log.ts'

/**
 * Whose budget a request spends. Only what a guard verified counts: the tenant the request was
 * resolved to once its token was accepted (a token's own tenant, or the tenant an admin acts on),
 * else the verified caller. Requests without a verified token are counted per client address,
 * never per the X-Tenant-ID they claim, so nobody can spend another tenant's budget by naming it.
 */
export function rateLimitKey(request: FastifyRequest): string {
  // Routes of plugins registered before the decorators (Swagger UI's) see them as undefined.
  const caller = request.principal ?? null
  if (caller === null) return `ip:${clientAddressKey(request.ip)}`
  if (request.tenant) return `tenant:${request.tenant.id}`
  if (caller.tenant !== null && !caller.admin) return `tenant:${caller.tenant}`
  return `caller:${caller.subject}`
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

/** A request counted in a window: how many the key has made in it, and the milliseconds it has left. */
type Counted = (error: Error | null, current: number, ttlMs: number) => void

/** Fixed-window counters. `incr` may call back synchronously (memory) or later (Redis). */
export interface WindowStore {
  incr(key: string, windowMs: number, counted: Counted): void
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

  incr(key: string, windowMs: number, counted: Counted): void {
    const now = Date.now()
    let window = this.#windows.get(key)
    if (window === undefined || window.endsAt <= now) {
      window = { count: 0, endsAt: now + windowMs }
      this.#windows.delete(key)
      this.#windows.set(key, window)
      if (this.#windows.size > MEMORY_STORE_KEYS) this.#windows.delete(this.#windows.keys().next().value as string)
    }
    window.count++
    counted(null, window.count, window.endsAt - now)
  }
}

/** INCR, starting the window's expiry on its first request; answers the count and the time left. */
const COUNT_IN_WINDOW = `
local current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {current, tonumber(ARGV[1])}
end
return {current, redis.call('PTTL', KEYS[1])}
`

type RedisWithWindows = Redis & {
  countInWindow(key: string, windowMs: number, callback: (error: Error | null | undefined, result?: [number, number]) => void): void
}

/** Counters shared by every instance through Redis: one atomic script call per request. */
export class RedisStore implements WindowStore {
  readonly #redis: RedisWithWindows
  readonly #prefix: string

  constructor(redis: Redis, prefix: string) {
    redis.defineCommand('countInWindow', { numberOfKeys: 1, lua: COUNT_IN_WINDOW })
    this.#redis = redis as RedisWithWindows
    this.#prefix = prefix
  }

  incr(key: string, windowMs: number, counted: Counted): void {
    this.#redis.countInWindow(this.#prefix + key, windowMs, (error, result) => {
      if (error || !result) counted(error ?? new Error('no answer from Redis'), 0, 0)
      else counted(null, result[0], result[1])
    })
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
  windowMs: number
  /** The window as configured, for messages: `1 minute`, or `60000` (milliseconds). */
  windowLabel: string
}

/**
 * The onRequest hook that counts a request against its key's budget: x-ratelimit-limit,
 * -remaining and -reset on every answer; past the budget, 429 RATE_LIMITED with Retry-After. A
 * store error lets the request through (fail open). Callback style: with counters in memory it
 * completes without a promise.
 */
export function createRateLimitHook(store: WindowStore, settings: RateLimitSettings) {
  const { max, windowMs, windowLabel } = settings
  const limit = String(max)
  const per = /^\d+$/.test(windowLabel) ? `${windowLabel} ms` : windowLabel
  return function rateLimit(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    store.incr(rateLimitKey(request), windowMs, (error, current, ttlMs) => {
      if (error) return done()
      const resetSeconds = Math.max(0, Math.ceil(ttlMs / 1000))
      reply.header('x-ratelimit-limit', limit)
      reply.header('x-ratelimit-remaining', max > current ? max - current : 0)
      reply.header('x-ratelimit-reset', resetSeconds)
      if (current <= max) return done()
      done(
        new ApiError(
          'RATE_LIMITED',
          `Too many requests ${request.principal ? 'for this tenant' : 'from this address'}: at most ${max} per ${per}; retry in ${formatSeconds(resetSeconds)}`,
          { 'retry-after': String(Math.max(1, resetSeconds)) }
        )
      )
    })
  }
}

const formatSeconds = (seconds: number) => (seconds < 60 ? `${seconds} s` : `${Math.ceil(seconds / 60)} min`)
