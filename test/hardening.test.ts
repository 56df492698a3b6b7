import net from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { corsOptions } from '../plugins/external/cors.ts'
import { durationMs, loadConfig, trustProxy } from '../schemas/env.ts'
import { configProblems, createTenant, setupApp } from './helpers/app.ts'

/**
 * HTTP hardening: security headers that Swagger UI still works under, CORS closed unless
 * configured, timeouts that disconnect slow clients, bounded headers, and Node's own refusals in
 * the one error shape.
 */

const TENANT = 'hard-co'

t.test('configuration: durations, origins, proxies and the shutdown delay are checked at start', async (t) => {
  t.equal(durationMs('1 minute'), 60_000)
  t.equal(durationMs('30s'), 30_000)
  t.equal(durationMs('1500'), 1500, 'a bare number is milliseconds')
  t.equal(durationMs('1.5h'), 5_400_000)
  t.equal(loadConfig({}).RATE_LIMIT_WINDOW, '1 minute', 'one minute by default')
  t.equal(loadConfig({}).RATE_LIMIT_MAX, 1000, '1000 requests by default')
  for (const bad of ['soon', '1 fortnight', '-5s', '0']) {
    t.match(configProblems({ RATE_LIMIT_WINDOW: bad }), [/^RATE_LIMIT_WINDOW: /], `RATE_LIMIT_WINDOW=${bad}`)
  }
  t.match(configProblems({ CORS_ORIGINS: 'https://app.example.com/path' }), [/^CORS_ORIGINS: .*"https:\/\/app.example.com\/path"/])
  t.match(configProblems({ CORS_ORIGINS: 'app.example.com' }), [/^CORS_ORIGINS: /])
  t.same(configProblems({ CORS_ORIGINS: 'https://app.example.com, http://localhost:5173' }), [])
  t.match(configProblems({ TRUST_PROXY: '10.0.0.0/33' }), [/^TRUST_PROXY: /])
  t.match(configProblems({ TRUST_PROXY: 'loadbalancer' }), [/^TRUST_PROXY: /])
  t.same(trustProxy(loadConfig({ TRUST_PROXY: '10.0.0.0/8, 192.168.1.1' })), ['10.0.0.0/8', '192.168.1.1'])
  t.equal(trustProxy(loadConfig({})), false, 'no proxy is believed by default')
  t.match(configProblems({ REDIS_URL: 'http://cache:6379' }), [/^REDIS_URL: /])
  t.match(configProblems({ SHUTDOWN_DELAY_MS: '30000', SHUTDOWN_GRACE_MS: '25000' }), [/^SHUTDOWN_DELAY_MS: must be shorter than SHUTDOWN_GRACE_MS/])
  t.same(configProblems({ SHUTDOWN_DELAY_MS: '5000', SHUTDOWN_GRACE_MS: '25000' }), [])
})

