import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import type { Bindings, ChildLoggerOptions, Logger } from 'pino'

// A JWT (its header always encodes to "eyJ…") pasted into the URL, where tokens are never read
// from, must not reach the logs either.
const JWT_IN_URL = /eyJ[\w-]*\.[\w-]*\.[\w-]*/g
const loggedUrl = (url: string) => (url.includes('eyJ') ? url.replace(JWT_IN_URL, '[redacted]') : url)

/**
 * The request lines of Fastify's LogController (server.ts puts them on one): one line per request,
 * at completion, carrying the request id (Fastify adds it) and the tenant. The "incoming request"
 * line is demoted to debug: it would double the log volume and says nothing the completion line
 * does not.
 */
export const requestLines = {
  incomingRequest(request: FastifyRequest) {
    request.log.debug({ method: request.method, url: loggedUrl(request.url) }, 'incoming request')
  },

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

/** Fastify's childLoggerFactory: each request's logger, made when it first writes (LazyRequestLogger). */
export const lazyRequestLogger = (logger: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions) =>
  new LazyRequestLogger(logger as Logger, bindings, options) as unknown as FastifyBaseLogger
