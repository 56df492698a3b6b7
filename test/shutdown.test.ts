import http from 'node:http'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import t from 'tap'
import { createTenant, setupApp } from './helpers/app.ts'
import { serverEnv, startServer } from './helpers/server.ts'

const TENANT = 'drain-co'
const SHUTTING_DOWN = 'shutting down: draining in-flight requests'
const LOOPS = 20

async function serviceBackends(admin: pg.Pool): Promise<Set<number>> {
  const { rows } = await admin.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tenant-service'`
  )
  return new Set(rows.map((row) => row.pid))
}

/** Sends a request's headers but the final blank line; `finish()` sends it and resolves with the status line. */
async function openPartialRequest(port: number, path: string) {
  const socket = net.connect(port, '127.0.0.1')
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n`)
  let received = ''
  socket.setEncoding('utf8').on('data', (chunk: string) => (received += chunk))
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  socket.on('error', () => undefined)
  return {
    async finish(): Promise<string> {
      // Not end(): a client that half-closes its side gets nothing back from Node's HTTP server.
      // The draining server answers with `Connection: close` and closes the connection itself.
      socket.write('\r\n')
      await closed
      return received.split('\r\n')[0] ?? ''
    }
  }
}

interface Outcome {
  id: string
  path: string
  sentBeforeSigterm: boolean
  answeredBeforeSigterm: boolean
  /** Sent after the server had logged that it is shutting down. */
  sentDuringShutdown: boolean
  status?: number
  error?: string
}

t.test('SIGTERM under load: every accepted request completes, readiness goes 503, the process exits 0', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, TENANT)
  // The in-process app (used above to create the tenant) holds connections of its own.
  const before = await serviceBackends(ctx.admin)
  const server = await startServer(serverEnv(ctx))
  t.teardown(() => server.kill())
  const agent = new http.Agent({ keepAlive: true, maxSockets: LOOPS + 1 })
  t.teardown(() => agent.destroy())

  let sigtermAt = 0
  let shutdownLogged = false
  let exited = false
  void server.exited.then(() => (exited = true))
  const outcomes: Outcome[] = []
  let counter = 0

  /** One request on the keep-alive agent, tagged with a request id the server logs. */
  const send = (path: string, headers: Record<string, string>) => {
    const outcome: Outcome = {
      id: `drain-${++counter}`,
      path,
      sentBeforeSigterm: sigtermAt === 0,
      answeredBeforeSigterm: false,
      sentDuringShutdown: shutdownLogged
    }
    outcomes.push(outcome)
    return new Promise<Outcome>((resolve) => {
      const request = http.get({ host: '127.0.0.1', port: server.port, path, agent, headers: { ...headers, 'x-request-id': outcome.id } }, (response) => {
        response.resume()
        response.on('end', () => {
          outcome.status = response.statusCode
          outcome.answeredBeforeSigterm = sigtermAt === 0
          resolve(outcome)
        })
        response.on('error', (error: NodeJS.ErrnoException) => {
          outcome.error = error.code ?? error.message
          resolve(outcome)
        })
      })
      request.on('error', (error: NodeJS.ErrnoException) => {
        outcome.error = error.code ?? error.message
        resolve(outcome)
      })
    })
  }

  const warm = await send('/', ctx.auth.tenantUser(TENANT))
  t.equal(warm.status, 200, 'the server answers before the load starts')

  const loop = async () => {
    while (!exited) {
      const outcome = await send('/', ctx.auth.tenantUser(TENANT))
      // Once shutdown began, a refused connection means the listener is closed: this caller is done.
      if (sigtermAt !== 0 && (outcome.error === 'ECONNREFUSED' || outcome.error)) break
    }
  }
  const readiness: Outcome[] = []
  const probe = async () => {
    while (!exited) {
      const outcome = await send('/health/ready', {})
      readiness.push(outcome)
      if (sigtermAt !== 0 && outcome.error) break
      await sleep(10)
    }
  }

  const loops = [...Array.from({ length: LOOPS }, loop), probe()]
  // Sustained load first: a few hundred requests through the keep-alive connections, and readiness
  // answered under that load at least twice (on a busy machine the load alone can get there first).
  const underWay = () => outcomes.filter((o) => o.status === 200).length >= 300 && readiness.filter((o) => o.status !== undefined).length >= 2
  while (!underWay() && !exited) await sleep(10)
  // A readiness probe whose headers are half sent: its connection is busy, not idle, so the
  // shutdown does not cut it, and the probe completes while the server drains.
  const lateProbe = await openPartialRequest(server.port, '/health/ready')
  sigtermAt = Date.now()
  server.child.kill('SIGTERM')
  const announced = (async () => {
    while (!exited && !server.logs.some((line) => line.msg === SHUTTING_DOWN)) await sleep(1)
    shutdownLogged = server.logs.some((line) => line.msg === SHUTTING_DOWN)
  })()
  await announced
  const lateAnswer = shutdownLogged ? await lateProbe.finish() : 'the process exited first'
  const { code, signal } = await server.exited
  await Promise.all(loops)

  t.equal(code, 0, 'the process exits 0')
  t.equal(signal, null)

  const logs = server.logs
  t.ok(
    logs.some((line) => line.msg === SHUTTING_DOWN),
    'it announced the drain'
  )
  // What the server accepted: every request it logged as completed, by request id.
  const completed = new Map<string, Record<string, unknown>>()
  for (const line of logs) {
    if ((line.msg === 'request completed' || line.msg === 'request errored') && typeof line.reqId === 'string') completed.set(line.reqId, line)
  }

  const load = outcomes.filter((o) => o.path === '/')
  const accepted = load.filter((o) => completed.has(o.id))
  const failedAccepted = accepted.filter((o) => o.status !== 200 || completed.get(o.id)!.statusCode !== 200)
  t.same(
    failedAccepted.map((o) => ({ id: o.id, status: o.status, error: o.error, logged: completed.get(o.id)!.statusCode })),
    [],
    'every request the server accepted was answered 200'
  )
  const inFlight = accepted.filter((o) => o.sentBeforeSigterm && !o.answeredBeforeSigterm)
  t.ok(inFlight.length > 0, `requests were in flight at SIGTERM (${inFlight.length}), and they completed`)
  const answeredWithoutLog = load.filter((o) => o.status === 200 && !completed.has(o.id))
  t.same(
    answeredWithoutLog.map((o) => o.id),
    [],
    'every 200 the clients saw is one the server logged'
  )

  // The rest never got in: refused at the door after the listener closed, or turned away while closing.
  const notAccepted = load.filter((o) => !completed.has(o.id))
  const refusedKinds = new Set(notAccepted.map((o) => (o.status ? `status ${o.status}` : o.error)))
  for (const kind of refusedKinds) {
    t.ok(['ECONNREFUSED', 'ECONNRESET', 'socket hang up', 'EPIPE', 'status 503'].includes(kind!), `not accepted: ${kind}`)
  }
  t.ok(
    notAccepted.every((o) => !o.sentBeforeSigterm || o.error !== undefined || o.status === 503),
    'no request sent before SIGTERM got anything but an answer or a connection error'
  )
  t.comment(
    `${accepted.length} accepted (all 200), ${inFlight.length} of them in flight at SIGTERM; ` +
      `${notAccepted.length} not accepted (${[...refusedKinds].join(', ') || 'none'}; ${notAccepted.filter((o) => o.sentBeforeSigterm).length} sent before SIGTERM)`
  )

  const readyBefore = readiness.filter((o) => o.answeredBeforeSigterm)
  t.ok(readyBefore.length > 0, `readiness was probed while serving (${readyBefore.length} probes)`)
  t.same(
    readyBefore.filter((o) => o.status !== 200).map((o) => o.status ?? o.error),
    [],
    'ready while serving'
  )
  const readyAfter = readiness.filter((o) => o.sentDuringShutdown && o.status !== undefined)
  t.same(
    readyAfter.filter((o) => o.status !== 503).map((o) => o.status),
    [],
    `readiness answers 503 once shutdown started (${readyAfter.length} probes reached it)`
  )

  t.match(lateAnswer, /^HTTP\/1\.1 503 /, 'a readiness probe that reaches the draining server gets 503')

  const after = await serviceBackends(ctx.admin)
  t.same(
    [...after].filter((pid) => !before.has(pid)),
    [],
    'the process left no connection behind'
  )
})
