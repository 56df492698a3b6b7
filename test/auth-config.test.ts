import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { freePort } from '../lib/embedded/postgres.ts'
import { loadIssuerIdentity, startEmbeddedIssuer, type EmbeddedIssuerHandle } from '../lib/embedded/issuer.ts'
import { ConfigError, loadConfig } from '../schemas/env.ts'
import { setupApp } from './helpers/app.ts'
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

async function tempIssuerDir(t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-issuer-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // Tests never take the issuer's usual port: point the stored identity at a free one.
  const identity = await loadIssuerIdentity(dir)
  const file = path.join(dir, 'issuer.json')
  const stored = JSON.parse(await readFile(file, 'utf8'))
  stored.issuer = `http://127.0.0.1:${await freePort()}`
  await writeFile(file, JSON.stringify(stored))
  t.equal((await loadIssuerIdentity(dir)).kid, identity.kid)
  return dir
}

async function startIssuer(t: Test, dir: string): Promise<EmbeddedIssuerHandle> {
  const issuer = await startEmbeddedIssuer({ dataDir: dir })
  t.teardown(() => issuer.stop())
  return issuer
}

t.test('the embedded issuer never runs in production', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-issuer-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const previous = process.env.NODE_ENV
  process.env.NODE_ENV = 'production'
  try {
    await t.rejects(startEmbeddedIssuer({ dataDir: dir }), /never runs with NODE_ENV=production/)
    await t.rejects(loadIssuerIdentity(dir), /never runs with NODE_ENV=production/)
  } finally {
    if (previous === undefined) delete process.env.NODE_ENV
    else process.env.NODE_ENV = previous
  }
  const result = await runScript('scripts/token.ts', ['--tenant', ACME, '--dir', dir], serverEnv(undefined, { NODE_ENV: 'production' }))
  t.not(result.code, 0, 'npm run token refuses too')
  t.equal(result.stdout, '', 'and mints nothing')
})

t.test('the embedded issuer is trusted like any issuer, and npm run token mints for it', async (t) => {
  const dir = await tempIssuerDir(t)
  const issuer = await startIssuer(t, dir)
  const keyFile = await stat(path.join(dir, 'private-key.pem'))
  t.equal(keyFile.mode & 0o077, 0, 'the private key is readable by its owner only')

  const jwks = await (await fetch(`${issuer.issuer}/.well-known/jwks.json`)).json()
  const discovery = await (await fetch(`${issuer.issuer}/.well-known/openid-configuration`)).json()
  t.equal(discovery.issuer, issuer.issuer)
  t.equal(discovery.jwks_uri, `${issuer.issuer}/.well-known/jwks.json`)
  t.equal(jwks.keys.length, 1)
  t.notOk('d' in jwks.keys[0], 'only the public half is published')

  const ctx = await setupApp(t, { JWT_ISSUER: issuer.issuer, JWT_CLIENT_ID: issuer.clientId })
  const names = { tenantClaim: ctx.config.TENANT_CLAIM, adminGroup: ctx.config.ADMIN_GROUP }
  const admin = { authorization: `Bearer ${issuer.mint({ admin: true, ...names })}` }
  const created = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: admin, payload: { id: ACME, name: 'Acme' } })
  t.equal(created.statusCode, 201, 'the logged admin token creates tenants')

  const env = serverEnv(undefined, { NODE_ENV: 'development' })
  const minted = await runScript('scripts/token.ts', ['--tenant', ACME, '--dir', dir], env)
  t.equal(minted.code, 0, minted.stderr)
  const token = minted.stdout.trim()
  t.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'stdout is the token alone')
  const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString())
  t.match(claims, { iss: issuer.issuer, token_use: 'access', client_id: issuer.clientId, 'custom:tenant_id': ACME, sub: String })
  t.ok(typeof claims.jti === 'string' && typeof claims.username === 'string', 'shaped like a Cognito access token')
  t.equal(claims.exp - claims.iat, 3600, 'valid for an hour by default')
  const write = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: { authorization: `Bearer ${token}`, 'x-tenant-id': ACME },
    payload: { email: 'ada@acme.test', name: 'Ada' }
  })
  t.equal(write.statusCode, 201, 'the minted tenant token works')
  const other = await ctx.app.inject({ method: 'GET', url: '/users', headers: { authorization: `Bearer ${token}`, 'x-tenant-id': 'globex' } })
  t.equal(other.json().code, 'TENANT_MISMATCH', 'and only for its tenant')

  const idAdmin = await runScript('scripts/token.ts', ['--admin', '--use', 'id', '--expires', '30m', '--dir', dir], env)
  t.equal(idAdmin.code, 0, idAdmin.stderr)
  const idClaims = JSON.parse(Buffer.from(idAdmin.stdout.trim().split('.')[1], 'base64url').toString())
  t.match(idClaims, { token_use: 'id', aud: issuer.clientId, 'cognito:groups': ['admin'] })
  t.equal(idClaims.exp - idClaims.iat, 1800)
  const list = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: { authorization: `Bearer ${idAdmin.stdout.trim()}` } })
  t.equal(list.statusCode, 200, 'an admin ID token from the script works')

  const bad = await runScript('scripts/token.ts', ['--use', 'refresh', '--tenant', ACME, '--dir', dir], env)
  t.equal(bad.code, 1)
  t.match(bad.stderr, /--use: access or id/)
  const elsewhere = await runScript('scripts/token.ts', ['--tenant', ACME, '--dir', dir], {
    ...env,
    JWT_ISSUER: 'https://issuer.example.com',
    JWT_CLIENT_ID: 'x'
  })
  t.equal(elsewhere.code, 1, 'with a real issuer configured, the script declines')
})

t.test('the embedded issuer keeps its key and URL across restarts, and moves off a taken port', async (t) => {
  const dir = await tempIssuerDir(t)
  const first = await startEmbeddedIssuer({ dataDir: dir })
  const before = { issuer: first.issuer, kid: (await loadIssuerIdentity(dir)).kid }
  await first.stop()

  const second = await startIssuer(t, dir)
  t.equal(second.issuer, before.issuer, 'same URL after a restart')
  t.equal((await loadIssuerIdentity(dir)).kid, before.kid, 'same key')
  t.equal(second.movedFrom, null)
  await second.stop()

  const squatter = net.createServer()
  await new Promise<void>((resolve) => squatter.listen(Number(new URL(before.issuer).port), '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => squatter.close(() => resolve())))
  const third = await startIssuer(t, dir)
  t.equal(third.movedFrom, before.issuer, 'the taken port is reported')
  t.not(third.issuer, before.issuer)
  t.equal((await loadIssuerIdentity(dir)).issuer, third.issuer, 'the new URL is stored for npm run token')
  const jwks = await (await fetch(`${third.issuer}/.well-known/jwks.json`)).json()
  t.equal(jwks.keys[0].kid, before.kid, 'still the same key')
})
