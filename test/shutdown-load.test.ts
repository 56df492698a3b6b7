import http from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { createTenant, setupApp } from './helpers/app.ts'
import { serverEnv, startServer, type ServerProcess } from './helpers/server.ts'

/**
 * SIGTERM during sustained load, on a real process (DESIGN §8: zero failed in-flight requests),
 * with the readiness delay Kubernetes needs, and a second signal that cuts a stuck drain short.
 */

const TENANT = 'drain-load'
const SHUTTING_DOWN = 'shutting down: draining in-flight requests'
const CLOSING = 'closing the listener'
const SHUTDOWN_DELAY_MS = 1500
const CONNECTION_ERRORS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'socket hang up'])

interface Sent {
  id: string
  kind: 'read' | 'write' | 'fresh' | 'probe'
  /** Client clock when the request was started. */
  at: number
  beforeSigterm: boolean
  status?: number
  error?: string
  reusedSocket?: boolean
  socket?: unknown
}

/** The first log line with `msg`, with its position in the log and its time. */
function logged(server: ServerProcess, msg: string): { index: number; time: number } | null {
  const index = server.logs.findIndex((line) => line.msg === msg)
  return index === -1 ? null : { index, time: Number(server.logs[index].time) }
}

t.test('SIGTERM under load: readiness 503 at once, new connections served until the listener closes, nothing in flight fails, exit 0', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, TENANT)
  const server = await startServer(
    serverEnv(ctx, { SHUTDOWN_DELAY_MS: String(SHUTDOWN_DELAY_MS), SHUTDOWN_GRACE_MS: '20000', RATE_LIMIT_MAX: '1000000', LOG_LEVEL: 'debug' })
  )
  t.teardown(() => server.kill())
  let exited = false
  void server.exited.then(() => (exited = true))

  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 24 })
  const probeAgent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => {
    keepAlive.destroy()
    probeAgent.destroy()
  })
  let sigtermAt = 0
  let counter = 0
  const sent: Sent[] = []

  const send = (kind: Sent['kind'], method: string, path: string, headers: Record<string, string>, body?: unknown) => {
    const entry: Sent = { id: `${kind}-${++counter}`, kind, at: Date.now(), beforeSigterm: sigtermAt === 0 }
    sent.push(entry)
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const agent = kind === 'fresh' ? false : kind === 'probe' ? probeAgent : keepAlive
    return new Promise<Sent>((resolve) => {
      const request = http.request(
        {
          host: '127.0.0.1',
          port: server.port,
          method,
          path,
          agent,
          headers: { ...headers, 'x-request-id': entry.id, ...(payload ? { 'content-type': 'application/json' } : {}) }
        },
        (response) => {
          response.resume()
          response.on('end', () => {
            entry.status = response.statusCode
            resolve(entry)
          })
          response.on('error', (error: NodeJS.ErrnoException) => {
            entry.error = error.code ?? error.message
            resolve(entry)
          })
        }
      )
      request.on('socket', (socket) => {
        entry.reusedSocket = request.reusedSocket
        entry.socket = socket
      })
      request.on('error', (error: NodeJS.ErrnoException) => {
        entry.error = error.code ?? error.message
        resolve(entry)
      })
      request.end(payload)
    })
  }

  const stopAfterRefusal = (entry: Sent) => sigtermAt !== 0 && entry.error !== undefined
  const readLoop = async () => {
    while (!exited && !stopAfterRefusal(await send('read', 'GET', '/users', ctx.auth.tenantUser(TENANT))));
  }
  const writeLoop = async () => {
    while (!exited) {
      const entry = await send('write', 'POST', '/users', ctx.auth.tenantUser(TENANT), { email: `w${counter}@drain-load.test`, name: 'Load' })
      if (stopAfterRefusal(entry)) break
    }
  }
  // A new connection for every request: shows when the listener stops accepting.
  const freshLoop = async () => {
    while (!exited) {
      const entry = await send('fresh', 'GET', '/users', ctx.auth.tenantUser(TENANT))
      if (entry.error === 'ECONNREFUSED') break
      await sleep(5)
    }
  }
  const loops = [...Array.from({ length: 12 }, readLoop), ...Array.from({ length: 4 }, writeLoop), freshLoop(), freshLoop()]

  // Sustained load first; and the probe connection, opened before the signal.
  while (sent.filter((entry) => entry.status === 200 || entry.status === 201).length < 400) await sleep(10)
  const warm = await send('probe', 'GET', '/health/ready', {})
  t.equal(warm.status, 200, 'ready before the signal')
  const probeSocket = warm.socket

  sigtermAt = Date.now()
  server.child.kill('SIGTERM')
  const probes: Sent[] = []
  // Polled right after the signal, on the keep-alive connection opened before it, until it closes.
  for (;;) {
    const probe = await send('probe', 'GET', '/health/ready', {})
    probes.push(probe)
    if (probe.error !== undefined || probe.socket !== probeSocket || exited) break
  }
  const { code, signal } = await server.exited
  await Promise.all(loops)

  t.equal(code, 0, 'the process exits 0')
  t.equal(signal, null, 'by itself')
  t.notOk(
    server.logs.some((line) => /did not finish within SHUTDOWN_GRACE_MS/.test(String(line.msg))),
    'within the grace period'
  )
  const shutdown = logged(server, SHUTTING_DOWN)
  const closing = logged(server, CLOSING)
  t.ok(shutdown && closing && shutdown.index < closing.index, 'it announced the drain, then closed the listener')
  if (!shutdown || !closing) return

  // Readiness: 503 for every probe the service took in after the signal reached it.
  const incoming = new Map<string, number>()
  const completed = new Map<string, Record<string, unknown>>()
  server.logs.forEach((line, index) => {
    if (line.msg === 'incoming request' && typeof line.reqId === 'string') incoming.set(line.reqId, index)
    if ((line.msg === 'request completed' || line.msg === 'request errored') && typeof line.reqId === 'string') completed.set(line.reqId, line)
  })
  const probesAfter = probes.filter((probe) => (incoming.get(probe.id) ?? -1) > shutdown.index)
  t.ok(probesAfter.length > 0, `probes reached the draining service on the connection opened before (${probesAfter.length})`)
  // The loop stops at the first probe that found that connection closed; when the service closed
  // it before its listener, that probe got in on a new one, which is fine.
  t.ok(
    probesAfter.slice(0, -1).every((probe) => probe.reusedSocket && probe.socket === probeSocket),
    'all on that one connection, until it closed'
  )
  t.same(
    probesAfter.filter((probe) => probe.status !== 503).map((probe) => probe.status ?? probe.error),
    [],
    'readiness answered 503 from the first probe after the signal'
  )

  // New connections: accepted while readiness already says 503, refused only once the listener closed.
  const fresh = sent.filter((entry) => entry.kind === 'fresh')
  const duringDelay = fresh.filter((entry) => entry.at >= shutdown.time && entry.at < closing.time - 100)
  t.ok(duringDelay.length > 0, `new connections were opened during the delay (${duringDelay.length})`)
  t.same(
    duringDelay.filter((entry) => entry.status !== 200).map((entry) => entry.status ?? entry.error),
    [],
    'and every one of them was served'
  )
  // 5 ms of slack: the client reads its clock just before it connects.
  const refusedEarly = fresh.filter((entry) => entry.error === 'ECONNREFUSED' && entry.at < closing.time - 5)
  t.same(
    refusedEarly.map((entry) => entry.id),
    [],
    'no connection was refused before the listener closed'
  )
  t.ok(
    fresh.some((entry) => entry.error === 'ECONNREFUSED'),
    'once it closed, new connections were refused'
  )

  // Nothing the service accepted failed, and nothing sent before the signal was lost.
  const load = sent.filter((entry) => entry.kind !== 'probe')
  const ok = (entry: Sent) => (entry.kind === 'write' ? entry.status === 201 : entry.status === 200)
  const accepted = load.filter((entry) => completed.has(entry.id))
  t.same(
    accepted
      .filter((entry) => !ok(entry) || Number(completed.get(entry.id)!.statusCode) !== entry.status)
      .map((entry) => `${entry.id}: ${entry.status ?? entry.error}`),
    [],
    `every request the service accepted succeeded (${accepted.length})`
  )
  t.same(
    load.filter((entry) => entry.beforeSigterm && !ok(entry)).map((entry) => `${entry.id}: ${entry.status ?? entry.error}`),
    [],
    'every request sent before SIGTERM succeeded'
  )
  // The rest never reached the service: refused once the listener closed, or sent on a keep-alive
  // connection the server closed as idle when the listener closed, before it had read them (a race
  // every HTTP server has, which the readiness delay keeps load balancers out of).
  const notAccepted = load.filter((entry) => !completed.has(entry.id))
  t.same(
    notAccepted
      .filter((entry) => incoming.has(entry.id) || entry.status !== undefined || !CONNECTION_ERRORS.has(entry.error!))
      .map((entry) => `${entry.id}: ${entry.status ?? entry.error}`),
    [],
    'the rest never got in: the service never saw them, and their connection was refused or closed'
  )
  t.comment(
    `${accepted.length} accepted and answered; ${notAccepted.length} never reached the service (${[...new Set(notAccepted.map((entry) => entry.error))].join(', ')})`
  )

  const created = load.filter((entry) => entry.kind === 'write' && entry.status === 201).length
  const { rows } = await ctx.admin.query<{ count: number }>(`SELECT count(*)::int AS count FROM "${TENANT}".users`)
  t.equal(rows[0].count, created, 'exactly the users the clients were told about exist')
})

