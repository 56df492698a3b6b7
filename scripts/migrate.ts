/**
 * `npm run migrate` (`node dist/scripts/migrate.js` from the build): brings the control plane and
 * every tenant schema to the latest migration, `--concurrency` connections at a time.
 *
 * Exit status: 0 when everything is at the latest version, 1 when a tenant (or the control plane)
 * failed, 2 for bad usage or configuration, 130 when interrupted. Every exit except 2 can simply be
 * followed by another run: each tenant's version is recorded, so a rerun finishes the rest.
 */
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { migrateAll, type MigrationProgress, type MigrationSummary } from '../lib/tenants/index.ts'
import { ConfigError, directDatabaseUrl, loadConfig, type Config } from '../schemas/env.ts'

const here = path.dirname(fileURLToPath(import.meta.url))
// scripts/ from the sources, dist/scripts/ from the build: both share the project's .data.
const projectRoot = path.resolve(here, '..').replace(/[\\/]dist$/, '')
const EMBEDDED_DATA_DIR = path.join(projectRoot, '.data', 'postgres')

const MAX_CONCURRENCY = 256

const USAGE = `Usage: npm run migrate -- [options]
       node dist/scripts/migrate.js [options]

Brings the control plane (the public schema) and every tenant schema to the latest migration.
Tenants are migrated concurrently, each in its own transaction; a tenant that fails is recorded
(public.tenants.migration_status = 'failed') and reported while the others go on. Running it again
finishes whatever a failure or an interruption left.

Options:
  --concurrency N        database connections to use at once (default 4, at most ${MAX_CONCURRENCY})
  --migrations-dir DIR   directory holding public/ and tenant/ (default: the migrations shipped
                         with the service)
  -h, --help             show this help

Configuration comes from the environment: DATABASE_DIRECT_URL, else DATABASE_URL, and nothing
else (a session is needed: not through a transaction-mode pooler). Outside production and without
either, the embedded PostgreSQL of \`npm start\` (.data/postgres) is used.

Exit status: 0 all migrated, 1 a tenant or the control plane failed, 2 bad usage or configuration,
130 interrupted.`

class UsageError extends Error {}

interface Options {
  concurrency: number
  migrationsDir?: string
  help: boolean
}

export function parseOptions(argv: string[]): Options {
  const parse = () =>
    parseArgs({
      args: argv,
      options: {
        concurrency: { type: 'string' },
        'migrations-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' }
      },
      strict: true,
      allowPositionals: false
    })
  let parsed: ReturnType<typeof parse>
  try {
    parsed = parse()
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
  const { values } = parsed
  let concurrency = 4
  if (values.concurrency !== undefined) {
    concurrency = Number(values.concurrency)
    if (!/^\d+$/.test(values.concurrency) || concurrency < 1 || concurrency > MAX_CONCURRENCY) {
      throw new UsageError(`--concurrency must be an integer from 1 to ${MAX_CONCURRENCY} (got "${values.concurrency}")`)
    }
  }
  const migrationsDir = values['migrations-dir']
  if (migrationsDir !== undefined && !existsSync(path.join(migrationsDir, 'tenant'))) {
    throw new UsageError(`--migrations-dir: ${migrationsDir} has no tenant/ directory`)
  }
  return {
    concurrency,
    migrationsDir: migrationsDir === undefined ? undefined : path.resolve(migrationsDir),
    help: values.help === true
  }
}

const formatDuration = (ms: number) => (ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`)

const formatRate = (done: number, elapsedMs: number) =>
  elapsedMs > 0 ? `${(done / (elapsedMs / 1000)).toFixed(done / (elapsedMs / 1000) < 10 ? 1 : 0)}/s` : '–'

/**
 * On a terminal, one progress bar redrawn in place (at most ten times a second). Otherwise (CI
 * logs, `kubectl logs`) a plain line each time another tenth of the tenants is done.
 */
export function createProgressReporter(stream: NodeJS.WriteStream) {
  const started = performance.now()
  const tty = stream.isTTY === true
  let lastDraw = 0
  let lastTenth = 0
  let drawn = false

  function line(progress: MigrationProgress, elapsedMs: number): string {
    const percent = progress.total === 0 ? 100 : Math.floor((progress.done / progress.total) * 100)
    const rate = formatRate(progress.done, elapsedMs)
    const failed = `${progress.failed} failed`
    if (!tty) return `tenants: ${progress.done}/${progress.total} (${percent}%), ${failed}, ${rate}`
    const left = progress.done > 0 ? ((progress.total - progress.done) * elapsedMs) / progress.done : 0
    const tail = ` ${progress.done}/${progress.total} ${String(percent).padStart(3)}%  ${failed}  ${rate}  eta ${formatDuration(Math.round(left))}`
    const width = Math.max(10, Math.min(40, (stream.columns || 80) - tail.length - 3))
    const filled = progress.total === 0 ? width : Math.round((progress.done / progress.total) * width)
    return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]${tail}`
  }

  return {
    update(progress: MigrationProgress) {
      const now = performance.now()
      const elapsedMs = now - started
      if (tty) {
        if (progress.done < progress.total && now - lastDraw < 100) return
        lastDraw = now
        drawn = true
        stream.write(`\r\x1b[2K${line(progress, elapsedMs)}`)
        return
      }
      const tenth = Math.floor((progress.done * 10) / Math.max(progress.total, 1))
      if (tenth > lastTenth) {
        lastTenth = tenth
        stream.write(`${line(progress, elapsedMs)}\n`)
      }
    },
    /** Leaves the bar's last state on its own line before anything else is printed. */
    end() {
      if (drawn) stream.write('\n')
      drawn = false
    }
  }
}

