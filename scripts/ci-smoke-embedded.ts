/**
 * CI: `npm start` with nothing configured, as a new user runs it, in the checkout this script is
 * in (CI runs it in a fresh clone under a 0700 directory, as root). The service must start its
 * embedded PostgreSQL 18, S3 and issuer, answer /health/ready, and on a signal exit leaving no
 * PostgreSQL process behind. It is started twice: first on a fresh .data, stopped with SIGINT to
 * its process group (a terminal's Ctrl-C), then on the data the first run left, stopped with
 * SIGTERM to the group. (npm 11 passes a SIGTERM sent to npm alone to its shell only, which
 * leaves the service running without its parent: the image runs `node dist/server.js` instead.)
 *
 *   tsx scripts/ci-smoke-embedded.ts [--summary FILE]
 *
 * Only PORT and HOST are set (a free loopback port), and every variable that would replace an
 * embedded default is removed from the environment. Prints `N passed, M failed` last, and writes
 * the same counts as JSON to --summary. Under root, the cluster the runs made outside the checkout
 * is removed at the end when it was not there before.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { freePort, relocatedDataDir } from '../lib/embedded/postgres.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { values: options } = parseArgs({ options: { summary: { type: 'string' } } })
const embeddedData = path.join(root, '.data', 'postgres')

/** The variables that would replace an embedded default, or point the tooling elsewhere. */
const CONFIGURED = /^(NODE_ENV|DATABASE_URL|DATABASE_DIRECT_URL|JWT_ISSUER|JWT_CLIENT_ID|COGNITO_.*|S3_.*|AWS_.*|REDIS_URL|TEST_.*|OTEL_.*)$/

const started = performance.now()
const results: { name: string; ok: boolean }[] = []
function check(name: string, ok: boolean, detail?: string): boolean {
  results.push({ name, ok })
  const at = ((performance.now() - started) / 1000).toFixed(1)
  console.log(`${ok ? 'ok' : 'not ok'} - ${name} [${at} s]${detail && !ok ? `: ${detail}` : ''}`)
  return ok
}

interface LogLine {
  level?: number
  msg?: string
}

/** Every process whose command line names `clusterDir`: a PostgreSQL server left on it. */
function serversOn(clusterDir: string): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').includes(clusterDir)) pids.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return pids
}

