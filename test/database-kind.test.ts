import net, { type AddressInfo } from 'node:net'
import t from 'tap'
import { buildApp, setupApp, testConfig } from './helpers/app.ts'
import { createTestDatabase } from './helpers/database.ts'
import { eventually } from './helpers/wait.ts'

/**
 * What the database is (plain PostgreSQL or a Citus coordinator) is logged once, at start, with
 * the isolation mode: and when the database cannot be reached at start, a warning says why, the
 * service starts regardless, and the kind is logged once the pool first connects.
 */

interface LogLine {
  level: number
  msg: string
  kind?: string
  postgres?: string
  isolation?: string
  err?: { message: string }
}

const WARN = 40

function logCollector() {
  const lines: LogLine[] = []
  return {
    lines,
    stream: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) },
    kindLines: () => lines.filter((line) => line.msg.startsWith('database: ')),
    warnings: () => lines.filter((line) => line.level === WARN && line.msg.startsWith('database kind'))
  }
}

t.test('a reachable PostgreSQL is named in one start line, with the isolation mode', async (t) => {
  const logs = logCollector()
  const ctx = await setupApp(t, { LOG_LEVEL: 'info' }, { logStream: logs.stream })
  t.ok(await eventually(() => logs.kindLines().length > 0), 'the kind is logged')
  const { rows } = await ctx.admin.query<{ server_version: string }>('SHOW server_version')
  t.match(logs.kindLines()[0], { kind: 'postgres', postgres: rows[0].server_version, isolation: 'role', msg: `database: PostgreSQL ${rows[0].server_version}` })
  // New pool connections do not say it again.
  await Promise.all(Array.from({ length: 5 }, () => ctx.app.inject({ method: 'GET', url: '/health/ready' })))
  t.equal(logs.kindLines().length, 1, 'once')
  t.same(logs.warnings(), [], 'and no warning')
})

t.test('an unreachable database at start is a warning, not a crash; the kind is logged once it answers', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  // A port nothing listens on yet; later, a forwarder to the real server listens there.
  const placeholder = net.createServer()
  await new Promise<void>((resolve) => placeholder.listen(0, '127.0.0.1', resolve))
  const port = (placeholder.address() as AddressInfo).port
  await new Promise<void>((resolve) => placeholder.close(() => resolve()))
  const target = new URL(database.url)
  const url = new URL(database.url)
  url.host = `127.0.0.1:${port}`

  const logs = logCollector()
  const app = await buildApp(testConfig(database, { DATABASE_URL: url.href, LOG_LEVEL: 'info', PG_ACQUIRE_TIMEOUT_MS: '500' }), {
    logStream: logs.stream
  })
  t.teardown(() => app.close())
  t.ok(await eventually(() => logs.warnings().length > 0), 'a warning is logged')
  t.match(logs.warnings()[0].msg, /^database kind \(PostgreSQL or Citus\) not known: .*ECONNREFUSED.*; asked again once a connection succeeds$/)
  t.same(logs.kindLines(), [], 'no kind is claimed')
  t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200, 'the service is up')

  const sockets = new Set<net.Socket>()
  const forwarder = net.createServer((socket) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    for (const end of [socket, upstream]) {
      sockets.add(end)
      end.on('error', () => undefined)
      end.on('close', () => sockets.delete(end))
    }
    socket.pipe(upstream).pipe(socket)
  })
  await new Promise<void>((resolve) => forwarder.listen(port, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => forwarder.close(() => resolve()))
  })

  // Readiness's database check takes a pool connection: the first that succeeds.
  t.ok(
    await eventually(async () => {
      await app.inject({ method: 'GET', url: '/health/ready' })
      return logs.kindLines().length > 0
    }, 10_000),
    'the kind is logged once the database answers'
  )
  t.match(logs.kindLines()[0], { kind: 'postgres', isolation: 'role' })
  await Promise.all(Array.from({ length: 3 }, () => app.inject({ method: 'GET', url: '/health/ready' })))
  t.equal(logs.kindLines().length, 1, 'once')
  t.equal(logs.warnings().length, 1, 'and the warning was not repeated')
})
