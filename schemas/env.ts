import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'

const Integer = (defaultValue: number, minimum = 0, maximum?: number) =>
  Type.Integer({ default: defaultValue, minimum, ...(maximum === undefined ? {} : { maximum }) })

/**
 * The whole configuration contract (DESIGN §7). Everything the service reads from the
 * environment is declared here once; `Config` is derived from it.
 */
export const EnvSchema = Type.Object({
  NODE_ENV: Type.Union([Type.Literal('development'), Type.Literal('production'), Type.Literal('test')], {
    default: 'development'
  }),
  PORT: Integer(3000, 0, 65535),
  HOST: Type.String({ default: '0.0.0.0' }),
  LOG_LEVEL: Type.Union(
    ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)),
    { default: 'info' }
  ),

  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  PG_POOL_MAX: Integer(20, 1, 1000),
  PG_ACQUIRE_TIMEOUT_MS: Integer(2000, 1),
  PG_STATEMENT_TIMEOUT_MS: Integer(5000, 1),
  /** Tenant roles are `<prefix><tenant id>`; roles are cluster-wide, so a cluster shared by several deployments needs distinct prefixes. */
  TENANT_ROLE_PREFIX: Type.String({ default: 't_', pattern: '^[a-z][a-z0-9_]{0,15}$' }),
  /** How long a cached registry entry is trusted when change notifications are not arriving. */
  TENANT_CACHE_TTL_MS: Integer(1000, 0),

  /** Apply pending control-plane migrations at start (tenant schemas are migrated by `npm run migrate`). */
  MIGRATE_ON_START: Type.Boolean({ default: true }),

  /** Longest time a request may take end to end, and how long a SIGTERM drain may last. */
  REQUEST_TIMEOUT_MS: Integer(30_000, 0),
  SHUTDOWN_GRACE_MS: Integer(25_000, 0),
  BODY_LIMIT_BYTES: Integer(1_048_576, 1024)
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
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
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
  const config = candidate as Config

  const databaseUrlRejected = problems.some((problem) => problem.startsWith('DATABASE_URL'))
  if (config.DATABASE_URL !== undefined && !databaseUrlRejected && !isUsableDatabaseUrl(config.DATABASE_URL)) {
    problems.push('DATABASE_URL: not a valid postgres:// URL')
  }
  if (config.NODE_ENV === 'production' && config.DATABASE_URL === undefined) {
    problems.push('DATABASE_URL: required when NODE_ENV=production')
  }

  if (problems.length > 0) throw new ConfigError(problems)
  return config
}

function isUsableDatabaseUrl(value: string): boolean {
  try {
    const url = new URL(value)
    return url.protocol === 'postgres:' || url.protocol === 'postgresql:'
  } catch {
    return false
  }
}
