/** Tenant creation through the API, timed one creation at a time, as an administrator creates tenants. */
import { percentile } from './load.ts'
import { BenchError, call, checkpoint, log, progressReporter } from './process.ts'
import { cell, round, table } from './report.ts'

export interface CreationTimes {
  count: number
  tenantsBefore: number
  p50Ms: number | null
  p99Ms: number | null
  meanMs: number | null
  minMs: number | null
  maxMs: number | null
  latenciesMs: (number | null)[]
}

/** Creates the tenants `ids` through POST /auth/tenants, one after the other, and prints the figures. */
export async function timeTenantCreation(serviceUrl: string, adminToken: string, ids: string[], tenantsBefore: number): Promise<CreationTimes> {
  log(`creating ${ids.length} tenants through POST /auth/tenants, one at a time`)
  const headers = { authorization: `Bearer ${adminToken}` }
  const latencies: number[] = []
  const progress = progressReporter('tenants created')
  for (const id of ids) {
    checkpoint()
    const answer = await call(serviceUrl, 'POST', '/auth/tenants', headers, { id, name: `Bench ${id}` })
    if (answer.status !== 201) throw new BenchError(`POST /auth/tenants ${id}: ${answer.status} ${JSON.stringify(answer.body)}`)
    latencies.push(answer.ms)
    progress.update(latencies.length, ids.length)
  }
  progress.end()
  const sorted = [...latencies].sort((a, b) => a - b)
  const creation: CreationTimes = {
    count: latencies.length,
    tenantsBefore,
    p50Ms: round(percentile(sorted, 0.5)),
    p99Ms: round(percentile(sorted, 0.99)),
    meanMs: round(latencies.reduce((sum, value) => sum + value, 0) / latencies.length),
    minMs: round(sorted[0]),
    maxMs: round(sorted[sorted.length - 1]),
    latenciesMs: latencies.map((value) => round(value))
  }
  process.stdout.write(
    `tenant creation through POST /auth/tenants, ${creation.count} one at a time, ${tenantsBefore} tenants before:\n` +
      `${table(
        ['', 'p50 ms', 'p99 ms', 'mean ms', 'max ms'],
        [['POST /auth/tenants', cell(creation.p50Ms ?? NaN), cell(creation.p99Ms ?? NaN), cell(creation.meanMs ?? NaN), cell(creation.maxMs ?? NaN)]]
      )}\n\n`
  )
  return creation
}
