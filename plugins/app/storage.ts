import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { errors } from '../../schemas/errors.ts'
import { createStorage } from '../../lib/files/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Object storage; null only outside production when S3_BUCKET is not set. */
    storage: ReturnType<typeof createStorage> | null
    /** `fastify.storage`, or a 503 for the client when no bucket is configured. */
    requireStorage: () => ReturnType<typeof createStorage>
  }
}

/** Object storage on S3 (or an S3-compatible store), with the bucket as a readiness check. */
export default fp(
  async function storage(fastify: FastifyInstance) {
    const { config } = fastify
    // loadConfig requires S3_BUCKET in production; elsewhere server.ts provides an embedded store,
    // so this is only reached by an app built without one (tests that do not need files).
    const instance = config.S3_BUCKET
      ? createStorage({
          bucket: config.S3_BUCKET,
          region: config.S3_REGION,
          endpoint: config.S3_ENDPOINT,
          forcePathStyle: config.S3_FORCE_PATH_STYLE,
          presignExpiresSeconds: config.PRESIGN_EXPIRES_SECONDS
        })
      : null
    fastify.decorate('storage', instance)
    fastify.decorate('requireStorage', () => {
      if (!instance) throw errors.storageNotConfigured()
      return instance
    })
    if (!instance) {
      fastify.log.warn('S3_BUCKET is not set: file routes answer 503')
      return
    }
    fastify.readiness.addCheck('storage', () => instance.checkBucket())
    fastify.addHook('onClose', async () => instance.close())
  },
  { name: 'storage', dependencies: ['readiness'] }
)
