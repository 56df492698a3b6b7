import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { AdminCreateUserCommand, InitiateAuthCommand } from '@aws-sdk/client-cognito-identity-provider'
import t, { type Test } from 'tap'
import { loadMigrations, provisionTenant } from '../lib/tenants/index.ts'
import { inviteMember, type UserPool } from '../lib/users/index.ts'
import { ApiError } from '../schemas/errors.ts'
import { ageTombstone, buildApp, setupApp, type TestContext } from './helpers/app.ts'
import { startTestCognito, TEST_PASSWORD, type TestCognito } from './helpers/cognito.ts'
import { trickle } from './helpers/trickle.ts'
import { eventually } from './helpers/wait.ts'

/**
 * Members backed by a real user pool (cognito-local), end to end: tenant creation with its admin,
 * logins with real tokens, invitations, rights, tenant binding, removal and tenant deletion. After
 * each step the pool's users are read back.
 */

const ACME = 'acme'
const GLOBEX = 'globex'

let ctx: TestContext
let cognito: TestCognito
let operator: string
/** Requests to /users let in (tenant resolved) whose body is now awaited. */
let awaitingBody = 0

const bearer = (token: string, tenant?: string) => ({ authorization: `Bearer ${token}`, ...(tenant ? { 'x-tenant-id': tenant } : {}) })
/** POST /users as the caller of `token` in `tenant`: a plain user, or with `invite: true` a member invited into the pool. */
const addUser = (token: string, tenant: string, user: Record<string, unknown>) =>
  ctx.app.inject({ method: 'POST', url: '/users', headers: bearer(token, tenant), payload: user })
const rowsOf = async (tenant: string) => (await ctx.admin.query(`SELECT email, role, status, sub FROM ${JSON.stringify(tenant)}.users ORDER BY email`)).rows

/** A tenant as an older release made it: only the tenant migrations up to `version` (0: none, no users table). */
async function provisionAt(id: string, version: number) {
  const migrations = (await loadMigrations('tenant')).filter((migration) => migration.version <= version)
  return provisionTenant(ctx.admin, { id, name: id }, { rolePrefix: ctx.config.TENANT_ROLE_PREFIX, migrations })
}

/** Logs a pool user in with a password set as completing the invitation would, and returns its ID token. */
async function loginAs(email: string) {
  await cognito.setPassword(email, TEST_PASSWORD)
  return (await cognito.login(email, TEST_PASSWORD)).idToken
}

/**
 * A slow user pool: an HTTP proxy in front of cognito-local that holds AdminDisableUser and
 * AdminDeleteUser (the calls of a member's removal) until `release()`, and passes the rest.
 */
