import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { tracingConfigured } from '../lib/telemetry/index.ts'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { startOtlpReceiver, type ReceivedSpan } from './helpers/otlp.ts'
import { redisAnswers } from './helpers/redis.ts'
import { PROJECT_ROOT, serverEnv, startServer } from './helpers/server.ts'

const REDIS_URL = 'redis://127.0.0.1:6379'
const TENANT = 'traced-co'
const SERVER = 2
const CLIENT = 3
const RECORDER = path.join(PROJECT_ROOT, 'test/fixtures/loaded-modules/record.mjs')

const hex = (bytes: number) => randomBytes(bytes).toString('hex')

/** A W3C trace context of a caller: a trace id and the caller's span id, sampled. */
function callerContext() {
  const traceId = hex(16)
  const spanId = hex(8)
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` }
}

/**
 * A module of OpenTelemetry: the SDK, exporters, instrumentations, @fastify/otel, the loader hook.
 * Not the API alone (@opentelemetry/api): prom-client loads it with its default metrics, for
 * exemplars, and with no SDK registered it is a set of no-op stubs.
 */
const OF_OPENTELEMETRY = /@opentelemetry[\\/](?!api[\\/])|@fastify[\\/]otel|import-in-the-middle|require-in-the-middle/

/** Runs the service with `env`, sends it one tenant request, stops it, and answers every module it loaded. */
async function modulesLoaded(t: Test, ctx: TestContext, env: Record<string, string>): Promise<string[]> {
  const dir = await mkdtemp(path.join(tmpdir(), 'loaded-modules-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'modules.json')
  const server = await startServer(serverEnv(ctx, { ...env, NODE_OPTIONS: `--import=${RECORDER}`, LOADED_MODULES_FILE: file }))
  t.teardown(() => server.kill())
  const response = await fetch(`${server.url}/users`, { headers: ctx.auth.tenantUser(TENANT) })
  t.equal(response.status, 200, 'the service answers')
  server.child.kill('SIGTERM')
  t.match(await server.exited, { code: 0 }, 'and stops cleanly')
  return JSON.parse(await readFile(file, 'utf8')) as string[]
}

t.test('tracing is configured by the standard variables, and off without an endpoint', async (t) => {
  t.notOk(tracingConfigured({}), 'nothing set: off')
  t.notOk(tracingConfigured({ OTEL_SERVICE_NAME: 'x', OTEL_TRACES_SAMPLER: 'always_on' }), 'no endpoint: off')
  t.ok(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), 'an endpoint for every signal')
  t.ok(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }), 'an endpoint for traces')
  t.notOk(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' }), 'a blank endpoint is none')
  t.notOk(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'TRUE' }), 'OTEL_SDK_DISABLED=true wins')
  t.ok(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'false' }), 'OTEL_SDK_DISABLED=false does not')
  t.notOk(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }), 'OTEL_TRACES_EXPORTER=none wins')
})

t.test('a traced service: server spans with the tenant, continuing the caller trace, with pg, S3 and Redis spans beneath', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, TENANT)
  const receiver = await startOtlpReceiver()
  t.teardown(() => receiver.close())
  const redis = await redisAnswers(REDIS_URL)
  const server = await startServer(
    serverEnv(ctx, {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      // Nothing is exported before shutdown: every span below arrives through the flush on close.
      OTEL_BSP_SCHEDULE_DELAY: '600000',
      ...(redis ? { REDIS_URL, RATE_LIMIT_REDIS_PREFIX: `tracing-test-${hex(4)}:` } : {})
    })
  )
  t.teardown(() => server.kill())
  const user = ctx.auth.tenantUser(TENANT)
  const send = (url: string, caller: ReturnType<typeof callerContext>, init: RequestInit = {}, headers: Record<string, string> = user) =>
    fetch(`${server.url}${url}`, {
      ...init,
      headers: { ...headers, traceparent: caller.traceparent, ...(init.body ? { 'content-type': 'application/json' } : {}) }
    })

  // First, while the service has no read lane open: concurrent reads wait for the first lane,
  // and are called back from the turn of the request that opened it.
  const burst = Array.from({ length: 20 }, callerContext)
  const statuses = await Promise.all(burst.map((caller) => send('/users', caller).then((response) => response.status)))
  t.same(new Set(statuses), new Set([200]), 'the concurrent reads succeed')

  const read = callerContext()
  t.equal((await send('/users', read)).status, 200)
  const write = callerContext()
  t.equal((await send('/users', write, { method: 'POST', body: JSON.stringify({ email: 'ada@example.com', name: 'Ada' }) })).status, 201)

  const create = callerContext()
  const created = await send('/files', create, { method: 'POST', body: JSON.stringify({ filename: 'notes.txt', contentType: 'text/plain', size: 5 }) })
  t.equal(created.status, 201)
  const answer = (await created.json()) as { file: { id: string }; upload: { method: string; url: string; headers: Record<string, string> } }
  t.equal((await fetch(answer.upload.url, { method: answer.upload.method, headers: answer.upload.headers, body: 'hello' })).status, 200)
  const complete = callerContext()
  t.equal((await send(`/files/${answer.file.id}/complete`, complete, { method: 'POST' })).status, 200)

  const admin = callerContext()
  t.equal((await send('/auth/tenants', admin, {}, ctx.auth.admin())).status, 200)
  // Readiness asks S3 for the bucket: no span of it either, though nothing is its parent.
  const probe = callerContext()
  t.equal((await send('/health/ready', probe, {}, {})).status, 200)
  // A caller that did not sample its trace: the service follows it (parentbased_always_on).
  const unsampled = callerContext()
  t.equal((await send('/users', { ...unsampled, traceparent: unsampled.traceparent.replace(/-01$/, '-00') })).status, 200)

  server.child.kill('SIGTERM')
  t.match(await server.exited, { code: 0 }, 'the service stops cleanly')
  const spans = await receiver.until((received) => received.some((span) => span.traceId === admin.traceId))
  t.same(receiver.refused, [], 'the exporter sent only OTLP/HTTP JSON traces')

  const traceOf = (caller: ReturnType<typeof callerContext>) => spans.filter((span) => span.traceId === caller.traceId)
  /** The one server span of a request, continuing the caller's trace. */
  const serverSpan = (caller: ReturnType<typeof callerContext>, name: string) => {
    const found = traceOf(caller).filter((span) => span.kind === SERVER)
    t.equal(found.length, 1, `${name}: one server span`)
    const span = found[0] as ReceivedSpan
    t.equal(span?.parentSpanId, caller.spanId, `${name}: its parent is the caller's span (traceparent)`)
    t.equal(span?.name, name)
    t.equal(span?.resource['service.name'], 'tenant-service', 'the default service name')
    return span
  }
  const childrenOf = (parent: ReceivedSpan, match: (span: ReceivedSpan) => boolean) =>
    spans.filter((span) => span.traceId === parent.traceId && span.parentSpanId === parent.spanId && match(span))
  const query = (text: RegExp) => (span: ReceivedSpan) =>
    span.kind === CLIENT && span.attributes['db.system.name'] === 'postgresql' && text.test(String(span.attributes['db.query.text']))

  const readSpan = serverSpan(read, 'GET /users')
  t.match(readSpan.attributes, {
    'tenant.id': TENANT,
    'http.request.method': 'GET',
    'http.route': '/users',
    'url.path': '/users',
    'http.response.status_code': 200
  })
  const tenantQueries = childrenOf(readSpan, query(/FROM users/))
  t.equal(tenantQueries.length, 1, 'the tenant-scoped read has its pg span, a child of the server span')
  t.match(tenantQueries[0]?.attributes, { 'db.namespace': ctx.database.name, 'server.address': '127.0.0.1' })
  t.notMatch(String(tenantQueries[0]?.attributes['db.query.text']), /set_config/, 'the tenant context rides the flight unseen: the span names the query')

  for (const caller of burst) {
    const span = serverSpan(caller, 'GET /users')
    t.equal(childrenOf(span, query(/FROM users/)).length, 1, 'each concurrent read has its own query span, in its own trace')
  }

  const writeSpan = serverSpan(write, 'POST /users')
  t.match(writeSpan.attributes, { 'tenant.id': TENANT, 'http.response.status_code': 201 })
  t.equal(childrenOf(writeSpan, query(/^INSERT INTO users/)).length, 1, 'the tenant-scoped insert')
  t.equal(childrenOf(writeSpan, query(/^COMMIT$/)).length, 1, 'and its commit')

  const completeSpan = serverSpan(complete, 'POST /files/:id/complete')
  t.match(completeSpan.attributes, { 'tenant.id': TENANT, 'url.path': `/files/${answer.file.id}/complete`, 'http.response.status_code': 200 })
  const s3 = childrenOf(completeSpan, (span) => span.attributes['rpc.system'] === 'aws-api')
  // The staging object is checked, then copied to the file's key.
  t.match(
    s3.find((span) => span.name === 'S3.HeadObject'),
    { kind: CLIENT, attributes: { 'rpc.service': 'S3', 'rpc.method': 'HeadObject', 'aws.s3.bucket': ctx.config.S3_BUCKET } }
  )
  t.ok(
    s3.some((span) => span.name === 'S3.CopyObject'),
    'the copy to the file key is traced'
  )
  t.equal(childrenOf(completeSpan, query(/^UPDATE files SET status = 'uploaded'/)).length, 1, 'the file is marked uploaded in the tenant schema')
  t.equal(childrenOf(serverSpan(create, 'POST /files'), query(/^INSERT INTO files/)).length, 1, 'the upload is recorded')

  const adminSpan = serverSpan(admin, 'GET /auth/tenants')
  t.notOk('tenant.id' in adminSpan.attributes, 'a request naming no tenant has no tenant.id')
  t.same(traceOf(probe), [], 'probes are not traced')
  t.same(traceOf(unsampled), [], "a caller's decision not to sample is followed")
  t.same(
    spans.filter((span) => span.parentSpanId === '').map((span) => span.name),
    [],
    'traces start at requests only: every span has a parent (the caller, or the request)'
  )

  if (redis) {
    for (const [caller, name] of [
      [read, 'GET /users'],
      [write, 'POST /users']
    ] as const) {
      const commands = childrenOf(serverSpan(caller, name), (span) => span.attributes['db.system.name'] === 'redis')
      t.ok(commands.length >= 1, `${name}: the rate limiter's Redis commands are spans of the request`)
      t.match(commands[0]?.attributes, { 'server.address': '127.0.0.1', 'server.port': 6379 })
    }
  } else {
    t.comment(`no Redis answers at ${REDIS_URL}: the Redis spans are not checked`)
  }
})

t.test('without an OTLP endpoint, no module of OpenTelemetry is loaded', async (t) => {
  const ctx = await setupApp(t, {}, { s3: true })
  await createTenant(ctx, TENANT)
  const off = await modulesLoaded(t, ctx, { OTEL_SERVICE_NAME: 'set-but-no-endpoint' })
  t.ok(
    off.some((module) => /node_modules[\\/]pg[\\/]/.test(module)),
    'the record holds the modules the service loads (pg)'
  )
  t.same(
    off.filter((module) => OF_OPENTELEMETRY.test(module)),
    [],
    'none of OpenTelemetry'
  )
  const disabled = await modulesLoaded(t, ctx, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9/', OTEL_SDK_DISABLED: 'true' })
  t.same(
    disabled.filter((module) => OF_OPENTELEMETRY.test(module)),
    [],
    'nor with OTEL_SDK_DISABLED=true'
  )

  // The same record, with an endpoint: the check above would see OpenTelemetry if it were loaded.
  const on = await modulesLoaded(t, ctx, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9/' })
  t.ok(
    on.some((module) => /@opentelemetry[\\/]sdk-node/.test(module)),
    'with an endpoint, the SDK is loaded'
  )
})
