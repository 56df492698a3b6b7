/**
 * The service as `npm run bench` runs it (`node --import tsx bench/server.ts`, started by
 * bench/run.ts): Fastify built with server.ts's own options and the app plugin, exactly as in
 * production, plus the comparison routes under /bench. It tells its parent the port it listens on
 * through the IPC channel, and exits when that channel closes, so a bench that dies never leaves
 * a service behind.
 */
import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app from '../app.ts'
import { loadConfigOrExit } from '../schemas/env.ts'
import { serverOptions } from '../server.ts'
import comparisonRoutes from './comparison-routes.ts'

async function main() {
  process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'
  const config = loadConfigOrExit()

  const fastify = Fastify(serverOptions(config))
  closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS }, async ({ err }) => {
    if (err) fastify.log.error({ err }, 'shutting down after an error')
    await fastify.close()
  })
  process.once('disconnect', () => {
    void fastify.close().finally(() => process.exit(0))
  })

  try {
    await fastify.register(fp(app), { config })
    await fastify.register(comparisonRoutes, { prefix: '/bench' })
    await fastify.listen({ port: config.PORT, host: config.HOST })
  } catch (error) {
    fastify.log.error({ err: error }, 'startup failed')
    await fastify.close().catch(() => undefined)
    process.exit(1)
  }
  const address = fastify.server.address()
  process.send?.({ listening: typeof address === 'object' && address !== null ? address.port : config.PORT })
}

await main()
