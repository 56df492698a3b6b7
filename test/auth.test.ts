import fc from 'fast-check'
import type { LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { createSigningKey, signToken, startTestIssuer, type TestIssuer } from './helpers/issuer.ts'

const ACME = 'acme-corp'
const GLOBEX = 'globex'

let ctx: TestContext
/** A second, fully working issuer the service does not trust. */
let rogue: TestIssuer
const logLines: string[] = []
/** Every token sent in this file; none may show up in a log line or a response body. */
const sent = new Set<string>()

t.before(async () => {
  ctx = await setupApp(t, { LOG_LEVEL: 'info' }, { logStream: { write: (line) => void logLines.push(line) } })
  rogue = await startTestIssuer({ clientId: ctx.issuer.clientId })
  t.teardown(() => rogue.close())
  await createTenant(ctx, ACME)
  await createTenant(ctx, GLOBEX)
})

const now = () => Math.floor(Date.now() / 1000)

function bearer(token: string): Record<string, string> {
  sent.add(token)
  return { authorization: `Bearer ${token}` }
}

/** What a forger wants: a user of ACME who is also an admin. Refused, it must leave nothing behind. */
const forgedClaims = (extra: Record<string, unknown> = {}) => ctx.issuer.claims({ tenant: ACME, groups: ['admin'], claims: extra })

function assertRefusal(t: Test, response: LightMyRequestResponse, statusCode: number, code: string, label: string) {
  t.equal(response.statusCode, statusCode, `${label}: status`)
  const body = response.json()
  t.equal(body.code, code, `${label}: code`)
  t.equal(body.statusCode, statusCode, `${label}: body status`)
  if (statusCode === 401) {
    t.match(response.headers['www-authenticate'], /^Bearer realm="tenant-service"/, `${label}: WWW-Authenticate: Bearer`)
  }
  for (const token of sent) {
    for (const part of token.split('.').filter((segment) => segment.length > 16)) {
      if (response.body.includes(part)) t.fail(`${label}: the response echoes the token`)
    }
  }
}

let probes = 0

/**
 * Tries both kinds of write with `headers`: a user in ACME, and a new tenant. Each must be refused
 * with `statusCode`/`code`, and neither row nor schema may exist afterwards.
 */
async function assertWritesRefused(t: Test, headers: Record<string, string>, statusCode: number, code: string, label: string, query = '') {
  const n = ++probes
  const email = `forged-${n}@example.test`
  const tenantId = `forged-${n}`
  const user = await ctx.app.inject({
    method: 'POST',
    url: `/users${query}`,
    headers: { 'x-tenant-id': ACME, ...headers },
    payload: { email, name: 'Forged' }
  })
  assertRefusal(t, user, statusCode, code, `${label} (POST /users)`)
  const tenant = await ctx.app.inject({ method: 'POST', url: `/auth/tenants${query}`, headers, payload: { id: tenantId, name: 'Forged' } })
  assertRefusal(t, tenant, statusCode, code, `${label} (POST /auth/tenants)`)

  const users = await ctx.admin.query(`SELECT 1 FROM "${ACME}".users WHERE email = $1`, [email])
  t.equal(users.rowCount, 0, `${label}: no user was written`)
  const tenants = await ctx.admin.query('SELECT 1 FROM public.tenants WHERE id = $1', [tenantId])
  t.equal(tenants.rowCount, 0, `${label}: no tenant row was written`)
  const schemas = await ctx.admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [tenantId])
  t.equal(schemas.rowCount, 0, `${label}: no schema was created`)
}

