import { randomUUID } from 'node:crypto'
import { STATUS_CODES } from 'node:http'
import type { FastifyInstance, HTTPMethods, RouteOptions } from 'fastify'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { createSigningKey, signToken } from './helpers/issuer.ts'

/**
 * Malformed input at every route (DESIGN §8: zero 5xx): random and hostile headers, tenant ids,
 * tokens, bodies, query strings and path parameters. Every answer must be below 500, and every
 * error must have the one error shape. The routes are enumerated from the service itself.
 */

const SEED = 20_261_126
const RUNS = 2500
const BODY_LIMIT = 64 * 1024
const TENANT = 'fuzz-a'
const OTHER = 'fuzz-b'
/** A tenant the fuzzer may suspend or delete through its admin token. */
const SPARE = 'fuzz-spare'

interface Route {
  method: HTTPMethods
  url: string
  bodyFields: string[]
  queryFields: string[]
}

const routes: Route[] = []

/** Records every route the service registers, with the fields its schemas name. */
function watchRoutes(app: FastifyInstance) {
  app.addHook('onRoute', (route: RouteOptions) => {
    const fields = (schema: unknown) => Object.keys((schema as { properties?: object } | undefined)?.properties ?? {})
    for (const method of [route.method].flat()) {
      routes.push({ method: method as HTTPMethods, url: route.url, bodyFields: fields(route.schema?.body), queryFields: fields(route.schema?.querystring) })
    }
  })
}

let ctx: TestContext
let userId: string
let tokens: Record<string, string>

t.before(async () => {
  ctx = await setupApp(t, { RATE_LIMIT_MAX: '1000000', BODY_LIMIT_BYTES: String(BODY_LIMIT) }, { s3: true, beforeRegister: watchRoutes })
  for (const tenant of [TENANT, OTHER, SPARE]) await createTenant(ctx, tenant)
  const created = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: ctx.auth.tenantUser(TENANT),
    payload: { email: 'ada@fuzz-a.test', name: 'Ada' }
  })
  userId = created.json().id

  const { issuer } = ctx
  const stranger = createSigningKey('stranger')
  const header = { alg: 'RS256', kid: issuer.key.kid, typ: 'JWT' }
  const claims = issuer.claims({ claims: { 'custom:tenant_id': TENANT } })
  tokens = {
    tenant: issuer.token({ claims: { 'custom:tenant_id': TENANT } }),
    other: issuer.token({ claims: { 'custom:tenant_id': OTHER } }),
    admin: issuer.token({ groups: ['admin'] }),
    idToken: issuer.token({ use: 'id', claims: { 'custom:tenant_id': TENANT } }),
    expired: issuer.token({ claims: { 'custom:tenant_id': TENANT }, expiresInSeconds: -3600 }),
    refresh: issuer.token({ claims: { 'custom:tenant_id': TENANT, token_use: 'refresh' } }),
    noTenant: issuer.token({}),
    tenantArray: issuer.token({ claims: { 'custom:tenant_id': [TENANT] } }),
    groupsString: issuer.token({ claims: { 'cognito:groups': 'admin' } }),
    none: signToken({ alg: 'none', typ: 'JWT' }, claims, 'unsigned'),
    hs256: signToken({ alg: 'HS256', kid: issuer.key.kid }, claims, { hmac: issuer.key.pem }),
    strangerKey: signToken({ ...header, kid: 'stranger' }, claims, { rsa: stranger.privateKey }),
    wrongKeySameKid: signToken(header, claims, { rsa: stranger.privateKey }),
    kidObject: signToken({ ...header, kid: { $ne: null } }, claims, { rsa: issuer.key.privateKey }),
    kidTraversal: signToken({ ...header, kid: '../../etc/passwd' }, claims, { rsa: issuer.key.privateKey }),
    payloadString: signToken(header, '"just a string"', { rsa: issuer.key.privateKey }),
    payloadArray: signToken(header, '[1,2,3]', { rsa: issuer.key.privateKey }),
    payloadNotJson: signToken(header, 'not json at all', { rsa: issuer.key.privateKey }),
    headerNotJson: `${Buffer.from('{"alg":').toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.c2ln`,
    protoPayload: signToken(header, `{"__proto__":{"admin":true},"sub":"x","iss":"${issuer.url}","exp":${Math.floor(Date.now() / 1000) + 600}}`, {
      rsa: issuer.key.privateKey
    }),
    hugeClaims: issuer.token({ claims: { 'custom:tenant_id': TENANT, padding: 'x'.repeat(20_000) } })
  }
})

