import type { Registry } from 'prom-client'

/**
 * Prometheus metrics whose series are resolved ahead of the observations: for the request path.
 * prom-client's Histogram and Counter hash their label object on every observation, which measured
 * as the largest single cost our hooks added to a request (BENCHMARKS.md, C6). Here a caller
 * resolves a series once (per route and status, per tenant) and then counts with an array or field
 * increment. Both classes are registered in a prom-client Registry like any other
 * metric and render the same exposition lines, so scrapes and dashboards cannot tell them apart.
 */

type Labels = Record<string, string | number>

interface MetricValue {
  value: number
  labels: Labels
  metricName?: string
}

/** One histogram series: observations per bucket (not cumulative), their sum and their count. */
export class HistogramSeries {
  readonly labels: Labels
  readonly #bounds: readonly number[]
  readonly counts: Float64Array
  sum = 0
  count = 0

  constructor(labels: Labels, bounds: readonly number[]) {
    this.labels = labels
    this.#bounds = bounds
    // The last slot holds what lies above every bound (+Inf).
    this.counts = new Float64Array(bounds.length + 1)
  }

  observe(value: number): void {
    const bounds = this.#bounds
    let bucket = 0
    while (bucket < bounds.length && value > bounds[bucket]) bucket++
    this.counts[bucket]++
    this.sum += value
    this.count++
  }
}

export class PreboundHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  readonly name: string
  readonly help: string
  readonly #bounds: readonly number[]
  readonly #series = new Map<string, HistogramSeries>()

  constructor(options: { name: string; help: string; buckets: readonly number[]; registers: Registry[] }) {
    this.name = options.name
    this.help = options.help
    this.#bounds = [...options.buckets].sort((a, b) => a - b)
    for (const registry of options.registers) registry.registerMetric(this as never)
  }

  /** The series of these labels, created at its first use; keep it rather than asking per observation. */
  series(labels: Labels = {}): HistogramSeries {
    const key = JSON.stringify(labels)
    let series = this.#series.get(key)
    if (!series) this.#series.set(key, (series = new HistogramSeries(labels, this.#bounds)))
    return series
  }

  reset(): void {
    this.#series.clear()
  }

  get() {
    const values: MetricValue[] = []
    for (const series of this.#series.values()) {
      let cumulative = 0
      for (let bucket = 0; bucket <= this.#bounds.length; bucket++) {
        cumulative += series.counts[bucket]
        const le = bucket < this.#bounds.length ? this.#bounds[bucket] : '+Inf'
        values.push({ metricName: `${this.name}_bucket`, labels: { ...series.labels, le }, value: cumulative })
      }
      values.push({ metricName: `${this.name}_sum`, labels: series.labels, value: series.sum })
      values.push({ metricName: `${this.name}_count`, labels: series.labels, value: series.count })
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator }
  }
}

/** A counter with one label, whose series are found by the label's value. */
export class SingleLabelCounter {
  readonly type = 'counter'
  readonly aggregator = 'sum'
  readonly name: string
  readonly help: string
  readonly #label: string
  readonly #series = new Map<string, MetricValue>()

  constructor(options: { name: string; help: string; label: string; registers: Registry[] }) {
    this.name = options.name
    this.help = options.help
    this.#label = options.label
    for (const registry of options.registers) registry.registerMetric(this as never)
  }

  inc(labelValue: string): void {
    const series = this.#series.get(labelValue)
    if (series) series.value++
    else this.#series.set(labelValue, { labels: { [this.#label]: labelValue }, value: 1 })
  }

  remove(labelValue: string): void {
    this.#series.delete(labelValue)
  }

  reset(): void {
    this.#series.clear()
  }

  get() {
    return { name: this.name, help: this.help, type: this.type, values: [...this.#series.values()], aggregator: this.aggregator }
  }
}
