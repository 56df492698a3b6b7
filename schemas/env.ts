import { isIP } from 'node:net'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'

/** The largest JWT_CLOCK_TOLERANCE_MS accepted; a deleted tenant's id waits twice that, plus a second, before it is taken again. */
export const MAX_JWT_CLOCK_TOLERANCE_MS = 300_000

const Integer = (defaultValue: number, minimum = 0, maximum?: number) =>
  Type.Integer({ default: defaultValue, minimum, ...(maximum === undefined ? {} : { maximum }) })

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000
}
const DURATION_PATTERN = `^\\s*\\d+(\\.\\d+)?\\s*(${Object.keys(DURATION_UNITS).join('|')})?\\s*$`

/**
 * `60000`, `30s`, `1 minute`, `1.5h` in milliseconds: the one duration parser, of configuration
 * and scripts alike. A bare number is in `bareUnit` (milliseconds unless said otherwise).
 */
export function durationMs(value: string, bareUnit: 'ms' | 's' = 'ms'): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/.exec(value)
  const unit = match ? DURATION_UNITS[match[2] || bareUnit] : undefined
  if (!match || unit === undefined) throw new Error(`not a duration: ${JSON.stringify(value)}`)
  return Math.round(Number(match[1]) * unit)
}

/**
 * The whole configuration contract (DESIGN §7). Everything the service reads from the
 * environment is declared here once; `Config` is derived from it.
 */