// Header values as they arrive on the wire: latin1 bytes, control characters removed.
const headerText = fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).map((code) => String.fromCharCode(code)), maxLength: 80 })
const hugeText = fc.integer({ min: 1000, max: 20_000 }).map((length) => 'a'.repeat(length))

const tenantIds = fc.oneof(
  fc.constantFrom(
    TENANT,
    OTHER,
    SPARE,
    'no-such-tenant',
    'public',
    'pg_catalog',
    'pg-toast',
    'information_schema',
    'citus',
    'Fuzz-A',
    'fuzz_a',
    'fu',
    `${TENANT},${OTHER}`,
    ` ${TENANT}`
  ),
  headerText,
  hugeText
)

const authorizations = fc.oneof(
  fc
    .constantFrom(
      'tenant',
      'other',
      'admin',
      'idToken',
      'expired',
      'refresh',
      'noTenant',
      'tenantArray',
      'groupsString',
      'none',
      'hs256',
      'strangerKey',
      'wrongKeySameKid',
      'kidObject',
      'kidTraversal',
      'payloadString',
      'payloadArray',
      'payloadNotJson',
      'headerNotJson',
      'protoPayload',
      'hugeClaims'
    )
    .map((name) => () => `Bearer ${tokens[name]}`),
  fc.constantFrom('Bearer', 'Bearer ', 'bearer  x.y.z', 'Basic YWRtaW46YWRtaW4=', 'Bearer a.b', 'Bearer ...', 'Bearer eyJ.eyJ.').map((value) => () => value),
  headerText.map((value) => () => `Bearer ${value}`),
  fc.base64String({ maxLength: 300 }).map((value) => () => `Bearer ${value}.${value}.${value}`),
  fc.constant(() => undefined)
)

const contentTypes = fc.oneof(
  { weight: 6, arbitrary: fc.constant('application/json') },
  fc.constantFrom(
    'application/json',
    'application/json; charset=utf-8',
    'application/json; charset=utf-16',
    'APPLICATION/JSON',
    'application/jsonx',
    'text/plain',
    'text/plain; charset=utf-8',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x',
    'application/octet-stream',
    '',
    ';',
    'application/json; boundary="'
  ),
  headerText,
  fc.constant(undefined)
)

/** Values that are wrong in every way a JSON field can be. */
const fieldValues = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.constantFrom(
    '',
    '\u0000',
    'nul\u0000inside',
    '\ud800',
    '\u202eevil.exe',
    '../../etc/passwd',
    'a@b.c',
    'x@fuzz-a.test',
    "'; DROP TABLE users; --",
    'application/pdf',
    'text/html',
    'image/svg+xml',
    'active',
    'suspended',
    'deleting',
    TENANT,
    'ab',
    '%00',
    '\r\nX-Injected: 1'
  ),
  fc.integer(),
  fc.constantFrom(0, -1, 1, 2 ** 31, 2 ** 53 + 2, 1e308, -1e308, 0.5, 100 * 1024 * 1024 * 1024),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }),
  fc.integer({ min: 300, max: 3000 }).map((length) => 'é'.repeat(length))
)

const POISON = ['__proto__', 'constructor', 'prototype']

/** Text with the characters that break things: NUL and other controls, bidi overrides, lone surrogates, BOM. */
const hostileText = (maxLength: number) =>
  fc.string({
    unit: fc.oneof(
      fc.constantFrom(
        '\u0000',
        '\u0001',
        '\u0008',
        '\u001b',
        '\u007f',
        '\u0085',
        '\u200b',
        '\u202e',
        '\u2028',
        '\ud800',
        '\udfff',
        '\ufeff',
        '\uffff',
        '/',
        '\\',
        '%',
        '"',
        "'"
      ),
      fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 })
    ),
    minLength: 1,
    maxLength
  })

