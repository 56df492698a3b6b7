import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client'
import { PreboundHistogram, SingleLabelCounter, type HistogramSeries } from '../../lib/metrics/prebound.ts'
import { createTopTenants, OTHER_TENANTS } from '../../lib/metrics/top-tenants.ts'

/** Runs `fn` at most once per `ttlMs`, sharing the result (and an in-flight call) between callers. */
function shared<T>(fn: () => Promise<T>, ttlMs: number): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | null = null
  return () => {
    const at = Date.now()
    if (!last || at - last.at >= ttlMs) {
      const value = fn()
      last = { at, value }
      // A failure is not remembered: the next scrape asks again.
      value.catch(() => {
        if (last?.value === value) last = null
      })
    }
    return last.value
  }
}

const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
const CONTEXT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]

/**
 * The service's metrics on a registry of its own (several services in one process, as in the tests,
 * must not share series). Figures that live elsewhere (the pool, the registry, readiness) are read
 * when Prometheus scrapes, never on the request path.
 */
export function createMetrics(fastify: FastifyInstance) {
  const registry = new Registry()
  const registers = [registry]
  collectDefaultMetrics({ register: registry })
  const pool = fastify.pg.pool

  const httpDuration = new PreboundHistogram({
    name: 'http_request_duration_seconds',
    help: 'Time from receiving a request to sending its response, by route pattern (unmatched for 404s), method and status',
    buckets: HTTP_BUCKETS,
    registers
  })
  // route → method → status → series: found with three lookups, never a label hash.
  const httpSeries = new Map<string, Map<string, Map<number, HistogramSeries>>>()
  function httpSeriesOf(route: string, method: string, status: number): HistogramSeries {
    let methods = httpSeries.get(route)
    if (!methods) httpSeries.set(route, (methods = new Map()))
    let statuses = methods.get(method)
    if (!statuses) methods.set(method, (statuses = new Map()))
    let series = statuses.get(status)
    if (!series) statuses.set(status, (series = httpDuration.series({ route, method, status_code: status })))
    return series
  }

  // Not on the request path: a label hash per aborted request is cheap enough.
  const httpAborted = new Counter({
    name: 'tenant_service_http_requests_aborted_total',
    help: 'Requests whose connection closed before their response was sent (the client left, or REQUEST_TIMEOUT_MS passed), by route pattern and method; they are not in http_request_duration_seconds',
    labelNames: ['route', 'method'] as const,
    registers
  })

  const contextSwitch = new PreboundHistogram({
    name: 'tenant_service_tenant_context_switch_seconds',
    help: "Time from having a connection (a read lane or a pooled one) to the result of the request's first query, tenant context included",
    buckets: CONTEXT_BUCKETS,
    registers
  }).series()

  const tenantRequests = new SingleLabelCounter({
    name: 'tenant_service_tenant_requests_total',
    help: `Requests per tenant by callers with a verified token, for the busiest tenants only; the rest are counted as tenant="${OTHER_TENANTS}"`,
    label: 'tenant',
    registers
  })
  const topTenants = createTopTenants({
    onDrop: (tenants) => {
      for (const tenant of tenants) tenantRequests.remove(tenant)
    }
  })

  const jwksFetches = new Counter({
    name: 'tenant_service_jwks_fetches_total',
    help: "Fetches of the issuer's JWKS (signing keys)",
    registers
  })
  const jwksFailures = new Counter({
    name: 'tenant_service_jwks_fetch_failures_total',
    help: "Fetches of the issuer's JWKS that failed",
    registers
  })

  const tenantMigrationsOnRequest = new Counter({
    name: 'tenant_service_tenant_migrations_on_request_total',
    help: 'Migrations of a lagging tenant started by its requests (TENANT_MIGRATIONS=on-request), by outcome: migrated, current (another session had done it), busy (a lock or the connection), failed',
    labelNames: ['outcome'] as const,
    registers
  })

  new Gauge({
    name: 'tenant_service_db_pool_connections',
    help: 'Open connections in the database pool, busy and idle',
    registers,
    collect() {
      this.set(pool.totalCount)
    }
  })
  new Gauge({
    name: 'tenant_service_db_pool_idle_connections',
    help: 'Idle connections in the database pool',
    registers,
    collect() {
      this.set(pool.idleCount)
    }
  })
  new Gauge({
    name: 'tenant_service_db_pool_waiting_requests',
    help: 'Callers waiting for a pooled connection',
    registers,
    collect() {
      this.set(pool.waitingCount)
    }
  })
  new Gauge({
    name: 'tenant_service_db_pool_max_connections',
    help: 'Configured size of the database pool (PG_POOL_MAX)',
    registers,
    collect() {
      this.set(fastify.config.PG_POOL_MAX)
    }
  })

  // One evaluation per scrape, however many gauges read it.
  const readiness = shared(() => fastify.readiness.evaluate(), 1000)
  new Gauge({
    name: 'tenant_service_ready',
    help: '1 when /health/ready answers 200, 0 when it answers 503',
    registers,
    async collect() {
      this.set((await readiness()).ready ? 1 : 0)
    }
  })
  new Gauge({
    name: 'tenant_service_readiness_check',
    help: 'Each readiness check: 1 passing, 0 failing',
    labelNames: ['check'] as const,
    registers,
    async collect() {
      this.reset()
      for (const [check, result] of Object.entries((await readiness()).checks)) this.set({ check }, result.ok ? 1 : 0)
    }
  })

  // From a query cached a few seconds; while the database is down the last values stand.
  const state = () => fastify.migrationState.get().catch(() => null)
  new Gauge({
    name: 'tenant_service_tenants',
    help: 'Tenants in the registry, by status',
    labelNames: ['status'] as const,
    registers,
    async collect() {
      const current = await state()
      if (current) for (const [status, count] of Object.entries(current.tenants.byStatus)) this.set({ status }, count)
    }
  })
  new Gauge({
    name: 'tenant_service_tenants_behind_migrations',
    help: 'Tenants whose schema_version is below the latest tenant migration (npm run migrate brings them up)',
    registers,
    async collect() {
      const current = await state()
      if (current) this.set(current.tenants.behind)
    }
  })
  new Gauge({
    name: 'tenant_service_tenant_schema_latest_version',
    help: 'The latest tenant migration this build ships',
    registers,
    async collect() {
      const current = await state()
      if (current) this.set(current.tenants.latest)
    }
  })
  new Gauge({
    name: 'tenant_service_control_plane_schema_version',
    help: 'The control-plane (public) migration applied in the database',
    registers,
    async collect() {
      const current = await state()
      if (current) this.set(current.controlPlane.version)
    }
  })
  new Gauge({
    name: 'tenant_service_control_plane_schema_latest_version',
    help: 'The latest control-plane migration this build ships; above the applied one, readiness fails',
    registers,
    async collect() {
      const current = await state()
      if (current) this.set(current.controlPlane.latest)
    }
  })

  return {
    registry,
    /** The duration series of a route pattern (`unmatched` for 404s), method and status. */
    httpSeriesOf,
    httpAborted,
    contextSwitch,
    tenantRequests,
    topTenants,
    /** Incremented by the authentication plugin on every JWKS fetch it makes. */
    jwksFetches,
    /** Incremented by the authentication plugin on every JWKS fetch that fails. */
    jwksFailures,
    /** Incremented by the tenant-upgrade plugin at the end of each migration a request started. */
    tenantMigrationsOnRequest
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: ReturnType<typeof createMetrics>
  }
}

