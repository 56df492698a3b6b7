/**
 * Latency with many tenants in the database against latency with few, side by side, as every other
 * comparison: a second database of --tenants tenants with a service of its own, configured alike,
 * loaded in the same rounds as the large one (BENCHMARKS.md, R4; bench/README.md).
 */
import type pg from 'pg'
import type { Migration } from '../lib/tenants/index.ts'
import { EnvSchema } from '../schemas/env.ts'
import type { CaseDef, PhaseCase } from './cases.ts'
import { benchTenantId, openBenchDatabase, provisionTenants, settleDatabase, type BenchTenant, type Cluster } from './database.ts'
import { uniform } from './load.ts'
import type { Options } from './options.ts'
import { runPhase, type PhaseEnvironment, type PhaseResult } from './phase.ts'
import { BenchError, checkpoint, log, sleep, startService, state, waitUntilReady, type Service } from './process.ts'
import { cell, median, round, table } from './report.ts'

export interface ScaleComparison {
  case: string
  tenantsSmall: number
  tenantsLarge: number
  /** Medians over rounds of the large side's figure ÷ the small side's in the same round. */
  p50Ratio: number | null
  p99Ratio: number | null
  rpsRatio: number | null
  /** CPU per answer of the service, and of PostgreSQL (null when it runs elsewhere). */
  serviceCpuRatio: number | null
  dbCpuRatio: number | null
  perRoundP50: (number | null)[]
  perRoundP99: (number | null)[]
  /** Each side's throughput ÷ its own floor. */
  floorRatioSmall: number | null
  floorRatioLarge: number | null
}

export interface ScaleSetup {
  /** The large database's phase environment: it is the one settled and probed. */
  environment: PhaseEnvironment
  cluster: Cluster
  options: Options
  migrations: Migration[]
  /** The service's configuration, which the small side's service gets too, with its own database. */
  serviceEnv: Record<string, string>
  nodeArgs: string[]
  /** Every tenant of the large database, in the order they were created. */
  largeTenants: BenchTenant[]
  /** The service that has served the large database so far: stopped, and replaced by one started after the last role change. */
  replacedService: Service
  /** The cases loaded on both sides: tenant-scoped ones and their floors. */
  cases: CaseDef[]
}

export interface ScaleResult {
  phase: PhaseResult
  comparison: ScaleComparison[]
  /** What the two services logged (warn and above): the last lines, and how many in all. */
  serviceLogs: { side: string; lines: number; last: string[] }[]
}

