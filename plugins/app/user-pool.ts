import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { createUserPool, describePoolFailure } from '../../lib/users/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The Cognito user pool holding the tenants' members; null when COGNITO_USER_POOL_ID is not set. */
    userPool: ReturnType<typeof createUserPool> | null
  }
}

/** A pool that answered is trusted this long before readiness asks again; one that did not, this long. */
const CHECK_OK_TTL_MS = 30_000
const CHECK_FAILED_TTL_MS = 5_000

/**
 * The user pool of the members (lib/users/pool.ts), checked at start and by readiness with
 * DescribeUserPool: a pool that does not exist, missing or refused credentials and an endpoint that
 * does not answer are logged in words that name the pool, its region and the reason, and readiness
 * answers 503 until the pool answers.
 */
export default fp(
  async function userPool(fastify: FastifyInstance) {
    const { config } = fastify
    if (!config.COGNITO_USER_POOL_ID || !config.COGNITO_REGION) {
      fastify.decorate('userPool', null)
      return
    }
    const pool = createUserPool({
      region: config.COGNITO_REGION,
      userPoolId: config.COGNITO_USER_POOL_ID,
      tenantAttribute: config.TENANT_CLAIM,
      inviteMessageAction: config.COGNITO_INVITE_MESSAGE_ACTION
    })
    fastify.decorate('userPool', pool)

    let last: { at: number; ok: boolean; detail: string } | null = null
    let inFlight: Promise<{ ok: boolean; detail: string }> | null = null
    let logged: string | null = null
    const describe = async () => {
      try {
        const name = await pool.describe()
        last = { at: Date.now(), ok: true, detail: `user pool ${pool.userPoolId} (${name}) in ${pool.region}` }
        if (logged) fastify.log.info(`${last.detail} answers again`)
        logged = null
      } catch (error) {
        last = { at: Date.now(), ok: false, detail: describePoolFailure(error, pool) }
        // Logged once per distinct failure, not on every probe.
        if (logged !== last.detail) fastify.log.error({ err: error, userPoolId: pool.userPoolId, region: pool.region }, last.detail)
        logged = last.detail
      }
      return last
    }
    const check = () => {
      if (last && Date.now() - last.at < (last.ok ? CHECK_OK_TTL_MS : CHECK_FAILED_TTL_MS)) return last
      inFlight ??= describe().finally(() => {
        inFlight = null
      })
      return inFlight
    }
    fastify.readiness.addCheck('userPool', async () => {
      const result = await check()
      if (!result.ok) throw new Error(result.detail)
      return result.detail
    })
    // The first check at start, not awaited by it: a missing pool is named in the log at once,
    // and the service still starts (readiness says 503).
    fastify.addHook('onReady', async () => {
      void check()
    })
    fastify.addHook('onClose', async () => pool.close())
  },
  { name: 'user-pool', dependencies: ['readiness'] }
)
