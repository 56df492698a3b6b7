import type { FastifyOtelInstrumentationOpts } from '@fastify/otel'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Tracing } from '../../lib/telemetry/index.ts'
import { TENANT_ID_PATTERN } from '../../schemas/common.ts'

/** Probes and scrapes: frequent, and of no interest in a trace. */
const UNTRACED_ROUTES = /^\/(health|metrics)(\/|$)/
const TENANT_ID = new RegExp(TENANT_ID_PATTERN)

/**
 * @fastify/otel's options: one server span per request, named by its route, with the tenant the
 * request names (X-Tenant-ID, when it is a valid id). Its hooks and handler are not spans of their
 * own; probes and /metrics are not traced, unless OTEL_FASTIFY_IGNORE_PATHS says otherwise.
 */
export function otelOptions(env: Record<string, string | undefined> = process.env): FastifyOtelInstrumentationOpts {
  return {
    instrumentHooks: false,
    instrumentHandler: false,
    ignorePaths: env.OTEL_FASTIFY_IGNORE_PATHS ? undefined : (route) => UNTRACED_ROUTES.test(route.url),
    requestHook: (span, request) => {
      const { method, routeOptions, headers } = request as FastifyRequest
      if (routeOptions.url) span.updateName(`${method} ${routeOptions.url}`)
      const tenant = headers['x-tenant-id']
      if (typeof tenant === 'string' && TENANT_ID.test(tenant)) span.setAttribute('tenant.id', tenant)
    }
  }
}

/**
 * @fastify/otel, when server.ts started tracing (lib/telemetry); otherwise nothing, and nothing of
 * it is loaded. Its server span continues the caller's trace (traceparent).
 */
export default fp(
  async function otel(fastify: FastifyInstance, opts: { tracing?: Tracing | null }) {
    if (!opts.tracing) return
    const { FastifyOtelInstrumentation } = await import('@fastify/otel')
    await fastify.register(new FastifyOtelInstrumentation(otelOptions()).plugin())
  },
  { name: 'otel' }
)
