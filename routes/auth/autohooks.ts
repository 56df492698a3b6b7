import type { FastifyInstance } from 'fastify'

/** The control plane under /auth is for members of ADMIN_GROUP only. */
export default async function authHooks(fastify: FastifyInstance) {
  fastify.addHook('onRoute', fastify.declareBearerAuth('admin'))
  fastify.addHook('onRequest', fastify.requireAdmin)
}
