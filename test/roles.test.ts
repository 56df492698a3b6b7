import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import t from 'tap'
import { createTenant, setupApp, type TestContext } from './helpers/app.ts'
import { runScript, serverEnv } from './helpers/server.ts'

/**
 * Layer 2 of isolation (DESIGN §6): each tenant's requests run as its own PostgreSQL role, which
 * has rights on its own schema only, so SQL that names another tenant's schema is refused by
 * PostgreSQL itself, whatever the search_path.
 */

const ALPHA = 'alpha-co'
const BETA = 'beta-inc'
const BETA_SECRET = 'secret@beta-inc.test'

/** SQLSTATEs PostgreSQL raised inside test routes, in order. */
const raised: string[] = []

/**
 * Test-only routes, tenant-scoped as the service's own, that run SQL naming a schema outright: a
 * query-building bug, as it would look. Errors are rethrown, so the client gets what the service
 * really answers; the SQLSTATE is recorded on the way.
 */
function crossSchemaRoutes(app: FastifyInstance) {
  const scoped = { onRequest: [app.requireTenantAccess, app.resolveTenant] }
  const recordAndRethrow = (error: unknown): never => {
    raised.push((error as { code?: string }).code ?? 'none')
    throw error
  }
  app.get<{ Params: { schema: string } }>('/test/read/:schema', scoped, async (request) => {
    const { rows } = await request.db!.query(`SELECT email FROM ${pg.escapeIdentifier(request.params.schema)}.users`).catch(recordAndRethrow)
    return { rows }
  })
  app.post<{ Params: { schema: string } }>('/test/write/:schema', scoped, async (request, reply) => {
    await request
      .db!.query(`INSERT INTO ${pg.escapeIdentifier(request.params.schema)}.users (email, name) VALUES ('planted@alpha-co.test', 'Planted')`)
      .catch(recordAndRethrow)
    return reply.code(201).send({ written: true })
  })
  app.get('/test/registry', scoped, async (request) => {
    const { rows } = await request.db!.query('SELECT id FROM public.tenants').catch(recordAndRethrow)
    return { rows }
  })
}

let ctx: TestContext
const roleOf = (tenant: string) => `${ctx.config.TENANT_ROLE_PREFIX}${tenant}`

t.before(async () => {
  ctx = await setupApp(t, {}, { beforeReady: crossSchemaRoutes })
  for (const tenant of [ALPHA, BETA]) await createTenant(ctx, tenant)
  const created = await ctx.app.inject({
    method: 'POST',
    url: '/users',
    headers: ctx.auth.tenantUser(BETA),
    payload: { email: BETA_SECRET, name: 'Beta Secret' }
  })
  if (created.statusCode !== 201) throw new Error(`seeding ${BETA}: ${created.body}`)
})

/** What PostgreSQL says about a tenant role and what it may reach. */
async function roleFacts(tenant: string, other: string) {
  const { rows } = await ctx.admin.query(
    `SELECT r.rolcanlogin AS login, r.rolpassword IS NULL AS no_password,
            r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls AS privileged,
            has_schema_privilege(r.rolname, $2, 'USAGE') AS own_schema,
            has_table_privilege(r.rolname, format('%I.users', $2::text), 'SELECT, INSERT, UPDATE, DELETE') AS own_tables,
            has_schema_privilege(r.rolname, $3, 'USAGE') AS other_schema,
            has_table_privilege(r.rolname, format('%I.users', $3::text), 'SELECT') AS other_tables,
            has_table_privilege(r.rolname, 'public.tenants', 'SELECT') AS registry,
            has_table_privilege(r.rolname, 'public.schema_migrations', 'SELECT') AS migrations_table,
            has_schema_privilege(r.rolname, 'public', 'CREATE') AS create_in_public,
            pg_has_role(session_user, r.oid, 'MEMBER') AS service_is_member
       FROM pg_authid r WHERE r.rolname = $1`,
    [roleOf(tenant), tenant, other]
  )
  return rows[0]
}

const PROVISIONED = {
  login: true,
  no_password: true,
  privileged: false,
  own_schema: true,
  own_tables: true,
  other_schema: false,
  other_tables: false,
  registry: false,
  migrations_table: false,
  create_in_public: false,
  service_is_member: true
}

t.test('each tenant role can log in, has no password, and reaches its own schema only', async (t) => {
  t.same(await roleFacts(ALPHA, BETA), PROVISIONED, ALPHA)
  t.same(await roleFacts(BETA, ALPHA), PROVISIONED, BETA)
})

