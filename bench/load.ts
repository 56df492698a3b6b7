import type { EventEmitter } from 'node:events'
import autocannon from 'autocannon'

/** Picks the index of the tenant a request goes to. */
export type Picker = () => number

export const uniform =
  (count: number): Picker =>
  () =>
    Math.floor(Math.random() * count)

/**
 * Zipf-distributed indexes over `count` tenants: index k (from 0) is chosen with probability
 * proportional to 1 / (k + 1)^s. With s = 1 over 1,000 tenants the first takes about 13% of the
 * requests and the first ten about 39%.
 */
export function zipf(count: number, s = 1): Picker {
  const cumulative = new Float64Array(count)
  let total = 0
  for (let k = 0; k < count; k++) {
    total += 1 / (k + 1) ** s
    cumulative[k] = total
  }
  return () => {
    const target = Math.random() * total
    let low = 0
    let high = count - 1
    while (low < high) {
      const middle = (low + high) >>> 1
      if (cumulative[middle] < target) low = middle + 1
      else high = middle
    }
    return low
  }
}

export interface LatencySummary {
  p50: number
  p97_5: number
  p99: number
  max: number
  mean: number
}

/** One measured run of one case. Latencies are in milliseconds, of 2xx responses only. */
export interface RunStats {
  ok: number
  non2xx: number
  errors: number
  timeouts: number
  statusCodes: Record<string, number>
  durationS: number
  rps: number
  latencyMs: LatencySummary
}

export interface RequestSpec {
  path: string
  headers: Record<string, string>
}

export interface LoadOptions {
  url: string
  connections: number
  durationS: number
  /** Called once per request: where it goes and with which headers. */
  next: () => RequestSpec
  /** Requests per second across all connections; unset, as fast as the service answers. */
  rate?: number
  /** Receives the handle that stops the run early (Ctrl-C). */
  onStart?: (stop: () => void) => void
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: Float64Array | number[], q: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

const round3 = (value: number) => Math.round(value * 1000) / 1000

/**
 * Runs autocannon for `durationS` seconds. Latencies are recorded here, at full resolution:
 * autocannon's own histogram counts whole milliseconds, too coarse for sub-millisecond differences.
 */
export function runLoad(options: LoadOptions): Promise<RunStats> {
  return new Promise((resolve, reject) => {
    let latencies = new Float64Array(1 << 16)
    let ok = 0
    let non2xx = 0
    const statusCodes: Record<string, number> = {}
    const started = performance.now()
    const instance = autocannon(
      {
        url: options.url,
        connections: options.connections,
        duration: options.durationS,
        pipelining: 1,
        ...(options.rate ? { overallRate: options.rate } : {}),
        requests: [
          {
            method: 'GET',
            setupRequest: (request) => {
              const spec = options.next()
              return { ...request, path: spec.path, headers: spec.headers }
            }
          }
        ]
      },
      (error, result) => {
        const durationS = (performance.now() - started) / 1000
        if (error) return reject(error)
        const sorted = latencies.subarray(0, ok).sort()
        let sum = 0
        for (const value of sorted) sum += value
        resolve({
          ok,
          non2xx,
          errors: result.errors,
          timeouts: result.timeouts,
          statusCodes,
          durationS: round3(durationS),
          rps: Math.round((ok / durationS) * 10) / 10,
          latencyMs: {
            p50: round3(percentile(sorted, 0.5)),
            p97_5: round3(percentile(sorted, 0.975)),
            p99: round3(percentile(sorted, 0.99)),
            max: round3(sorted.length ? sorted[sorted.length - 1] : Number.NaN),
            mean: round3(ok ? sum / ok : Number.NaN)
          }
        })
      }
    )
    // autocannon emits (client, statusCode, bytes, responseTime); its type definitions leave out the client.
    const events = instance as unknown as EventEmitter
    events.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTime: number) => {
      statusCodes[statusCode] = (statusCodes[statusCode] ?? 0) + 1
      if (statusCode < 200 || statusCode >= 300) {
        non2xx++
        return
      }
      if (ok === latencies.length) {
        const grown = new Float64Array(latencies.length * 2)
        grown.set(latencies)
        latencies = grown
      }
      latencies[ok++] = responseTime
    })
    options.onStart?.(() => instance.stop())
  })
}