/** Values a field would have in a request that gets through validation, to reach the handlers. */
const PLAUSIBLE: Record<string, fc.Arbitrary<unknown>> = {
  email: fc.tuple(fc.stringMatching(/^[a-z0-9._%+-]{1,20}$/), fc.constantFrom('fuzz-a.test', 'example.com')).map(([local, domain]) => `${local}@${domain}`),
  name: fc.oneof(fc.string({ minLength: 1, maxLength: 30 }), hostileText(30)),
  filename: fc.oneof(fc.string({ minLength: 1, maxLength: 60 }), hostileText(60)),
  contentType: fc.constantFrom('application/pdf', 'image/png', 'text/plain', 'video/mp4', 'application/x-evil'),
  size: fc.integer({ min: 1, max: 2 ** 40 }),
  id: fc.stringMatching(/^[a-z][a-z0-9-]{1,20}[a-z0-9]$/),
  status: fc.constantFrom('active', 'suspended')
}
const valueFor = (field: string) => (PLAUSIBLE[field] ? fc.oneof(PLAUSIBLE[field], fieldValues) : fieldValues)

function bodiesFor(route: Route) {
  const shaped = fc
    .tuple(
      fc.tuple(...route.bodyFields.map((field) => fc.option(valueFor(field), { nil: undefined, freq: 8 }))),
      fc.option(fc.dictionary(fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(...POISON)), fieldValues, { maxKeys: 2 }), { nil: {}, freq: 2 })
    )
    .map(([values, extra]) => JSON.stringify({ ...Object.fromEntries(route.bodyFields.map((field, i) => [field, values[i]])), ...extra }))
  const nesting = fc
    .integer({ min: 100, max: 30_000 })
    .chain((depth) => fc.constantFrom('[', '{"a":').map((open) => open.repeat(depth) + (open === '[' ? ']' : '1}').repeat(depth)))
  return fc.oneof(
    { weight: 6, arbitrary: shaped },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((value) => JSON.stringify(value)) },
    { weight: 2, arbitrary: fc.string({ maxLength: 60 }) },
    { weight: 1, arbitrary: nesting },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        '{"__proto__":{"admin":true}}',
        '{"constructor":{"prototype":{"admin":true}}}',
        '{"email":"a@b.c","name":"x","__proto__":{"isAdmin":true}}',
        '{"email":"a@b.c","email":"b@c.d","name":"dup"}',
        '{',
        '[]',
        'null',
        '"string"',
        '1e999',
        '{"a":1}garbage',
        '\u0000'
      )
    },
    { weight: 1, arbitrary: fc.constant('x'.repeat(BODY_LIMIT + 1)) },
    { weight: 2, arbitrary: fc.constant(undefined) }
  )
}

/** Bodies valid in every field but at most one, which is hostile: the input that reaches the SQL. */
function nearlyValidBodies(route: Route) {
  const fields = route.bodyFields
  if (fields.length === 0) return fc.constant('{}')
  return fc
    .tuple(
      fc.tuple(...fields.map((field) => PLAUSIBLE[field] ?? fieldValues)),
      fc.nat({ max: fields.length - 1 }),
      fc.oneof(fieldValues, hostileText(40)),
      fc.boolean()
    )
    .map(([values, index, hostile, mutate]) =>
      JSON.stringify(Object.fromEntries(fields.map((field, i) => [field, mutate && i === index ? hostile : values[i]])))
    )
}

function queriesFor(route: Route) {
  const key = fc.oneof(fc.constantFrom(...route.queryFields, 'limit', 'cursor', ...POISON, 'a[b]', 'a[]'), fc.string({ maxLength: 10 }))
  const value = fc.oneof(
    fc.string({ maxLength: 30 }),
    fc.constantFrom(
      '0',
      '-1',
      '101',
      '1e3',
      '20.5',
      'NaN',
      '',
      'null',
      '[]',
      'eyJjcmVhdGVkQXQiOiJ4IiwiaWQiOiJ5In0',
      Buffer.from('{"createdAt":"infinity","id":"00000000-0000-0000-0000-000000000000"}').toString('base64url')
    ),
    hugeText
  )
  return fc.oneof(
    fc.array(fc.tuple(key, value), { maxLength: 4 }).map((pairs) => new URLSearchParams(pairs).toString()),
    fc.constantFrom('%', '%zz', '&&&', '=', 'limit=1&limit=2', 'cursor[]=a', '__proto__[admin]=1')
  )
}