function groupAlive(pgid: number): boolean {
  return alive(-pgid)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** True when a directory on the way to `dir` lets no other user through. */
function closedToOthers(dir: string): boolean {
  for (let at = dir; ; at = path.dirname(at)) {
    if ((statSync(at).mode & 0o001) === 0) return true
    if (path.dirname(at) === at) return false
  }
}

async function waitReady(base: string, child: ChildProcess, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs
  let status = 0
  while (Date.now() < deadline && groupAlive(child.pid!)) {
    status = await fetch(`${base}/health/ready`, { signal: AbortSignal.timeout(5000) }).then(
      (response) => response.status,
      () => 0
    )
    if (status === 200) return status
    await sleep(250)
  }
  return status
}

/** One `npm start`: ready, PostgreSQL 18, and gone without a trace after `signal`. Returns its data directory. */
async function run(label: string, signal: 'SIGINT' | 'SIGTERM'): Promise<string | undefined> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !CONFIGURED.test(name)))
  const port = await freePort()
  // A process group of its own: SIGINT goes to the whole group, as a terminal's Ctrl-C does.
  const child = spawn('npm', ['start'], {
    cwd: root,
    env: { ...env, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  // 'close': every process holding npm start's output, the service's node among them, has exited.
  const allClosed = new Promise<true>((resolve) => child.on('close', () => resolve(true)))
  let output = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output += chunk))
  const lines = () =>
    output.split('\n').flatMap((line) => {
      try {
        return [JSON.parse(line) as LogLine]
      } catch {
        return []
      }
    })
  const messages = () => lines().map((line) => line.msg ?? '')

  try {
    const base = `http://127.0.0.1:${port}`
    // The first start copies the binaries (under root) and runs initdb.
    const ready = await waitReady(base, child, 180_000)
    if (!check(`${label}: npm start answers /health/ready 200`, ready === 200, `${ready}\n${output.slice(-3000)}`)) return undefined

    const startLine = messages().find((message) => message.startsWith('embedded PostgreSQL '))
    const match = startLine && /^embedded PostgreSQL (\S+) started on 127\.0\.0\.1:(\d+) with data in (.+?) \(set DATABASE_URL/.exec(startLine)
    if (!check(`${label}: the log says which embedded PostgreSQL started, and where`, Boolean(match), startLine ?? output.slice(-2000))) return undefined
    const [, loggedVersion, pgPort, where] = match as RegExpExecArray
    const dataDir = path.resolve(root, where)
    check(`${label}: the log names PostgreSQL 18 (${loggedVersion})`, loggedVersion.split('.')[0] === '18')

    const password = readFileSync(path.join(dataDir, 'password'), 'utf8').trim()
    const client = new pg.Client({ host: '127.0.0.1', port: Number(pgPort), user: 'postgres', password, database: 'tenant_service' })
    await client.connect()
    const { rows } = await client.query<{ server_version_num: string }>('SHOW server_version_num')
    await client.end()
    check(`${label}: SHOW server_version_num is of major 18 (${rows[0].server_version_num})`, Math.floor(Number(rows[0].server_version_num) / 10000) === 18)

    if (process.getuid?.() === 0) {
      // Under root the cluster runs as postgres: in a checkout it cannot enter, the data moves out.
      const expected = closedToOthers(root) ? relocatedDataDir(embeddedData) : embeddedData
      check(`${label}: under root the data is where the postgres user can reach it (${dataDir})`, dataDir === expected, `expected ${expected}`)
    }

    const clusterDir = path.join(dataDir, 'cluster')
    const postmaster = Number(readFileSync(path.join(clusterDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    // To the whole process group, as a terminal's Ctrl-C, or a supervisor stopping a process
    // group, sends it. A signal to npm alone would stop npm and its shell, not the service.
    process.kill(-child.pid!, signal)
    const deadline = Date.now() + 30_000
    const closed = await Promise.race([allClosed, sleep(30_000).then(() => false)])
    // The last of them may still be on its way out (not yet reaped) when the output closes.
    while (groupAlive(child.pid!) && Date.now() < deadline) await sleep(100)
    check(`${label}: after ${signal} every process of npm start exits within 30 s`, closed && !groupAlive(child.pid!), output.slice(-2000))
    const errors = lines().filter((line) => (line.level ?? 0) >= 50)
    check(`${label}: no error is logged`, errors.length === 0, JSON.stringify(errors).slice(0, 2000))
    check(`${label}: the PostgreSQL server (pid ${postmaster}) is gone`, !alive(postmaster))
    const left = serversOn(clusterDir)
    check(`${label}: no process is left on ${clusterDir}`, left.length === 0, `pids ${left.join(', ')}`)
    check(
      `${label}: the service drained before it exited`,
      messages().some((message) => message === 'closing the listener')
    )
    return dataDir
  } finally {
    if (groupAlive(child.pid!)) {
      process.kill(-child.pid!, 'SIGKILL')
      await allClosed
    }
  }
}

const relocated = relocatedDataDir(embeddedData)
const relocatedBefore = existsSync(relocated)
try {
  const first = await run('fresh start', 'SIGINT')
  if (first) {
    const second = await run('restart on the same data', 'SIGTERM')
    if (second) check('the restart found the same cluster', second === first)
  }
} catch (error) {
  check('the smoke run completed', false, (error as Error).stack)
} finally {
  if (!relocatedBefore && existsSync(relocated)) await rm(path.dirname(relocated), { recursive: true, force: true })
}

const passed = results.filter((result) => result.ok).length
const failed = results.length - passed
if (options.summary) await writeFile(options.summary, JSON.stringify({ passed, failed, exitCode: failed > 0 ? 1 : 0 }))
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed > 0 ? 1 : 0)