t.test('security headers on every answer, errors included', async (t) => {
  const ctx = await setupApp(t)
  await createTenant(ctx, TENANT)
  for (const [label, request] of [
    ['a probe', { method: 'GET' as const, url: '/health/live' }],
    ['a tenant route', { method: 'GET' as const, url: '/users', headers: ctx.auth.tenantUser(TENANT) }],
    ['a 401', { method: 'GET' as const, url: '/users', headers: { 'x-tenant-id': TENANT } }],
    ['a 404', { method: 'GET' as const, url: '/nowhere' }]
  ] as const) {
    const response = await ctx.app.inject(request)
    t.equal(
      response.headers['content-security-policy'],
      "default-src 'none';frame-ancestors 'none'",
      `${label}: a JSON answer opened as a document may load nothing and be framed by nobody`
    )
    t.equal(response.headers['x-content-type-options'], 'nosniff')
    t.equal(response.headers['x-frame-options'], 'DENY')
    t.match(response.headers['strict-transport-security'], /max-age=\d+/)
    t.notOk(response.headers['referrer-policy'], `${label}: a JSON answer makes no requests to send a referrer with`)
    t.notOk(response.headers['cross-origin-resource-policy'], `${label}: nothing an origin could load without a token`)
    t.notOk(response.headers['x-powered-by'])
    t.notOk(response.headers['x-xss-protection'], `${label}: headers that only matter to HTML documents stay on the docs page`)
  }
  let docs = await ctx.app.inject({ method: 'GET', url: '/docs' })
  for (let hops = 0; hops < 3 && docs.statusCode >= 300 && docs.statusCode < 400; hops++) {
    docs = await ctx.app.inject({ method: 'GET', url: new URL(String(docs.headers.location), 'http://service/docs').pathname })
  }
  t.equal(docs.statusCode, 200, 'the docs page is served')
  const csp = String(docs.headers['content-security-policy'])
  t.match(csp, /default-src 'self'/, 'the docs page has a policy of its own: this origin only')
  t.match(csp, /script-src 'self'(;|$)/, 'scripts from this origin only, never inline')
  t.match(csp, /frame-ancestors 'none'/)
  t.match(csp, /object-src 'none'/)
  t.equal(docs.headers['cross-origin-opener-policy'], 'same-origin', "the HTML page carries helmet's whole set")
  t.equal(docs.headers['x-frame-options'], 'DENY')
  t.equal(docs.headers['x-content-type-options'], 'nosniff')
  t.equal(docs.headers['referrer-policy'], 'no-referrer')
  t.equal(docs.headers['cross-origin-resource-policy'], 'same-origin')
  const scripts = [...docs.body.matchAll(/<script[^>]*>([\s\S]*?)<\/script>/g)]
  t.ok(
    scripts.length > 0 && scripts.every((match) => /src="/.test(match[0]) && match[1].trim() === ''),
    'its scripts are files, which the policy allows (test/docs-browser.test.ts renders it)'
  )
})

t.test('CORS: any origin outside production unless configured, exactly the configured ones, none in production', async (t) => {
  const preflight = (app: Awaited<ReturnType<typeof setupApp>>['app'], origin: string) =>
    app.inject({
      method: 'OPTIONS',
      url: '/users',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, x-tenant-id' }
    })

  const open = await setupApp(t)
  const anyOrigin = await preflight(open.app, 'https://anything.example')
  t.equal(anyOrigin.statusCode, 204, 'preflight answered')
  t.equal(anyOrigin.headers['access-control-allow-origin'], '*')
  t.match(anyOrigin.headers['access-control-allow-headers'], /authorization.*content-type.*x-tenant-id/)
  t.match(anyOrigin.headers['access-control-allow-methods'], /PATCH/)
  t.notOk(anyOrigin.headers['access-control-allow-credentials'], 'credentials are never allowed: tokens travel in a header')
  const simple = await open.app.inject({ method: 'GET', url: '/health/live', headers: { origin: 'https://anything.example' } })
  t.match(simple.headers['access-control-expose-headers'], /retry-after.*x-ratelimit-remaining/, 'clients can read Retry-After and the rate-limit headers')

  const listed = await setupApp(t, { CORS_ORIGINS: 'https://app.example.com,http://localhost:5173' })
  const allowed = await preflight(listed.app, 'https://app.example.com')
  t.equal(allowed.headers['access-control-allow-origin'], 'https://app.example.com', 'a listed origin is echoed')
  t.match(allowed.headers.vary, /Origin/, 'and caches are told the answer depends on it')
  const refused = await preflight(listed.app, 'https://evil.example')
  t.notOk(refused.headers['access-control-allow-origin'], 'an origin not listed gets no CORS grant')

  const production = await setupApp(t, { NODE_ENV: 'production' }, { s3: true })
  t.equal(corsOptions(production.config), null, 'production without CORS_ORIGINS registers no CORS at all')
  const closed = await production.app.inject({ method: 'GET', url: '/health/live', headers: { origin: 'https://app.example.com' } })
  t.notOk(closed.headers['access-control-allow-origin'], 'no CORS headers')
  const closedPreflight = await preflight(production.app, 'https://app.example.com')
  t.equal(closedPreflight.statusCode, 404)
  t.equal(closedPreflight.json().code, 'ROUTE_NOT_FOUND')
})

/** A raw connection to `port`, collecting what the server sends until it closes the connection. */
async function connect(port: number) {
  const socket = net.connect(port, '127.0.0.1')
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  let received = ''
  let closed = false
  socket.setEncoding('utf8').on('data', (chunk: string) => (received += chunk))
  socket.on('error', () => undefined)
  const done = new Promise<void>((resolve) => socket.once('close', () => resolve()))
  void done.then(() => (closed = true))
  return {
    socket,
    done,
    get closed() {
      return closed
    },
    get received() {
      return received
    }
  }
}

/** The JSON body of the first response in `raw` (HTTP/1.1 with Content-Length). */
const bodyOf = (raw: string) => JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>

t.test('slow and malformed clients are cut off, answered in the error shape', async (t) => {
  const ctx = await setupApp(t, { REQUEST_TIMEOUT_MS: '1000', KEEP_ALIVE_TIMEOUT_MS: '500' })
  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = ctx.app.server.address() as AddressInfo

  // Slowloris: headers one byte at a time, never finished. We would trickle for a minute.
  const slow = await connect(port)
  const header = `GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ${'a'.repeat(300)}`
  let sent = 0
  while (!slow.closed && sent < header.length) {
    slow.socket.write(header[sent++])
    await sleep(200)
  }
  t.ok(slow.closed, `the server hung up on a client sending its headers too slowly (after ${sent} of ${header.length} bytes)`)
  t.match(slow.received, /^HTTP\/1\.1 408 /, 'with 408')
  t.same(bodyOf(slow.received), { statusCode: 408, code: 'REQUEST_TIMEOUT', error: 'Request Timeout', message: 'The request was not received in time' })

  // A body trickled after complete headers: the whole request must arrive within REQUEST_TIMEOUT_MS.
  const trickle = await connect(port)
  trickle.socket.write(`POST /auth/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{`)
  for (let i = 0; i < 300 && !trickle.closed; i++) {
    trickle.socket.write(' ')
    await sleep(200)
  }
  t.ok(trickle.closed, 'a body sent too slowly is cut off too')

  // An idle keep-alive connection is closed after KEEP_ALIVE_TIMEOUT_MS.
  const idle = await connect(port)
  idle.socket.write('GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
  for (let i = 0; i < 300 && !idle.closed; i++) await sleep(100)
  t.ok(idle.closed, 'an idle keep-alive connection is closed by the server')
  t.match(idle.received, /^HTTP\/1\.1 200 /, 'after its request was answered')

  // Headers past 16 KiB: refused by Node's parser, answered in the error shape.
  const big = await connect(port)
  big.socket.write(`GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'b'.repeat(20 * 1024)}\r\n\r\n`)
  await big.done
  t.match(big.received, /^HTTP\/1\.1 431 /)
  t.same(bodyOf(big.received), {
    statusCode: 431,
    code: 'HEADERS_TOO_LARGE',
    error: 'Request Header Fields Too Large',
    message: 'The request headers exceed 16384 bytes'
  })

  // Not HTTP at all.
  const garbage = await connect(port)
  garbage.socket.write('HELLO THERE\r\n\r\n')
  await garbage.done
  t.match(garbage.received, /^HTTP\/1\.1 400 /)
  t.same(bodyOf(garbage.received), { statusCode: 400, code: 'BAD_REQUEST', error: 'Bad Request', message: 'The request is not valid HTTP' })

  const healthy = await ctx.app.inject({ method: 'GET', url: '/health/live' })
  t.equal(healthy.statusCode, 200, 'and the service carries on')
})

t.test('a client-chosen request id is kept only when short and plain', async (t) => {
  const lines: string[] = []
  const ctx = await setupApp(t, { LOG_LEVEL: 'info' }, { logStream: { write: (line: string) => void lines.push(line) } })
  await ctx.app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': 'trace-1234.abc:9' } })
  const hostile = `evil\u001b[31m\nforged log line ${'x'.repeat(300)}`
  await ctx.app.inject({ method: 'GET', url: '/health/live', headers: { 'x-request-id': hostile } })
  const ids = lines.map((line) => (JSON.parse(line) as { reqId?: string }).reqId).filter(Boolean)
  t.ok(ids.includes('trace-1234.abc:9'), 'a plain id is used, so logs can be correlated across services')
  t.notOk(
    ids.some((id) => id!.includes('evil')),
    'a hostile one is replaced'
  )
})
