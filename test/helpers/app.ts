// tsx registers through --import, which @fastify/autoload cannot detect; tell it TypeScript is fine.
process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'

import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import pg from 'pg'
import app from '../../app.ts'
import { migrateControlPlane } from '../../plugins/domain/migrations.ts'
import { loadConfig, type Config } from '../../schemas/env.ts'
import { serverOptions } from '../../server.ts'
import { createTestDatabase, type TestDatabase } from './database.ts'

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

const headerOnlyAuth: TestAuth = {
  admin: () => ({}),
  tenantUser: (tenant) => ({ 'x-tenant-id': tenant })
}

export interface TestContext {
  auth: TestAuth
  app: FastifyInstance
  config: Config
  database: TestDatabase
  /** A separate pool for assertions and set-up, outside the service's own pool. */
  admin: pg.Pool
}

/** Configuration for a test instance: quiet, and pointed at the test database. */
export function testConfig(database: TestDatabase, env: Record<string, string> = {}): Config {
  return loadConfig({
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    DATABASE_URL: database.url,
    TENANT_ROLE_PREFIX: database.rolePrefix,
    ...env
  })
}

/** Builds the service exactly as server.ts does, on a bare Fastify instance. */
export async function buildApp(config: Config): Promise<FastifyInstance> {
  const fastify = Fastify(serverOptions(config))
  await fastify.register(fp(app), { config })
  await fastify.ready()
  return fastify
}

/**
 * A fresh database with the control plane migrated, and the service built on it. Everything is
 * closed and dropped when the test ends.
 */
export async function setupApp(t: Teardown, env: Record<string, string> = {}): Promise<TestContext> {
  const database = await createTestDatabase()
  const admin = new pg.Pool({ connectionString: database.url, max: 4 })
  let fastify: FastifyInstance | undefined
  // One teardown, so the order is certain: the service lets go of the database before it is dropped.
  t.teardown(async () => {
    await fastify?.close()
    await admin.end()
    await database.drop()
  })
  await migrateControlPlane(admin)
  const config = testConfig(database, env)
  fastify = await buildApp(config)
  return { app: fastify, config, database, admin, auth: headerOnlyAuth }
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
