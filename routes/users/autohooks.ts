import type { FastifyInstance } from 'fastify'

/** Everything under /users is tenant-scoped. */
export default async function usersHooks(fastify: FastifyInstance) {
  fastify.addHook('onRequest', fastify.resolveTenant)
}
