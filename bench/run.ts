/**
 * `npm run bench`: the load test of the tenant context switch (DESIGN §3 and §8; bench/README.md
 * says how to read it, BENCHMARKS.md has the latest figures).
 *
 * It provisions a database of its own, starts the service in production mode as a child process
 * (bench/server.ts: the real service plus the comparison routes of bench/comparison-routes.ts),
 * and loads each case with autocannon in alternating rounds, so that every tenant-scoped figure is
 * compared with a floor measured minutes apart at most. Then it times tenant creation through the
 * API and `npm run migrate` with one new migration, and loads the same cases once the database
 * holds 10,000 tenants, side by side with a second database of 100 tenants and a service of its
 * own. The databases, their tenant roles and every process it started are gone at the end, Ctrl-C
 * included.
 *
 * The parts live beside it: options.ts (the command line), cases.ts (what is loaded), phase.ts
 * (rounds and ratios), creation.ts, migration.ts and scale.ts (the other measurements),
 * targets.ts (the verdicts against DESIGN §8 and the CI guard) and serve.ts (--serve).
 */
import { execFileSync } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type pg from 'pg'
import { loadMigrations, type Migration } from '../lib/tenants/index.ts'
import { startEmbeddedS3 } from '../lib/embedded/s3.ts'
import { EnvSchema } from '../schemas/env.ts'
import { startTestIssuer } from '../test/helpers/issuer.ts'
import { PGBOUNCER_BINARY, startPgBouncer } from '../test/helpers/pgbouncer.ts'
import { benchCases, TOKEN_LIFETIME_S, type CaseDef, type PhaseCase, type Server } from './cases.ts'
import { timeTenantCreation, type CreationTimes } from './creation.ts'
import { benchTenantId, chooseCluster, insertTenantRows, openBenchDatabase, provisionTenants, settleDatabase, type BenchTenant } from './database.ts'
import { uniform, zipf } from './load.ts'
import { timeMigration } from './migration.ts'
import { parseOptions, UsageError, USAGE, GUARD_MIN_RATIO, type Options } from './options.ts'
import { runPhase, type PhaseEnvironment, type PhaseResult } from './phase.ts'
import {
  BenchError,
  checkpoint,
  cleanup,
  clock,
  Interrupted,
  localPostmasterPid,
  log,
  onCleanup,
  onSignal,
  progressReporter,
  RESULTS_DIR,
  ROOT,
  sleep,
  startedAt,
  startService,
  startStamp,
  state,
  waitUntilReady
} from './process.ts'
import { cell, median, round } from './report.ts'
import { compareAtScale, type ScaleComparison } from './scale.ts'
import { serveUntilStopped } from './serve.ts'
import { evaluateTargets, guard, targetsTable } from './targets.ts'