t.test('valid tokens: tenant users on their tenant, admins everywhere', async (t) => {
  const own = await ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(ACME) })
  t.equal(own.statusCode, 200, 'a tenant user reads its own tenant')

  const created = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: ctx.auth.tenantUser(ACME),
    payload: { email: 'ada@acme.test', name: 'Ada' }
  })
  t.equal(created.statusCode, 201, 'and writes to it')

  for (const tenant of [ACME, GLOBEX]) {
    const response = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...ctx.auth.admin(), 'x-tenant-id': tenant } })
    t.equal(response.statusCode, 200, `an admin reads ${tenant}`)
  }
  const adminWrite = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: { ...ctx.auth.admin(), 'x-tenant-id': GLOBEX },
    payload: { email: 'root@globex.test', name: 'Root' }
  })
  t.equal(adminWrite.statusCode, 201, 'an admin writes to any tenant')
  t.equal((await ctx.admin.query(`SELECT 1 FROM "${GLOBEX}".users WHERE email = 'root@globex.test'`)).rowCount, 1)

  const listed = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: ctx.auth.admin() })
  t.equal(listed.statusCode, 200, 'an admin manages tenants')

  const idToken = ctx.issuer.token({ use: 'id', tenant: ACME })
  const viaId = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(idToken), 'x-tenant-id': ACME } })
  t.equal(viaId.statusCode, 200, 'an ID token is accepted when JWT_TOKEN_USE is any')

  const severalGroups = ctx.issuer.token({ groups: ['readers', 'admin'] })
  const admin = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: bearer(severalGroups) })
  t.equal(admin.statusCode, 200, 'admin among other groups')

  const lowercase = await ctx.app.inject({
    method: 'GET',
    url: '/users',
    headers: { authorization: `bearer ${ctx.issuer.token({ tenant: ACME })}`, 'x-tenant-id': ACME }
  })
  t.equal(lowercase.statusCode, 200, 'the scheme name is case-insensitive')
})

t.test('exp and nbf are honoured with a few seconds of tolerance', async (t) => {
  const justExpired = ctx.issuer.token({ tenant: ACME, claims: { exp: now() - 2 } })
  const almostValid = ctx.issuer.token({ tenant: ACME, claims: { nbf: now() + 2 } })
  for (const [label, token] of [
    ['expired 2 s ago', justExpired],
    ['valid in 2 s', almostValid]
  ]) {
    const response = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(token), 'x-tenant-id': ACME } })
    t.equal(response.statusCode, 200, label)
  }
})

