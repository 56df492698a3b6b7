import fastifyRateLimit, { normalizeIP, type FastifyRateLimitStore, type RateLimitPluginOptions } from '@fastify/rate-limit'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { durationMs, type Config } from '../../schemas/env.ts'
import { ApiError, ErrorRef } from '../../schemas/error.ts'

/**
 * Whose budget a request spends. Only what a guard verified counts: the tenant the request was
 * resolved to once its token was accepted (a token's own tenant, or the tenant an admin acts on),
 * else the verified caller. Requests without a verified token are counted per client address,
 * never per the X-Tenant-ID they claim, so nobody can spend another tenant's budget by naming it.
 */
export function rateLimitKey(request: FastifyRequest): string {
  // Routes of plugins registered before the decorators (Swagger UI's) see them as undefined.
  const caller = request.principal ?? null
  if (caller === null) return `ip:${normalizeIP(request.ip)}`
  if (request.tenant) return `tenant:${request.tenant.id}`
  if (caller.tenant !== null && !caller.admin) return `tenant:${caller.tenant}`
  return `caller:${caller.subject}`
}

/**
 * A Redis client that never makes a request wait for Redis: while it is disconnected commands
 * fail at once (no offline queue), a command that hangs gives up after half a second, and it
 * reconnects in the background. Each failure lets the request through (skipOnError): an outage
 * of Redis loosens the limit for its duration instead of taking the service down with it.
 */
export function createRedis(url: string, log: FastifyBaseLogger) {
  const redis = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: 500,
    connectTimeout: 2000,
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
    close() {
      closing = true
      redis.disconnect()
    }
  }
}

/** Distinct keys counted in memory; past it the least recently seen are forgotten. */
const MEMORY_STORE_KEYS = 50_000

/**
 * Fixed-window counters in memory, for instances without Redis. Every answer is a fresh object:
 * the plugin's own in-memory store hands back one shared object per key, so requests counted in
 * the same tick all read the last one's count, and a burst within the limit is refused.
 */
export class MemoryStore implements FastifyRateLimitStore {
  readonly #windows = new Map<string, { count: number; endsAt: number }>()

  incr(key: string, callback: (error: Error | null, result?: { current: number; ttl: number }) => void, timeWindow: number): void {
    const now = Date.now()
    let window = this.#windows.get(key)
    if (window === undefined || window.endsAt <= now) window = { count: 0, endsAt: now + timeWindow }
    // Re-inserted, so the map's order stays least recently used first.
    this.#windows.delete(key)
    this.#windows.set(key, window)
    if (this.#windows.size > MEMORY_STORE_KEYS) this.#windows.delete(this.#windows.keys().next().value as string)
    window.count++
    callback(null, { current: window.count, ttl: window.endsAt - now })
  }

  child(): MemoryStore {
    return new MemoryStore()
  }
}

/** @fastify/rate-limit options: per verified tenant, after authentication, fail-open on store errors. */
export function rateLimitOptions(config: Config, redis?: Redis): RateLimitPluginOptions {
  const window = config.RATE_LIMIT_WINDOW.trim()
  return {
    global: true,
    // Added to each route after its folder's hooks (Fastify runs route-level hooks last), so the
    // guards have verified the token and the tenant is resolved when the key is taken, while the
    // body is not read yet.
    hook: 'onRequest',
    max: config.RATE_LIMIT_MAX,
    timeWindow: durationMs(window),
    keyGenerator: rateLimitKey,
    skipOnError: true,
    ...(redis ? { redis, nameSpace: config.RATE_LIMIT_REDIS_PREFIX } : { store: MemoryStore }),
    errorResponseBuilder: (request, context) =>
      new ApiError(
        429,
        'RATE_LIMITED',
        `Too many requests ${request.principal ? 'for this tenant' : 'from this address'}: at most ${context.max} per ${/^\d+$/.test(window) ? `${window} ms` : window}; retry in ${context.after}`,
        { 'retry-after': String(Math.max(1, Math.ceil(context.ttl / 1000))) }
      )
  }
}

/** Every limited route documents its 429; routes with `config: { rateLimit: false }` are exempt. */
function declareRateLimited(route: RouteOptions): void {
  if (route.config?.rateLimit === false || !route.schema?.response) return
  route.schema = { ...route.schema, response: { 429: ErrorRef, ...(route.schema.response as object) } }
}

/**
 * Per-tenant rate limiting. Counters live in memory, or in Redis when REDIS_URL is set so that
 * every instance shares them. Health probes and /metrics opt out with `config: { rateLimit: false }`.
 */
export default fp(
  async function rateLimit(fastify: FastifyInstance) {
    const { config } = fastify
    const store = config.REDIS_URL ? createRedis(config.REDIS_URL, fastify.log) : undefined
    if (store) {
      fastify.addHook('onClose', async () => {
        store.close()
      })
    }
    fastify.addHook('onRoute', declareRateLimited)
    await fastify.register(fastifyRateLimit, rateLimitOptions(config, store?.redis))
  },
  { name: 'rate-limit' }
)
