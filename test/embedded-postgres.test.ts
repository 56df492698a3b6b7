import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { postgresAnswers, startEmbeddedPostgres } from '../lib/embedded/postgres.ts'
import { PROJECT_ROOT } from './helpers/server.ts'

/**
 * The embedded PostgreSQL of `npm start` under a developer's hands: Ctrl-C, which a terminal sends
 * to the whole process group, and a second `npm start` on the same data directory.
 */

const FIXTURE = path.join(PROJECT_ROOT, 'test/fixtures/embedded-drain/main.ts')

/** Starts the fixture in a process group of its own and resolves once its cluster is up. */
async function startFixture(t: Test, mode: 'caller' | 'package') {
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

async function ctrlC(t: Test, mode: 'caller' | 'package') {
  const fixture = await startFixture(t, mode)
  process.kill(-fixture.child.pid!, 'SIGINT')
  const [code] = await fixture.exited
  return { ...fixture, code }
}

t.test('Ctrl-C: with stopOnSignal false the cluster stays up through the drain, and the caller stops it', async (t) => {
  const [caller, packageOwn] = await Promise.all([ctrlC(t, 'caller'), ctrlC(t, 'package')])

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
  t.not(packageOwn.code, 0, `with the package's handlers the process exits at once (${packageOwn.code})`)
  t.notSame(
    packageOwn.lines.find((line) => 'drainQuery' in line),
    { drainQuery: 1 },
    'and no drain reaches the database'
  )
  t.equal(await postgresAnswers(packageOwn.url), false, 'the package stopped its cluster')
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
