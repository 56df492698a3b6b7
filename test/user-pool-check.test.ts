import net from 'node:net'
import t from 'tap'
import { describePoolFailure } from '../lib/users/index.ts'
import { readinessDetails, setupApp } from './helpers/app.ts'
import { startTestCognito, type TestCognito } from './helpers/cognito.ts'

/** The user pool checked at start and by readiness (DescribeUserPool), against a real cognito-local. */

interface LogLine {
  level: number
  msg: string
  userPoolId?: string
  region?: string
}

function logCollector() {
  const lines: LogLine[] = []
  return { lines, stream: { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) } }
}

let cognito: TestCognito
t.before(async () => {
  cognito = await startTestCognito()
})
t.teardown(() => cognito.stop())

t.test('the configured pool answers: readiness names it', async (t) => {
  const ctx = await setupApp(t, { ...cognito.env, METRICS_PORT: '0' })
  const ready = await readinessDetails(ctx.app)
  t.equal(ready.statusCode, 200, JSON.stringify(ready.body))
  t.match(ready.body.checks.userPool, { ok: true, detail: new RegExp(`user pool ${cognito.userPoolId} \\(tenant-service\\) in us-east-1`) })

  // The default COGNITO_INVITE_MESSAGE_ACTION=EMAIL: Cognito sends its invitation with a temporary password.
  const created = await ctx.app.inject({
    method: 'POST',
    url: '/auth/tenants',
    headers: { authorization: `Bearer ${await cognito.platformAdmin()}` },
    payload: { id: 'mailed', name: 'Mailed', admin: { email: 'first@mailed.test', name: 'First' } }
  })
  t.equal(created.statusCode, 201, created.body)
  const pooled = (await cognito.users()).get('first@mailed.test')
  t.match(pooled, { status: 'FORCE_CHANGE_PASSWORD', attributes: { 'custom:tenant_id': 'mailed', email: 'first@mailed.test' } })
})

t.test('a pool that does not exist: logged with its id, region and ResourceNotFoundException; readiness 503', async (t) => {
  const logs = logCollector()
  const wrong = 'local_NoSuchPool1'
  const ctx = await setupApp(t, { ...cognito.env, COGNITO_USER_POOL_ID: wrong, LOG_LEVEL: 'info', METRICS_PORT: '0' }, { logStream: logs.stream })
  const ready = await readinessDetails(ctx.app)
  t.equal(ready.statusCode, 503)
  const detail = ready.body.checks.userPool.detail
  t.match(detail, `user pool ${wrong} in region us-east-1 does not exist (ResourceNotFoundException)`)
  const errors = logs.lines.filter((line) => line.level >= 50 && line.msg.includes(wrong))
  t.equal(errors.length, 1, 'logged once, however often readiness asks')
  t.match(errors[0], { userPoolId: wrong, region: 'us-east-1', msg: /ResourceNotFoundException/ })

  const again = await ctx.app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(again.statusCode, 503, 'still 503 while the pool is missing')
})

t.test('an endpoint that does not answer is named, with the variables to check', async (t) => {
  const closed = await new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
  const endpoint = process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER
  process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = `http://127.0.0.1:${closed}`
  t.teardown(() => {
    process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = endpoint
  })
  const ctx = await setupApp(t, { ...cognito.env, METRICS_PORT: '0' })
  const ready = await readinessDetails(ctx.app)
  t.equal(ready.statusCode, 503)
  t.match(ready.body.checks.userPool.detail, /did not answer \(ECONNREFUSED\): check COGNITO_REGION and AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER/)
})

t.test('credential failures are named as such', async (t) => {
  const where = { region: 'eu-west-1', userPoolId: 'eu-west-1_AbC123' }
  const error = (name: string, message = name) => Object.assign(new Error(message), { name })
  t.match(
    describePoolFailure(error('CredentialsProviderError', 'Could not load credentials from any providers'), where),
    /^no AWS credentials for user pool eu-west-1_AbC123/
  )
  for (const name of ['UnrecognizedClientException', 'InvalidSignatureException', 'ExpiredTokenException']) {
    t.match(describePoolFailure(error(name), where), /credentials were refused .*bad or expired credentials, or a wrong region/, name)
  }
  t.match(describePoolFailure(error('AccessDeniedException'), where), /cognito-idp:DescribeUserPool/)
})