export const EnvSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development'
  }),
  PORT: Integer(3000, 0, 65535),
  /**
   * A second listener, on HOST, that serves only `GET /metrics` and `GET /health/ready?verbose`,
   * for Prometheus inside the cluster (9464 in deploy/). Unset: `/metrics` is served on PORT to
   * admin tokens only.
   */
  METRICS_PORT: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  HOST: Type.String({ default: '0.0.0.0' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info' }
  ),

  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  /**
   * A direct (session) connection for what needs a session, when DATABASE_URL goes through a
   * transaction-mode pooler: the tenant-change listener (LISTEN), the control-plane migration's
   * advisory lock, and `npm run migrate`. Unset: DATABASE_URL.
   */
  DATABASE_DIRECT_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  /**
   * false: no named prepared statements, for a pooler in transaction mode that cannot carry them
   * (PgBouncer before 1.21, Debian's 1.18 included). Every statement is then parsed at each use;
   * the context and the query still travel in one round trip.
   */
  PG_PREPARED_STATEMENTS: Type.Boolean({ default: true }),
  PG_POOL_MAX: Integer(20, 1, 1000),
  /**
   * Connections the pool keeps open however long they stay idle (at most PG_POOL_MAX); the others
   * close after 30 s idle. Unset, the whole pool is kept, as a fixed-size pool: on PostgreSQL 15 a
   * new connection's first switch to a tenant role costs time that grows with the square of the
   * tenants (BENCHMARKS.md, R2), and a pool that keeps its connections pays it once at start
   * rather than in requests after every quiet spell (BENCHMARKS.md, C17, C18 and R4).
   * 0 gives every idle connection back to PostgreSQL.
   */
  PG_POOL_MIN: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000 })),
  /**
   * Connections of the pool that carry every request's reads, pipelined (lib/tenant-db/read-lanes.ts);
   * 0: each read takes a pooled connection of its own. At most PG_POOL_MAX − 1 are used, so that
   * writes always have a connection.
   */
  PG_READ_LANES: Integer(2, 0, 64),
  PG_ACQUIRE_TIMEOUT_MS: Integer(2000, 1),
  PG_STATEMENT_TIMEOUT_MS: Integer(5000, 1),
  /**
   * A request's transaction that sits idle this long (the service waiting on something else while
   * it holds the connection) is ended by PostgreSQL, with its session. 0: never.
   */
  PG_IDLE_IN_TRANSACTION_TIMEOUT_MS: Integer(10_000, 0),
  /**
   * Pooled connections one tenant's requests may hold at once, so one tenant cannot take the whole
   * pool; past it a request waits for one of its tenant's (PG_ACQUIRE_TIMEOUT_MS at most, then 503
   * DATABASE_BUSY). Unset: half of PG_POOL_MAX (at least 1).
   */
  TENANT_MAX_CONNECTIONS: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  /** Tenant roles are `<prefix><tenant id>`; roles are cluster-wide, so a cluster shared by several deployments needs distinct prefixes. */
  TENANT_ROLE_PREFIX: Type.String({ default: 't_', pattern: '^[a-z][a-z0-9_]{0,15}$' }),
  /**
   * `role`: each request runs as its tenant's role as well as in its schema (DESIGN §6, layers 1
   * and 2). `search_path`: in its schema only, as the service's role; for a Citus cluster that must
   * serve more tenants than its workers have connections for roles (lib/tenant-db/citus.ts).
   */
  TENANT_ISOLATION: Type.Union([Type.Literal('role'), Type.Literal('search_path')], { default: 'role' }),
  /**
   * Tenant schemas kept built ahead of need (lib/tenants/spares.ts): creating a tenant
   * renames one instead of creating its tables while the client waits. 0 builds every tenant on the spot.
   */
  TENANT_SPARES: Integer(128, 0, 1000),
  /** How long a cached registry entry is trusted when change notifications are not arriving. */
  TENANT_CACHE_TTL_MS: Integer(1000, 0),
  /**
   * How often each instance writes the requests it counted per tenant to `public.tenant_usage`
   * (lib/tenants/usage.ts). The usage endpoint may miss what other instances counted in their last
   * interval.
   */
  USAGE_FLUSH_INTERVAL_MS: Integer(10_000, 100, 3_600_000),

  /** Apply pending control-plane migrations at start (tenant schemas are migrated by `npm run migrate`). */
  MIGRATE_ON_START: Type.Boolean({ default: true }),
  /**
   * A tenant whose schema is older than a route needs: `on-request` migrates it at its first such
   * request (lib/tenants/catch-up.ts); `job` leaves it to `npm run migrate` and answers 503
   * TENANT_MIGRATING meanwhile.
   */
  TENANT_MIGRATIONS: Type.Union([Type.Literal('on-request'), Type.Literal('job')], { default: 'on-request' }),
  /** How long a request waits for its tenant's migration on request before 503 TENANT_MIGRATING. */
  TENANT_MIGRATION_WAIT_MS: Integer(5000, 0, 60_000),
  /** The pause after a tenant's migration on request failed, doubled with each failure in a row (up to 16 times). */
  TENANT_MIGRATION_BACKOFF_MS: Integer(30_000, 100),

  /** The token issuer, exactly as tokens carry it in `iss`; its keys are at `<issuer>/.well-known/jwks.json`. */
  JWT_ISSUER: Type.Optional(Type.String({ pattern: '^https?://\\S+$', maxLength: 2048 })),
  /** Alternative to JWT_ISSUER: the issuer becomes `https://cognito-idp.<region>.amazonaws.com/<pool id>`. */
  COGNITO_REGION: Type.Optional(Type.String({ pattern: '^[a-z]{2}(-[a-z]+)+-[0-9]+$' })),
  /**
   * With a pool id the service also manages the tenants' members in it (AdminCreateUser…, lib/users/pool.ts).
   * A pool that is not on AWS (cognito-local: `local_…`) is reached at AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER
   * (or AWS_ENDPOINT_URL), and its issuer is given in JWT_ISSUER.
   */
  COGNITO_USER_POOL_ID: Type.Optional(Type.String({ pattern: '^[\\w-]+_[0-9A-Za-z]+$', maxLength: 55 })),
  /**
   * How an invited member learns their temporary password: `EMAIL`, Cognito's invitation message;
   * `SUPPRESS`, no message (the inviter passes `temporaryPassword` and delivers it).
   */
  COGNITO_INVITE_MESSAGE_ACTION: Type.Union([Type.Literal('EMAIL'), Type.Literal('SUPPRESS')], { default: 'EMAIL' }),
  /** The app client tokens must be issued to: `client_id` of an access token, `aud` of an ID token. */
  JWT_CLIENT_ID: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  JWT_TOKEN_USE: Type.Union([Type.Literal('access'), Type.Literal('id'), Type.Literal('any')], { default: 'any' }),
  /** The claim naming the caller's tenant, and the `cognito:groups` group whose members act on every tenant. */
  TENANT_CLAIM: Type.String({ default: 'custom:tenant_id', minLength: 1, maxLength: 256 }),
  ADMIN_GROUP: Type.String({ default: 'admin', minLength: 1, maxLength: 256 }),
  /** A token signed with a key the service does not know triggers at most one JWKS fetch per this interval. */
  JWKS_REFETCH_INTERVAL_MS: Integer(5000, 100),
  /** Leeway for `exp`, `nbf` and `iat`, for clocks that disagree a little. */
  JWT_CLOCK_TOLERANCE_MS: Integer(5000, 0, MAX_JWT_CLOCK_TOLERANCE_MS),
  /** The longest lifetime (`exp` − `iat`) a token may claim; longer-lived tokens are refused. */
  JWT_MAX_AGE: Type.String({ default: '24 hours', pattern: DURATION_PATTERN }),

  /**
   * Object storage. One bucket, each tenant under `tenants/<id>/`. Credentials are never
   * configured here: the AWS default provider chain supplies them (role, environment, profile).
   */
  S3_BUCKET: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$' })),
  S3_REGION: Type.String({ default: 'us-east-1', pattern: '^[a-z0-9-]{2,32}$' }),
  /** An S3-compatible store (MinIO, Ceph, R2…); usually with S3_FORCE_PATH_STYLE=true. */
  S3_ENDPOINT: Type.Optional(Type.String({ pattern: '^https?://[^\\s/?#]+/?$' })),
  S3_FORCE_PATH_STYLE: Type.Boolean({ default: false }),
  /** Largest file a client may declare; S3 takes at most 5 GiB in one PUT. */
  MAX_UPLOAD_BYTES: Integer(100 * 1024 * 1024, 1, 5 * 1024 ** 3),
  /** Lifetime of presigned upload and download URLs. */
  PRESIGN_EXPIRES_SECONDS: Integer(900, 1, 3600),
  /** Bytes one tenant may hold, pending uploads included; 0 means no quota. */
  TENANT_STORAGE_QUOTA_BYTES: Integer(10 * 1024 ** 3, 0),
  /** How often the file sweep (lib/files/sweep.ts) looks for prefixes due a visit; 0 turns it off on this instance. */
  FILE_SWEEP_INTERVAL_MS: Integer(30_000, 0),

  /** Longest time a request may take end to end, and how long a SIGTERM drain may last. */
  REQUEST_TIMEOUT_MS: Integer(30_000, 0),
  SHUTDOWN_GRACE_MS: Integer(25_000, 0),
  /** How long an idle keep-alive connection stays open; above the load balancer's own idle timeout. */
  KEEP_ALIVE_TIMEOUT_MS: Integer(5_000, 1),
  /**
   * After SIGTERM, readiness answers 503 this long before the listener closes, so load balancers
   * stop sending first. Counts within SHUTDOWN_GRACE_MS. On Kubernetes a preStop sleep does the same.
   */
  SHUTDOWN_DELAY_MS: Integer(0, 0),
  BODY_LIMIT_BYTES: Integer(1_048_576, 1024),

  /** Requests per RATE_LIMIT_WINDOW per tenant (per client address on routes that take no token). */
  RATE_LIMIT_MAX: Integer(1000, 1),
  /** Milliseconds, or a duration such as `1 minute`, `30s`, `1h`. */
  RATE_LIMIT_WINDOW: Type.String({ default: '1 minute', pattern: DURATION_PATTERN }),
  /**
   * The fraction of a tenant's budget one caller (token subject) may spend, so that one user
   * cannot lock the tenant's others out; 1: no share of their own.
   */
  RATE_LIMIT_CALLER_SHARE: Type.Number({ default: 0.5, exclusiveMinimum: 0, maximum: 1 }),
  /** Shares rate-limit counters between instances; without it each instance counts on its own. */
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://\\S+$' })),
  /** Prefix of the rate-limit keys in Redis, for deployments that share one. */
  RATE_LIMIT_REDIS_PREFIX: Type.String({ default: 'tenant-service:rate-limit:', minLength: 1, maxLength: 128 }),
  /**
   * Browser origins allowed to call the API (comma-separated `https://app.example.com`, or `*`).
   * Unset: none in production, any outside it.
   */
  CORS_ORIGINS: Type.Optional(Type.String({ maxLength: 4096 })),
  /**
   * Which proxies to believe about the client address (X-Forwarded-For), which keys the rate limit
   * of routes that take no token: `false`, `true` (any peer), or comma-separated addresses and CIDRs.
   */
  TRUST_PROXY: Type.String({ default: 'false', maxLength: 4096 })
})