export async function compareAtScale(setup: ScaleSetup): Promise<ScaleResult> {
  const { options, largeTenants } = setup
  const small = options.tenants
  log(`a database of ${small} tenants, served by a service of its own, beside the one of ${largeTenants.length}`)
  const smallDb = await openBenchDatabase(setup.cluster, options)
  const smallTenants = await provisionTenants(
    smallDb.pool,
    Array.from({ length: small }, (_, i) => benchTenantId(i + 1)),
    {
      rolePrefix: smallDb.database.rolePrefix,
      migrations: setup.migrations,
      rows: options.rows,
      concurrency: options.provisionConcurrency,
      stopped: () => state.interrupted
    }
  )
  checkpoint()

  // Both sides are served by services started after the cluster's last role change, each once its
  // spare stock is full. A role change (provisioning a tenant, building a spare, the role-switch
  // probe) makes every open connection of the cluster rebuild its login's membership list on its
  // next switch to a tenant role, on PostgreSQL 15 a cost that grows with the tenants (BENCHMARKS.md,
  // R2); a service switches each of its connections once at
  // start. Measured without this, a connection still owing its rebuild stalled the requests behind
  // it mid-round (BENCHMARKS.md, C19), which is the cost of a role change, not of the tenants' number.
  // The large side's service is new too, as the small side's is: the one that served the earlier
  // phases would bring their history into the comparison.
  const spareTarget = Number(setup.serviceEnv.TENANT_SPARES ?? EnvSchema.properties.TENANT_SPARES.default)
  const smallService = await startService(
    { ...setup.serviceEnv, DATABASE_URL: smallDb.login.url, TENANT_ROLE_PREFIX: smallDb.database.rolePrefix },
    { nodeArgs: setup.nodeArgs }
  )
  await waitUntilReady(smallService.url)
  await waitForSpareStock(smallDb.pool, spareTarget, `${small} tenants`)
  await waitForSpareStock(setup.environment.db.pool, spareTarget, `${largeTenants.length} tenants`)
  await setup.replacedService.stop()
  const largeService = await startService(setup.serviceEnv, { nodeArgs: setup.nodeArgs })
  await waitUntilReady(largeService.url)
  log(`a service of its own for the database of ${largeTenants.length} tenants, its connections switched once since the last role change`)
  // runPhase lets the large database settle; the small one settles first.
  await settleDatabase(smallDb.database)

  // The large side loads as many tenants, spread over the order they were created in: the
  // role-membership check PostgreSQL makes on each switch scans memberships in that order.
  const spread = Array.from({ length: small }, (_, i) => largeTenants[Math.floor((i * largeTenants.length) / small)])
  const suffix = `@${small}`
  const large = (def: CaseDef): PhaseCase => ({ def, tenants: spread, pick: uniform(spread.length), distribution: 'spread', server: largeService })
  const smallCase = (def: CaseDef): PhaseCase => ({
    def: {
      ...def,
      key: `${def.key}${suffix}`,
      label: `${def.label}; ${small} tenants in the database`,
      floor: def.floor && `${def.floor}${suffix}`,
      bare: undefined
    },
    tenants: smallTenants,
    pick: uniform(smallTenants.length),
    distribution: 'uniform',
    server: smallService
  })
  // Each case beside its counterpart, so that the two are measured seconds apart.
  const phase = await runPhase(
    setup.environment,
    'scale',
    setup.cases.flatMap((def) => [smallCase(def), large(def)])
  )
  await Promise.all([smallService.stop(), largeService.stop()])

  // The tenant-scoped cases (those with a floor) are compared.
  const scoped = setup.cases.filter((def) => def.floor).map((def) => def.key)
  const comparison = scoped.map((key): ScaleComparison => {
    const rounds = phase.runs.flatMap((run) => {
      const beside = run.case === key && phase.runs.find((other) => other.case === `${key}${suffix}` && other.round === run.round)
      if (!beside) return []
      const [largeStats, smallStats] = [run.stats, beside.stats]
      return [
        {
          p50: largeStats.latencyMs.p50 / smallStats.latencyMs.p50,
          p99: largeStats.latencyMs.p99 / smallStats.latencyMs.p99,
          rps: largeStats.rps / smallStats.rps,
          // What each answer cost the service and PostgreSQL, large side ÷ small side.
          serviceCpu: run.cpuUsPerRequest !== null && beside.cpuUsPerRequest ? run.cpuUsPerRequest / beside.cpuUsPerRequest : null,
          dbCpu: run.dbCpuUsPerRequest !== null && beside.dbCpuUsPerRequest ? run.dbCpuUsPerRequest / beside.dbCpuUsPerRequest : null
        }
      ]
    })
    const of = (figure: 'p50' | 'p99' | 'rps' | 'serviceCpu' | 'dbCpu') =>
      round(median(rounds.flatMap((entry) => (entry[figure] === null ? [] : [entry[figure]]))))
    return {
      case: key,
      tenantsSmall: small,
      tenantsLarge: phase.tenantsInDatabase,
      p50Ratio: of('p50'),
      p99Ratio: of('p99'),
      rpsRatio: of('rps'),
      serviceCpuRatio: of('serviceCpu'),
      dbCpuRatio: of('dbCpu'),
      perRoundP50: rounds.map((entry) => round(entry.p50)),
      perRoundP99: rounds.map((entry) => round(entry.p99)),
      floorRatioSmall: phase.summary.find((row) => row.key === `${key}${suffix}`)?.ratio ?? null,
      floorRatioLarge: phase.summary.find((row) => row.key === key)?.ratio ?? null
    }
  })
  process.stdout.write(
    `with ${phase.tenantsInDatabase} tenants in the database ÷ with ${small}, side by side ` +
      `(medians of the per-round ratios; ${small} tenants loaded on each side):\n` +
      `${table(
        ['case', 'p50 ×', 'p99 ×', 'req/s ×', 'CPU µs ×', 'DB µs ×', 'p50 × per round', `÷ floor, ${small}`, `÷ floor, ${phase.tenantsInDatabase}`],
        comparison.map((row) => [
          row.case,
          cell(row.p50Ratio ?? NaN),
          cell(row.p99Ratio ?? NaN),
          cell(row.rpsRatio ?? NaN),
          cell(row.serviceCpuRatio ?? NaN),
          cell(row.dbCpuRatio ?? NaN),
          row.perRoundP50.map((value) => cell(value ?? NaN)).join(' '),
          cell(row.floorRatioSmall ?? NaN),
          cell(row.floorRatioLarge ?? NaN)
        ])
      )}\n\n`
  )
  const serviceLogs = [
    { side: `${small} tenants`, service: smallService },
    { side: `${largeTenants.length} tenants`, service: largeService }
  ].map(({ side, service }) => ({ side, lines: service.lineCount(), last: service.lines }))
  return { phase, comparison, serviceLogs }
}

/** Waits until the database holds `target` spare tenant schemas, which a service builds in the background. */
async function waitForSpareStock(pool: pg.Pool, target: number, which: string): Promise<void> {
  const begun = performance.now()
  const deadline = begun + 300_000
  for (;;) {
    checkpoint()
    const { rows } = await pool.query<{ ready: number }>('SELECT count(*)::int AS ready FROM public.tenant_spares')
    if (rows[0].ready >= target) break
    if (performance.now() > deadline) throw new BenchError(`the database of ${which} holds ${rows[0].ready} spare schemas after 300 s, not ${target}`)
    await sleep(500)
  }
  log(`the database of ${which}: ${target} spare schemas ready (waited ${((performance.now() - begun) / 1000).toFixed(1)} s)`)
}
