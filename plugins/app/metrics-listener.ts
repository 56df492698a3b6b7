import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { REQUEST_ID_HEADER, requestId } from '../../lib/http/request-id.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The METRICS_PORT listener's address once it listens; null without METRICS_PORT. */
    metricsAddress: () => AddressInfo | null
  }
}

/**
 * METRICS_PORT: a second listener, for Prometheus and operators inside the cluster, that serves
 * `GET /metrics` and `GET /health/ready` (with `?verbose`, what each check said) and nothing else.
 * Kept off the public port, where /metrics then does not exist: the per-tenant series name the
 * busiest tenants, which is nobody's business outside. A plain Node server, not a Fastify route:
 * no hook of the public API (tokens, rate limit, tenants) applies to it.
 */
export default fp(
  async function metricsListener(fastify: FastifyInstance) {
    const port = fastify.config.METRICS_PORT
    if (port === undefined) {
      fastify.decorate('metricsAddress', () => null)
      return
    }
    const server = http.createServer((request, response) => {
      const url = new URL(request.url ?? '/', 'http://metrics')
      // The same request id as the public port's answers: echoed when sane, else a new one.
      const id = requestId(request)
      const answer = (status: number, type: string, body: string) => {
        response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', [REQUEST_ID_HEADER]: id }).end(body)
      }
      if (request.method !== 'GET' && request.method !== 'HEAD') return answer(405, 'text/plain', 'Only GET\n')
      if (url.pathname === '/metrics') {
        const { registry } = fastify.metrics
        registry.metrics().then(
          (body) => answer(200, registry.contentType, body),
          (error: Error) => {
            fastify.log.error({ err: error, reqId: id }, 'collecting metrics failed')
            answer(500, 'text/plain', 'collecting metrics failed\n')
          }
        )
        return
      }
      if (url.pathname === '/health/ready') {
        const json = 'application/json; charset=utf-8'
        // A 503 body carries its request id, as every 5xx body of the service does.
        fastify.readinessReport(url.searchParams.has('verbose')).then(
          (report) => (report.status === 'ready' ? answer(200, json, JSON.stringify(report)) : answer(503, json, JSON.stringify({ ...report, requestId: id }))),
          () => answer(503, json, JSON.stringify({ status: 'unavailable', requestId: id }))
        )
        return
      }
      answer(404, 'text/plain', 'Not found: this port serves /metrics and /health/ready\n')
    })
    server.keepAliveTimeout = fastify.config.KEEP_ALIVE_TIMEOUT_MS
    fastify.decorate('metricsAddress', () => (server.listening ? (server.address() as AddressInfo) : null))

    // At start, so that a port already taken fails the start instead of a log line.
    fastify.addHook('onReady', async () => {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, fastify.config.HOST, () => {
          server.off('error', reject)
          resolve()
        })
      })
      const address = server.address() as AddressInfo
      fastify.log.info({ port: address.port }, `metrics and readiness details on port ${address.port}`)
    })
    // Last: Prometheus keeps scraping through the drain.
    fastify.addHook('onClose', async () => {
      if (!server.listening) return
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    })
  },
  { name: 'metrics-listener', dependencies: ['metrics', 'readiness'] }
)