async function slowPool(target: string) {
  const held: string[] = []
  let release!: () => void
  const released = new Promise<void>((resolve) => {
    release = resolve
  })
  const server = http.createServer((request, response) => {
    const forward = () => {
      const upstream = http.request(new URL(request.url ?? '/', target), { method: request.method, headers: request.headers }, (answer) => {
        response.writeHead(answer.statusCode ?? 502, answer.headers)
        answer.pipe(response)
      })
      upstream.on('error', () => response.destroy())
      request.pipe(upstream)
    }
    const operation = String(request.headers['x-amz-target'] ?? '')
      .split('.')
      .pop()!
    if (operation !== 'AdminDisableUser' && operation !== 'AdminDeleteUser') return forward()
    held.push(operation)
    void released.then(forward)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    held,
    release,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

t.before(async () => {
  cognito = await startTestCognito()
  t.teardown(() => cognito.stop())
  ctx = await setupApp(
    t,
    { ...cognito.env, COGNITO_INVITE_MESSAGE_ACTION: 'SUPPRESS' },
    { beforeRegister: (app) => app.addHook('preParsing', async (request) => void (request.url === '/users' && awaitingBody++)) }
  )
  operator = await cognito.platformAdmin()
})

let adminToken: string
let memberToken: string
let memberId: string

t.test('creating a tenant with an admin onboards that admin into the pool, bound to the tenant', async (t) => {
  const response = await ctx.app.inject({
    method: 'POST',
    url: '/auth/tenants',
    headers: bearer(operator),
    payload: { id: ACME, name: 'Acme', admin: { email: 'boss@acme.test', name: 'The Boss' } }
  })
  t.equal(response.statusCode, 201, response.body)
  const body = response.json()
  t.match(body, { id: ACME, admin: { email: 'boss@acme.test', role: 'admin', status: 'active', sub: String } })

  const pool = await cognito.users()
  const boss = pool.get('boss@acme.test')
  t.ok(boss, 'the pool holds the admin')
  t.equal(boss!.attributes['custom:tenant_id'], ACME)
  t.equal(boss!.attributes.sub, body.admin.sub, 'the row records the pool user’s sub')
  t.same(await rowsOf(ACME), [{ email: 'boss@acme.test', role: 'admin', status: 'active', sub: boss!.attributes.sub }])

  adminToken = await loginAs('boss@acme.test')
  const me = await ctx.app.inject({ method: 'GET', url: '/users/me', headers: bearer(adminToken, ACME) })
  t.equal(me.statusCode, 200, me.body)
  t.match(me.json(), { email: 'boss@acme.test', role: 'admin' })
})

t.test('an admin member invites a member; the member logs in with a real token', async (t) => {
  const response = await addUser(adminToken, ACME, { email: 'worker@acme.test', name: 'A Worker', invite: true })
  t.equal(response.statusCode, 201, response.body)
  const user = response.json()
  memberId = user.id
  t.match(user, { role: 'member', status: 'active', sub: String })
  const pool = await cognito.users()
  t.same([...pool.keys()].sort(), ['boss@acme.test', 'operator@platform.test', 'worker@acme.test'])
  t.equal(pool.get('worker@acme.test')!.attributes['custom:tenant_id'], ACME)
  t.equal(pool.get('worker@acme.test')!.status, 'FORCE_CHANGE_PASSWORD', 'a fresh invitation: the temporary password must be changed')

  memberToken = (
    await (async () => {
      await cognito.setPassword('worker@acme.test', TEST_PASSWORD)
      return cognito.adminLogin('worker@acme.test', TEST_PASSWORD)
    })()
  ).idToken
  const me = await ctx.app.inject({ method: 'GET', url: '/users/me', headers: bearer(memberToken, ACME) })
  t.equal(me.statusCode, 200, me.body)
  t.match(me.json(), { id: memberId, email: 'worker@acme.test', role: 'member' })
  const list = await ctx.app.inject({ method: 'GET', url: '/users', headers: bearer(memberToken, ACME) })
  t.equal(list.statusCode, 200, 'a member reads the tenant’s users')
  t.equal(list.json().items.length, 2)
})

t.test('repeating an invitation of an active member is a conflict; the pool is unchanged', async (t) => {
  const response = await addUser(operator, ACME, { email: 'worker@acme.test', name: 'Again', invite: true })
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'USER_EMAIL_EXISTS')
  t.equal((await cognito.users()).size, 3)
})

t.test('an invitation with a temporary password (COGNITO_INVITE_MESSAGE_ACTION=SUPPRESS): the first login must set a new one', async (t) => {
  const lonely = await addUser(adminToken, ACME, { email: 'temp@acme.test', name: 'Temp', temporaryPassword: 'Temp-Pass-42' })
  t.equal(lonely.statusCode, 400, 'a temporary password without an invitation is refused')
  t.equal(lonely.json().code, 'VALIDATION_ERROR')

  const response = await addUser(adminToken, ACME, { email: 'temp@acme.test', name: 'Temp', invite: true, temporaryPassword: 'Temp-Pass-42' })
  t.equal(response.statusCode, 201, response.body)
  const login = await cognito.client.send(
    new InitiateAuthCommand({
      ClientId: cognito.clientId,
      AuthFlow: 'USER_PASSWORD_AUTH',
      AuthParameters: { USERNAME: 'temp@acme.test', PASSWORD: 'Temp-Pass-42' }
    })
  )
  t.equal(login.ChallengeName, 'NEW_PASSWORD_REQUIRED', 'the temporary password works, once, to set a new one')
  t.notOk(login.AuthenticationResult)
})

t.test('a member may not invite, change or remove members, and nothing is written when it tries', async (t) => {
  const before = await rowsOf(ACME)
  const poolBefore = [...(await cognito.users()).keys()].sort()
  const attempts = [
    { method: 'POST' as const, url: '/users', payload: { email: 'intruder@acme.test', name: 'Intruder', invite: true } },
    { method: 'POST' as const, url: '/users', payload: { email: 'plain@acme.test', name: 'Plain', role: 'admin' } },
    { method: 'PATCH' as const, url: `/users/${memberId}`, payload: { role: 'admin' } },
    { method: 'DELETE' as const, url: `/users/${memberId}` }
  ]
  for (const attempt of attempts) {
    const response = await ctx.app.inject({ ...attempt, headers: bearer(memberToken, ACME) })
    t.equal(response.statusCode, 403, `${attempt.method} ${attempt.url}`)
    t.equal(response.json().code, 'TENANT_ADMIN_REQUIRED')
  }
  t.same(await rowsOf(ACME), before, 'no row was added, changed or removed')
  t.same([...(await cognito.users()).keys()].sort(), poolBefore, 'no pool user was made or removed')
  t.equal((await cognito.users()).get('worker@acme.test')!.enabled, true)
})

t.test("a member's token on another tenant is refused", async (t) => {
  const created = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(operator), payload: { id: GLOBEX, name: 'Globex' } })
  t.equal(created.statusCode, 201)
  for (const token of [memberToken, adminToken]) {
    const read = await ctx.app.inject({ method: 'GET', url: '/users', headers: bearer(token, GLOBEX) })
    t.equal(read.statusCode, 403)
    t.equal(read.json().code, 'TENANT_MISMATCH')
    const write = await addUser(token, GLOBEX, { email: 'x@globex.test', name: 'X', invite: true })
    t.equal(write.json().code, 'TENANT_MISMATCH')
  }
  t.same(await rowsOf(GLOBEX), [])
  t.notOk((await cognito.users()).has('x@globex.test'))
})