t.test("SQL naming another tenant's schema outright is refused by PostgreSQL (42501), and nothing leaks", async (t) => {
  raised.length = 0
  for (const [caller, label] of [
    [ctx.auth.tenantUser(ALPHA), `a user of ${ALPHA}`],
    [{ ...ctx.auth.admin(), 'x-tenant-id': ALPHA }, `an admin acting on ${ALPHA}`]
  ] as const) {
    const read = await ctx.app.inject({ method: 'GET', url: `/test/read/${BETA}`, headers: caller })
    t.equal(read.statusCode, 500, `${label}: the read is an error`)
    t.same(
      read.json(),
      {
        statusCode: 500,
        code: 'INTERNAL_ERROR',
        error: 'Internal Server Error',
        message: 'Something went wrong on our side',
        requestId: read.headers['x-request-id']
      },
      `${label}: a generic 500, carrying only its request id`
    )
    t.notMatch(read.body, /secret|beta-inc|permission/i, `${label}: the answer names neither the data, the schema nor the reason`)

    const registry = await ctx.app.inject({ method: 'GET', url: '/test/registry', headers: caller })
    t.equal(registry.statusCode, 500, `${label}: public.tenants is refused too`)
    t.notMatch(registry.body, new RegExp(BETA), `${label}: no tenant id leaks from the registry`)

    const write = await ctx.app.inject({ method: 'POST', url: `/test/write/${BETA}`, headers: caller })
    t.equal(write.statusCode, 500, `${label}: the write is an error`)
  }
  t.same(raised, ['42501', '42501', '42501', '42501', '42501', '42501'], 'each was insufficient_privilege, inside PostgreSQL')

  const { rows } = await ctx.admin.query(`SELECT email FROM "${BETA}".users ORDER BY email`)
  t.same(rows, [{ email: BETA_SECRET }], `nothing was written into ${BETA}`)

  const own = await ctx.app.inject({ method: 'GET', url: `/test/read/${ALPHA}`, headers: ctx.auth.tenantUser(ALPHA) })
  t.equal(own.statusCode, 200, 'the same route naming its own schema works')
  t.same(own.json(), { rows: [] })
})

/** A failing request's connection must not have been left dirty: the tenant still works. */
async function listUsers(tenant: string) {
  return ctx.app.inject({ method: 'GET', url: '/users', headers: ctx.auth.tenantUser(tenant) })
}

t.test('npm run migrate brings back a tenant role that is missing, and repairs one that was changed', async (t) => {
  const role = pg.escapeIdentifier(roleOf(BETA))
  // As after restoring a dump into a new cluster: the registry and the schema, but no role.
  await ctx.admin.query(`DROP OWNED BY ${role}; DROP ROLE ${role}`)
  const { rows: gone } = await ctx.admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [roleOf(BETA)])
  t.equal(gone.length, 0, 'the role is gone')
  const broken = await listUsers(BETA)
  t.equal(broken.statusCode, 500, 'without its role (its registry row still there) the tenant cannot be served: a fault, not a 404')
  t.equal((await listUsers(ALPHA)).statusCode, 200, 'other tenants are unaffected')

  const migrate = () => runScript('scripts/migrate.ts', [], serverEnv(ctx, { NODE_ENV: 'test' }))
  const first = await migrate()
  t.equal(first.code, 0, `npm run migrate succeeds\n${first.stdout}\n${first.stderr}`)
  t.same(await roleFacts(BETA, ALPHA), PROVISIONED, 'the role is back, with its grants')
  const restored = await listUsers(BETA)
  t.equal(restored.statusCode, 200, 'requests work again')
  t.same(
    restored.json().items.map((user: { email: string }) => user.email),
    [BETA_SECRET],
    'the data was never touched'
  )

  // Someone made the role unable to log in (Citus routing needs LOGIN) and gave it a password.
  await ctx.admin.query(`ALTER ROLE ${role} NOLOGIN PASSWORD 'guessable'`)
  const second = await migrate()
  t.equal(second.code, 0)
  t.same(await roleFacts(BETA, ALPHA), PROVISIONED, 'LOGIN again, and no password')

  // A role in order is left alone: a run over 10,000 tenants writes nothing to the catalog for them.
  const version = async () => (await ctx.admin.query('SELECT xmin::text FROM pg_authid WHERE rolname = $1', [roleOf(BETA)])).rows[0].xmin
  const before = await version()
  const third = await migrate()
  t.equal(third.code, 0)
  t.equal(await version(), before, 'a role in order is not rewritten')
})

t.test('deleting a tenant drops its role; provisioning a new one creates it', async (t) => {
  const tenant = 'gamma-ltd'
  await createTenant(ctx, tenant)
  const exists = async () => (await ctx.admin.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [roleOf(tenant)])).rows.length === 1
  t.ok(await exists(), 'provisioning created the role')
  t.same(await roleFacts(tenant, ALPHA), PROVISIONED)
  const deleted = await ctx.app.inject({ method: 'DELETE', url: `/auth/tenants/${tenant}`, headers: ctx.auth.admin() })
  t.equal(deleted.statusCode, 204)
  t.notOk(await exists(), 'the role is dropped with the tenant')
  t.equal((await listUsers(ALPHA)).statusCode, 200)
})
