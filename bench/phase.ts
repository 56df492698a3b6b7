/**
 * A phase: cases loaded side by side in alternating rounds after a warm-up, each figure then set
 * against its floor's in the same round (bench/README.md).
 */
import { tenantRoleName } from '../lib/tenants/index.ts'
import type { PhaseCase } from './cases.ts'
import { probeRoleSwitch, settleDatabase, type OpenedDatabase, type RoleSwitchProbe, type Settled } from './database.ts'
import { runLoad, type RunStats } from './load.ts'
import { call, BenchError, checkpoint, clusterCpuSnapshot, clusterCpuSpent, cpuSecondsOf, log, state } from './process.ts'
import { cell, median, round, signed, table } from './report.ts'

export interface RoundRun {
  round: number
  case: string
  stats: RunStats
  /** CPU the process serving the case (the service, or the bare process) spent per 2xx answer, in µs. */
  cpuUsPerRequest: number | null
  /** CPU PostgreSQL spent per 2xx answer, in µs, every process of the cluster counted; null when it runs elsewhere. */
  dbCpuUsPerRequest: number | null
}

export interface CaseSummary {
  key: string
  label: string
  floor: string | null
  tenants: number
  distribution: string
  rounds: number
  rps: number
  p50: number
  p97_5: number
  p99: number
  /** Median over rounds of this case's req/s ÷ its floor's in the same round. */
  ratio: number | null
  /** Median over rounds of this case's p99 − its floor's in the same round, in ms. */
  addedP99Ms: number | null
  /** The same two against the bare process's counterpart. */
  bareRatio: number | null
  bareAddedP99Ms: number | null
  /** Median over rounds of the serving process's CPU per answer, in µs. */
  cpuUsPerRequest: number | null
  /** The same for PostgreSQL. */
  dbCpuUsPerRequest: number | null
}

export interface PhaseResult {
  name: string
  tenantsInDatabase: number
  settled: Settled
  roleSwitch: RoleSwitchProbe | null
  warmup: { case: string; stats: RunStats }[]
  runs: RoundRun[]
  summary: CaseSummary[]
}

export function summarise(cases: PhaseCase[], runs: RoundRun[]): CaseSummary[] {
  const of = (key: string) => runs.filter((run) => run.case === key)
  const measured = (key: string | undefined): key is string => key !== undefined && cases.some((other) => other.def.key === key)
  return cases.map(({ def, tenants, distribution }) => {
    const own = of(def.key)
    // Each round's run beside the same round's run of `key`: the two were measured minutes apart at most.
    const against = (key: string | undefined) => {
      if (!measured(key)) return { ratio: null, addedP99Ms: null }
      const paired = own.flatMap((run) => {
        const floor = of(key).find((candidate) => candidate.round === run.round)
        return floor ? [{ run: run.stats, floor: floor.stats }] : []
      })
      if (!paired.length) return { ratio: null, addedP99Ms: null }
      return {
        ratio: round(median(paired.map(({ run, floor }) => run.rps / floor.rps))),
        addedP99Ms: round(median(paired.map(({ run, floor }) => run.latencyMs.p99 - floor.latencyMs.p99)))
      }
    }
    const floor = against(def.floor)
    const bare = against(def.bare)
    return {
      key: def.key,
      label: def.label,
      floor: measured(def.floor) ? def.floor : null,
      tenants: tenants.length,
      distribution,
      rounds: own.length,
      rps: round(median(own.map((run) => run.stats.rps)), 1) ?? Number.NaN,
      p50: round(median(own.map((run) => run.stats.latencyMs.p50))) ?? Number.NaN,
      p97_5: round(median(own.map((run) => run.stats.latencyMs.p97_5))) ?? Number.NaN,
      p99: round(median(own.map((run) => run.stats.latencyMs.p99))) ?? Number.NaN,
      ratio: floor.ratio,
      addedP99Ms: floor.addedP99Ms,
      bareRatio: bare.ratio,
      bareAddedP99Ms: bare.addedP99Ms,
      cpuUsPerRequest: medianCpu(own, 'cpuUsPerRequest'),
      dbCpuUsPerRequest: medianCpu(own, 'dbCpuUsPerRequest')
    }
  })
}

