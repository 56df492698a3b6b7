import t from 'tap'
import { buildApp, createTenant, setupApp, testConfig } from './helpers/app.ts'
import { startPgProxy } from './helpers/pg-proxy.ts'

/**
 * A database that refuses or loses a connection is a generic 503 to the client, and the log line
 * of that 503 says what PostgreSQL said: its message, code and, for a Citus worker, the node.
 */

for (const [label, refuse, expected] of [
  [
    'a server out of connections',
    { code: '53300', message: 'sorry, too many clients already' },
    { message: 'sorry, too many clients already', code: '53300', severity: 'FATAL' }
  ],
  [
    'a Citus worker refusing the tenant role',
    {
      code: '08006',
      message: 'connection to the remote node t_acme@localhost:9701 failed with the following error: FATAL:  role "t_acme" is not permitted to log in'
    },
    { code: '08006', node: 'localhost:9701' }
  ]
] as const) {
  t.test(`${label}: 503 DATABASE_UNAVAILABLE, and the cause in the log`, async (t) => {
    const ctx = await setupApp(t)
    await createTenant(ctx, 'refused-co')
    const proxy = await startPgProxy(ctx.database.url, { refuse })
    t.teardown(() => proxy.close())
    const lines: Record<string, any>[] = []
    const app = await buildApp(testConfig(ctx.database, { ...serviceEnv(ctx), DATABASE_URL: proxy.url, LOG_LEVEL: 'info', PG_READ_LANES: '0' }), {
      logStream: { write: (line: string) => void lines.push(JSON.parse(line)) }
    })
    t.teardown(() => app.close())

    const answer = await app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser('refused-co') })
    t.equal(answer.statusCode, 503)
    t.same(answer.json(), {
      statusCode: 503,
      code: 'DATABASE_UNAVAILABLE',
      error: 'Service Unavailable',
      message: 'The database is not available; retry shortly',
      requestId: answer.headers['x-request-id']
    })
    t.notMatch(answer.body, /clients|remote node|role/, "the client is not told the database's words")

    const failure = lines.find((line) => line.msg === 'request failed' && line.reqId === answer.headers['x-request-id'])
    t.ok(failure, 'the 503 is logged')
    t.match(failure?.database, expected, "with PostgreSQL's message, code and node")
    t.match(failure?.database?.message, refuse.message)
  })
}

function serviceEnv(ctx: { config: { JWT_ISSUER?: string; JWT_CLIENT_ID?: string } }): Record<string, string> {
  return { JWT_ISSUER: ctx.config.JWT_ISSUER!, JWT_CLIENT_ID: ctx.config.JWT_CLIENT_ID! }
}
