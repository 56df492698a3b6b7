import { randomUUID } from 'node:crypto'
import { STATUS_CODES, type IncomingMessage, type Server } from 'node:http'
import type { Socket } from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import closeWithGrace from 'close-with-grace'
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyHttpOptions,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions
} from 'fastify'
import fp from 'fastify-plugin'
import type { Bindings, ChildLoggerOptions, Logger } from 'pino'
import app from './app.ts'
import { migrateControlPlane } from './lib/tenants/migrations.ts'
import { loadConfigOrExit, trustProxy, type Config } from './schemas/env.ts'
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
    // Checked first: at LOG_LEVEL=warn this runs for every request and writes nothing.
    if (!error && !(reply.log as Logger).isLevelEnabled('info')) return
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

type LogArguments = Parameters<Logger['info']>

/**
 * A request's logger, made when it writes its first line. pino builds a child logger for every
 * request (its bindings serialised, its levels set up); at LOG_LEVEL=warn most requests write
 * nothing, so that work waits until a line is actually written. A route with a log level of its
 * own gets its child at once.
 */
export class LazyRequestLogger {
  readonly #parent: Logger
  readonly #bindings: Bindings
  readonly #options: ChildLoggerOptions
  #child: Logger | null = null

  constructor(parent: Logger, bindings: Bindings, options: ChildLoggerOptions) {
    this.#parent = parent
    this.#bindings = bindings
    this.#options = options
    if (options.level !== undefined) this.#logger()
  }

  #logger(): Logger {
    return (this.#child ??= this.#parent.child(this.#bindings, this.#options))
  }

  get level(): string {
    return (this.#child ?? this.#parent).level
  }

  set level(level: string) {
    this.#logger().level = level
  }

  isLevelEnabled(level: string): boolean {
    return (this.#child ?? this.#parent).isLevelEnabled(level)
  }

  child(bindings: Bindings, options?: ChildLoggerOptions): Logger {
    return this.#logger().child(bindings, options)
  }

  fatal(...args: LogArguments): void {
    if (this.isLevelEnabled('fatal')) this.#logger().fatal(...args)
  }

  error(...args: LogArguments): void {
    if (this.isLevelEnabled('error')) this.#logger().error(...args)
  }

  warn(...args: LogArguments): void {
    if (this.isLevelEnabled('warn')) this.#logger().warn(...args)
  }

  info(...args: LogArguments): void {
    if (this.isLevelEnabled('info')) this.#logger().info(...args)
  }

  debug(...args: LogArguments): void {
    if (this.isLevelEnabled('debug')) this.#logger().debug(...args)
  }

  trace(...args: LogArguments): void {
    if (this.isLevelEnabled('trace')) this.#logger().trace(...args)
  }

  silent(): void {}
}

const lazyRequestLogger = (logger: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions) =>
  new LazyRequestLogger(logger as Logger, bindings, options) as unknown as FastifyBaseLogger

/** Larger request headers are refused by Node's parser (431 HEADERS_TOO_LARGE); tokens are at most 8 KiB. */
const MAX_HEADER_BYTES = 16 * 1024
/** A client has this long to send its request headers (less when REQUEST_TIMEOUT_MS is shorter). */
const HEADERS_TIMEOUT_MS = 10_000

const CLIENT_ERRORS: Record<string, [number, string, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'REQUEST_TIMEOUT', 'The request was not received in time'],
  HPE_HEADER_OVERFLOW: [431, 'HEADERS_TOO_LARGE', `The request headers exceed ${MAX_HEADER_BYTES} bytes`]
}

/**
 * What Node's HTTP parser refuses before Fastify sees a request (malformed HTTP, oversized
 * headers, a client too slow to send its request) is answered in the one error shape, and the
 * connection is closed.
 */
function clientErrorHandler(this: FastifyInstance, error: Error & { code?: string }, socket: Socket) {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const [statusCode, code, message] = CLIENT_ERRORS[error.code ?? ''] ?? [400, 'BAD_REQUEST', 'The request is not valid HTTP']
  const reason = STATUS_CODES[statusCode] ?? 'Error'
  const body = JSON.stringify({ statusCode, code, error: reason, message })
  this.log.debug({ err: error, code }, 'client error')
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${statusCode} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
    )
  }
  socket.destroy(error)
}

const ROUTER_ERRORS: Record<string, [string, string]> = {
  FST_ERR_BAD_URL: ['INVALID_URL', 'The URL is not valid: a path segment is not correctly percent-encoded'],
  FST_ERR_MAX_PARAM_LENGTH: ['URI_TOO_LONG', 'A path parameter is longer than 100 characters']
}

/**
 * What the router refuses before any route is chosen (a malformed URL, an overlong path
 * parameter) bypasses the error handler; it is answered in the one error shape here.
 */
function frameworkErrors(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const known = ROUTER_ERRORS[error.code]
  const statusCode = known && typeof error.statusCode === 'number' ? error.statusCode : 500
  if (statusCode >= 500) request.log.error({ err: error }, 'request failed in the router')
  const [code, message] = known ?? ['INTERNAL_ERROR', 'Something went wrong on our side']
  return reply
    .code(statusCode)
    .type('application/json; charset=utf-8')
    .send({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message })
}

// A client-chosen request id ends up in every log line of its request: only short, plain ones are kept.
const REQUEST_ID = /^[\w.:-]{1,128}$/
const requestId = (request: IncomingMessage) => {
  const header = request.headers['x-request-id']
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID()
}

/**
 * Fastify options for the process: timeouts so slow clients cannot hold a connection forever
 * (headers within HEADERS_TIMEOUT_MS, the whole request within REQUEST_TIMEOUT_MS, checked every
 * second), bounded headers, and the client address as TRUST_PROXY says.
 */
export function serverOptions(config: Config): FastifyHttpOptions<Server> {
  const headersTimeout = config.REQUEST_TIMEOUT_MS > 0 ? Math.min(config.REQUEST_TIMEOUT_MS, HEADERS_TIMEOUT_MS) : HEADERS_TIMEOUT_MS
  return {
    logger: loggerOptions(config),
    logController: new RequestLog(),
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
 * .data/postgres, a token issuer with its key in .data/issuer and an S3-compatible store in
 * .data/s3. Each says so in the log, and each is stopped on shutdown.
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
  if (!resolved.JWT_ISSUER) {
    // Trusted through JWT_ISSUER and JWT_CLIENT_ID like any issuer: the same verification path as Cognito.
    const { startEmbeddedIssuer } = await import('./lib/embedded/issuer.ts')
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
