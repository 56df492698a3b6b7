import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { freePort } from '../lib/embedded/postgres.ts'
import { loadEmbeddedCognito, startEmbeddedCognito } from '../lib/embedded/cognito.ts'
import { ConfigError, loadConfig } from '../schemas/env.ts'
import { setupApp } from './helpers/app.ts'
import { startTestCognito } from './helpers/cognito.ts'
import { runScript, serverEnv } from './helpers/server.ts'

const ACME = 'acme-corp'
const PRODUCTION = { NODE_ENV: 'production', DATABASE_URL: 'postgres://service@db.internal:5432/tenants' }

const AUTH_VARIABLES = /^(JWT_|COGNITO_|JWKS_|TENANT_CLAIM|ADMIN_GROUP)/

/** The configuration problems about authentication (other settings have their own tests). */
function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env)
    return []
  } catch (error) {
    if (error instanceof ConfigError) return error.problems.filter((problem) => AUTH_VARIABLES.test(problem))
    throw error
  }
}

t.test('production needs an issuer and the app client', async (t) => {
  const none = problemsOf(PRODUCTION)
  t.ok(
    none.some((p) => p.startsWith('JWT_ISSUER: required when NODE_ENV=production')),
    'no issuer: JWT_ISSUER is named'
  )
  t.ok(
    none.some((p) => p.startsWith('JWT_CLIENT_ID: required when NODE_ENV=production')),
    'no client: JWT_CLIENT_ID is named'
  )

  const regionOnly = problemsOf({ ...PRODUCTION, COGNITO_REGION: 'eu-west-1', JWT_CLIENT_ID: 'abc' })
  t.same(regionOnly, ['COGNITO_USER_POOL_ID: required with COGNITO_REGION'], 'half a Cognito pair names the other half')
  const poolOnly = problemsOf({ ...PRODUCTION, COGNITO_USER_POOL_ID: 'eu-west-1_AbC123', JWT_CLIENT_ID: 'abc' })
  t.same(poolOnly, ['COGNITO_REGION: required with COGNITO_USER_POOL_ID'])

  const clientless = problemsOf({ ...PRODUCTION, JWT_ISSUER: 'https://issuer.example.com' })
  t.same(clientless, ['JWT_CLIENT_ID: required when NODE_ENV=production (tokens are checked against the app client)'])

  const plainHttp = problemsOf({ ...PRODUCTION, JWT_ISSUER: 'http://issuer.example.com', JWT_CLIENT_ID: 'abc' })
  t.same(plainHttp, ['JWT_ISSUER: must be an https:// URL when NODE_ENV=production'], 'keys are never fetched over plain http off the machine')
  t.same(problemsOf({ ...PRODUCTION, JWT_ISSUER: 'http://127.0.0.1:9000/pool', JWT_CLIENT_ID: 'abc' }), [], 'loopback is fine')

  t.same(problemsOf({ ...PRODUCTION, JWT_ISSUER: 'not a url', JWT_CLIENT_ID: 'abc' }).length, 1, 'a malformed issuer is reported')
  t.match(problemsOf({ ...PRODUCTION, JWT_ISSUER: 'https://issuer.example.com?x=1', JWT_CLIENT_ID: 'abc' }), [/^JWT_ISSUER: must not carry/])
})

