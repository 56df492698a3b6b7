import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses } from '../../schemas/errors.ts'

/**
 * GET /metrics: the Prometheus scrape endpoint, kept out of the OpenAPI document. With METRICS_PORT
 * it is served there only (plugins/app/metrics-listener.ts); without, here, to admin tokens only:
 * the per-tenant series name the busiest tenants.
 */
const metrics: FastifyPluginAsyncTypebox = async (fastify) => {
  if (fastify.config.METRICS_PORT !== undefined) return
  fastify.get(
    '/',
    {
      // Scrapes are never rate limited: a gap in the series would look like an outage.
      config: { rateLimit: false },
      onRequest: fastify.requireAdmin,
      schema: {
        hide: true,
        response: { 200: Type.String({ description: 'Prometheus text exposition format' }), ...errorResponses('INTERNAL_ERROR') }
      }
    },
    async (_request, reply) => {
      const { registry } = fastify.metrics
      const body = await registry.metrics()
      return reply.type(registry.contentType).send(body)
    }
  )
}

export default metrics
