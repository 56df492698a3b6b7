// tsx registers through --import, which @fastify/autoload cannot detect; tell it TypeScript is fine.
process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'

import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import app from '../../app.ts'
import { migrateControlPlane } from '../../lib/tenants/index.ts'
import { ConfigError, loadConfig, type Config } from '../../schemas/env.ts'
import { loggerOptions, serverOptions } from '../../server.ts'
import { clusterUrl, createTestDatabase, type TestDatabase } from './database.ts'
import { startPgBouncer, type PgBouncer } from './pgbouncer.ts'
import { startTestIssuer, type TestIssuer } from './issuer.ts'
import { startTestS3, type TestS3 } from './s3.ts'

interface Teardown {
  teardown(fn: () => unknown): void
}

/**
 * Request headers that authenticate a caller. Every test request goes through these, so the tests
 * say who is calling, not how credentials are made.
 */
export interface TestAuth {
  /** An administrator of the whole service. */
  admin(): Record<string, string>
  /** A user of `tenant`, with X-Tenant-ID set to it. */
  tenantUser(tenant: string): Record<string, string>
}

/** Tokens are reused for a while: signing costs a millisecond, and tests send many requests. */
const TOKEN_REUSE_MS = 5 * 60_000

/**
 * Callers with real bearer tokens from `issuer`, shaped as `config` expects them: its tenant claim,
 * its admin group, and ID tokens when only those are accepted.
 */
export function issuerAuth(issuer: TestIssuer, config: Config): TestAuth {
  const use = config.JWT_TOKEN_USE === 'id' ? 'id' : 'access'
  const minted = new Map<string, { token: string; at: number }>()
  const bearer = (name: string, claims: Record<string, unknown>) => {
    const cacheKey = `${issuer.key.kid}/${name}`
    let entry = minted.get(cacheKey)
    if (!entry || Date.now() - entry.at > TOKEN_REUSE_MS) {
      entry = { token: issuer.token({ use, claims }), at: Date.now() }
      minted.set(cacheKey, entry)
    }
    return `Bearer ${entry.token}`
  }
  return {
    admin: () => ({ authorization: bearer('admin', { 'cognito:groups': [config.ADMIN_GROUP] }) }),
    tenantUser: (tenant) => ({
      authorization: bearer(`tenant:${tenant}`, { [config.TENANT_CLAIM]: tenant }),
      'x-tenant-id': tenant
    })
  }
}

export interface TestContext {
  auth: TestAuth
  app: FastifyInstance
  config: Config
  database: TestDatabase
  /** A separate pool for assertions and set-up, outside the service's own pool. */
  admin: pg.Pool
  /** The token issuer the service trusts (JWT_ISSUER), for minting and forging tokens. */
  issuer: TestIssuer
  /** The S3-compatible store the service uses, when setupApp was given `{ s3: true }`. */
  s3?: TestS3
}

/** The problems loadConfig reports for `env`, or [] when it accepts it. */
export function configProblems(env: Record<string, string>): string[] {
  try {
    loadConfig(env)
    return []
  } catch (error) {
    if (error instanceof ConfigError) return error.problems
    throw error
  }
}

/** Configuration for a test instance: quiet, and pointed at the test database. */
export function testConfig(database: TestDatabase, env: Record<string, string> = {}): Config {
  return loadConfig({
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    DATABASE_URL: database.url,
    TENANT_ROLE_PREFIX: database.rolePrefix,
    // No spare schemas built in the background of every test; test/tenant-spares.test.ts has them.
    TENANT_SPARES: '0',
    // Connections open as requests need them, not the whole pool at every start (the default,
    // which test/warm-connections.test.ts covers): test files run side by side on one server.
    PG_POOL_MIN: '0',
    // No file sweep on a timer: tests that need one run it (test/storage-attacks.test.ts).
    FILE_SWEEP_INTERVAL_MS: '0',
    ...env
  })
}

export interface BuildOptions {
  /** Runs on the bare instance before the service is registered: the place to watch its routes (onRoute). */
  beforeRegister?: (app: FastifyInstance) => unknown
  /**
   * Runs after the service is registered and before `ready()`: the place for routes that exist
   * only in a test (they see every decorator and hook of the service, and its error handler).
   */
  beforeReady?: (app: FastifyInstance) => unknown
  /** Receives the service's log lines (JSON, redaction as in production) at the configured LOG_LEVEL. */
  logStream?: { write(line: string): void }
}

export interface SetupOptions extends BuildOptions {
  /** Start a local S3-compatible store (signatures verified) and point S3_* at it. */
  s3?: boolean
}

/** Builds the service exactly as server.ts does, on a bare Fastify instance. */
export async function buildApp(config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const fastify = Fastify({
    ...serverOptions(config),
    ...(options.logStream && { logger: { ...(loggerOptions(config) as object), transport: undefined, stream: options.logStream } })
  })
  await options.beforeRegister?.(fastify)
  await fastify.register(fp(app), { config })
  await options.beforeReady?.(fastify)
  await fastify.ready()
  return fastify
}