t.test('an email already bound to another tenant in the pool is refused with 409, and no row stays behind', async (t) => {
  const response = await addUser(operator, GLOBEX, { email: 'worker@acme.test', name: 'Poacher', invite: true })
  t.equal(response.statusCode, 409)
  t.equal(response.json().code, 'MEMBER_IN_OTHER_TENANT')
  t.same(await rowsOf(GLOBEX), [])
  t.equal((await cognito.users()).get('worker@acme.test')!.attributes['custom:tenant_id'], ACME, 'the pool user is untouched')
})

t.test("a platform admin's invitation whose tenant is suspended while its body arrives is 403, and neither a row nor a pool user is made", async (t) => {
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const port = (ctx.app.server.address() as AddressInfo).port
  const poolBefore = [...(await cognito.users()).keys()].sort()
  const letIn = awaitingBody
  const slowInvite = await trickle(port, '/users', bearer(operator, GLOBEX), JSON.stringify({ email: 'slow@globex.test', name: 'Slow', invite: true }))
  t.ok(await eventually(() => awaitingBody === letIn + 1), 'the invitation was let in; its body is on its way')
  const suspend = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${GLOBEX}`, headers: bearer(operator), payload: { status: 'suspended' } })
  t.equal(suspend.statusCode, 200)
  const answer = await slowInvite()
  t.equal(answer.status, 403, answer.body)
  t.match(JSON.parse(answer.body), { code: 'TENANT_SUSPENDED' })
  t.same(await rowsOf(GLOBEX), [], 'no row was written into the suspended tenant')
  t.same([...(await cognito.users()).keys()].sort(), poolBefore, 'and the pool was not asked to make a user')
  const resumed = await ctx.app.inject({ method: 'PATCH', url: `/auth/tenants/${GLOBEX}`, headers: bearer(operator), payload: { status: 'active' } })
  t.equal(resumed.statusCode, 200)
})

t.test(
  'an invitation whose tenant is deleted and created again while its body arrives is 404, and the new tenant gets neither a row nor a pool user',
  async (t) => {
    const id = 'reborn'
    t.equal((await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(operator), payload: { id, name: 'First' } })).statusCode, 201)
    if (!ctx.app.server.listening) await ctx.app.listen({ port: 0, host: '127.0.0.1' })
    const port = (ctx.app.server.address() as AddressInfo).port
    const poolBefore = [...(await cognito.users()).keys()].sort()
    const letIn = awaitingBody
    const slowInvite = await trickle(port, '/users', bearer(operator, id), JSON.stringify({ email: 'ghost@reborn.test', name: 'Ghost', invite: true }))
    t.ok(await eventually(() => awaitingBody === letIn + 1), 'the invitation was let in; its body is on its way')
    t.equal((await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${id}`, headers: bearer(operator) })).statusCode, 204)
    await ageTombstone(ctx.admin, id)
    t.equal((await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(operator), payload: { id, name: 'Second' } })).statusCode, 201)
    const answer = await slowInvite()
    t.equal(answer.status, 404, answer.body)
    t.match(JSON.parse(answer.body), { code: 'TENANT_NOT_FOUND' })
    t.same(await rowsOf(id), [], 'no row was written into the new tenant')
    t.same([...(await cognito.users()).keys()].sort(), poolBefore, 'and the pool was not asked to make a user')
  }
)