for (const second of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`a second signal (${second}) while a request holds up the drain exits at once, with status 1`, async (t) => {
    const ctx = await setupApp(t, {}, { s3: true })
    await createTenant(ctx, TENANT)
    const server = await startServer(serverEnv(ctx, { SHUTDOWN_GRACE_MS: '120000', PG_STATEMENT_TIMEOUT_MS: '120000' }))
    t.teardown(() => server.kill())

    // A request that cannot finish: its table is locked by another session for as long as the test wants.
    const locker = new pg.Client({ connectionString: ctx.config.DATABASE_URL })
    await locker.connect()
    t.teardown(() => locker.end())
    await locker.query(`BEGIN; LOCK TABLE "${TENANT}".users IN ACCESS EXCLUSIVE MODE`)
    const stuck = new Promise<string>((resolve) => {
      const request = http.get({ host: '127.0.0.1', port: server.port, path: '/users', headers: ctx.auth.tenantUser(TENANT), agent: false }, (response) => {
        response.resume()
        response.on('end', () => resolve(`answered ${response.statusCode}`))
        response.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message))
      })
      request.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message))
    })
    const waiting = async () =>
      (
        await ctx.admin.query(
          `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tenant-service' AND wait_event_type = 'Lock'`
        )
      ).rows.length === 1
    let blocked = false
    for (let i = 0; i < 500 && !(blocked = await waiting()); i++) await sleep(20)
    t.ok(blocked, 'the request waits for the lock')

    server.child.kill('SIGTERM')
    for (let i = 0; i < 500 && !logged(server, CLOSING); i++) await sleep(10)
    t.ok(logged(server, CLOSING), 'the drain began')
    await sleep(300)
    t.equal(server.child.exitCode, null, 'the drain waits for the stuck request')

    server.child.kill(second)
    const { code, signal } = await server.exited
    t.equal(code, 1, 'the second signal exits with status 1')
    t.equal(signal, null)
    t.ok(await waiting(), 'it did so while the request was still stuck: it did not wait for the drain')
    t.ok(
      server.logs.some((line) => line.msg === `second ${second} while draining: exiting at once`),
      'and said why'
    )
    t.equal(await stuck, 'ECONNRESET', 'the stuck request was cut off')
    await locker.query('ROLLBACK')
  })
}
