import path from 'node:path'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import Fastify, { LogController, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import app from './app.ts'
import { migrateControlPlane } from './plugins/domain/migrations.ts'
import { ConfigError, loadConfig, type Config } from './schemas/env.ts'
import pg from 'pg'

const projectRoot = path.dirname(fileURLToPath(import.meta.url)).replace(/[\\/]dist$/, '')
export const DATA_DIR = path.join(projectRoot, '.data')

/** Logger settings: redacted credentials, pretty only on a terminal. */
export function loggerOptions(config: Config): FastifyServerOptions['logger'] {
  return {
    level: config.LOG_LEVEL,
    redact: { paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'headers.cookie'], censor: '[redacted]' },
    ...(process.stdout.isTTY && config.NODE_ENV !== 'production'
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } } }
      : {})
  }
}

// A JWT (its header always encodes to "eyJ…") pasted into the URL, where tokens are never read
// from, must not reach the logs either.
const JWT_IN_URL = /eyJ[\w-]*\.[\w-]*\.[\w-]*/g
const loggedUrl = (url: string) => (url.includes('eyJ') ? url.replace(JWT_IN_URL, '[redacted]') : url)

/**
 * One line per request, at completion, carrying the request id (Fastify adds it) and the tenant.
 * The "incoming request" line is demoted to debug: at thousands of requests per second it doubles
 * the log volume and says nothing the completion line does not.
 */
class RequestLog extends LogController {
  incomingRequest(request: FastifyRequest) {
    request.log.debug({ method: request.method, url: loggedUrl(request.url) }, 'incoming request')
  }

  requestCompleted(error: Error | null, request: FastifyRequest, reply: FastifyReply) {
    const line = {
      tenant: request.tenant?.id ?? request.headers['x-tenant-id'],
      method: request.method,
      url: loggedUrl(request.url),
      statusCode: reply.statusCode,
      responseTime: Math.round(reply.elapsedTime * 100) / 100
    }
    if (error) reply.log.error({ ...line, err: error }, 'request errored')
    else reply.log.info(line, 'request completed')
  }
}

/** Fastify options for the process: timeouts so slow clients cannot hold a connection forever. */
export function serverOptions(config: Config): FastifyServerOptions {
  return {
    logger: loggerOptions(config),
    logController: new RequestLog(),
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    connectionTimeout: config.REQUEST_TIMEOUT_MS,
    keepAliveTimeout: 5_000,
    bodyLimit: config.BODY_LIMIT_BYTES,
    return503OnClosing: true,
    requestIdHeader: 'x-request-id',
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array' } }
  }
}

/**
 * Outside production, what is not configured is started here: an embedded PostgreSQL in
 * .data/postgres, a token issuer with its key in .data/issuer and an S3-compatible store in
 * .data/s3. Each says so in the log, and each is stopped on shutdown.
 */
async function startEmbeddedDefaults(config: Config, log: (message: string) => void) {
  const stops: (() => Promise<void>)[] = []
  if (config.NODE_ENV === 'production') return { config, stops }
  const resolved = { ...config }
  if (!resolved.DATABASE_URL) {
    const { startEmbeddedPostgres } = await import('./plugins/embedded/postgres.ts')
    const postgres = await startEmbeddedPostgres({ dataDir: path.join(DATA_DIR, 'postgres') })
    resolved.DATABASE_URL = postgres.url
    stops.push(postgres.stop)
    log(`embedded PostgreSQL started on 127.0.0.1:${postgres.port} with data in .data/postgres (set DATABASE_URL to use your own)`)
  }
  if (!resolved.JWT_ISSUER) {
    // Trusted through JWT_ISSUER and JWT_CLIENT_ID like any issuer: the same verification path as Cognito.
    const { startEmbeddedIssuer } = await import('./plugins/embedded/issuer.ts')
    const issuer = await startEmbeddedIssuer({ dataDir: path.join(DATA_DIR, 'issuer') })
    resolved.JWT_ISSUER = issuer.issuer
    resolved.JWT_CLIENT_ID = issuer.clientId
    stops.push(issuer.stop)
    log(`embedded token issuer started at ${issuer.issuer} with its key in .data/issuer (set JWT_ISSUER or COGNITO_REGION + COGNITO_USER_POOL_ID to use your own)`)
    if (issuer.movedFrom) log(`the issuer's usual address ${issuer.movedFrom} was taken: tokens minted for it no longer verify`)
    const adminToken = issuer.mint({ admin: true, expiresInSeconds: 12 * 3600, tenantClaim: resolved.TENANT_CLAIM, adminGroup: resolved.ADMIN_GROUP })
    log(`admin token, valid 12 h: ${adminToken}`)
    log('tenant tokens: npm run -s token -- --tenant <tenant id> [--admin] [--use access|id] [--expires 1h]')
  }
  if (!resolved.S3_BUCKET) {
    const { startEmbeddedS3 } = await import('./plugins/embedded/s3.ts')
    const s3 = await startEmbeddedS3({ dataDir: path.join(DATA_DIR, 's3') })
    Object.assign(resolved, s3.config)
    // The service reads credentials from the AWS default provider chain, which starts with these.
    process.env.AWS_ACCESS_KEY_ID = s3.credentials.accessKeyId
    process.env.AWS_SECRET_ACCESS_KEY = s3.credentials.secretAccessKey
    delete process.env.AWS_SESSION_TOKEN
    stops.push(s3.stop)
    log(
      `embedded S3 (s3rver) started at ${s3.endpoint} with data in .data/s3; bucket "${s3.bucket}" ` +
        `${s3.createdBucket ? 'created' : 'already there'} (set S3_BUCKET to use your own)`
    )
  }
  return { config: resolved, stops }
}

export async function main() {
  // Run from the sources (`node --import tsx server.ts`), @fastify/autoload cannot see the loader
  // and would refuse the .ts plugins; this module being .ts is proof enough that one is present.
  if (import.meta.url.endsWith('.ts')) process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'
  let config: Config
  try {
    config = loadConfig()
  } catch (error) {
    if (error instanceof ConfigError) {
      for (const problem of error.problems) console.error(`config error: ${problem}`)
      process.exit(1)
    }
    throw error
  }

  const fastify = Fastify(serverOptions(config))
  const embedded = await startEmbeddedDefaults(config, (message) => fastify.log.info(message))
  const stopEmbedded = async () => {
    for (const stop of embedded.stops.reverse()) await stop().catch(() => undefined)
  }
  config = embedded.config

  closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS }, async ({ signal, err }) => {
    if (err) fastify.log.error({ err }, 'shutting down after an error')
    else fastify.log.info({ signal }, 'shutting down: draining in-flight requests')
    // Readiness goes 503 first, so load balancers stop sending while the drain runs.
    fastify.readiness?.markShuttingDown()
    await fastify.close()
    await stopEmbedded()
  })

  try {
    // The control plane (public) is brought up to date at start; an advisory lock serialises
    // replicas that start together. Tenant schemas are `npm run migrate`'s job.
    if (config.MIGRATE_ON_START) {
      const pool = new pg.Pool({ connectionString: config.DATABASE_URL, max: 1 })
      await migrateControlPlane(pool).finally(() => pool.end())
    }
    await fastify.register(fp(app), { config })
    await fastify.listen({ port: config.PORT, host: config.HOST })
  } catch (error) {
    fastify.log.error({ err: error }, 'startup failed')
    await fastify.close().catch(() => undefined)
    await stopEmbedded()
    process.exit(1)
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await main()
}
