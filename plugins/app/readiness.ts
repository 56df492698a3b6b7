import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createMigrationState, createReadiness } from '../../lib/readiness.ts'

declare module 'fastify' {
  interface FastifyInstance {
    readiness: ReturnType<typeof createReadiness>
    migrationState: ReturnType<typeof createMigrationState>
  }
}

/**
 * Readiness checks: the database, and a control plane at least as new as the code. Tenants behind
 * the latest tenant migration are reported, not failed: `npm run migrate` brings them up while the
 * service keeps serving.
 */
export default fp(
  async function readiness(fastify: FastifyInstance) {
    const state = createReadiness()
    const migrations = createMigrationState(fastify.pg.pool)
    state.addCheck('database', async () => {
      await fastify.pg.pool.query('SELECT 1')
    })
    state.addCheck('migrations', async () => {
      const { controlPlane } = await migrations.get()
      if (controlPlane.version < controlPlane.latest) {
        throw new Error(`control plane schema is at version ${controlPlane.version}, the code needs ${controlPlane.latest}: run npm run migrate`)
      }
    })
    fastify.decorate('readiness', state)
    fastify.decorate('migrationState', migrations)
  },
  { name: 'readiness', dependencies: ['postgres'] }
)