/** The median over runs of a CPU figure, leaving out runs where it could not be read. */
function medianCpu(runs: RoundRun[], figure: 'cpuUsPerRequest' | 'dbCpuUsPerRequest'): number | null {
  return round(median(runs.flatMap((run) => (run[figure] === null ? [] : [run[figure]]))), 1)
}

function phaseTable(phase: PhaseResult): string {
  const keyWidth = Math.max(...phase.summary.map((row) => row.key.length))
  return table(
    ['case', 'tenants', 'req/s', 'p50 ms', 'p97.5 ms', 'p99 ms', 'CPU µs', 'DB µs', '÷ floor', '+p99 ms', '÷ bare', '+p99 ms'],
    phase.summary.map((row) => [
      `${row.key.padEnd(keyWidth)} ${row.label}`,
      `${row.tenants} ${row.distribution}`,
      cell(row.rps, 0),
      cell(row.p50),
      cell(row.p97_5),
      cell(row.p99),
      cell(row.cpuUsPerRequest ?? NaN, 0),
      cell(row.dbCpuUsPerRequest ?? NaN, 0),
      row.ratio === null ? '(floor)' : cell(row.ratio),
      row.addedP99Ms === null ? '' : signed(row.addedP99Ms),
      row.bareRatio === null ? '' : cell(row.bareRatio),
      row.bareAddedP99Ms === null ? '' : signed(row.bareAddedP99Ms)
    ])
  )
}

/** What every phase of one run shares. */
export interface PhaseEnvironment {
  connections: number
  duration: number
  rounds: number
  warmup: number
  /** The database whose tenants are loaded: settled before the phase, probed after it. */
  db: OpenedDatabase
  /** A tenant of that database, whose role the role-switch probe switches to. */
  probeTenant: string
  /** Where runs with failed requests are noted: the run's figures are then not valid. */
  problems: string[]
  /** The postmaster of the cluster, when it runs on this machine: its CPU is read around each run. */
  postmasterPid: number | null
}

/** Loads one case for `seconds`, with the CPU its server and the database spent per answer. */
async function load(phaseCase: PhaseCase, connections: number, seconds: number, postmasterPid: number | null) {
  const { server } = phaseCase
  const perAnswer = (cpuSeconds: number | null, ok: number) => (cpuSeconds === null || ok === 0 ? null : round((cpuSeconds * 1e6) / ok, 1))
  const dbBefore = postmasterPid === null ? null : clusterCpuSnapshot(postmasterPid)
  const cpuBefore = cpuSecondsOf(server.pid)
  const stats = await runLoad({
    url: server.url,
    connections,
    durationS: seconds,
    next: () => phaseCase.def.request(phaseCase.tenants[phaseCase.pick()]),
    onStart: (stop) => (state.stopLoad = stop)
  }).finally(() => (state.stopLoad = null))
  const cpuAfter = cpuSecondsOf(server.pid)
  const dbAfter = postmasterPid === null ? null : clusterCpuSnapshot(postmasterPid)
  return {
    stats,
    cpuUsPerRequest: perAnswer(cpuBefore === null || cpuAfter === null ? null : cpuAfter - cpuBefore, stats.ok),
    dbCpuUsPerRequest: perAnswer(dbBefore === null || dbAfter === null ? null : clusterCpuSpent(dbBefore, dbAfter), stats.ok)
  }
}

function noteFailures(problems: string[], where: string, stats: RunStats): void {
  if (stats.non2xx === 0 && stats.errors === 0 && stats.timeouts === 0) return
  const problem = `${where}: ${stats.non2xx} non-2xx responses ${JSON.stringify(stats.statusCodes)}, ${stats.errors} errors, ${stats.timeouts} timeouts`
  problems.push(problem)
  log(`WARNING ${problem}`)
}

