import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Liveness, Readiness } from '../../schemas/health.ts'

/** Kubernetes probes: liveness never touches a dependency, readiness checks them all. */
const health: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/live',
    { schema: { summary: 'Liveness probe', tags: ['health'], response: { 200: Liveness } } },
    async () => ({ status: 'ok' as const })
  )

  fastify.get(
    '/ready',
    {
      schema: {
        summary: 'Readiness probe',
        description: '503 while a dependency is unreachable or the service is shutting down.',
        tags: ['health'],
        response: { 200: Readiness, 503: Readiness }
      }
    },
    async (_request, reply) => {
      const { ready, checks } = await fastify.readiness.evaluate()
      if (!ready) reply.code(503).header('retry-after', '1')
      return { status: ready ? ('ready' as const) : ('unavailable' as const), checks }
    }
  )
}

export default health