async function bench(options: Options): Promise<number> {
  const problems: string[] = []
  const report: Record<string, unknown> = {
    tool: 'npm run bench',
    formatVersion: 1,
    mode: options.quick ? 'quick' : 'full',
    startedAt: startedAt.toISOString()
  }

  // Where the load comes from and goes to.
  const cluster = await chooseCluster(log)
  if (cluster.stop) onCleanup('stopping the embedded PostgreSQL', cluster.stop)
  log(`PostgreSQL: ${cluster.label}`)
  const db = await openBenchDatabase(cluster, options)
  const { database, login, pool } = db
  report.serviceLogin = { role: login.role, superuser: login.superuser }
  log(`the service connects as ${login.role}${login.superuser ? ', a superuser: PostgreSQL skips its role-membership checks' : ' (not a superuser)'}`)
  const tenantMigrations: Migration[] = await loadMigrations('tenant')

  const issuer = await startTestIssuer({ clientId: 'tenant-service-bench', poolPath: '/bench-pool' })
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
  const { cases, tokenOf } = benchCases(issuer, tenantClaim)

  // Tenants: provisioned as the service provisions them, then filled straight into their tables.
  const tenants: BenchTenant[] = []
  const provisioning: { from: number; to: number; seconds: number; perSecond: number }[] = []
  report.provisioning = provisioning
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

  const phaseEnvironment: PhaseEnvironment = {
    connections: options.connections,
    duration: options.duration,
    rounds: options.rounds,
    warmup: options.warmup,
    db,
    probeTenant: tenants[0].id,
    problems,
    postmasterPid: await localPostmasterPid(db.pool)
  }
  const phases: PhaseResult[] = []
  report.phases = phases
  // The pooler phase's second service, through PgBouncer in transaction mode (started there).
  let pooledService: Server | null = null
  const serverOf = (def: CaseDef): Server => (def.bareProcess ? bareProcess : def.pooled ? pooledService! : service)
  const uniformCase = (def: CaseDef): PhaseCase => ({
    def,
    tenants: tenants.slice(0, options.tenants),
    pick: uniform(options.tenants),
    distribution: 'uniform',
    server: serverOf(def)
  })

  // a–c (and e): the uniform cases, side by side.
  const mainCases = [cases.aBare, cases.a, cases.b, cases.cBare, cases.cFloor, cases.c].map(uniformCase)
  if (!options.skip.has('prototype')) mainCases.push(uniformCase(cases.e))
  const main = await runPhase(phaseEnvironment, 'main', mainCases)
  phases.push(main)

  let getRootOverPrototype: number | null | undefined
  if (!options.skip.has('prototype')) {
    const ratios = main.runs
      .filter((run) => run.case === 'b')
      .flatMap((run) => {
        const prototype = main.runs.find((other) => other.case === 'e' && other.round === run.round)
        return prototype ? [run.stats.rps / prototype.stats.rps] : []
      })
    getRootOverPrototype = round(median(ratios))
    report.prototypeComparison = { getRootOverPrototype }
  }

  // Through PgBouncer in transaction mode with no named prepared statements, side by side with
  // the direct service (DESIGN §8 asks for the ratio to direct).
  if (!options.skip.has('pooler')) {
    if (!PGBOUNCER_BINARY) {
      log('pooler: PgBouncer is not installed (apt-get install pgbouncer); that part is left out')
    } else {
      checkpoint()
      const bouncer = await startPgBouncer(login.url, { poolSize: Number(serviceEnv.PG_POOL_MAX ?? EnvSchema.properties.PG_POOL_MAX.default) })
      onCleanup('stopping PgBouncer', () => bouncer.stop())
      const pooled = await startService(
        { ...serviceEnv, DATABASE_URL: bouncer.through(login.url), DATABASE_DIRECT_URL: login.url, PG_PREPARED_STATEMENTS: 'false' },
        { nodeArgs }
      )
      await waitUntilReady(pooled.url)
      pooledService = pooled
      log(`service through PgBouncer (transaction mode) listening at ${pooled.url}`)
      phases.push(await runPhase(phaseEnvironment, 'pooler', [cases.b, cases.bPooled, cases.c, cases.cPooled].map(uniformCase)))
    }
  }

  let creation: CreationTimes | undefined
  if (!options.skip.has('creation')) {
    checkpoint()
    const ids = Array.from({ length: options.creations }, (_, i) => benchTenantId(tenants.length + i + 1))
    creation = await timeTenantCreation(service.url, adminToken, ids, await countTenants(pool))
    report.tenantCreation = creation
    // They join the bench's tenants, with rows like the others, so later phases count them.
    for (const id of ids) tenants.push({ id, userIds: await insertTenantRows(pool, id, options.rows) })
  }

  // The larger databases, smallest first, so that each step only adds tenants.
  let migration: Awaited<ReturnType<typeof timeMigration>> | undefined
  let scale: ScaleComparison[] | undefined
  const steps: { tenants: number; run: () => Promise<void> }[] = []
  if (!options.skip.has('zipf')) {
    steps.push({
      tenants: options.zipfTenants,
      run: async () => {
        const skewed = (def: CaseDef): PhaseCase => ({
          def,
          tenants: tenants.slice(0, options.zipfTenants),
          pick: zipf(options.zipfTenants, 1),
          distribution: 'zipf s=1',
          server: serverOf(def)
        })
        phases.push(await runPhase(phaseEnvironment, 'zipf', [skewed(cases.dFloor), skewed(cases.d)]))
      }
    })
  }
  if (!options.skip.has('migrate')) {
    steps.push({
      tenants: options.migrateTenants,
      run: async () => {
        migration = await timeMigration(pool, serviceEnv, options.migrateConcurrency)
        report.migration = migration
      }
    })
  }
  if (!options.skip.has('scale')) {
    steps.push({
      tenants: options.scaleTenants,
      run: async () => {
        const compared = await compareAtScale({
          environment: phaseEnvironment,
          cluster,
          options,
          migrations: tenantMigrations,
          serviceEnv,
          nodeArgs,
          largeTenants: tenants,
          replacedService: service,
          cases: [cases.a, cases.b, cases.cFloor, cases.c]
        })
        phases.push(compared.phase)
        scale = compared.comparison
        report.scale = scale
        report.scaleServiceLogs = compared.serviceLogs
      }
    })
  }
  steps.sort((a, b) => a.tenants - b.tenants)
  for (const step of steps) {
    checkpoint()
    await growTo(step.tenants)
    await step.run()
  }

  // Nothing may be left inside a transaction once the load is over (DESIGN §8).
  await sleep(500)
  const { rows: lingering } = await pool.query<{ count: number }>(
    `SELECT count(*)::int AS count FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'`,
    [database.name]
  )
  const idleInTransactionAfterLoad = lingering[0].count
  report.idleInTransactionAfterLoad = idleInTransactionAfterLoad
  if (idleInTransactionAfterLoad > 0) log(`WARNING ${idleInTransactionAfterLoad} connections are idle in transaction after the load`)
  report.serviceLog = { lines: service.lineCount(), last: service.lines }

  // Verdicts against DESIGN §8, from this run's figures.
  const targets = evaluateTargets({
    phases,
    zipfTenants: options.zipfTenants,
    getRootOverPrototype,
    creationP50Ms: creation?.p50Ms,
    scale,
    migration,
    idleInTransactionAfterLoad
  })
  report.targets = targets
  if (!options.quick) process.stdout.write(`targets (DESIGN §8), from this run:\n${targetsTable(targets)}\n\n`)

  let exitCode = 0
  if (options.quick) {
    const checks = guard(main)
    report.guard = checks
    for (const check of checks) {
      const verdict = check.ok ? 'ok' : 'FAILED'
      process.stdout.write(`guard: ${check.case} ${check.label} ÷ floor = ${cell(check.ratio ?? NaN, 3)} (minimum ${check.min}): ${verdict}\n`)
    }
    const passed = checks.filter((check) => check.ok).length
    const failed = checks.length - passed
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

  const output = options.output ? path.resolve(options.output) : path.join(RESULTS_DIR, `${startStamp}.json`)
  await mkdir(path.dirname(output), { recursive: true })
  await writeFile(output, `${JSON.stringify(report, null, 2)}\n`)
  process.stdout.write(`results: ${path.relative(process.cwd(), output)}\n`)
  return exitCode
}

const countTenants = async (pool: pg.Pool) => (await pool.query<{ count: number }>('SELECT count(*)::int AS count FROM public.tenants')).rows[0].count

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
