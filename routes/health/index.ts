import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses, TRANSPORT_ERRORS, withRetryAfter } from '../../schemas/errors.ts'
import { Liveness, Readiness, ReadinessQuery } from '../../schemas/health.ts'

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
          'shutting down. Without ?verbose, or without an admin token, the answer is the status only. With ?verbose and an ' +
          'admin token (or on METRICS_PORT with ?verbose), `checks` says what each dependency answered and `migrations` ' +
          'reports the schema versions, tenants behind included. A token is verified only with ?verbose.',
        tags: ['health'],
        security: [],
        querystring: ReadinessQuery,
        response: { 200: Readiness, 503: withRetryAfter(Readiness), ...errorResponses(...TRANSPORT_ERRORS) }
      }
    },
    async (request, reply) => {
      // Details name the bucket, the issuer and what failed: for operators, not for the internet.
      // The token is verified only when details are asked for: the route is not rate limited, so
      // verifying whatever token a probe carries would give forged ones an RSA verification each.
      const verbose = request.query.verbose !== undefined && (await fastify.callerIsAdmin(request))
      const answer = await fastify.readinessReport(verbose)
      if (answer.status === 'ready') return answer
      // A 5xx body carries its request id, as errorBody's do, so a report can be matched to the log.
      reply.code(503).header('retry-after', '1')
      return { ...answer, requestId: request.id }
    }
  )
}

export default health