t.test('an invitation interrupted after the row was written is finished by repeating it', async (t) => {
  // What a crash between the row and AdminCreateUser leaves behind.
  await ctx.admin.query(`INSERT INTO acme.users (email, name, status) VALUES ('late@acme.test', 'Late', 'inviting')`)
  const response = await addUser(adminToken, ACME, { email: 'late@acme.test', name: 'Late Comer', invite: true })
  t.equal(response.statusCode, 201, response.body)
  t.match(response.json(), { status: 'active', name: 'Late Comer' })
  t.equal((await cognito.users()).get('late@acme.test')!.attributes['custom:tenant_id'], ACME)

  // And one interrupted after AdminCreateUser: the pool user exists, the row is still inviting.
  await ctx.admin.query(`UPDATE acme.users SET status = 'inviting', sub = NULL WHERE email = 'late@acme.test'`)
  const again = await addUser(adminToken, ACME, { email: 'late@acme.test', name: 'Late Comer', invite: true })
  t.equal(again.statusCode, 201, again.body)
  t.equal(again.json().sub, (await cognito.users()).get('late@acme.test')!.attributes.sub, 'the existing pool user is adopted')
})

t.test('a token whose sub has no member row: GET /users/me is 404 MEMBER_NOT_FOUND', async (t) => {
  const stray = await ctx.app.inject({ method: 'GET', url: '/users/me', headers: bearer(operator, ACME) })
  t.equal(stray.statusCode, 404)
  t.equal(stray.json().code, 'MEMBER_NOT_FOUND')
})

t.test('an admin member changes a role; removing a member disables and deletes its pool user', async (t) => {
  const patched = await ctx.app.inject({ method: 'PATCH', url: `/users/${memberId}`, headers: bearer(adminToken, ACME), payload: { role: 'admin' } })
  t.equal(patched.statusCode, 200, patched.body)
  t.equal(patched.json().role, 'admin')
  const email = await ctx.app.inject({
    method: 'PATCH',
    url: `/users/${memberId}`,
    headers: bearer(adminToken, ACME),
    payload: { email: 'renamed@acme.test' }
  })
  t.equal(email.statusCode, 409)
  t.equal(email.json().code, 'MEMBER_EMAIL_FIXED')

  const deleted = await ctx.app.inject({ method: 'DELETE', url: `/users/${memberId}`, headers: bearer(adminToken, ACME) })
  t.equal(deleted.statusCode, 204, deleted.body)
  t.notOk((await cognito.users()).has('worker@acme.test'), 'the pool user is gone')
  t.notOk(
    (await rowsOf(ACME)).some((row) => row.email === 'worker@acme.test'),
    'and its row'
  )
  await t.rejects(cognito.login('worker@acme.test', TEST_PASSWORD), 'the removed member can no longer log in')
})

/**
 * A second instance of the service on the same database, reaching the pool through `slowPool`, with
 * one connection per tenant: a removal holding it across the pool's calls would leave none to the
 * tenant's other writes, which would wait PG_ACQUIRE_TIMEOUT_MS and answer 503 DATABASE_BUSY.
 */
async function slowPoolInstance(t: Test) {
  const pool = await slowPool(cognito.endpoint)
  const endpoint = process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER
  process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = pool.endpoint
  const app = await buildApp({ ...ctx.config, TENANT_MAX_CONNECTIONS: 1, PG_ACQUIRE_TIMEOUT_MS: 1000 })
  t.teardown(async () => {
    pool.release()
    await app.close()
    await pool.close()
  })
  try {
    // The SDK reads the endpoint variable once per client, at its first call.
    await app.userPool!.describe()
  } finally {
    process.env.AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER = endpoint
  }
  return { app, pool }
}

