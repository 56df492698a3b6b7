import http from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { startEmbeddedPostgres } from '../lib/embedded/postgres.ts'
import { migrateControlPlane, provisionTenant } from '../lib/tenants/index.ts'
import { loadConfig } from '../schemas/env.ts'
import { issuerAuth } from './helpers/app.ts'
import { startTestIssuer } from './helpers/issuer.ts'
import { startTestS3 } from './helpers/s3.ts'
import { serverEnv, startServer } from './helpers/server.ts'
import { eventually } from './helpers/wait.ts'

/**
 * A PostgreSQL outage under continuous load (DESIGN §8): the service, a real process, keeps
 * answering (liveness 200, readiness 503, tenant requests a prompt 503 with Retry-After), never
 * crashes, and serves again by itself once the database is back.
 */

const TENANT = 'outage-co'
const ROLE_PREFIX = 'to_'
const LOOPS = 8
/** A request the service has not answered in this long counts as hung. */
const CLIENT_TIMEOUT_MS = 15_000
const ACQUIRE_TIMEOUT_MS = 1000

interface Answer {
  path: string
  at: number
  status?: number
  code?: string
  retryAfter?: string
  error?: string
}

t.test('a database outage under load: live stays 200, ready and tenant requests answer 503, and the service recovers by itself', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'tenant-service-outage-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const database = await startEmbeddedPostgres({ dataDir, persistent: false })
  t.teardown(() => database.stop())

  const admin = new pg.Pool({ connectionString: database.url, max: 2 })
  admin.on('error', () => undefined)
  t.teardown(() => admin.end())
  await migrateControlPlane(admin)
  await provisionTenant(admin, { id: TENANT, name: 'Outage Co' }, { rolePrefix: ROLE_PREFIX })
  await admin.query(`INSERT INTO "${TENANT}".users (email, name) VALUES ('ada@outage-co.test', 'Ada')`)

  const issuer = await startTestIssuer()
  t.teardown(() => issuer.close())
  const s3 = await startTestS3()
  t.teardown(() => s3.stop())
  const env = {
    DATABASE_URL: database.url,
    TENANT_ROLE_PREFIX: ROLE_PREFIX,
    JWT_ISSUER: issuer.url,
    JWT_CLIENT_ID: issuer.clientId,
    ...s3.env,
    AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY,
    PG_ACQUIRE_TIMEOUT_MS: String(ACQUIRE_TIMEOUT_MS),
    RATE_LIMIT_MAX: '1000000'
  }
  const auth = issuerAuth(issuer, loadConfig({ NODE_ENV: 'test', ...env }))
  const server = await startServer(serverEnv(undefined, env))
  t.teardown(() => server.kill())
  let exited = false
  void server.exited.then(() => (exited = true))

  const agent = new http.Agent({ keepAlive: true, maxSockets: LOOPS + 2 })
  t.teardown(() => agent.destroy())
  const answers: Answer[] = []
  const send = (requestPath: string, headers: Record<string, string> = {}) =>
    new Promise<Answer>((resolve) => {
      const answer: Answer = { path: requestPath, at: Date.now() }
      const request = http.get({ host: '127.0.0.1', port: server.port, path: requestPath, headers, agent }, (response) => {
        let body = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (body += chunk))
        response.on('end', () => {
          answer.status = response.statusCode
          answer.retryAfter = response.headers['retry-after'] as string | undefined
          try {
            answer.code = (JSON.parse(body) as { code?: string }).code
          } catch {
            answer.code = undefined
          }
          resolve(answer)
        })
      })
      request.setTimeout(CLIENT_TIMEOUT_MS, () => request.destroy(new Error('no answer in time')))
      request.on('error', (error: NodeJS.ErrnoException) => {
        answer.error = error.code ?? error.message
        resolve(answer)
      })
    }).then((answer) => {
      answers.push(answer)
      return answer
    })

  let running = true
  const tenantLoop = async () => {
    while (running && !exited) await send('/users', auth.tenantUser(TENANT))
  }
  const probeLoop = async () => {
    while (running && !exited) {
      await Promise.all([send('/health/live'), send('/health/ready')])
      await sleep(25)
    }
  }
  const loops = [...Array.from({ length: LOOPS }, tenantLoop), probeLoop()]
  const since = (at: number, requestPath: string) => answers.filter((answer) => answer.at >= at && answer.path === requestPath)

  // Serving normally first.
  const started = Date.now()
  t.ok(await eventually(() => since(started, '/users').filter((answer) => answer.status === 200).length >= 100, 30_000), 'serving under load')
  // Waited for, not just looked up: under load the probe loop's first answer can come after the
  // tenant loops' hundredth.
  t.ok(await eventually(() => since(started, '/health/ready').some((answer) => answer.status === 200), 10_000), 'ready')

  // The database goes away (a fast shutdown: its sessions are terminated, new connections refused).
  const downAt = Date.now()
  await database.pause()
  const stoppedAt = Date.now()
  t.ok(await eventually(() => since(stoppedAt, '/health/ready').some((answer) => answer.status === 503), 10_000), 'readiness turns 503')
  const unreadyAt = since(stoppedAt, '/health/ready').find((answer) => answer.status === 503)!.at
  t.ok(await eventually(() => since(unreadyAt, '/users').length >= 200, 30_000), 'tenant requests keep being answered while it is down')
  await sleep(ACQUIRE_TIMEOUT_MS * 2)

  const duringUsers = answers.filter((answer) => answer.path === '/users' && answer.at >= stoppedAt)
  const duringLive = answers.filter((answer) => answer.path === '/health/live' && answer.at >= downAt)
  const duringReady = answers.filter((answer) => answer.path === '/health/ready' && answer.at >= unreadyAt)
  t.same(
    [
      ...new Set(duringUsers.filter((answer) => answer.status !== 503 || !answer.retryAfter).map((answer) => `${answer.status ?? answer.error} ${answer.code}`))
    ],
    [],
    `every tenant request got 503 with Retry-After (${duringUsers.length} requests)`
  )
  const codes = new Set(duringUsers.map((answer) => answer.code))
  t.ok(
    [...codes].every((code) => code === 'DATABASE_UNAVAILABLE' || code === 'DATABASE_BUSY'),
    `and said why: ${[...codes].join(', ')}`
  )
  t.same(
    answers.filter((answer) => answer.error !== undefined).map((answer) => `${answer.path}: ${answer.error}`),
    [],
    'no request hung or lost its connection'
  )
  t.ok(duringLive.length > 0 && duringLive.every((answer) => answer.status === 200), `liveness stayed 200 (${duringLive.length} probes)`)
  t.ok(
    duringReady.length > 0 && duringReady.every((answer) => answer.status === 503 && answer.retryAfter),
    `readiness stayed 503 with Retry-After (${duringReady.length} probes)`
  )
  t.equal(exited, false, 'the process is still running')
  const lost = server.logs.filter((line) => line.msg === 'database connection lost')
  t.ok(lost.length > 0, `the dropped connections were logged (${lost.length} lines)`)
  t.same(
    lost.filter((line) => {
      const err = line.err as Record<string, unknown> | undefined
      return typeof err?.message !== 'string' || 'client' in err || JSON.stringify(line).length > 1000
    }),
    [],
    'each line says what happened, without the client object pg-pool attaches to the error'
  )
  const pids = lost.map((line) => line.backendPid)
  t.ok(
    pids.every((pid) => typeof pid === 'number'),
    'each names the backend it lost'
  )
  t.equal(new Set(pids).size, pids.length, 'and each lost connection is logged once, not once by the client and again by the pool')

  // The database comes back on the same address; nobody touches the service.
  await database.resume()
  const backAt = Date.now()
  const recovered = await eventually(() => answers.some((answer) => answer.at >= backAt && answer.path === '/users' && answer.status === 200), 30_000)
  t.ok(recovered, 'tenant requests succeed again by themselves')
  const firstSuccess = answers.find((answer) => answer.at >= backAt && answer.path === '/users' && answer.status === 200)
  t.comment(`the service answered 200 again ${firstSuccess ? firstSuccess.at - backAt : '—'} ms after PostgreSQL accepted connections again`)
  t.ok(await eventually(() => since(backAt, '/health/ready').some((answer) => answer.status === 200), 30_000), 'readiness is 200 again')

  const settledAt = Date.now()
  await eventually(() => since(settledAt, '/users').length >= 200, 30_000)
  t.same([...new Set(since(settledAt, '/users').map((answer) => answer.status))], [200], 'after recovery every tenant request succeeds')
  // The tenant-change listener reconnected too, so changes reach this instance's cache again.
  t.ok(
    await eventually(async () => {
      const { rows } = await admin.query(`SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN tenant_changed' AND application_name = 'tenant-service'`)
      return rows.length === 1
    }, 15_000),
    'the tenant-change listener is back'
  )

  running = false
  await Promise.all(loops)
  t.equal(exited, false, 'the process never crashed')
  t.same(
    server.logs
      .filter((line) => /uncaught|unhandled/i.test(String(line.msg)) || /uncaught|unhandled/i.test(JSON.stringify(line.err ?? '')))
      .map((line) => line.msg),
    [],
    'nothing went unhandled'
  )
  server.child.kill('SIGTERM')
  const { code } = await server.exited
  t.equal(code, 0, 'and it still shuts down cleanly')
})
