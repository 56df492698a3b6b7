import type { Server } from 'node:http'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import Fastify, { LogController, type FastifyHttpOptions, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import app from './app.ts'
import { clientErrorHandler, frameworkErrors, MAX_HEADER_BYTES } from './lib/http/client-errors.ts'
import { requestId } from './lib/http/request-id.ts'
import { lazyRequestLogger, requestLines } from './lib/http/request-log.ts'
import { migrateControlPlane } from './lib/tenants/index.ts'
import { directDatabaseUrl, loadConfigOrExit, trustProxy, type Config } from './schemas/env.ts'

const projectRoot = path.dirname(fileURLToPath(import.meta.url)).replace(/[\\/]dist$/, '')
export const DATA_DIR = path.join(projectRoot, '.data')
/** Tried first by the embedded user pool, so its issuer (which names the port) survives restarts. */
const EMBEDDED_COGNITO_PORT = 9329

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

/** A client has this long to send its request headers (less when REQUEST_TIMEOUT_MS is shorter). */
const HEADERS_TIMEOUT_MS = 10_000

/**
 * Fastify options for the process: timeouts so slow clients cannot hold a connection forever
 * (headers within HEADERS_TIMEOUT_MS, the whole request within REQUEST_TIMEOUT_MS, checked every
 * second), bounded headers, and the client address as TRUST_PROXY says.
 */
export function serverOptions(config: Config): FastifyHttpOptions<Server> {
  const headersTimeout = config.REQUEST_TIMEOUT_MS > 0 ? Math.min(config.REQUEST_TIMEOUT_MS, HEADERS_TIMEOUT_MS) : HEADERS_TIMEOUT_MS
  return {
    logger: loggerOptions(config),
    // LogController must be Fastify's own class: its request lines are replaced with ours.
    logController: Object.assign(new LogController(), requestLines),
    childLoggerFactory: lazyRequestLogger,
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    connectionTimeout: config.REQUEST_TIMEOUT_MS,
    keepAliveTimeout: config.KEEP_ALIVE_TIMEOUT_MS,
    http: { maxHeaderSize: MAX_HEADER_BYTES, headersTimeout, connectionsCheckingInterval: Math.max(100, Math.min(1000, headersTimeout)) },
    clientErrorHandler,
    frameworkErrors,
    trustProxy: trustProxy(config),
    bodyLimit: config.BODY_LIMIT_BYTES,
    // Requests that reach a closing server (on a keep-alive connection opened before) are served
    // and answered with `Connection: close`, rather than refused with a body outside the error
    // shape: the client sees no failure, and its next request opens a connection elsewhere.
    return503OnClosing: false,
    requestIdHeader: false,
    genReqId: requestId,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array' } }
  }
}

/**
 * Outside production, what is not configured is started here: an embedded PostgreSQL in
 * .data/postgres, a Cognito-compatible user pool (cognito-local) in .data/cognito and an
 * S3-compatible store in .data/s3. Each says so in the log, and each is stopped on shutdown.
 */
async function startEmbeddedDefaults(config: Config, stops: (() => Promise<void>)[], log: (message: string) => void): Promise<Config> {
  if (config.NODE_ENV === 'production') return config
  const resolved = { ...config }
  if (!resolved.DATABASE_URL) {
    const { startEmbeddedPostgres } = await import('./lib/embedded/postgres.ts')
    // Stopped by main()'s shutdown once the drain has closed the pool, not by the package on the signal.
    const postgres = await startEmbeddedPostgres({ dataDir: path.join(DATA_DIR, 'postgres'), stopOnSignal: false })
    resolved.DATABASE_URL = postgres.url
    stops.push(postgres.stop)
    log(`embedded PostgreSQL started on 127.0.0.1:${postgres.port} with data in .data/postgres (set DATABASE_URL to use your own)`)
  }
  if (!resolved.JWT_ISSUER && !resolved.COGNITO_USER_POOL_ID) {
    // A Cognito-compatible user pool (cognito-local), trusted through the same variables as a pool
    // that is not on AWS: its issuer, app client, pool id, and the SDK's endpoint variable.
    const { EMBEDDED_ADMIN_EMAIL, embeddedLogin, startEmbeddedCognito } = await import('./lib/embedded/cognito.ts')
    const cognito = await startEmbeddedCognito({ dataDir: path.join(DATA_DIR, 'cognito'), port: EMBEDDED_COGNITO_PORT, adminGroup: resolved.ADMIN_GROUP })
    stops.push(cognito.stop)
    Object.assign(resolved, {
      JWT_ISSUER: cognito.issuer,
      JWT_CLIENT_ID: cognito.clientId,
      COGNITO_REGION: cognito.region,
      COGNITO_USER_POOL_ID: cognito.userPoolId
    })
    process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = cognito.endpoint
    // The SDK signs every call and cognito-local checks no signature: any credentials do, but a
    // developer's own (for a real bucket) are left alone.
    if (!process.env.AWS_ACCESS_KEY_ID && !process.env.AWS_PROFILE) {
      process.env.AWS_ACCESS_KEY_ID = cognito.credentials.accessKeyId
      process.env.AWS_SECRET_ACCESS_KEY = cognito.credentials.secretAccessKey
    }
    log(
      `embedded user pool (cognito-local) started at ${cognito.endpoint} with data in .data/cognito: pool ${cognito.userPoolId}, ` +
        `app client ${cognito.clientId}, issuer ${cognito.issuer} (set COGNITO_REGION + COGNITO_USER_POOL_ID or JWT_ISSUER to use your own)`
    )
    if (cognito.movedFrom) log(`the user pool's usual port ${cognito.movedFrom} was taken: tokens issued before no longer verify`)
    const admin = await embeddedLogin(cognito.client, cognito, { email: EMBEDDED_ADMIN_EMAIL, group: resolved.ADMIN_GROUP })
    log(`admin token (${EMBEDDED_ADMIN_EMAIL}, ID token valid 1 h): ${admin.idToken}`)
    log('more tokens: npm run -s token -- --admin | --tenant <tenant id> --email <member email>')
  }
  if (!resolved.S3_BUCKET) {
    const { startEmbeddedS3 } = await import('./lib/embedded/s3.ts')
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
  return resolved
}

export async function main() {
  // Run from the sources (`node --import tsx server.ts`), @fastify/autoload cannot see the loader
  // and would refuse the .ts plugins; this module being .ts is proof enough that one is present.
  if (import.meta.url.endsWith('.ts')) process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'
  let config = loadConfigOrExit()

  const fastify = Fastify(serverOptions(config))
  // Each embedded service started registers its stop here, so a failure part-way stops the others.
  const embeddedStops: (() => Promise<void>)[] = []
  const stopEmbedded = async () => {
    for (const stop of embeddedStops.reverse()) await stop().catch(() => undefined)
  }
  try {
    config = await startEmbeddedDefaults(config, embeddedStops, (message) => fastify.log.info(message))
  } catch (error) {
    fastify.log.error({ err: error }, 'startup failed')
    await stopEmbedded()
    process.exit(1)
  }

  const graceful = {
    delay: config.SHUTDOWN_GRACE_MS,
    logger: { error: (message: unknown) => fastify.log.error(message) },
    onSecondSignal: (signal: string) => fastify.log.error({ signal }, `second ${signal} while draining: exiting at once`),
    onTimeout: (delay: number) => fastify.log.error(`the drain did not finish within SHUTDOWN_GRACE_MS (${delay} ms): exiting`)
  }
  closeWithGrace(graceful, async ({ signal, err }) => {
    if (err) fastify.log.error({ err }, 'shutting down after an error')
    else fastify.log.info({ signal }, 'shutting down: draining in-flight requests')
    // Readiness goes 503 first, so load balancers stop sending while the drain runs; the listener
    // stays open SHUTDOWN_DELAY_MS longer for those that have not noticed yet.
    fastify.readiness?.markShuttingDown()
    if (config.SHUTDOWN_DELAY_MS > 0 && !err) await sleep(config.SHUTDOWN_DELAY_MS)
    fastify.log.info('closing the listener')
    await fastify.close()
    await stopEmbedded()
  })

  try {
    // The control plane (public) is brought up to date at start; an advisory lock serialises
    // replicas that start together. Tenant schemas are `npm run migrate`'s job.
    if (config.MIGRATE_ON_START) {
      const pool = new pg.Pool({ connectionString: directDatabaseUrl(config), max: 1 })
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
