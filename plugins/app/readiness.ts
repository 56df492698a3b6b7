import type { Static } from '@sinclair/typebox'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createMigrationState, createReadiness } from '../../lib/readiness.ts'
import type { Readiness } from '../../schemas/health.ts'

declare module 'fastify' {
  interface FastifyInstance {
    readiness: ReturnType<typeof createReadiness>
    migrationState: ReturnType<typeof createMigrationState>
    /** The readiness answer: the status only, or (`verbose`) what each check said and where migrations stand. */
    readinessReport: (verbose: boolean) => Promise<Static<typeof Readiness>>
  }
}

/**
 * Readiness checks: the database, and a control plane at least as new as the code. Tenants behind
 * the latest tenant migration are reported, not failed: `npm run migrate` brings them up while the
 * service keeps serving.
 */
export default fp(
  async function readiness(fastify: FastifyInstance) {
    const state = createReadiness({
      // Probes do not log; a dependency that starts or stops failing does, once. A check not
      // passing yet at start (connections still opening) is told at info, a check that passed
      // and then fails at warn.
      onChange: (name, ok, detail, first) => {
        if (ok) fastify.log.info({ check: name, detail }, `readiness check "${name}" passes`)
        else if (first) fastify.log.info({ check: name, detail }, `readiness check "${name}" does not pass yet: ${detail}`)
        else fastify.log.warn({ check: name, detail }, `readiness check "${name}" fails: ${detail}`)
      }
    })
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
    fastify.decorate('readinessReport', async function readinessReport(verbose: boolean) {
      const [{ ready, checks }, report] = await Promise.all([state.evaluate(), verbose ? migrations.report() : null])
      const status = ready ? ('ready' as const) : ('unavailable' as const)
      if (!verbose) return { status }
      return {
        status,
        checks,
        ...(report && {
          migrations: { controlPlane: report.controlPlane, tenants: { latest: report.tenants.latest, behind: report.tenants.behind } }
        })
      }
    })
  },
  { name: 'readiness', dependencies: ['postgres'] }
)