/** Runs the phase and prints its table. */
export async function runPhase(environment: PhaseEnvironment, name: string, cases: PhaseCase[]): Promise<PhaseResult> {
  const { database, login, pool } = environment.db
  const { problems } = environment
  // Every case answers correctly before any is measured.
  for (const phaseCase of cases) {
    for (const tenant of [phaseCase.tenants[0], phaseCase.tenants[phaseCase.tenants.length - 1]]) {
      const spec = phaseCase.def.request(tenant)
      const answer = await call(phaseCase.server.url, 'GET', spec.path, spec.headers)
      const problem = answer.status === 200 ? phaseCase.def.check(tenant, answer.body, spec) : `${answer.status} ${JSON.stringify(answer.body)}`
      if (problem) throw new BenchError(`case ${phaseCase.def.key}: GET ${spec.path} as ${tenant.id}: ${problem}`)
    }
  }
  // Tokens are minted (and headers built) now, not on a tenant's first request under load.
  for (const phaseCase of cases) for (const tenant of phaseCase.tenants) phaseCase.def.request(tenant)
  const { rows } = await pool.query<{ count: number }>('SELECT count(*)::int AS count FROM public.tenants')
  const tenantsInDatabase = rows[0].count
  checkpoint()
  log(`${name}: letting PostgreSQL settle (catalogs vacuumed, a checkpoint, autovacuum idle)`)
  const settled = await settleDatabase(database)
  for (const note of new Set(settled.skipped)) log(`${name}: settle: ${note}`)
  const warmup: PhaseResult['warmup'] = []
  if (environment.warmup > 0) {
    for (const phaseCase of cases) {
      checkpoint()
      log(`${name}: warming up ${phaseCase.def.key} for ${environment.warmup} s`)
      const { stats } = await load(phaseCase, environment.connections, environment.warmup, null)
      noteFailures(problems, `${name} warm-up ${phaseCase.def.key}`, stats)
      warmup.push({ case: phaseCase.def.key, stats })
    }
  }
  const runs: RoundRun[] = []
  for (let round = 1; round <= environment.rounds; round++) {
    // Forward, then backward: drift over a round weighs on every case alike.
    const order = round % 2 === 1 ? cases : [...cases].reverse()
    for (const phaseCase of order) {
      checkpoint()
      const { stats, cpuUsPerRequest, dbCpuUsPerRequest } = await load(phaseCase, environment.connections, environment.duration, environment.postmasterPid)
      checkpoint()
      noteFailures(problems, `${name} round ${round} ${phaseCase.def.key}`, stats)
      runs.push({ round, case: phaseCase.def.key, stats, cpuUsPerRequest, dbCpuUsPerRequest })
      log(
        `${name} round ${round}/${environment.rounds} ${phaseCase.def.key.padEnd(7)} ${cell(stats.rps, 0).padStart(6)} req/s  ` +
          `p50 ${cell(stats.latencyMs.p50)}  p99 ${cell(stats.latencyMs.p99)} ms`
      )
    }
  }
  checkpoint()
  // A side measurement: when it cannot be taken, the phase's figures still stand.
  const tenantRole = tenantRoleName(database.rolePrefix, environment.probeTenant)
  const roleSwitch = await probeRoleSwitch(login.url, database.url, database.rolePrefix, tenantRole).catch((error: Error) => {
    log(`${name}: the role-switch probe failed: ${error.message}`)
    return null
  })
  const phase: PhaseResult = { name, tenantsInDatabase, settled, roleSwitch, warmup, runs, summary: summarise(cases, runs) }
  process.stdout.write(
    `\n${name}: ${tenantsInDatabase} tenants in the database, ${environment.connections} connections, ` +
      `${environment.rounds} × ${environment.duration} s per case (medians over rounds); settled in ${settled.seconds} s\n${phaseTable(phase)}\n` +
      (roleSwitch
        ? `switch to a tenant role as ${login.role}: ${cell(roleSwitch.warmMs, 3)} ms, ` +
          `${cell(roleSwitch.afterRoleChangeMs, 3)} ms the first time on a connection after a role of the cluster changed\n`
        : '') +
      '\n'
  )
  return phase
}