const pathValues = fc.oneof(
  fc.constant(() => userId),
  fc.constant(() => randomUUID()),
  fc
    .constantFrom(
      '00000000-0000-0000-0000-000000000000',
      'not-a-uuid',
      '..',
      '%2e%2e%2f',
      '%00',
      '%',
      '%zz',
      SPARE,
      'no-such-tenant',
      'public',
      'pg_catalog',
      'a'.repeat(200)
    )
    .map((value) => () => value),
  fc.string({ minLength: 1, maxLength: 40 }).map((value) => () => encodeURIComponent(value))
)

function urlFor(route: Route, params: (() => string)[], tail: string, query: string) {
  let index = 0
  const path = route.url.replace(/:[A-Za-z_]+/g, () => params[index++ % params.length]()).replace(/\*$/, tail)
  const absolute = path.startsWith('/') ? path : `/${path}`
  return query ? `${absolute}?${query}` : absolute
}

const UPPER_SNAKE = /^[A-Z][A-Z0-9_]*$/

interface Attempt {
  route: Route
  url: string
  headers: Record<string, string | string[]>
  body?: string
}

/**
 * Runs `runs` requests drawn from `attempts` against the service: none may answer 5xx, and every
 * error must have the one shape. Returns the route and status pairs seen.
 */
async function fuzz(t: Test, attempts: fc.Arbitrary<() => Attempt>, runs: number): Promise<Set<string>> {
  const hit = new Set<string>()
  let failure: string | undefined
  t.comment(`fast-check seed ${SEED}, ${runs} runs`)
  await fc
    .assert(
      fc.asyncProperty(attempts, async (make) => {
        const { route, url, headers, body } = make()
        const method = route.method
        const hasBody = body !== undefined && method !== 'GET' && method !== 'HEAD'
        const response = await ctx.app.inject({ method, url, headers, ...(hasBody ? { payload: body } : {}) })
        hit.add(`${method} ${route.url} ${response.statusCode}`)
        const fail = (why: string) => {
          failure = `${why}: ${method} ${url.slice(0, 200)} (route ${route.url}, body ${JSON.stringify(body?.slice(0, 200))}) answered ${response.statusCode} ${response.body.slice(0, 300)}`
          throw new Error(failure)
        }
        if (response.statusCode >= 500) fail('a 5xx')
        if (response.statusCode >= 400 && method !== 'HEAD') {
          let error: Record<string, unknown> = {}
          try {
            error = response.json()
          } catch {
            fail('an error that is not JSON')
          }
          const shaped =
            Object.keys(error).sort().join() === 'code,error,message,statusCode' &&
            error.statusCode === response.statusCode &&
            typeof error.code === 'string' &&
            UPPER_SNAKE.test(error.code) &&
            error.error === STATUS_CODES[response.statusCode] &&
            !String(error.code).startsWith('FST_') &&
            typeof error.message === 'string'
          if (!shaped) fail('not the error shape')
        }
      }),
      { seed: SEED, numRuns: runs, endOnFailure: true }
    )
    .catch((error: Error) => {
      t.fail(`fast-check seed ${SEED}: ${failure ?? error.message.slice(0, 2000)}`)
    })
  t.comment(`answers seen: ${[...new Set([...hit].map((entry) => entry.split(' ')[2]))].sort().join(', ')}`)
  return hit
}

const extraHeaders = fc.dictionary(
  fc.constantFrom('x-request-id', 'x-forwarded-for', 'origin', 'accept', 'accept-encoding', 'cookie', 'x-custom'),
  headerText,
  { maxKeys: 3 }
)
const tails = fc.oneof(
  fc.constantFrom('', 'index.html', '../package.json', '..%2f..%2fpackage.json', 'swagger-ui.css', '%00'),
  fc.string({ maxLength: 20 }).map(encodeURIComponent)
)

