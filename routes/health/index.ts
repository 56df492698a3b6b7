import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses, TRANSPORT_ERRORS } from '../../schemas/errors.ts'
import { Liveness, Readiness } from '../../schemas/health.ts'

/** Kubernetes probes: liveness never touches a dependency, readiness checks them all. */
const health: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/live',
    {
      // Probes are never rate limited: a limited probe would take a healthy instance out of service.
      config: { rateLimit: false },
      schema: {
        operationId: 'getLiveness',
        summary: 'Liveness probe',
        tags: ['health'],
        security: [],
        response: { 200: Liveness, ...errorResponses(...TRANSPORT_ERRORS) }
      }
    },
    async () => ({ status: 'ok' as const })
  )

  fastify.get(
    '/ready',
    {
      config: { rateLimit: false },
      schema: {
        operationId: 'getReadiness',
        summary: 'Readiness probe',
        description:
          '503 while a dependency is unreachable, the control-plane schema is older than the code, or the service is ' +
          'shutting down. `migrations` reports the schema versions, tenants behind included, whenever the database answers.',
        tags: ['health'],
        security: [],
        response: { 200: Readiness, 503: Readiness, ...errorResponses(...TRANSPORT_ERRORS) }
      }
    },
    async (_request, reply) => {
      const [{ ready, checks }, state] = await Promise.all([fastify.readiness.evaluate(), fastify.migrationState.report()])
      if (!ready) reply.code(503).header('retry-after', '1')
      return {
        status: ready ? ('ready' as const) : ('unavailable' as const),
        checks,
        ...(state && {
          migrations: {
            controlPlane: state.controlPlane,
            tenants: { latest: state.tenants.latest, behind: state.tenants.behind }
          }
        })
      }
    }
  )
}

export default health
