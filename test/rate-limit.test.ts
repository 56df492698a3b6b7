import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { clientAddressKey } from '../lib/rate-limit.ts'
import { freePort } from '../lib/embedded/postgres.ts'
import { buildApp, createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { ownRedis, REDIS_SERVER, redisAnswers } from './helpers/redis.ts'
import { eventually } from './helpers/wait.ts'

const ACME = 'acme-corp'
const GLOBEX = 'globex'
const INITECH = 'initech'
const SHARED_REDIS = 'redis://127.0.0.1:6379'

const ERROR_SHAPE = { statusCode: 429, code: 'RATE_LIMITED', error: 'Too Many Requests', message: String }

async function tenants(ctx: TestContext) {
  for (const tenant of [ACME, GLOBEX, INITECH]) await createTenant(ctx, tenant)
}

const listUsers = (app: FastifyInstance, headers: Record<string, string>) => app.inject({ method: 'GET', url: '/users', headers })

/** Sends `count` requests one after another and tallies the statuses. */
async function statuses(send: () => Promise<{ statusCode: number }>, count: number): Promise<Record<number, number>> {
  const tally: Record<number, number> = {}
  for (let i = 0; i < count; i++) {
    const { statusCode } = await send()
    tally[statusCode] = (tally[statusCode] ?? 0) + 1
  }
  return tally
}

t.test('past RATE_LIMIT_MAX a tenant gets 429 RATE_LIMITED with Retry-After and the x-ratelimit headers', async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW: '1 minute', RATE_LIMIT_CALLER_SHARE: '1' })
  await tenants(ctx)
  const remaining: string[] = []
  for (let i = 0; i < 5; i++) {
    const response = await listUsers(ctx.app, ctx.auth.tenantUser(ACME))
    t.equal(response.statusCode, 200)
    t.equal(response.headers['x-ratelimit-limit'], '5')
    remaining.push(String(response.headers['x-ratelimit-remaining']))
  }
  t.same(remaining, ['4', '3', '2', '1', '0'], 'every answer says how much is left')

  const limited = await listUsers(ctx.app, ctx.auth.tenantUser(ACME))
  t.equal(limited.statusCode, 429)
  t.match(limited.json(), ERROR_SHAPE)
  t.same(Object.keys(limited.json()).sort(), ['code', 'error', 'message', 'statusCode'], 'the standard error body, nothing else')
  t.match(limited.json().message, /at most 5 per 1 minute/)
  const retryAfter = Number(limited.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After is the seconds left in the window (${retryAfter})`)
  t.equal(limited.headers['x-ratelimit-limit'], '5')
  t.equal(limited.headers['x-ratelimit-remaining'], '0')
  t.match(limited.headers['x-ratelimit-reset'], /^\d+$/)

  const write = await ctx.app.inject({ method: 'POST', url: '/users', headers: ctx.auth.tenantUser(ACME), payload: { email: 'late@acme.test', name: 'Late' } })
  t.equal(write.statusCode, 429, 'the budget covers every route of the tenant')
  const { rows } = await ctx.admin.query(`SELECT count(*)::int AS count FROM "${ACME}".users`)
  t.equal(rows[0].count, 0, 'a refused write wrote nothing')

  t.equal((await listUsers(ctx.app, ctx.auth.tenantUser(GLOBEX))).statusCode, 200, 'another tenant keeps its own budget')
  const admin = await listUsers(ctx.app, { ...ctx.auth.admin(), 'x-tenant-id': ACME })
  t.equal(admin.statusCode, 200, "an admin acting on the tenant spends a budget of its own, not the tenant's")
})

t.test('the key is the verified tenant: naming another tenant in X-Tenant-ID spends nothing of its budget', async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '5' })
  await tenants(ctx)
  // A user of acme-corp forges the header of globex: refused by the guard, and counted against its
  // address (one of its own here), never against globex.
  const forged = { ...ctx.auth.tenantUser(ACME), 'x-tenant-id': GLOBEX }
  const forgedFrom = (remoteAddress: string) => ctx.app.inject({ method: 'GET', url: '/users', headers: forged, remoteAddress })
  t.same(await statuses(() => forgedFrom('203.0.113.50'), 20), { 403: 5, 429: 15 }, 'forged requests are 403 TENANT_MISMATCH, then their address is limited')
  const own = await listUsers(ctx.app, ctx.auth.tenantUser(GLOBEX))
  t.equal(own.statusCode, 200)
  t.equal(own.headers['x-ratelimit-remaining'], '4', "globex's budget is intact")
  const acme = await listUsers(ctx.app, ctx.auth.tenantUser(ACME))
  t.equal(acme.headers['x-ratelimit-remaining'], '4', "and so is acme's: a refused request spends no tenant's budget")

  // Requests without a token are counted per client address, whatever tenant they name.
  const anonymous = (tenant: string) => ctx.app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': tenant } })
  t.same(await statuses(() => anonymous(INITECH), 3), { 200: 3 })
  t.same(await statuses(() => anonymous(ACME), 2), { 200: 2 })
  const anonymousLimited = await anonymous(GLOBEX)
  t.equal(anonymousLimited.statusCode, 429, 'the address is limited, across tenant names')
  t.match(anonymousLimited.json().message, /from this address/)
  const initech = await listUsers(ctx.app, ctx.auth.tenantUser(INITECH))
  t.equal(initech.statusCode, 200, "the anonymous flood spent none of initech's own budget")
  t.equal(initech.headers['x-ratelimit-remaining'], '4')

  for (const url of ['/health/live', '/health/ready', '/metrics']) {
    const headers = url === '/metrics' ? ctx.auth.admin() : {}
    const statusesSeen = await statuses(() => ctx.app.inject({ method: 'GET', url, headers }), 10)
    t.same(statusesSeen, { 200: 10 }, `${url} is never limited`)
    const response = await ctx.app.inject({ method: 'GET', url, headers })
    t.notOk(response.headers['x-ratelimit-limit'], `${url} carries no rate-limit headers`)
  }
})

t.test('X-Forwarded-For is believed only from TRUST_PROXY', async (t) => {
  const send = (app: FastifyInstance, forwardedFor: string) =>
    app.inject({ method: 'GET', url: '/', headers: { 'x-tenant-id': ACME, 'x-forwarded-for': forwardedFor } })

  const direct = await setupApp(t, { RATE_LIMIT_MAX: '2' })
  await createTenant(direct, ACME)
  t.same(
    (await Promise.all(['203.0.113.1', '203.0.113.2', '203.0.113.3'].map((ip) => send(direct.app, ip)))).map((r) => r.statusCode).sort(),
    [200, 200, 429],
    'by default a client cannot buy itself new budgets with a made-up X-Forwarded-For'
  )

  const proxied = await setupApp(t, { RATE_LIMIT_MAX: '2', TRUST_PROXY: '127.0.0.1' })
  await createTenant(proxied, ACME)
  t.same(
    (await Promise.all(['203.0.113.1', '203.0.113.2', '203.0.113.3'].map((ip) => send(proxied.app, ip)))).map((r) => r.statusCode),
    [200, 200, 200],
    'behind a trusted proxy each client address has its own budget'
  )
})

interface Answer {
  status: number
  tenant: string
}

/** Fires `total` requests of one tenant at `url`, `concurrency` at a time, over keep-alive connections. */
async function flood(url: string, headers: Record<string, string>, total: number, concurrency: number, agent: http.Agent): Promise<number[]> {
  const seen: number[] = []
  let next = 0
  const worker = async () => {
    while (next < total) {
      next++
      seen.push(
        await new Promise<number>((resolve) => {
          const request = http.get(`${url}/users`, { headers, agent }, (response) => {
            response.resume()
            response.on('end', () => resolve(response.statusCode!))
          })
          request.on('error', () => resolve(0))
        })
      )
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return seen
}

const tally = (list: number[]) => {
  const counts: Record<number, number> = {}
  for (const status of list) counts[status] = (counts[status] ?? 0) + 1
  return counts
}

t.test('a noisy neighbour: while one tenant floods and is limited, every request of another succeeds', async (t) => {
  const ctx = await setupApp(t, { RATE_LIMIT_MAX: '50', RATE_LIMIT_CALLER_SHARE: '1', PG_ACQUIRE_TIMEOUT_MS: '10000' })
  await tenants(ctx)
  const url = await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 40 })
  t.teardown(() => agent.destroy())

  const [noisy, quiet] = await Promise.all([
    flood(url, ctx.auth.tenantUser(ACME), 400, 24, agent),
    (async () => {
      const answers: number[] = []
      for (let i = 0; i < 40; i++) {
        answers.push(...(await flood(url, ctx.auth.tenantUser(GLOBEX), 1, 1, agent)))
        await sleep(5)
      }
      return answers
    })()
  ])
  t.same(tally(noisy), { 200: 50, 429: 350 }, 'the flooding tenant got exactly its budget, then 429s')
  t.same(tally(quiet), { 200: 40 }, 'the quiet tenant was served every time')
})

/** Deletes every key under `prefix` (the test's own), so parallel runs and reruns start clean. */
async function dropKeys(url: string, prefix: string): Promise<number> {
  const redis = new Redis(url)
  try {
    const keys: string[] = []
    let cursor = '0'
    do {
      const [nextCursor, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      keys.push(...batch)
      cursor = nextCursor
    } while (cursor !== '0')
    if (keys.length > 0) await redis.del(...keys)
    return keys.length
  } finally {
    redis.disconnect()
  }
}

const sharedRedis = await redisAnswers(SHARED_REDIS)

t.test('with REDIS_URL two instances share one limit', { skip: sharedRedis ? false : `no Redis answers at ${SHARED_REDIS}` }, async (t) => {
  const prefix = `tenant-service-test:${randomBytes(6).toString('hex')}:`
  const env = { RATE_LIMIT_MAX: '6', RATE_LIMIT_CALLER_SHARE: '1', REDIS_URL: SHARED_REDIS, RATE_LIMIT_REDIS_PREFIX: prefix }
  const ctx = await setupApp(t, env)
  t.teardown(() => dropKeys(SHARED_REDIS, prefix))
  await tenants(ctx)
  const other = await buildApp(ctx.config)
  t.teardown(() => other.close())
  const urls = [await ctx.app.listen({ port: 0, host: '127.0.0.1' }), await other.listen({ port: 0, host: '127.0.0.1' })]
  t.not(urls[0], urls[1], 'two instances, two listeners')

  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const seen: Answer[] = []
  for (let i = 0; i < 10; i++) {
    const [status] = await flood(urls[i % 2], ctx.auth.tenantUser(ACME), 1, 1, agent)
    seen.push({ status, tenant: ACME })
  }
  t.same(
    seen.map((answer) => answer.status),
    [200, 200, 200, 200, 200, 200, 429, 429, 429, 429],
    'six requests in all, whichever instance took them; then both refuse'
  )
  const [otherTenant] = await flood(urls[1], ctx.auth.tenantUser(GLOBEX), 1, 1, agent)
  t.equal(otherTenant, 200, 'another tenant is not affected')

  const redis = new Redis(SHARED_REDIS)
  t.teardown(() => redis.disconnect())
  const keys = (await redis.keys(`${prefix}tenant:*`)).sort()
  t.same(keys, [`${prefix}tenant:${ACME}`, `${prefix}tenant:${GLOBEX}`], 'one counter per tenant, under the configured prefix')
  t.equal(await redis.get(`${prefix}tenant:${ACME}`), '10')
  const ttl = await redis.pttl(`${prefix}tenant:${ACME}`)
  t.ok(ttl > 0 && ttl <= 60_000, 'counters expire with the window')
})

/**
 * A TCP proxy to Redis that holds each new connection for `delayMs` before passing it on: a Redis
 * that is slow to reach, as across a busy network or from a busy machine.
 */
async function slowToConnect(target: string, delayMs: number) {
  const { hostname, port } = new URL(target)
  const sockets = new Set<net.Socket>()
  const timers = new Set<NodeJS.Timeout>()
  const server = net.createServer((client) => {
    sockets.add(client)
    client.pause()
    client.on('error', () => client.destroy())
    const timer = setTimeout(() => {
      timers.delete(timer)
      if (client.destroyed) return
      const upstream = net.connect(Number(port), hostname, () => {
        client.pipe(upstream) // resumes the client, paused until now
        upstream.pipe(client)
      })
      sockets.add(upstream)
      const end = () => {
        client.destroy()
        upstream.destroy()
      }
      upstream.on('error', end).on('close', end)
      client.on('close', end)
    }, delayMs)
    timers.add(timer)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer)
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}

t.test(
  'a new instance counts its very first request in Redis: it is ready only once Redis is',
  { skip: sharedRedis ? false : `no Redis answers at ${SHARED_REDIS}` },
  async (t) => {
    const prefix = `tenant-service-test:${randomBytes(6).toString('hex')}:`
    const proxy = await slowToConnect(SHARED_REDIS, 300)
    t.teardown(() => proxy.close())
    const ctx = await setupApp(t, { RATE_LIMIT_MAX: '6', RATE_LIMIT_CALLER_SHARE: '1', REDIS_URL: proxy.url, RATE_LIMIT_REDIS_PREFIX: prefix })
    t.teardown(() => dropKeys(SHARED_REDIS, prefix))
    await createTenant(ctx, ACME)
    for (let started = 1; started <= 3; started++) {
      const fresh = await buildApp(ctx.config)
      const response = await listUsers(fresh, ctx.auth.tenantUser(ACME))
      await fresh.close()
      t.equal(response.statusCode, 200)
      // Counted by Redis, or the header would be missing (a store error lets a request through uncounted).
      t.equal(response.headers['x-ratelimit-remaining'], String(6 - started), `instance ${started}'s first request spent the shared budget`)
    }
  }
)

