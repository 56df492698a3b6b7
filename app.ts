import path from 'node:path'
import { fileURLToPath } from 'node:url'
import AutoLoad from '@fastify/autoload'
import type { FastifyInstance, FastifyPluginOptions } from 'fastify'
import type { Tracing } from './lib/telemetry/index.ts'
import type { Config } from './schemas/env.ts'
import { sharedSchemas } from './schemas/index.ts'
import errorHandler from './plugins/error-handler.ts'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export interface AppOptions extends FastifyPluginOptions {
  config: Config
  /** Running tracing (server.ts starts it when configured); absent, nothing is traced. */
  tracing?: Tracing | null
}

const here = path.dirname(fileURLToPath(import.meta.url))

/**
 * The service as a plugin: configuration, shared schemas and the error handler, then
 * plugins/external, plugins/app and
 * routes, autoloaded in that order. It never listens; server.ts and the tests register it.
 */
export default async function app(fastify: FastifyInstance, opts: AppOptions) {
  fastify.decorate('config', opts.config)
  for (const schema of sharedSchemas) fastify.addSchema(schema)
  // First, so that every encapsulated context, third-party plugins' included, inherits it.
  await fastify.register(errorHandler)

  await fastify.register(AutoLoad, { dir: path.join(here, 'plugins/external'), options: opts })
  await fastify.register(AutoLoad, { dir: path.join(here, 'plugins/app'), options: opts })
  await fastify.register(AutoLoad, {
    dir: path.join(here, 'routes'),
    autoHooks: true,
    cascadeHooks: true,
    options: opts
  })
}