export function formatSummary(summary: MigrationSummary): string {
  const lines: string[] = []
  lines.push(
    summary.controlPlaneApplied.length === 0
      ? 'control plane: already current'
      : `control plane: ${summary.controlPlaneApplied.length} migration(s) applied (${summary.controlPlaneApplied.map((version) => String(version).padStart(4, '0')).join(', ')})`
  )
  lines.push(`tenants: ${summary.total}, latest tenant version ${summary.latestVersion}`)
  lines.push(`  migrated:        ${summary.migrated}`)
  lines.push(`  already current: ${summary.upToDate}`)
  lines.push(`  failed:          ${summary.failed.length}`)
  for (const failure of summary.failed) lines.push(`    ${failure.tenant}: ${failure.error}`)
  if (summary.gone > 0) lines.push(`  deleted during the run: ${summary.gone}`)
  if (summary.lockRetries > 0) lines.push(`  attempts that gave up on a lock and were made again: ${summary.lockRetries}`)
  if (summary.interrupted) lines.push(`  not attempted (interrupted): ${summary.skipped}`)
  lines.push(`duration: ${formatDuration(summary.durationMs)}`)
  if (summary.failed.length > 0 || summary.interrupted) {
    lines.push('Run the command again to finish: only what is not yet at the latest version is applied.')
  }
  return `${lines.join('\n')}\n`
}

/**
 * The cluster `npm start` runs, when it is running: its postmaster.pid names the port. Starting a
 * second postmaster on the directory would instead stop the server's.
 */
function runningEmbeddedPostgres(dataDir: string): string | null {
  try {
    const [pidLine, , , portLine] = readFileSync(path.join(dataDir, 'cluster', 'postmaster.pid'), 'utf8').split('\n')
    process.kill(Number(pidLine), 0)
    const password = readFileSync(path.join(dataDir, 'password'), 'utf8').trim()
    return `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${Number(portLine)}/tenant_service`
  } catch {
    return null
  }
}

async function resolveDatabase(config: Config, log: (message: string) => void): Promise<{ url: string; stop?: () => Promise<void> }> {
  const direct = directDatabaseUrl(config)
  if (direct) return { url: direct }
  const { relocatedDataDir, startEmbeddedPostgres } = await import('../lib/embedded/postgres.ts')
  // Under root, npm start may have kept its cluster out of the checkout (lib/embedded/postgres.ts).
  for (const dataDir of [EMBEDDED_DATA_DIR, relocatedDataDir(EMBEDDED_DATA_DIR)]) {
    const running = runningEmbeddedPostgres(dataDir)
    if (running) {
      log(`using the embedded PostgreSQL that npm start is running (${dataDir})`)
      return { url: running }
    }
  }
  // Stopped by main() once the tenants under way have finished, not on Ctrl-C.
  const postgres = await startEmbeddedPostgres({ dataDir: EMBEDDED_DATA_DIR, stopOnSignal: false, onLog: log })
  log(`embedded PostgreSQL ${postgres.serverVersion} started on 127.0.0.1:${postgres.port} with data in ${postgres.dataDir} (set DATABASE_URL to use your own)`)
  return { url: postgres.url, stop: postgres.stop }
}

/** Runs the command; resolves to the exit status. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const log = (message: string) => process.stderr.write(`${message}\n`)

  let options: Options
  let config: Config
  try {
    options = parseOptions(argv)
    if (options.help) {
      process.stdout.write(`${USAGE}\n`)
      return 0
    }
    config = loadConfig(env, 'database')
  } catch (error) {
    if (error instanceof UsageError) {
      log(`migrate: ${error.message}\n\n${USAGE}`)
      return 2
    }
    if (error instanceof ConfigError) {
      for (const problem of error.problems) log(`config error: ${problem}`)
      return 2
    }
    throw error
  }

  let database: { url: string; stop?: () => Promise<void> }
  try {
    database = await resolveDatabase(config, log)
  } catch (error) {
    log(`migrate: could not start the embedded PostgreSQL: ${(error as Error).message}`)
    return 1
  }

  const pool = new pg.Pool({
    connectionString: database.url,
    max: options.concurrency,
    connectionTimeoutMillis: 30_000,
    application_name: 'tenant-service-migrate'
  })
  // A connection dropped while idle in the pool must not crash the run; the next checkout replaces it.
  pool.on('error', () => undefined)

  const abort = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => {
    if (abort.signal.aborted) {
      // Transactions under way are rolled back by the server when the connection drops.
      log(`\nmigrate: ${signal} again, quitting now`)
      process.exit(130)
    }
    log(`\nmigrate: ${signal}: finishing the tenants under way, then stopping (send it again to quit now)`)
    abort.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  const progress = createProgressReporter(process.stderr)
  let status: number
  try {
    const summary = await migrateAll(pool, {
      concurrency: options.concurrency,
      migrationsRoot: options.migrationsDir,
      signal: abort.signal,
      onProgress: progress.update
    })
    progress.end()
    process.stdout.write(formatSummary(summary))
    status = summary.interrupted ? 130 : summary.failed.length > 0 ? 1 : 0
  } catch (error) {
    progress.end()
    log(`migrate: ${(error as Error).message}`)
    status = 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await pool.end().catch(() => undefined)
    await database.stop?.().catch(() => undefined)
  }
  return status
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  process.exitCode = await main(process.argv.slice(2))
}