t.test('forged and invalid tokens are 401 and write nothing', async (t) => {
  const { issuer } = ctx
  const kid = issuer.key.kid
  const attacker = createSigningKey()
  const real = issuer.token({ tenant: GLOBEX })
  const [realHeader, , realSignature] = real.split('.')
  const forgedPayload = Buffer.from(JSON.stringify(forgedClaims())).toString('base64url')
  const rsa = { rsa: issuer.key.privateKey }

  const cases: [string, string, string][] = [
    ['alg none', signToken({ alg: 'none', kid, typ: 'JWT' }, forgedClaims(), 'unsigned'), 'TOKEN_INVALID'],
    ['alg None', signToken({ alg: 'None', kid }, forgedClaims(), 'unsigned'), 'TOKEN_INVALID'],
    ['alg none with a real signature kept', `${signToken({ alg: 'none', kid }, forgedClaims(), 'unsigned')}${realSignature}`, 'TOKEN_INVALID'],
    ['HS256 keyed with the public key (PEM)', signToken({ alg: 'HS256', kid }, forgedClaims(), { hmac: issuer.key.pem }), 'TOKEN_INVALID'],
    ['HS256 keyed with the public key (JWK)', signToken({ alg: 'HS256', kid }, forgedClaims(), { hmac: JSON.stringify(issuer.key.jwk) }), 'TOKEN_INVALID'],
    ['HS256 keyed with the modulus', signToken({ alg: 'HS256', kid }, forgedClaims(), { hmac: String(issuer.key.jwk.n) }), 'TOKEN_INVALID'],
    ['RS384 header over a real RS256 signature', signToken({ alg: 'RS384', kid }, forgedClaims(), rsa), 'TOKEN_INVALID'],
    ['an attacker key under the real kid', signToken({ alg: 'RS256', kid }, forgedClaims(), { rsa: attacker.privateKey }), 'TOKEN_INVALID'],
    [
      'an attacker key embedded in the header (jwk)',
      signToken({ alg: 'RS256', kid: attacker.kid, jwk: attacker.jwk }, forgedClaims(), { rsa: attacker.privateKey }),
      'TOKEN_INVALID'
    ],
    [
      'an attacker key set named in the header (jku)',
      signToken({ alg: 'RS256', kid: rogue.key.kid, jku: rogue.jwksUrl }, forgedClaims(), { rsa: rogue.key.privateKey }),
      'TOKEN_INVALID'
    ],
    ['an unknown kid', issuer.token({ tenant: ACME, groups: ['admin'], header: { kid: 'no-such-key' } }), 'TOKEN_INVALID'],
    ['no kid', issuer.token({ tenant: ACME, groups: ['admin'], header: { kid: undefined } }), 'TOKEN_INVALID'],
    ['another issuer, with its own key set', rogue.token({ tenant: ACME, groups: ['admin'] }), 'TOKEN_INVALID'],
    ['iss with a trailing slash', signToken({ alg: 'RS256', kid }, forgedClaims({ iss: `${issuer.url}/` }), rsa), 'TOKEN_INVALID'],
    [
      'iss of another pool on the same host',
      signToken({ alg: 'RS256', kid }, forgedClaims({ iss: issuer.url.replace(/\/[^/]+$/, '/other-pool') }), rsa),
      'TOKEN_INVALID'
    ],
    ['no iss', signToken({ alg: 'RS256', kid }, forgedClaims({ iss: undefined }), rsa), 'TOKEN_INVALID'],
    ['expired', issuer.token({ tenant: ACME, groups: ['admin'], claims: { exp: now() - 60 } }), 'TOKEN_EXPIRED'],
    ['no exp', issuer.token({ tenant: ACME, groups: ['admin'], claims: { exp: undefined } }), 'TOKEN_INVALID'],
    ['exp as a string', issuer.token({ tenant: ACME, groups: ['admin'], claims: { exp: String(now() + 3600) } }), 'TOKEN_INVALID'],
    ['nbf in the future', issuer.token({ tenant: ACME, groups: ['admin'], claims: { nbf: now() + 60 } }), 'TOKEN_INVALID'],
    ['an access token of another app client', issuer.token({ tenant: ACME, groups: ['admin'], claims: { client_id: 'other-client' } }), 'TOKEN_INVALID'],
    ['an access token without client_id', issuer.token({ tenant: ACME, groups: ['admin'], claims: { client_id: undefined } }), 'TOKEN_INVALID'],
    [
      'an access token with the client in aud only',
      issuer.token({ tenant: ACME, groups: ['admin'], claims: { client_id: undefined, aud: issuer.clientId } }),
      'TOKEN_INVALID'
    ],
    ['an ID token for another app client', issuer.token({ use: 'id', tenant: ACME, groups: ['admin'], claims: { aud: 'other-client' } }), 'TOKEN_INVALID'],
    [
      'an ID token with the client in client_id only',
      issuer.token({ use: 'id', tenant: ACME, groups: ['admin'], claims: { aud: undefined, client_id: issuer.clientId } }),
      'TOKEN_INVALID'
    ],
    ['token_use refresh', issuer.token({ tenant: ACME, groups: ['admin'], claims: { token_use: 'refresh' } }), 'TOKEN_INVALID'],
    ['no token_use', issuer.token({ tenant: ACME, groups: ['admin'], claims: { token_use: undefined } }), 'TOKEN_INVALID'],
    ['no sub', issuer.token({ tenant: ACME, groups: ['admin'], claims: { sub: undefined } }), 'TOKEN_INVALID'],
    ['a tampered payload', `${realHeader}.${forgedPayload}.${realSignature}`, 'TOKEN_INVALID'],
    ['a payload that is not an object', signToken({ alg: 'RS256', kid }, '"admin"', rsa), 'TOKEN_INVALID'],
    ['a crit header the service does not know', signToken({ alg: 'RS256', kid, crit: ['exp-v2'], 'exp-v2': 1 }, forgedClaims(), rsa), 'TOKEN_INVALID'],
    ['two segments', `${realHeader}.${forgedPayload}`, 'TOKEN_INVALID'],
    ['segments that are not JSON', 'abc.def.ghi', 'TOKEN_INVALID'],
    ['a truncated signature', real.slice(0, -10), 'TOKEN_INVALID'],
    ['a token of 10 kB', `${realHeader}.${'A'.repeat(10_000)}.${realSignature}`, 'TOKEN_INVALID']
  ]
  const rogueFetches = rogue.jwksFetches
  for (const [label, token, code] of cases) {
    await assertWritesRefused(t, bearer(token), 401, code, label)
  }
  t.equal(rogue.jwksFetches, rogueFetches, 'nothing in a token made the service fetch keys from anywhere else')
})

