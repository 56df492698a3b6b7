import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses } from '../../schemas/errors.ts'

/** GET /metrics: the Prometheus scrape endpoint. Public, and kept out of the OpenAPI document. */
const metrics: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/',
    {
      // Scrapes are never rate limited: a gap in the series would look like an outage.
      config: { rateLimit: false },
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