export type Config = Static<typeof EnvSchema>

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((problem) => `  ${problem}`).join('\n')}`)
  }
}

/**
 * Reads and validates the configuration. Unknown variables are ignored; every bad or missing
 * variable is reported, one line each, naming it.
 */
/**
 * What an entry point needs checked: the whole service, or only the database (`npm run migrate`,
 * which uses nothing else and must not need S3 or an issuer configured).
 */
export type ConfigScope = 'service' | 'database'

export function loadConfig(env: NodeJS.ProcessEnv = process.env, scope: ConfigScope = 'service'): Config {
  const known = Object.keys(EnvSchema.properties)
  const raw: Record<string, unknown> = {}
  for (const key of known) {
    const value = env[key]
    if (value !== undefined && value !== '') raw[key] = value
  }
  const candidate = Value.Convert(EnvSchema, Value.Default(EnvSchema, raw))

  const problems: string[] = []
  for (const error of Value.Errors(EnvSchema, candidate)) {
    const name = error.path.replace(/^\//, '')
    problems.push(`${name}: ${error.message} (got ${JSON.stringify(raw[name] ?? null)})`)
  }
  // Value.Convert reads numbers leniently ("1e3" becomes 1, "2.5" becomes 2): an integer must be written as one.
  for (const [name, schema] of Object.entries(EnvSchema.properties)) {
    const value = env[name]
    const reported = problems.some((problem) => problem.startsWith(`${name}:`))
    if ((schema as { type?: unknown }).type === 'integer' && value && !/^\s*-?\d+\s*$/.test(value) && !reported) {
      problems.push(`${name}: Expected integer (got ${JSON.stringify(value)})`)
    }
  }
  const config = candidate as Config

  const databaseUrlRejected = problems.some((problem) => problem.startsWith('DATABASE_URL'))
  if (config.DATABASE_URL !== undefined && !databaseUrlRejected && !isUsableDatabaseUrl(config.DATABASE_URL)) {
    problems.push('DATABASE_URL: not a valid postgres:// URL')
  }
  const directRejected = problems.some((problem) => problem.startsWith('DATABASE_DIRECT_URL'))
  if (config.DATABASE_DIRECT_URL !== undefined && !directRejected && !isUsableDatabaseUrl(config.DATABASE_DIRECT_URL)) {
    problems.push('DATABASE_DIRECT_URL: not a valid postgres:// URL')
  }
  if (config.DATABASE_DIRECT_URL !== undefined && config.DATABASE_URL === undefined) {
    problems.push('DATABASE_DIRECT_URL: set DATABASE_URL too (the direct connection is only for what needs a session)')
  }
  if (config.NODE_ENV === 'production' && config.DATABASE_URL === undefined) {
    problems.push('DATABASE_URL: required when NODE_ENV=production')
  }
  if (scope === 'service') {
    if (config.NODE_ENV === 'production' && config.S3_BUCKET === undefined && !problems.some((problem) => problem.startsWith('S3_BUCKET'))) {
      problems.push('S3_BUCKET: required when NODE_ENV=production')
    }
    checkIssuer(config, problems)
    checkHttpSettings(config, problems)
  }

  if (problems.length > 0) throw new ConfigError(problems)
  return config
}

/**
 * For entry points: the configuration, or one `config error: VARIABLE: …` line per problem on
 * stderr and exit status 1.
 */
export function loadConfigOrExit(env: NodeJS.ProcessEnv = process.env): Config {
  try {
    return loadConfig(env)
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    for (const problem of error.problems) console.error(`config error: ${problem}`)
    process.exit(1)
  }
}

/** The connection for what needs a session (LISTEN, advisory locks, migrations): DATABASE_DIRECT_URL, else DATABASE_URL. */
export const directDatabaseUrl = (config: Pick<Config, 'DATABASE_URL' | 'DATABASE_DIRECT_URL'>) => config.DATABASE_DIRECT_URL ?? config.DATABASE_URL

/** The connections the pool keeps open when idle: PG_POOL_MIN, or the whole pool when it is unset. */
export function keptConnections(config: Pick<Config, 'PG_POOL_MIN' | 'PG_POOL_MAX'>): number {
  return Math.min(config.PG_POOL_MIN ?? config.PG_POOL_MAX, config.PG_POOL_MAX)
}

/**
 * The origins CORS admits: a list, `'*'` for any, or null for none (no CORS headers at all).
 * Unset, production admits none and every other environment any, so a front end under
 * development works without configuration.
 */
export function corsOrigins(config: Pick<Config, 'CORS_ORIGINS' | 'NODE_ENV'>): string[] | '*' | null {
  const raw = config.CORS_ORIGINS?.trim()
  if (!raw) return config.NODE_ENV === 'production' ? null : '*'
  const origins = raw
    .split(',')
    .map((origin) => origin.trim())
    .filter(Boolean)
  return origins.includes('*') ? '*' : origins
}

const ORIGIN = /^https?:\/\/[^\s/?#@]+$/

/** Fastify's `trustProxy` from TRUST_PROXY: true, false, or the proxies' addresses and CIDR ranges. */
export function trustProxy(config: Pick<Config, 'TRUST_PROXY'>): boolean | string[] {
  const raw = config.TRUST_PROXY.trim()
  if (raw === 'true') return true
  if (raw === 'false' || raw === '') return false
  return raw
    .split(',')
    .map((entry) => entry.trim())
    .filter(Boolean)
}

function isAddressOrRange(entry: string): boolean {
  const [address, bits, extra] = entry.split('/')
  const family = isIP(address)
  if (family === 0 || extra !== undefined) return false
  if (bits === undefined) return true
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128)
}

function checkHttpSettings(config: Config, problems: string[]): void {
  const rejected = (name: string) => problems.some((problem) => problem.startsWith(`${name}:`))
  if (config.METRICS_PORT !== undefined && config.METRICS_PORT !== 0 && config.METRICS_PORT === config.PORT) {
    problems.push(`METRICS_PORT: must differ from PORT (both are ${config.PORT})`)
  }
  if (!rejected('JWT_MAX_AGE') && durationMs(config.JWT_MAX_AGE) < 1000) {
    problems.push(`JWT_MAX_AGE: must be at least 1 second (got ${JSON.stringify(config.JWT_MAX_AGE)})`)
  }
  if (!rejected('RATE_LIMIT_WINDOW') && durationMs(config.RATE_LIMIT_WINDOW) < 1) {
    problems.push(`RATE_LIMIT_WINDOW: must be at least 1 ms (got ${JSON.stringify(config.RATE_LIMIT_WINDOW)})`)
  }
  if (!rejected('CORS_ORIGINS')) {
    const origins = corsOrigins(config)
    const bad = Array.isArray(origins) ? origins.filter((origin) => !ORIGIN.test(origin)) : []
    if (bad.length > 0) {
      problems.push(`CORS_ORIGINS: each origin is scheme://host[:port] with no path, or * (got ${bad.map((origin) => JSON.stringify(origin)).join(', ')})`)
    }
  }
  if (!rejected('TRUST_PROXY')) {
    const trusted = trustProxy(config)
    if (Array.isArray(trusted) && !trusted.every(isAddressOrRange)) {
      problems.push(`TRUST_PROXY: true, false, or comma-separated IP addresses and CIDR ranges (got ${JSON.stringify(config.TRUST_PROXY)})`)
    }
  }
  const timing = ['SHUTDOWN_DELAY_MS', 'SHUTDOWN_GRACE_MS'].some(rejected)
  if (!timing && config.SHUTDOWN_GRACE_MS > 0 && config.SHUTDOWN_DELAY_MS >= config.SHUTDOWN_GRACE_MS) {
    problems.push(
      `SHUTDOWN_DELAY_MS: must be shorter than SHUTDOWN_GRACE_MS (${config.SHUTDOWN_GRACE_MS}), which it counts within (got ${config.SHUTDOWN_DELAY_MS})`
    )
  }
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]'])