t.test('removing a member while the pool is slow holds no database connection: the tenant keeps writing meanwhile', async (t) => {
  const { app, pool } = await slowPoolInstance(t)
  const invited = await addUser(adminToken, ACME, { email: 'leaver@acme.test', name: 'Leaver', invite: true })
  t.equal(invited.statusCode, 201, invited.body)
  const removal = app.inject({ method: 'DELETE', url: `/users/${invited.json().id}`, headers: bearer(adminToken, ACME) })
  t.ok(await eventually(() => pool.held.length > 0), 'the removal waits on AdminDisableUser')

  const writes = await Promise.all(
    [1, 2, 3].map((n) =>
      app.inject({ method: 'POST', url: '/users', headers: bearer(adminToken, ACME), payload: { email: `busy${n}@acme.test`, name: 'Busy' } })
    )
  )
  t.same(
    writes.map((write) => write.statusCode),
    [201, 201, 201],
    `the tenant's writes succeed while the pool is slow: ${writes.map((write) => write.body).join(' ')}`
  )
  t.equal(pool.held.length, 1, 'the removal was still waiting on the pool')

  pool.release()
  const removed = await removal
  t.equal(removed.statusCode, 204, removed.body)
  t.same(pool.held, ['AdminDisableUser', 'AdminDeleteUser'], 'the pool user was disabled, then deleted')
  t.notOk((await cognito.users()).has('leaver@acme.test'), 'the pool user is gone')
  t.notOk(
    (await rowsOf(ACME)).some((row) => row.email === 'leaver@acme.test'),
    'and its row'
  )
})

t.test('an invitation that records its sub while the member is being removed: that pool user goes too, then the row', async (t) => {
  const { app, pool } = await slowPoolInstance(t)
  // An invitation between AdminCreateUser and recording the sub: its pool user exists, its row is still inviting.
  const created = await cognito.client.send(
    new AdminCreateUserCommand({
      UserPoolId: cognito.userPoolId,
      Username: 'racer@acme.test',
      UserAttributes: [
        { Name: 'email', Value: 'racer@acme.test' },
        { Name: 'custom:tenant_id', Value: ACME }
      ],
      MessageAction: 'SUPPRESS'
    })
  )
  const sub = created.User!.Attributes!.find((attribute) => attribute.Name === 'sub')!.Value!
  const { rows } = await ctx.admin.query(`INSERT INTO acme.users (email, name, status) VALUES ('racer@acme.test', 'Racer', 'inviting') RETURNING id`)

  const removal = app.inject({ method: 'DELETE', url: `/users/${rows[0].id}`, headers: bearer(adminToken, ACME) })
  t.ok(await eventually(() => pool.held.length > 0), 'the removal waits on AdminDisableUser')
  // The invitation's last step commits meanwhile (bounded: a removal holding the row's lock would block it).
  await ctx.admin.query(
    `BEGIN; SET LOCAL lock_timeout = '2s';
     UPDATE acme.users SET sub = '${sub}', status = 'active' WHERE id = '${rows[0].id}'; COMMIT`
  )
  pool.release()
  const removed = await removal
  t.equal(removed.statusCode, 204, removed.body)
  t.same(pool.held, ['AdminDisableUser', 'AdminDeleteUser', 'AdminDisableUser'], 'the pool user the row names now was removed too (already gone)')
  t.notOk((await cognito.users()).has('racer@acme.test'), 'no pool user is left')
  t.notOk(
    (await rowsOf(ACME)).some((row) => row.email === 'racer@acme.test'),
    'and no row'
  )
})

t.test('an invitation while the pool is down: 503, the row stays inviting; repeated once the pool is back, it is finished', async (t) => {
  const invite = () => addUser(operator, GLOBEX, { email: 'patient@globex.test', name: 'Patient', invite: true })
  await cognito.pause()
  const failed = await invite().finally(() => cognito.resume())
  t.equal(failed.statusCode, 503, failed.body)
  t.equal(failed.json().code, 'USER_POOL_UNAVAILABLE')
  t.match(failed.json().message, /recorded as "inviting": repeat it to finish/)
  t.same(await rowsOf(GLOBEX), [{ email: 'patient@globex.test', role: 'member', status: 'inviting', sub: null }], 'the half-done invitation is visible')
  t.notOk((await cognito.users()).has('patient@globex.test'))

  const finished = await invite()
  t.equal(finished.statusCode, 201, finished.body)
  const pooled = (await cognito.users()).get('patient@globex.test')
  t.equal(pooled?.attributes['custom:tenant_id'], GLOBEX)
  t.same(await rowsOf(GLOBEX), [{ email: 'patient@globex.test', role: 'member', status: 'active', sub: pooled?.attributes.sub }])
})

