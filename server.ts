import type { Server } from 'node:http'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import AjvCompiler from '@fastify/ajv-compiler'
import Fastify, { LogController, type FastifyHttpOptions, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import { clientErrorHandler, frameworkErrors, MAX_HEADER_BYTES } from './lib/http/client-errors.ts'
import { requestId } from './lib/http/request-id.ts'
import { lazyRequestLogger, requestLines } from './lib/http/request-log.ts'
import { startTracing } from './lib/telemetry/index.ts'
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
    ajv: { customOptions: AJV_OPTIONS },
    schemaController: { compilersFactory: { buildValidator: strictBodies } }
  }
}

const AJV_OPTIONS = { removeAdditional: false, coerceTypes: 'array' } as const
const validators = AjvCompiler()

/**
 * Query strings, params and headers arrive as text, so their schemas coerce ("20" is a limit of
 * 20). A JSON body says what types it means: `"size": "1e3"`, `true` or `[1]` is not a number, and
 * it is refused rather than converted.
 */
const strictBodies: typeof validators = (externalSchemas, options) => {
  type Options = NonNullable<typeof options>
  const coercing = validators(externalSchemas, { ...options, customOptions: AJV_OPTIONS } as Options)
  const strict = validators(externalSchemas, { ...options, customOptions: { ...AJV_OPTIONS, coerceTypes: false } } as unknown as Options)
  return (route) => (route.httpPart === 'body' ? strict(route) : coercing(route))
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
    // Stopped by main()'s shutdown once the drain has closed the pool, not on the signal itself.
    const postgres = await startEmbeddedPostgres({ dataDir: path.join(DATA_DIR, 'postgres'), stopOnSignal: false, onLog: log })
    resolved.DATABASE_URL = postgres.url
    stops.push(postgres.stop)
    const where = path.relative(projectRoot, postgres.dataDir).startsWith('..') ? postgres.dataDir : path.relative(projectRoot, postgres.dataDir)
    log(`embedded PostgreSQL ${postgres.serverVersion} started on 127.0.0.1:${postgres.port} with data in ${where} (set DATABASE_URL to use your own)`)
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
  // Before the app's modules are imported, and before Fastify is made: the instrumentations see
  // pg, ioredis and the AWS SDK only as they are imported, and Fastify instances as they are made.
  // The app is imported below for that reason, never at the top of this file.
  const tracing = await startTracing()
  const [{ default: app }, { default: pg }, { migrateControlPlane }] = await Promise.all([import('./app.ts'), import('pg'), import('./lib/tenants/index.ts')])

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
    // The spans of the drained requests are exported before the process goes.
    await tracing?.shutdown().catch((error: unknown) => fastify.log.error({ err: error }, 'exporting the last spans failed'))
    await stopEmbedded()
  })

  try {
    // The control plane (public) is brought up to date at start; an advisory lock serialises
    // replicas that start together. Tenant schemas are `npm run migrate`'s job.
    if (config.MIGRATE_ON_START) {
      const pool = new pg.Pool({ connectionString: directDatabaseUrl(config), max: 1 })
      await migrateControlPlane(pool).finally(() => pool.end())
    }
    await fastify.register(fp(app), { config, tracing })
    await fastify.listen({ port: config.PORT, host: config.HOST })
  } catch (error) {
    fastify.log.error({ err: error }, 'startup failed')
    await fastify.close().catch(() => undefined)
    await tracing?.shutdown().catch(() => undefined)
    await stopEmbedded()
    process.exit(1)
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await main()
}
