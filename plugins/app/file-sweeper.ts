import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { sweepDue, type SweepSummary } from '../../lib/files/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Runs one file sweep now (lib/files/sweep.ts); resolves with what it did, or null without storage. */
    sweepFiles: () => Promise<SweepSummary | null>
  }
}

/**
 * The file sweep, every FILE_SWEEP_INTERVAL_MS on each instance (0: never on this one). Replicas
 * share the work through public.tenant_sweeps: each due prefix is leased to one of them. The timer
 * never keeps the process alive, and closing waits for a sweep under way.
 */
export default fp(
  async function fileSweeper(fastify: FastifyInstance) {
    const interval = fastify.config.FILE_SWEEP_INTERVAL_MS
    let running: Promise<SweepSummary | null> | null = null
    let timer: NodeJS.Timeout | null = null
    let closing = false

    const sweep = () => {
      const storage = fastify.storage
      if (!storage) return Promise.resolve(null)
      running ??= sweepDue({ pool: fastify.pg.pool, storage, tenantDb: fastify.tenantDb, log: fastify.log }).finally(() => {
        running = null
      })
      return running
    }
    fastify.decorate('sweepFiles', sweep)

    const schedule = () => {
      if (closing) return
      timer = setTimeout(() => {
        sweep()
          .catch((error: unknown) => fastify.log.warn({ err: error }, 'the file sweep failed; it runs again at the next interval'))
          .finally(schedule)
      }, interval)
      timer.unref()
    }

    if (interval > 0 && fastify.storage) fastify.addHook('onReady', async () => schedule())
    // Before the pool closes: a sweep under way finishes its prefix first.
    fastify.addHook('preClose', async () => {
      closing = true
      if (timer) clearTimeout(timer)
      await running?.catch(() => undefined)
    })
  },
  { name: 'file-sweeper', dependencies: ['postgres', 'storage', 'tenant-context'] }
)