t.test('deleting a tenant removes the pool users of all its members, and only theirs', async (t) => {
  await addUser(operator, GLOBEX, { email: 'hank@globex.test', name: 'Hank', invite: true })
  const response = await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${ACME}`, headers: bearer(operator) })
  t.equal(response.statusCode, 204, response.body)
  const pool = await cognito.users()
  t.same([...pool.keys()].sort(), ['hank@globex.test', 'operator@platform.test', 'patient@globex.test'], 'no pool user stays bound to the deleted tenant')
  const gone = await ctx.admin.query('SELECT 1 FROM public.tenants WHERE id = $1', [ACME])
  t.equal(gone.rowCount, 0)
})

t.test('a tenant deletion while the pool is down stops with 503, the tenant stays deleting, and the repeat finishes', async (t) => {
  await cognito.pause()
  const failed = await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${GLOBEX}`, headers: bearer(operator) }).finally(() => cognito.resume())
  t.equal(failed.statusCode, 503, failed.body)
  t.equal(failed.json().code, 'USER_POOL_UNAVAILABLE')
  t.match(failed.json().message, /stays in status "deleting".*Repeat the DELETE/)
  const { rows } = await ctx.admin.query('SELECT status FROM public.tenants WHERE id = $1', [GLOBEX])
  t.same(rows, [{ status: 'deleting' }])
  t.equal((await rowsOf(GLOBEX)).length, 2, 'its schema, and the list of members, are still there')
  const refused = await ctx.app.inject({ method: 'GET', url: '/users', headers: bearer(operator, GLOBEX) })
  t.equal(refused.json().code, 'TENANT_DELETING', 'and it refuses requests')

  const repeated = await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${GLOBEX}`, headers: bearer(operator) })
  t.equal(repeated.statusCode, 204, repeated.body)
  t.same([...(await cognito.users()).keys()], ['operator@platform.test'], 'every member of the deleted tenants is gone from the pool')
})

t.test('a repeated tenant creation finishes an admin invitation that failed part-way', async (t) => {
  const create = () =>
    ctx.app.inject({
      method: 'POST',
      url: '/auth/tenants',
      headers: bearer(operator),
      payload: { id: 'initech', name: 'Initech', admin: { email: 'bill@initech.test', name: 'Bill' } }
    })
  t.equal((await create()).statusCode, 201)
  // As if AdminCreateUser had answered but the sub was never recorded.
  await ctx.admin.query(`UPDATE initech.users SET status = 'inviting', sub = NULL`)
  const again = await create()
  t.equal(again.statusCode, 201, again.body)
  t.match(again.json(), { admin: { email: 'bill@initech.test', status: 'active', role: 'admin' } })
  t.equal((await cognito.users()).get('bill@initech.test')!.attributes['custom:tenant_id'], 'initech')
  const third = await create()
  t.equal(third.statusCode, 409, 'once finished, the tenant exists')

  // Deleting a tenant whose invitation never recorded a sub still finds its pool user by email.
  await ctx.admin.query(`UPDATE initech.users SET status = 'inviting', sub = NULL`)
  t.equal((await ctx.app.inject({ method: 'DELETE', url: '/auth/tenants/initech', headers: bearer(operator) })).statusCode, 204)
  t.notOk((await cognito.users()).has('bill@initech.test'))
})

t.test('a repeated tenant creation with an admin, for a tenant whose schema predates members, is 409 TENANT_EXISTS', async (t) => {
  const poolBefore = [...(await cognito.users()).keys()].sort()
  // Version 0: no users table; version 1: users without the members' columns.
  for (const [id, version] of [
    ['hooli', 0],
    ['umbrella', 1]
  ] as const) {
    await provisionAt(id, version)
    const response = await ctx.app.inject({
      method: 'POST',
      url: '/auth/tenants',
      headers: bearer(operator),
      payload: { id, name: id, admin: { email: `boss@${id}.test`, name: 'Boss' } }
    })
    t.equal(response.statusCode, 409, `version ${version}: ${response.body}`)
    t.match(response.json(), { code: 'TENANT_EXISTS', message: new RegExp(id) })
    const { rows } = await ctx.admin.query('SELECT schema_version, status FROM public.tenants WHERE id = $1', [id])
    t.same(rows, [{ schema_version: version, status: 'active' }], 'the tenant is left as it was')
  }
  t.same([...(await cognito.users()).keys()].sort(), poolBefore, 'nobody was invited into the pool')
})

t.test('a tenant deletion while an invitation may still be creating its pool user stops there, until that invitation is old', async (t) => {
  const status = async (id: string) => (await ctx.admin.query('SELECT status FROM public.tenants WHERE id = $1', [id])).rows[0]?.status
  const remove = (id: string) => ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${id}`, headers: bearer(operator) })
  for (const id of ['wayne', 'stark']) {
    const created = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(operator), payload: { id, name: id } })
    t.equal(created.statusCode, 201, created.body)
    // An invitation that has written its row and is waiting for AdminCreateUser: no pool user yet.
    await ctx.admin.query(`INSERT INTO ${id}.users (email, name, status) VALUES ($1, 'Fresh', 'inviting')`, [`fresh@${id}.test`])
    const stopped = await remove(id)
    t.equal(stopped.statusCode, 503, stopped.body)
    t.match(stopped.json(), { code: 'USER_POOL_UNAVAILABLE', message: /fresh@.*stays in status "deleting".*Repeat the DELETE/ })
    t.match(stopped.headers['retry-after'], /^[1-9]\d*$/, 'with Retry-After')
    t.equal(await status(id), 'deleting', `${id} stays deleting`)
    t.equal((await rowsOf(id)).length, 1, 'with its list of members')
  }

  // wayne: the invitation never made its pool user. Once the row is older than any call in flight, the DELETE finishes.
  await ctx.admin.query(`UPDATE wayne.users SET updated_at = now() - interval '1 hour'`)
  const finished = await remove('wayne')
  t.equal(finished.statusCode, 204, finished.body)
  t.equal(await status('wayne'), undefined, 'wayne is gone')

  // stark: AdminCreateUser lands after the failed DELETE (and the invitation could not delete it again). The repeat finds it by email.
  await cognito.client.send(
    new AdminCreateUserCommand({
      UserPoolId: cognito.userPoolId,
      Username: 'fresh@stark.test',
      UserAttributes: [
        { Name: 'email', Value: 'fresh@stark.test' },
        { Name: 'custom:tenant_id', Value: 'stark' }
      ],
      MessageAction: 'SUPPRESS'
    })
  )
  const repeated = await remove('stark')
  t.equal(repeated.statusCode, 204, repeated.body)
  t.equal(await status('stark'), undefined, 'stark is gone')
  t.notOk((await cognito.users()).has('fresh@stark.test'), 'and no pool user is left bound to it')
})