/**
 * With TEST_PGBOUNCER=1 (`.ci/run` sets it for a part of the suite), the services the tests build
 * reach their database through a PgBouncer in transaction mode, as a deployment behind one does:
 * DATABASE_URL through the pooler, DATABASE_DIRECT_URL for what needs a session, and no named
 * prepared statements. The tests' own `admin` pool stays direct.
 */
const THROUGH_PGBOUNCER = process.env.TEST_PGBOUNCER === '1'

/**
 * A fresh database with the control plane migrated, a token issuer, and the service built on them,
 * trusting the issuer through JWT_ISSUER and JWT_CLIENT_ID as in production (`env` wins). Everything
 * is closed and dropped when the test ends.
 */
export async function setupApp(t: Teardown, env: Record<string, string> = {}, options: SetupOptions = {}): Promise<TestContext> {
  const database = await createTestDatabase()
  const admin = new pg.Pool({ connectionString: database.url, max: 4 })
  // pool.end() resolves before its connections are gone; the drop's FORCE then terminates them,
  // and the error that arrives on such a closing connection must not crash the test file.
  admin.on('error', () => undefined)
  let fastify: FastifyInstance | undefined
  let issuer: TestIssuer | undefined
  let s3: TestS3 | undefined
  let bouncer: PgBouncer | undefined
  // One teardown, so the order is certain: the service lets go of the database before it is dropped.
  t.teardown(async () => {
    await fastify?.close()
    await issuer?.close()
    await s3?.stop()
    await admin.end()
    await bouncer?.stop()
    await database.drop()
  })
  issuer = await startTestIssuer()
  if (options.s3) s3 = await startTestS3()
  await migrateControlPlane(admin)
  const pooled: Record<string, string> = {}
  if (THROUGH_PGBOUNCER) {
    bouncer = await startPgBouncer(clusterUrl)
    Object.assign(pooled, { DATABASE_URL: bouncer.through(database.url), DATABASE_DIRECT_URL: database.url, PG_PREPARED_STATEMENTS: 'false' })
  }
  const config = testConfig(database, { JWT_ISSUER: issuer.url, JWT_CLIENT_ID: issuer.clientId, ...s3?.env, ...pooled, ...env })
  fastify = await buildApp(config, options)
  return { app: fastify, config, database, admin, issuer, s3, auth: issuerAuth(issuer, config) }
}

/** Creates a tenant through the API and fails loudly if that did not work. */
export async function createTenant(context: Pick<TestContext, 'app' | 'auth'>, id: string, name = id): Promise<void> {
  const response = await context.app.inject({
    method: 'POST',
    url: '/auth/tenants',
    headers: context.auth.admin(),
    payload: { id, name }
  })
  if (response.statusCode !== 201) throw new Error(`creating tenant ${id}: ${response.statusCode} ${response.body}`)
}

/**
 * Moves the tombstone of a deleted tenant id an hour back, as if the interval before the id may be
 * created again (2 × JWT_CLOCK_TOLERANCE_MS + 1 s) had passed: for tests that recreate an id and
 * are not about tokens. Tokens of the deleted tenant are then not told apart from the new one's.
 */
export async function ageTombstone(admin: pg.Pool, id: string): Promise<void> {
  const { rowCount } = await admin.query(`UPDATE public.tenant_tombstones SET deleted_at = deleted_at - interval '1 hour' WHERE tenant_id = $1`, [id])
  if (rowCount !== 1) throw new Error(`no tombstone for tenant ${id}`)
}

/** What a tenant's role is and may do, as PostgreSQL sees it: the rights every tenant role must have, and no more. */
export async function tenantRoleRights(admin: pg.Pool, tenant: string, role: string) {
  const { rows } = await admin.query(
    `SELECT r.rolcanlogin AS login, r.rolpassword IS NULL AS no_password, r.rolsuper AS superuser,
            has_schema_privilege(r.rolname, $2, 'USAGE') AS uses_schema,
            has_table_privilege(r.rolname, format('%I.users', $2::text), 'SELECT, INSERT, UPDATE, DELETE') AS uses_tables,
            has_table_privilege(r.rolname, 'public.tenants', 'SELECT') AS reads_registry
       FROM pg_authid r WHERE r.rolname = $1`,
    [role, tenant]
  )
  return rows[0]
}

/** tenantRoleRights of a correctly provisioned tenant. */
export const TENANT_ROLE_RIGHTS = { login: true, no_password: true, superuser: false, uses_schema: true, uses_tables: true, reads_registry: false }

/**
 * What readiness tells operators, from the METRICS_PORT listener (`/health/ready?verbose`): the
 * service must be built with METRICS_PORT set (`'0'` picks a free port).
 */
export async function readinessDetails(app: FastifyInstance): Promise<{ statusCode: number; body: Readiness }> {
  const address = app.metricsAddress()
  if (!address) throw new Error('set METRICS_PORT (e.g. "0") to read the readiness details')
  const response = await fetch(`http://127.0.0.1:${address.port}/health/ready?verbose`)
  return { statusCode: response.status, body: (await response.json()) as Readiness }
}

type Readiness = { status: string; checks: Record<string, { ok: boolean; detail?: string }>; migrations?: unknown }