t.test(
  'Redis going away does not take the service down: requests are served unlimited until it is back',
  { skip: existsSync(REDIS_SERVER) ? false : `${REDIS_SERVER} is not installed` },
  async (t: Test) => {
    const redis = await ownRedis(await freePort())
    t.teardown(() => redis.stop())
    const lines: string[] = []
    const ctx = await setupApp(
      t,
      { RATE_LIMIT_MAX: '3', RATE_LIMIT_CALLER_SHARE: '1', REDIS_URL: redis.url, LOG_LEVEL: 'warn' },
      { logStream: { write: (line: string) => void lines.push(line) } }
    )
    await tenants(ctx)
    const send = () => listUsers(ctx.app, ctx.auth.tenantUser(ACME))
    t.same(await statuses(send, 4), { 200: 3, 429: 1 }, 'limited while Redis is up')

    await redis.stop()
    t.same(await statuses(send, 10), { 200: 10 }, 'with Redis gone every request is served, none fails')
    t.ok(
      lines.some((line) => line.includes('rate-limit store (Redis) unreachable')),
      'the log says that requests are not limited for now'
    )
    t.equal(lines.filter((line) => line.includes('rate-limit store (Redis) unreachable')).length, 1, 'once, not once per request')

    await redis.start()
    // A fresh Redis has no counters: the limit applies again from zero once the client reconnects.
    t.ok(await eventually(async () => (await send()).statusCode === 429, 20_000, 100), 'the limit is back once Redis is')

    const unreachable = await setupApp(t, { RATE_LIMIT_MAX: '3', RATE_LIMIT_CALLER_SHARE: '1', REDIS_URL: `redis://127.0.0.1:${await freePort()}` })
    await createTenant(unreachable, ACME)
    t.same(
      await statuses(() => listUsers(unreachable.app, unreachable.auth.tenantUser(ACME)), 6),
      { 200: 6 },
      'an instance whose Redis never answered serves too'
    )
  }
)

t.test('a client address spends one budget per IPv4 address or IPv6 /56, however it is written', async (t) => {
  t.equal(clientAddressKey('203.0.113.7'), '203.0.113.7')
  t.equal(clientAddressKey('::ffff:203.0.113.7'), '203.0.113.7', 'an IPv4-mapped address is its IPv4 address')
  const prefix = clientAddressKey('2001:db8:1234:5600::1')
  for (const address of ['2001:db8:1234:56ff:ffff:ffff:ffff:ffff', '2001:DB8:1234:5678::', '2001:0db8:1234:5600:0:0:0:2']) {
    t.equal(clientAddressKey(address), prefix, `${address}: the same /56`)
  }
  t.not(clientAddressKey('2001:db8:1234:5700::1'), prefix, 'the next /56 has a budget of its own')
  t.equal(clientAddressKey('fe80::1%eth0'), clientAddressKey('fe80::2'), 'a zone id changes nothing')
  t.equal(clientAddressKey('not an address'), 'not an address', 'what is not an address is its own key')
})
