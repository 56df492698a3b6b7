import type { FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { durationMs } from '../../schemas/env.ts'
import { createRateLimit, createRedis, MemoryStore, RedisStore } from '../../lib/rate-limit.ts'
import { withErrorCodes } from '../../schemas/errors.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** `false` exempts a route from rate limiting (health probes, /metrics). */
    rateLimit?: boolean
  }
}

/**
 * Per-tenant rate limiting (DESIGN §7). Counters live in memory, or in Redis when REDIS_URL is set
 * so that every instance shares them. Each route gets the hook as a route-level onRequest hook,
 * which Fastify runs after its folder's hooks (the guards have verified the token) and before
 * tenant resolution (placed in front of `resolveTenant`, which route folders add at route level
 * too): a request refused for its tenant counts like any other, and the body is not read yet. A
 * request the guards refuse never reaches that hook: the guards hand it to `countRefusal`, which
 * counts it against its client address.
 * Health probes and /metrics opt out with `config: { rateLimit: false }`, and then carry no hook.
 */
export default fp(
  async function rateLimit(fastify: FastifyInstance) {
    const { config } = fastify
    const redis = config.REDIS_URL ? createRedis(config.REDIS_URL, fastify.log) : undefined
    if (redis) {
      // Ready once Redis is (or 2.5 s have passed, and the log says it is unreachable): the first
      // requests an instance serves spend the shared budget like every later one.
      fastify.addHook('onReady', async () => {
        await redis.connected()
      })
      fastify.addHook('onClose', async () => {
        redis.close()
      })
    }
    const windowLabel = config.RATE_LIMIT_WINDOW.trim()
    const store = redis ? new RedisStore(redis.redis, config.RATE_LIMIT_REDIS_PREFIX) : new MemoryStore()
    const { rateLimit: hook, countRefusal } = createRateLimit(store, {
      max: config.RATE_LIMIT_MAX,
      callerShare: config.RATE_LIMIT_CALLER_SHARE,
      windowMs: durationMs(windowLabel),
      windowLabel
    })
    // A guard's refusal ends the request before the route's hook runs: it is counted here, on a
    // limited route, against its address.
    fastify.onGuardRefusal((request, reply, refusal, done) => {
      if (request.routeOptions.config.rateLimit === false) return done(refusal)
      countRefusal(request, reply, refusal, done)
    })

    fastify.addHook('onRoute', (route: RouteOptions) => {
      if (route.config?.rateLimit === false) return
      const hooks = route.onRequest === undefined ? [] : [route.onRequest].flat()
      const resolution = hooks.indexOf(fastify.resolveTenant)
      hooks.splice(resolution === -1 ? hooks.length : resolution, 0, hook)
      route.onRequest = hooks
      // Every limited route documents its 429.
      if (route.schema?.response) route.schema = { ...route.schema, response: withErrorCodes(route.schema.response as Record<string, unknown>, 'RATE_LIMITED') }
    })
  },
  { name: 'rate-limit', dependencies: ['authenticate'] }
)