t.test('the Cognito pair becomes the issuer', async (t) => {
  const config = loadConfig({ NODE_ENV: 'development', COGNITO_REGION: 'eu-west-1', COGNITO_USER_POOL_ID: 'eu-west-1_AbC123', JWT_CLIENT_ID: 'app-client' })
  t.equal(config.JWT_ISSUER, 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123')
  t.equal(config.JWT_TOKEN_USE, 'any')
  t.equal(config.TENANT_CLAIM, 'custom:tenant_id')
  t.equal(config.ADMIN_GROUP, 'admin')
  t.equal(config.JWKS_REFETCH_INTERVAL_MS, 5000)
  t.equal(config.JWT_CLOCK_TOLERANCE_MS, 5000)

  t.match(problemsOf({ ...PRODUCTION, COGNITO_REGION: 'eu-west-1', COGNITO_USER_POOL_ID: 'us-east-1_AbC123', JWT_CLIENT_ID: 'x' }), [
    /^COGNITO_USER_POOL_ID: a pool of region eu-west-1/
  ])
  const offAws = loadConfig({
    NODE_ENV: 'development',
    COGNITO_REGION: 'us-east-1',
    COGNITO_USER_POOL_ID: 'local_Ab12Cd34',
    JWT_ISSUER: 'http://127.0.0.1:9229/local_Ab12Cd34',
    JWT_CLIENT_ID: 'x'
  })
  t.equal(offAws.JWT_ISSUER, 'http://127.0.0.1:9229/local_Ab12Cd34', 'a pool not on AWS (cognito-local): JWT_ISSUER names its issuer')
  t.same(
    problemsOf({
      ...PRODUCTION,
      COGNITO_REGION: 'eu-west-1',
      COGNITO_USER_POOL_ID: 'eu-west-1_AbC123',
      JWT_ISSUER: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123',
      JWT_CLIENT_ID: 'x'
    }),
    [],
    'both, agreeing, is fine'
  )
  t.match(problemsOf({ ...PRODUCTION, COGNITO_REGION: 'Europe', COGNITO_USER_POOL_ID: 'pool', JWT_CLIENT_ID: 'x' }), [
    /^COGNITO_REGION/,
    /^COGNITO_USER_POOL_ID/
  ])
})

t.test('the other auth settings are validated', async (t) => {
  const base = { NODE_ENV: 'development', JWT_ISSUER: 'https://issuer.example.com', JWT_CLIENT_ID: 'x' }
  t.match(problemsOf({ ...base, JWT_TOKEN_USE: 'refresh' }), [/^JWT_TOKEN_USE/])
  t.match(problemsOf({ ...base, JWKS_REFETCH_INTERVAL_MS: '0' }), [/^JWKS_REFETCH_INTERVAL_MS/], 'the unknown-kid throttle cannot be switched off')
  t.match(problemsOf({ ...base, JWT_CLOCK_TOLERANCE_MS: '3600000' }), [/^JWT_CLOCK_TOLERANCE_MS/])
  t.same(problemsOf({ NODE_ENV: 'development', JWT_ISSUER: 'https://issuer.example.com' }), [
    'JWT_CLIENT_ID: required with an issuer (tokens are checked against the app client)'
  ])
  t.same(problemsOf({ NODE_ENV: 'development' }), [], 'development without an issuer is fine: the embedded one fills in')
})

t.test('the process refuses to start in production without an issuer, naming the variables', async (t) => {
  const result = await runScript('server.ts', [], serverEnv(undefined, PRODUCTION))
  t.equal(result.code, 1)
  t.match(result.stderr, /config error: JWT_ISSUER: required when NODE_ENV=production/)
  t.match(result.stderr, /config error: JWT_CLIENT_ID: required when NODE_ENV=production/)
})

t.test('the embedded user pool never runs in production', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-cognito-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const previous = process.env.NODE_ENV
  process.env.NODE_ENV = 'production'
  try {
    await t.rejects(startEmbeddedCognito({ dataDir: dir }), /never runs with NODE_ENV=production/)
  } finally {
    if (previous === undefined) delete process.env.NODE_ENV
    else process.env.NODE_ENV = previous
  }
  const result = await runScript('scripts/token.ts', ['--admin', '--dir', dir], serverEnv(undefined, { NODE_ENV: 'production' }))
  t.not(result.code, 0, 'npm run token refuses too')
  t.equal(result.stdout, '', 'and prints no token')
})