t.test(`at the gates: hostile headers, tenant ids and tokens with malformed input, at every route`, async (t) => {
  t.ok(routes.length >= 20, `routes enumerated from the service (${routes.length})`)
  const attempts = fc.constantFrom(...routes).chain((route) =>
    fc
      .record({
        tenant: fc.option(tenantIds, { nil: undefined, freq: 6 }),
        tenantTwice: fc.boolean(),
        authorization: authorizations,
        contentType: contentTypes,
        body: bodiesFor(route),
        query: queriesFor(route),
        params: fc.array(pathValues, { minLength: 1, maxLength: 3 }),
        tail: tails,
        extra: extraHeaders
      })
      .map((input) => () => {
        const headers: Record<string, string | string[]> = { ...input.extra }
        if (input.tenant !== undefined) headers['x-tenant-id'] = input.tenantTwice ? [input.tenant, OTHER] : input.tenant
        const authorization = input.authorization()
        if (authorization !== undefined) headers.authorization = authorization
        if (input.contentType !== undefined) headers['content-type'] = input.contentType
        return { route, url: urlFor(route, input.params, input.tail, input.query), headers, body: input.body }
      })
  )
  const hit = await fuzz(t, attempts, RUNS)
  const covered = new Set([...hit].map((entry) => entry.split(' ').slice(0, 2).join(' ')))
  t.same(
    routes.filter((route) => !covered.has(`${route.method} ${route.url}`)).map((route) => `${route.method} ${route.url}`),
    [],
    'every route was exercised'
  )
})

t.test('past the gates: a legitimate caller sending malformed bodies, queries and parameters', async (t) => {
  // Routes that take input beyond the headers; the caller is one they accept, so the input reaches
  // validation, the handlers and the database.
  const targets = routes.filter((route) => route.bodyFields.length > 0 || route.queryFields.length > 0 || route.url.includes(':'))
  const attempts = fc.constantFrom(...targets).chain((route) =>
    fc
      .record({
        admin: fc.boolean(),
        contentType: fc.oneof({ weight: 8, arbitrary: fc.constant('application/json') }, contentTypes),
        body: fc.oneof({ weight: 3, arbitrary: nearlyValidBodies(route) }, bodiesFor(route)),
        query: fc.oneof(fc.constant(''), queriesFor(route)),
        params: fc.array(pathValues, { minLength: 1, maxLength: 3 }),
        extra: extraHeaders
      })
      .map((input) => () => {
        const caller = route.url.startsWith('/auth') || input.admin ? { ...ctx.auth.admin(), 'x-tenant-id': TENANT } : ctx.auth.tenantUser(TENANT)
        const headers: Record<string, string | string[]> = { ...input.extra, ...caller }
        if (input.contentType !== undefined) headers['content-type'] = input.contentType
        return { route, url: urlFor(route, input.params, '', input.query), headers, body: input.body }
      })
  )
  const hit = await fuzz(t, attempts, RUNS)
  const reached = [...hit].filter((entry) => /\s2\d\d$/.test(entry))
  t.ok(reached.length >= targets.length / 2, `the handlers were reached (${reached.length} route and 2xx pairs)`)
})

t.test('an oversized body is 413 BODY_TOO_LARGE on every route that takes one', async (t) => {
  const oversized = JSON.stringify({ email: 'big@fuzz-a.test', name: 'x'.repeat(BODY_LIMIT) })
  for (const route of routes.filter((candidate) => candidate.bodyFields.length > 0)) {
    const headers = route.url.startsWith('/auth') ? ctx.auth.admin() : ctx.auth.tenantUser(TENANT)
    const url = urlFor(route, [() => (route.url.startsWith('/auth') ? SPARE : userId)], '', '')
    const response = await ctx.app.inject({ method: route.method, url, headers: { ...headers, 'content-type': 'application/json' }, payload: oversized })
    t.equal(response.statusCode, 413, `${route.method} ${route.url}`)
    t.same(response.json(), { statusCode: 413, code: 'BODY_TOO_LARGE', error: 'Payload Too Large', message: response.json().message })
  }
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "${TENANT}".users WHERE email = 'big@fuzz-a.test'`)
  t.equal(rows[0].count, 0, 'nothing was written')
})

t.test('prototype-polluting bodies change nothing for the process', async (t) => {
  for (const payload of ['{"__proto__":{"polluted":true}}', '{"constructor":{"prototype":{"polluted":true}}}']) {
    await ctx.app.inject({ method: 'POST', url: '/users', headers: { ...ctx.auth.tenantUser(TENANT), 'content-type': 'application/json' }, payload })
    await ctx.app.inject({ method: 'POST', url: '/auth/tenants', headers: { ...ctx.auth.admin(), 'content-type': 'application/json' }, payload })
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype is untouched')
})