t.test('a token is read only from the Authorization header', async (t) => {
  const admin = ctx.issuer.token({ tenant: ACME, groups: ['admin'] })
  sent.add(admin)
  await assertWritesRefused(t, {}, 401, 'TOKEN_MISSING', 'no Authorization header')
  await assertWritesRefused(t, {}, 401, 'TOKEN_MISSING', 'in the query string (access_token)', `?access_token=${admin}`)
  await assertWritesRefused(t, {}, 401, 'TOKEN_MISSING', 'in the query string (token)', `?token=${admin}`)
  await assertWritesRefused(t, {}, 401, 'TOKEN_MISSING', 'in the query string (id_token)', `?id_token=${admin}`)
  await assertWritesRefused(t, { cookie: `token=${admin}; access_token=${admin}; authorization=Bearer%20${admin}` }, 401, 'TOKEN_MISSING', 'in cookies')
  await assertWritesRefused(t, { authorization: `Basic ${Buffer.from(`admin:${admin}`).toString('base64')}` }, 401, 'TOKEN_MISSING', 'Basic scheme')
  await assertWritesRefused(t, { authorization: admin }, 401, 'TOKEN_MISSING', 'without the Bearer scheme')
  await assertWritesRefused(t, { authorization: 'Bearer' }, 401, 'TOKEN_MISSING', 'Bearer and nothing')
  await assertWritesRefused(t, { authorization: 'Bearer    ' }, 401, 'TOKEN_MISSING', 'Bearer and blanks')
  await assertWritesRefused(t, { authorization: `Bearer ${admin} ${admin}` }, 401, 'TOKEN_INVALID', 'two tokens')

  for (const field of ['access_token', 'token', 'id_token']) {
    const email = `body-${field}@example.test`
    const response = await ctx.app.inject({
      method: 'POST',
      url: '/users',
      headers: { 'x-tenant-id': ACME },
      payload: { email, name: 'Body', [field]: admin }
    })
    assertRefusal(t, response, 401, 'TOKEN_MISSING', `in the body (${field})`)
    t.equal((await ctx.admin.query(`SELECT 1 FROM "${ACME}".users WHERE email = $1`, [email])).rowCount, 0, `${field}: nothing written`)
  }
})

t.test("a token is bound to its tenant: another tenant's is 403 TENANT_MISMATCH", async (t) => {
  const acmeUser = ctx.auth.tenantUser(ACME)
  const onGlobex = { ...acmeUser, 'x-tenant-id': GLOBEX }
  const before = (await ctx.admin.query(`SELECT count(*)::int AS n FROM "${GLOBEX}".users`)).rows[0].n

  assertRefusal(t, await ctx.app.inject({ method: 'GET', url: '/users', headers: onGlobex }), 403, 'TENANT_MISMATCH', 'GET /users')
  const write = await ctx.app.inject({ method: 'POST', url: '/users', headers: onGlobex, payload: { email: 'mole@acme.test', name: 'Mole' } })
  assertRefusal(t, write, 403, 'TENANT_MISMATCH', 'POST /users')

  const victim = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: ctx.auth.tenantUser(GLOBEX),
    payload: { email: 'victim@globex.test', name: 'Victim' }
  })
  t.equal(victim.statusCode, 201)
  const id = victim.json().id
  assertRefusal(t, await ctx.app.inject({ method: 'GET', url: `/users/${id}`, headers: onGlobex }), 403, 'TENANT_MISMATCH', 'GET /users/:id')
  assertRefusal(
    t,
    await ctx.app.inject({ method: 'PATCH', url: `/users/${id}`, headers: onGlobex, payload: { name: 'Owned' } }),
    403,
    'TENANT_MISMATCH',
    'PATCH /users/:id'
  )
  assertRefusal(t, await ctx.app.inject({ method: 'DELETE', url: `/users/${id}`, headers: onGlobex }), 403, 'TENANT_MISMATCH', 'DELETE /users/:id')

  const rows = await ctx.admin.query(`SELECT name FROM "${GLOBEX}".users WHERE id = $1`, [id])
  t.same(rows.rows, [{ name: 'Victim' }], "the other tenant's user is untouched")
  const after = (await ctx.admin.query(`SELECT count(*)::int AS n FROM "${GLOBEX}".users`)).rows[0].n
  t.equal(after, before + 1, 'only the victim itself was written to the other tenant')

  const unknown = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...acmeUser, 'x-tenant-id': 'no-such-tenant' } })
  assertRefusal(t, unknown, 403, 'TENANT_MISMATCH', 'a tenant that does not exist: no way to tell it from one that does')

  const anonymous = await ctx.app.inject({ method: 'GET', url: '/users', headers: { 'x-tenant-id': 'no-such-tenant' } })
  assertRefusal(t, anonymous, 401, 'TOKEN_MISSING', 'anonymous callers learn nothing about tenants')
})

