import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

type Check = () => Promise<string | void>

const CHECK_TIMEOUT_MS = 2000

/**
 * What /health/ready reports. Plugins add the dependencies they cannot work without; shutdown flips
 * the whole answer to "unavailable" before the drain begins, so the load balancer stops sending.
 */
export function createReadiness() {
  const checks = new Map<string, Check>()
  let shuttingDown = false

  async function run(check: Check): Promise<{ ok: boolean; detail?: string }> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS)
    })
    try {
      const detail = await Promise.race([check(), timeout])
      return detail ? { ok: true, detail } : { ok: true }
    } catch (error) {
      return { ok: false, detail: (error as Error).message }
    } finally {
      clearTimeout(timer)
    }
  }

  return {
    addCheck(name: string, check: Check) {
      checks.set(name, check)
    },
    markShuttingDown() {
      shuttingDown = true
    },
    get shuttingDown() {
      return shuttingDown
    },
    async evaluate() {
      const results: Record<string, { ok: boolean; detail?: string }> = {}
      if (shuttingDown) results.shutdown = { ok: false, detail: 'shutting down' }
      const names = [...checks.keys()]
      const outcomes = await Promise.all(names.map((name) => run(checks.get(name)!)))
      names.forEach((name, i) => (results[name] = outcomes[i]))
      return { ready: Object.values(results).every((result) => result.ok), checks: results }
    }
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    readiness: ReturnType<typeof createReadiness>
  }
}

/** Readiness checks, starting with the database. */
export default fp(
  async function readiness(fastify: FastifyInstance) {
    const state = createReadiness()
    state.addCheck('database', async () => {
      await fastify.pg.pool.query('SELECT 1')
    })
    fastify.decorate('readiness', state)
  },
  { name: 'readiness', dependencies: ['postgres'] }
)
