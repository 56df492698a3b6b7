import t from 'tap'
import { setupApp, type TestContext } from './helpers/app.ts'

/**
 * Every answer carries X-Request-Id, and a 5xx carries it in its body too, so that a user's report
 * of an answer can be matched to the service's log lines for it.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const lines: Record<string, unknown>[] = []
let ctx: TestContext

t.before(async () => {
  ctx = await setupApp(
    t,
    { LOG_LEVEL: 'info' },
    {
      logStream: { write: (line: string) => void lines.push(JSON.parse(line)) },
      beforeReady: (app) => {
        app.get('/test/bug', async () => {
          throw new Error('a bug with a secret in it')
        })
      }
    }
  )
})

t.test('a sane incoming X-Request-Id is echoed; anything else is replaced by a new UUID', async (t) => {
  const echoed = await ctx.app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': 'lb-7f3a.1:2' } })
  t.equal(echoed.headers['x-request-id'], 'lb-7f3a.1:2')
  for (const [label, id] of [
    ['spaces', 'two words'],
    ['a backslash', 'a\\b'],
    ['too long', 'x'.repeat(129)],
    ['empty', '']
  ]) {
    const replaced = await ctx.app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': id } })
    t.match(replaced.headers['x-request-id'], UUID, `${label}: a new id`)
  }
  const generated = await ctx.app.inject({ method: 'GET', url: '/health/live' })
  t.match(generated.headers['x-request-id'], UUID, 'none sent: a new id')
})

t.test('every kind of answer carries it: success, client error, unknown route, router refusal', async (t) => {
  const answers = {
    success: await ctx.app.inject({ method: 'GET', url: '/health/live' }),
    refused: await ctx.app.inject({ method: 'GET', url: '/users' }),
    missingTenant: await ctx.app.inject({ method: 'GET', url: '/', headers: {} }),
    unknownRoute: await ctx.app.inject({ method: 'GET', url: '/no/such/route' }),
    badUrl: await ctx.app.inject({ method: 'GET', url: '/users/%E0%A4%A' })
  }
  for (const [label, answer] of Object.entries(answers)) {
    t.match(answer.headers['x-request-id'], UUID, `${label} (${answer.statusCode}) carries X-Request-Id`)
    if (answer.statusCode >= 400) t.notOk('requestId' in answer.json(), `${label}: a client error's body does not repeat it`)
  }
})

t.test('a 5xx body carries the request id, and the log line of the failure has the same one', async (t) => {
  lines.length = 0
  const answer = await ctx.app.inject({ method: 'GET', url: '/test/bug', headers: { 'x-request-id': 'report-me-42' } })
  t.equal(answer.statusCode, 500)
  t.same(answer.json(), {
    statusCode: 500,
    code: 'INTERNAL_ERROR',
    error: 'Internal Server Error',
    message: 'Something went wrong on our side',
    requestId: 'report-me-42'
  })
  t.equal(answer.headers['x-request-id'], 'report-me-42')
  const failure = lines.find((line) => line.msg === 'request failed')
  t.ok(failure, 'the failure is logged')
  t.equal(failure?.reqId, 'report-me-42', 'under the id the client was given')
  t.match(JSON.stringify(failure?.err), /a bug with a secret in it/, 'in full, where the client got nothing')
  t.notMatch(answer.body, /secret/)
})
