import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { poolOptions } from '../plugins/external/postgres.ts'
import { loadConfig } from '../schemas/env.ts'
import { configProblems } from './helpers/app.ts'
import { runScript, serverEnv } from './helpers/server.ts'

const about = (name: string, env: Record<string, string>) => configProblems(env).filter((problem) => problem.startsWith(`${name}:`))

t.test('defaults', async (t) => {
  const config = loadConfig({})
  t.match(config, {
    NODE_ENV: 'development',
    PORT: 3000,
    HOST: '0.0.0.0',
    LOG_LEVEL: 'info',
    PG_POOL_MAX: 20,
    PG_ACQUIRE_TIMEOUT_MS: 2000,
    PG_STATEMENT_TIMEOUT_MS: 5000,
    TENANT_ROLE_PREFIX: 't_',
    TENANT_SPARES: 128,
    TENANT_CACHE_TTL_MS: 1000,
    MIGRATE_ON_START: true,
    REQUEST_TIMEOUT_MS: 30_000,
    SHUTDOWN_GRACE_MS: 25_000,
    BODY_LIMIT_BYTES: 1_048_576
  })
  t.equal(config.DATABASE_URL, undefined, 'no database outside production means the embedded one')
})

t.test('values are converted from strings; empty and unknown variables are ignored', async (t) => {
  const config = loadConfig({
    PORT: '8080',
    PG_POOL_MAX: '5',
    MIGRATE_ON_START: 'false',
    LOG_LEVEL: 'debug',
    HOST: '',
    DATABASE_URL: 'postgresql://app:secret@db.internal:6432/tenants?sslmode=require',
    SOMETHING_ELSE: 'whatever'
  })
  t.equal(config.PORT, 8080)
  t.equal(config.PG_POOL_MAX, 5)
  t.equal(config.MIGRATE_ON_START, false)
  t.equal(config.LOG_LEVEL, 'debug')
  t.equal(config.HOST, '0.0.0.0', 'an empty value is the default')
  t.equal(config.DATABASE_URL, 'postgresql://app:secret@db.internal:6432/tenants?sslmode=require')
  t.notOk('SOMETHING_ELSE' in config)
})

t.test('every bad value is reported on its own line, naming the variable', async (t) => {
  const cases: Record<string, string[]> = {
    PORT: ['http', '-1', '65536', '80.5', '1e3', '0x50'],
    PG_STATEMENT_TIMEOUT_MS: ['5e3', '2.5'],
    PG_POOL_MAX: ['0', 'lots'],
    PG_POOL_MIN: ['-1', 'some'],
    PG_ACQUIRE_TIMEOUT_MS: ['0'],
    LOG_LEVEL: ['loud'],
    NODE_ENV: ['staging'],
    TENANT_ROLE_PREFIX: ['T_', 'role-', 'much_too_long_prefix_'],
    MIGRATE_ON_START: ['maybe'],
    BODY_LIMIT_BYTES: ['10'],
    DATABASE_URL: ['mysql://db/x', 'localhost:5432', 'postgres://[not-a-host', 'postgres://db:notaport/x']
  }
  for (const [name, values] of Object.entries(cases)) {
    for (const value of values) {
      const found = about(name, { [name]: value })
      t.equal(found.length, 1, `${name}=${value} is one problem`)
      t.equal(configProblems({ [name]: value }).length, 1, `${name}=${value} is the only problem`)
    }
  }

  const several = configProblems({ PORT: 'x', PG_POOL_MAX: '0', LOG_LEVEL: 'loud' })
  t.same(several.map((problem) => problem.split(':')[0]).sort(), ['LOG_LEVEL', 'PG_POOL_MAX', 'PORT'], 'all at once')
  const error = t.throws(() => loadConfig({ PORT: 'x' })) as Error
  t.match(error.message, /Invalid configuration:\n {2}PORT: /)
  t.match(about('PORT', { PORT: 'x' })[0], /"x"/, 'the offending value is quoted back')
})

t.test('PG_POOL_MIN is the connections the pool keeps when idle, never more than PG_POOL_MAX', async (t) => {
  const minimumOf = (env: Record<string, string>) => {
    const config = loadConfig({ DATABASE_URL: 'postgres://db/tenants', ...env })
    return (poolOptions({ config } as FastifyInstance) as { min?: number }).min
  }
  t.equal(minimumOf({}), 20, 'by default the whole pool is kept')
  t.equal(minimumOf({ PG_POOL_MAX: '6' }), 6, 'whatever its size')
  t.equal(minimumOf({ PG_POOL_MIN: '0' }), 0, '0: every idle connection closes after the idle timeout')
  t.equal(minimumOf({ PG_POOL_MIN: '4' }), 4)
  t.equal(minimumOf({ PG_POOL_MIN: '50', PG_POOL_MAX: '10' }), 10, 'clamped to the pool size')
})

t.test('production requires DATABASE_URL', async (t) => {
  t.match(about('DATABASE_URL', { NODE_ENV: 'production' }), [/required when NODE_ENV=production/])
  t.same(about('DATABASE_URL', { NODE_ENV: 'production', DATABASE_URL: 'postgres://db/x' }), [], 'and is satisfied by one')
  t.same(about('DATABASE_URL', { NODE_ENV: 'development' }), [], 'outside production the embedded one stands in')
})

t.test('the server refuses to start in production without a valid DATABASE_URL', async (t) => {
  const cases: [string, Record<string, string | undefined>][] = [
    ['missing', { DATABASE_URL: undefined }],
    ['not a URL', { DATABASE_URL: 'not-a-url' }],
    ['another scheme', { DATABASE_URL: 'mysql://db/tenants' }]
  ]
  for (const [label, overrides] of cases) {
    const result = await runScript('server.ts', [], serverEnv(undefined, { NODE_ENV: 'production', ...overrides }), 60_000)
    t.not(result.code, 0, `${label}: exit status non-zero`)
    t.equal(result.signal, null, `${label}: it exited by itself`)
    t.match(result.stderr, /^config error: DATABASE_URL: .+$/m, `${label}: a line names DATABASE_URL`)
    t.notMatch(result.stdout, /Server listening/, `${label}: it never listened`)
  }
})