t.test('npm run token logs in to the embedded user pool: a platform admin, then a member of a tenant', async (t) => {
  const cognito = await startTestCognito()
  t.teardown(() => cognito.stop())
  const ctx = await setupApp(t, cognito.env)
  const env = serverEnv(undefined, { NODE_ENV: 'development' })
  const decode = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString())

  const admin = await runScript('scripts/token.ts', ['--admin', '--dir', cognito.dataDir], env)
  t.equal(admin.code, 0, admin.stderr)
  const adminToken = admin.stdout.trim()
  t.match(adminToken, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'stdout is the token alone')
  t.match(decode(adminToken), { iss: cognito.issuer, token_use: 'id', aud: cognito.clientId, 'cognito:groups': ['admin'] })
  const created = await ctx.app.inject({
    method: 'POST',
    url: '/auth/tenants',
    headers: { authorization: `Bearer ${adminToken}` },
    payload: { id: ACME, name: 'Acme', admin: { email: 'boss@acme.test', name: 'Boss' } }
  })
  t.equal(created.statusCode, 201, created.body)

  const member = await runScript('scripts/token.ts', ['--tenant', ACME, '--email', 'boss@acme.test', '--dir', cognito.dataDir], env)
  t.equal(member.code, 0, member.stderr)
  t.match(decode(member.stdout.trim()), { token_use: 'id', 'custom:tenant_id': ACME, email: 'boss@acme.test' })
  const me = await ctx.app.inject({ method: 'GET', url: '/users/me', headers: { authorization: `Bearer ${member.stdout.trim()}`, 'x-tenant-id': ACME } })
  t.equal(me.statusCode, 200, me.body)
  t.match(me.json(), { email: 'boss@acme.test', role: 'admin' })

  const access = await runScript('scripts/token.ts', ['--tenant', ACME, '--email', 'boss@acme.test', '--use', 'access', '--dir', cognito.dataDir], env)
  t.match(decode(access.stdout.trim()), { token_use: 'access', client_id: cognito.clientId })

  const wrongTenant = await runScript('scripts/token.ts', ['--tenant', 'globex', '--email', 'boss@acme.test', '--dir', cognito.dataDir], env)
  t.equal(wrongTenant.code, 1)
  t.match(wrongTenant.stderr, `bound to tenant ${ACME}, not globex`)
  const stranger = await runScript('scripts/token.ts', ['--tenant', ACME, '--email', 'nobody@acme.test', '--dir', cognito.dataDir], env)
  t.equal(stranger.code, 1)
  t.match(stranger.stderr, /invite it first/)
  const bad = await runScript('scripts/token.ts', ['--use', 'refresh', '--admin', '--dir', cognito.dataDir], env)
  t.match(bad.stderr, /--use: id or access/)
  const elsewhere = await runScript('scripts/token.ts', ['--admin', '--dir', cognito.dataDir], {
    ...env,
    JWT_ISSUER: 'https://issuer.example.com',
    JWT_CLIENT_ID: 'x'
  })
  t.equal(elsewhere.code, 1, 'with a real issuer configured, the script declines')
})

t.test('the embedded user pool keeps its pool, app client and issuer across restarts, and moves off a taken port', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-cognito-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const port = await freePort()
  const first = await startEmbeddedCognito({ dataDir: dir, port })
  const before = { userPoolId: first.userPoolId, clientId: first.clientId, issuer: first.issuer }
  t.equal(first.issuer, `http://127.0.0.1:${port}/${first.userPoolId}`)
  await first.stop()

  const second = await startEmbeddedCognito({ dataDir: dir, port })
  t.teardown(() => second.stop())
  t.same({ userPoolId: second.userPoolId, clientId: second.clientId, issuer: second.issuer }, before, 'the same pool, found again')
  t.equal(second.movedFrom, null)
  t.same(await loadEmbeddedCognito(dir), { endpoint: second.endpoint, region: second.region, ...before }, 'its coordinates are stored for npm run token')
  await second.stop()

  const squatter = net.createServer()
  await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())))
  const third = await startEmbeddedCognito({ dataDir: dir, port })
  t.teardown(() => third.stop())
  t.equal(third.movedFrom, port, 'the taken port is reported')
  t.equal(third.userPoolId, before.userPoolId)
  t.not(third.issuer, before.issuer)
})