/** Prometheus metrics: request durations, the pool, the tenant context switch, tenants and migrations. */
export default fp(
  async function metrics(fastify: FastifyInstance) {
    const metrics = createMetrics(fastify)
    fastify.decorate('metrics', metrics)

    // Callback style: on every request, no promise to allocate.
    fastify.addHook('onResponse', (request, reply, done) => {
      // The route pattern, never the URL: one series per route, whatever ids the URLs carry.
      metrics.httpSeriesOf(request.routeOptions.url ?? 'unmatched', request.method, reply.statusCode).observe(reply.elapsedTime / 1000)
      // Only callers a guard verified: anonymous requests (GET /) name a tenant nobody vouched for,
      // and would let anyone inflate a tenant's count.
      if (request.tenant && request.principal) metrics.tenantRequests.inc(metrics.topTenants.record(request.tenant.id))
      done()
    })
    // onResponse never runs for a request whose connection closed before its answer. onSend runs
    // for every request, however it ended: while its body arrived (when Fastify runs
    // onRequestAbort), after that (when it does not), or past REQUEST_TIMEOUT_MS; and once more
    // for the error answer when a later onSend hook fails, hence the set.
    const countedAborts = new WeakSet<FastifyRequest>()
    fastify.addHook('onSend', (request, reply, payload, done) => {
      if (reply.raw.destroyed && !countedAborts.has(request)) {
        countedAborts.add(request)
        metrics.httpAborted.inc({ route: request.routeOptions.url ?? 'unmatched', method: request.method })
      }
      done(null, payload)
    })

    fastify.addHook('onClose', async () => {
      metrics.registry.clear()
    })
  },
  { name: 'metrics', dependencies: ['postgres', 'readiness'] }
)