t.test('an invitation whose tenant went away meanwhile deletes its pool user, and logs at error level when it cannot', async (t) => {
  const created = await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: bearer(operator), payload: { id: 'tyrell', name: 'Tyrell' } })
  t.equal(created.statusCode, 201, created.body)
  const { rows } = await ctx.admin.query('SELECT id, schema FROM public.tenants WHERE id = $1', ['tyrell'])
  const lines: { level: string; obj: Record<string, unknown>; msg?: string }[] = []
  const log = {
    info: () => undefined,
    warn: () => undefined,
    error: (obj: object, msg?: string) => lines.push({ level: 'error', obj: obj as Record<string, unknown>, msg })
  }
  // A pool whose AdminCreateUser returns while a deletion marks the tenant, and which then cannot delete the user.
  const userPool = {
    invite: async () => {
      await ctx.admin.query(`UPDATE public.tenants SET status = 'deleting' WHERE id = 'tyrell'`)
      return 'sub-of-the-orphan'
    },
    remove: async () => {
      throw new ApiError('USER_POOL_UNAVAILABLE', 'The user pool is not available (delete the user); retry shortly')
    }
  } as unknown as UserPool
  const invited = inviteMember(ctx.admin, rows[0], userPool, { email: 'orphan@tyrell.test', name: 'Orphan' }, log)
  await t.rejects(invited, { code: 'TENANT_DELETING' }, 'the invitation answers that the tenant is being deleted')
  t.equal(lines.length, 1, 'one line')
  t.match(lines[0], {
    level: 'error',
    obj: { sub: 'sub-of-the-orphan', email: 'orphan@tyrell.test', tenant: 'tyrell', err: { code: 'USER_POOL_UNAVAILABLE' } },
    msg: /could not be deleted/
  })
})