t.test('a token naming no tenant is 403 TENANT_CLAIM_MISSING', async (t) => {
  const variants: [string, Record<string, unknown>][] = [
    ['no tenant claim', {}],
    ['the tenant in another claim', { tenant_id: ACME, 'custom:tenant': ACME, tenant: ACME }],
    ['a tenant claim that is not a string', { 'custom:tenant_id': [ACME] }],
    ['an empty tenant claim', { 'custom:tenant_id': '' }]
  ]
  for (const [label, claims] of variants) {
    const headers = { ...bearer(ctx.issuer.token({ claims })), 'x-tenant-id': ACME }
    assertRefusal(t, await ctx.app.inject({ method: 'GET', url: '/users', headers }), 403, 'TENANT_CLAIM_MISSING', label)
    const email = `claimless-${label.replace(/\W+/g, '-')}@example.test`
    const write = await ctx.app.inject({ method: 'POST', url: '/users', headers, payload: { email, name: 'X' } })
    assertRefusal(t, write, 403, 'TENANT_CLAIM_MISSING', `${label}: POST`)
    t.equal((await ctx.admin.query(`SELECT 1 FROM "${ACME}".users WHERE email = $1`, [email])).rowCount, 0, `${label}: nothing written`)
  }
})

t.test('only cognito:groups makes an admin: /auth/tenants refuses every other claim with 403 ADMIN_REQUIRED', async (t) => {
  const spoofs: [string, Record<string, unknown>][] = [
    ['a plain tenant user', {}],
    ['groups', { groups: ['admin'] }],
    ['role', { role: 'admin' }],
    ['roles', { roles: ['admin'] }],
    ['custom:groups', { 'custom:groups': 'admin' }],
    ['custom:groups as a list', { 'custom:groups': ['admin'] }],
    ['cognito:roles', { 'cognito:roles': ['admin'] }],
    ['cognito:preferred_role', { 'cognito:preferred_role': 'arn:aws:iam::123456789012:role/admin' }],
    ['admin: true', { admin: true }],
    ['scope admin', { scope: 'admin aws.cognito.signin.user.admin' }],
    ['cognito:groups as a string', { 'cognito:groups': 'admin' }],
    ['cognito:groups with Admin', { 'cognito:groups': ['Admin'] }],
    ['cognito:groups with admins', { 'cognito:groups': ['admins', 'administrators'] }],
    ['cognito:groups with " admin"', { 'cognito:groups': [' admin'] }]
  ]
  for (const [label, claims] of spoofs) {
    const token = ctx.issuer.token({ tenant: ACME, claims })
    const id = `spoof-${spoofs.findIndex(([name]) => name === label)}`
    const created = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(token), payload: { id, name: 'Spoof' } })
    assertRefusal(t, created, 403, 'ADMIN_REQUIRED', `${label}: POST /auth/tenants`)
    t.equal((await ctx.admin.query('SELECT 1 FROM public.tenants WHERE id = $1', [id])).rowCount, 0, `${label}: no tenant row`)
    t.equal((await ctx.admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [id])).rowCount, 0, `${label}: no schema`)

    const list = await ctx.app.inject({ method: 'GET', url: '/auth/tenants', headers: bearer(token) })
    assertRefusal(t, list, 403, 'ADMIN_REQUIRED', `${label}: GET /auth/tenants`)
    const suspend = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${GLOBEX}`, headers: bearer(token), payload: { status: 'suspended' } })
    assertRefusal(t, suspend, 403, 'ADMIN_REQUIRED', `${label}: PATCH /auth/tenants/:id`)
    const other = await ctx.app.inject({ method: 'GET', url: '/users', headers: { ...bearer(token), 'x-tenant-id': GLOBEX } })
    assertRefusal(t, other, 403, 'TENANT_MISMATCH', `${label}: no reach into other tenants either`)
  }
  const globex = await ctx.admin.query('SELECT status FROM public.tenants WHERE id = $1', [GLOBEX])
  t.equal(globex.rows[0].status, 'active', 'the tenant nobody was allowed to suspend is active')
})

t.test('public routes need no token', async (t) => {
  const anonymous = [
    { url: '/', headers: { 'x-tenant-id': ACME } },
    { url: '/health/live', headers: {} },
    { url: '/health/ready', headers: {} },
    { url: '/docs/json', headers: {} }
  ]
  for (const { url, headers } of anonymous) {
    const response = await ctx.app.inject({ method: 'GET', url, headers })
    t.equal(response.statusCode, 200, `GET ${url}`)
    const withGarbage = await ctx.app.inject({ method: 'GET', url, headers: { ...headers, authorization: 'Bearer not.a.token' } })
    t.equal(withGarbage.statusCode, 200, `GET ${url} ignores a bad token`)
  }
  t.same((await ctx.app.inject({ method: 'GET', url: '/health/ready' })).json(), { status: 'ready' }, 'anonymous callers get the status only')
  const ready = await ctx.app.inject({ method: 'GET', url: '/health/ready?verbose', headers: ctx.auth.admin() })
  t.match(ready.json().checks.jwks, { ok: true }, 'readiness reports the signing keys to an admin')
  const docs = await ctx.app.inject({ method: 'GET', url: '/docs' })
  t.ok(docs.statusCode < 400, 'the Swagger UI')
})

t.test('OpenAPI declares the bearer scheme on every protected operation, and only there', async (t) => {
  const spec = (await ctx.app.inject({ method: 'GET', url: '/docs/json' })).json()
  t.same(spec.components.securitySchemes.bearerAuth, {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: spec.components.securitySchemes.bearerAuth.description
  })
  t.notOk(spec.security, 'no document-wide requirement: public routes stay public')
  let protectedOps = 0
  for (const [path, operations] of Object.entries(spec.paths as Record<string, Record<string, { security?: unknown; responses: object }>>)) {
    const guarded = /^\/(users|files|auth)(\/|$)/.test(path)
    for (const [method, operation] of Object.entries(operations)) {
      if (guarded) {
        protectedOps++
        t.same(operation.security, [{ bearerAuth: [] }], `${method.toUpperCase()} ${path} requires a bearer token`)
        t.ok('401' in operation.responses, `${method.toUpperCase()} ${path} documents 401`)
      } else {
        // Public explicitly: an empty requirement, so no generated client sends a token there.
        t.same(operation.security, [], `${method.toUpperCase()} ${path} is public`)
      }
    }
  }
  t.ok(protectedOps >= 10, 'the users and tenants operations were all seen')
})

t.test('no malformed Authorization header is a 5xx', async (t) => {
  const kid = ctx.issuer.key.kid
  const segment = fc.oneof(
    fc.base64String().map((s) => s.replace(/=/g, '').replace(/\+/g, '-').replace(/\//g, '_')),
    fc.json().map((json) => Buffer.from(json).toString('base64url')),
    fc.constant(Buffer.from(JSON.stringify({ alg: 'RS256', kid })).toString('base64url'))
  )
  // What a header can carry on the wire: visible ASCII and blanks.
  const printable = fc.string({ maxLength: 200 }).map((s) => s.replace(/[^\x20-\x7e]/g, ''))
  const header = fc.oneof(
    printable.map((s) => `Bearer ${s}`),
    fc.tuple(segment, segment, segment).map(([a, b, c]) => `Bearer ${a}.${b}.${c}`),
    printable
  )
  const statuses = new Set<number>()
  await fc.assert(
    fc.asyncProperty(header, async (authorization) => {
      const response = await ctx.app.inject({ method: 'GET', url: '/users', headers: { authorization, 'x-tenant-id': ACME } })
      statuses.add(response.statusCode)
      return response.statusCode === 401 && /^Bearer /.test(String(response.headers['www-authenticate']))
    }),
    { numRuns: 300 }
  )
  t.same([...statuses], [401], 'every malformed header was answered 401 with a challenge')
})

t.test('tokens never reach the logs', async (t) => {
  const completed = logLines.filter((line) => line.includes('request completed'))
  t.ok(completed.length > 50, 'requests were logged')
  t.ok(
    completed.some((line) => line.includes('[redacted]')),
    'a token pasted into a URL is logged as [redacted]'
  )
  const leaks = logLines.filter((line) => [...sent].some((token) => token.split('.').some((part) => part.length > 16 && line.includes(part))))
  t.same(leaks, [], 'no log line carries any part of a token')
})