/** The issuer Cognito puts in `iss` for a user pool. */
export const cognitoIssuer = (region: string, userPoolId: string) => `https://cognito-idp.${region}.amazonaws.com/${userPoolId}`

/**
 * Resolves JWT_ISSUER (from COGNITO_REGION + COGNITO_USER_POOL_ID when it is not set) and reports
 * what cannot work: half a Cognito pair, a pool id from another region, an issuer without the app
 * client to check tokens against, and, in production, no issuer at all or one not on https.
 */
function checkIssuer(config: Config, problems: string[]): void {
  const rejected = (name: string) => problems.some((problem) => problem.startsWith(`${name}:`))
  const { COGNITO_REGION: region, COGNITO_USER_POOL_ID: pool } = config
  if (region !== undefined && pool === undefined) problems.push('COGNITO_USER_POOL_ID: required with COGNITO_REGION')
  if (pool !== undefined && region === undefined) problems.push('COGNITO_REGION: required with COGNITO_USER_POOL_ID')
  // JWT_ISSUER set too means a pool that is not on AWS (cognito-local, or a proxy): its issuer is
  // what tokens carry, and its pool ids need not start with the region.
  if (region !== undefined && pool !== undefined && !rejected('COGNITO_REGION') && !rejected('COGNITO_USER_POOL_ID') && config.JWT_ISSUER === undefined) {
    if (!pool.startsWith(`${region}_`)) {
      problems.push(
        `COGNITO_USER_POOL_ID: a pool of region ${region} starts with "${region}_" (got ${JSON.stringify(pool)}; for a pool not on AWS, set JWT_ISSUER too)`
      )
    } else {
      config.JWT_ISSUER = cognitoIssuer(region, pool)
    }
  }

  const issuer = config.JWT_ISSUER
  if (issuer !== undefined && !rejected('JWT_ISSUER')) {
    let url: URL | null = null
    try {
      url = new URL(issuer)
    } catch {
      problems.push(`JWT_ISSUER: not a valid URL (got ${JSON.stringify(issuer)})`)
    }
    if (url && (url.search || url.hash || url.username || url.password)) {
      problems.push('JWT_ISSUER: must not carry credentials, a query or a fragment')
    }
    // Keys fetched over plain http could be swapped on the way; only loopback is spared that.
    if (url && config.NODE_ENV === 'production' && url.protocol !== 'https:' && !LOOPBACK_HOSTS.has(url.hostname)) {
      problems.push('JWT_ISSUER: must be an https:// URL when NODE_ENV=production')
    }
  }

  const halfCognito = (region === undefined) !== (pool === undefined)
  if (config.NODE_ENV === 'production' && issuer === undefined && !halfCognito && !rejected('JWT_ISSUER')) {
    problems.push('JWT_ISSUER: required when NODE_ENV=production (or set COGNITO_REGION and COGNITO_USER_POOL_ID)')
  }
  if (config.JWT_CLIENT_ID === undefined && !rejected('JWT_CLIENT_ID')) {
    if (config.NODE_ENV === 'production') problems.push('JWT_CLIENT_ID: required when NODE_ENV=production (tokens are checked against the app client)')
    else if (issuer !== undefined || halfCognito) problems.push('JWT_CLIENT_ID: required with an issuer (tokens are checked against the app client)')
  }
}

function isUsableDatabaseUrl(value: string): boolean {
  try {
    const url = new URL(value)
    return url.protocol === 'postgres:' || url.protocol === 'postgresql:'
  } catch {
    return false
  }
}
