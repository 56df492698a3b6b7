/**
 * The OpenTelemetry SDK as the service runs it. Imported only by index.ts, and only when tracing is
 * configured: this is the one module of lib/ that loads OpenTelemetry (plugins/external/otel.ts
 * loads @fastify/otel, on the same condition).
 */
import { type Attributes, type Context, context, type Link, SpanKind, trace } from '@opentelemetry/api'
import { AwsInstrumentation } from '@opentelemetry/instrumentation-aws-sdk'
import { IORedisInstrumentation } from '@opentelemetry/instrumentation-ioredis'
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg'
import { NodeSDK, tracing as sdkTrace } from '@opentelemetry/sdk-node'
// The sampler the SDK builds from OTEL_TRACES_SAMPLER(_ARG) when given none; not exported at the top.
import { createSamplerFromEnv } from '@opentelemetry/sdk-node/build/src/create-from-env.js'
import type { CallbackBinder } from '../tenant-db/index.ts'

type Env = Record<string, string | undefined>

export const DEFAULT_SERVICE_NAME = 'tenant-service'

/** Running tracing, as server.ts hands it to the app. */
export interface Tracing {
  /** For lib/tenant-db: binds a callback to the caller's context, so its queries' spans belong to the right request. */
  bindCallback: CallbackBinder
  /** Exports the spans still buffered, then stops. */
  shutdown(): Promise<void>
}

const bindCallback: CallbackBinder = (callback) => context.bind(context.active(), callback)

/**
 * Traces start at requests: a span with no parent that is not a request's server span (an S3 call
 * of a readiness probe, a background purge) is dropped, as pg's and ioredis's instrumentations do
 * by themselves (requireParentSpan). Everything else is sampled as the variables say.
 */
export class RequestsStartTraces implements sdkTrace.Sampler {
  readonly #inner: sdkTrace.Sampler

  constructor(inner: sdkTrace.Sampler) {
    this.#inner = inner
  }

  shouldSample(parent: Context, traceId: string, name: string, kind: SpanKind, attributes: Attributes, links: Link[]): sdkTrace.SamplingResult {
    if (kind !== SpanKind.SERVER && trace.getSpanContext(parent) === undefined) return { decision: sdkTrace.SamplingDecision.NOT_RECORD }
    return this.#inner.shouldSample(parent, traceId, name, kind, attributes, links)
  }

  toString(): string {
    return `RequestsStartTraces{${this.#inner.toString()}}`
  }
}

/** The service name the variables give, if any: OTEL_SERVICE_NAME, then service.name in OTEL_RESOURCE_ATTRIBUTES. */
function serviceNameConfigured(env: Env): boolean {
  if (env.OTEL_SERVICE_NAME?.trim()) return true
  return (env.OTEL_RESOURCE_ATTRIBUTES ?? '').split(',').some((pair) => pair.split('=')[0]?.trim() === 'service.name')
}

/**
 * Starts the Node SDK with the instrumentations of pg, ioredis and the AWS SDK (the server span is
 * @fastify/otel's, registered by plugins/external/otel.ts). Everything else comes from the standard
 * variables (exporter, protocol, endpoint, headers, sampler, propagators, resource attributes),
 * which the SDK reads itself. Only traces are exported: the service's metrics are Prometheus's.
 */
export function startSdk(env: Env): Tracing {
  const sdk = new NodeSDK({
    serviceName: serviceNameConfigured(env) ? undefined : DEFAULT_SERVICE_NAME,
    // The SDK's default, when the variables name no sampler: follow the caller's decision, else sample.
    sampler: new RequestsStartTraces(createSamplerFromEnv() ?? new sdkTrace.ParentBasedSampler({ root: new sdkTrace.AlwaysOnSampler() })),
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [
      // Only inside a request: the pool's background work (LISTEN, warm-up) starts no trace.
      new PgInstrumentation({ requireParentSpan: true }),
      new IORedisInstrumentation({ requireParentSpan: true }),
      new AwsInstrumentation({ suppressInternalInstrumentation: true })
    ]
  })
  sdk.start()
  return { bindCallback, shutdown: () => sdk.shutdown() }
}
