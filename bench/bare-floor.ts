/**
 * A bare Fastify + pg service, in a process of its own: what an outside team would write to
 * measure the service against. No plugins beyond @fastify/jwt, no hooks, no tenant registry,
 * no rate limit, no metrics, no security headers; the logger off. Started by bench/run.ts with
 * DATABASE_URL, PG_POOL_MAX, JWT_ISSUER and JWT_CLIENT_ID; it reports its port over IPC.
 *
 * - `GET /`: `SELECT current_schema()` on the pool, answered in the shape of the service's `GET /`;
 * - `GET /users/:id`: the bearer token verified with @fastify/jwt against the issuer's JWKS
 *   (get-jwks), its tenant claim compared with X-Tenant-ID, then a schema-qualified
 *   `SELECT … FROM "<tenant>".users WHERE id = $1`, unnamed as most code sends it.
 */
import fastifyJwt from '@fastify/jwt'
import Fastify from 'fastify'
import buildGetJwks from 'get-jwks'
import pg from 'pg'
import { TENANT_ID_PATTERN } from '../schemas/common.ts'
import { TenantHealth } from '../schemas/health.ts'
import { User } from '../schemas/user.ts'
import { toUser, USER_COLUMNS, type UserRow } from '../lib/users/index.ts'

const TENANT_ID = new RegExp(TENANT_ID_PATTERN)
const tenantClaim = process.env.TENANT_CLAIM ?? 'custom:tenant_id'

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.PG_POOL_MAX ?? 20) })
pool.on('error', () => undefined)
const getJwks = buildGetJwks({ issuersWhitelist: [process.env.JWT_ISSUER!], providerDiscovery: false })

const fastify = Fastify({ logger: false })
await fastify.register(fastifyJwt, {
  decode: { complete: true },
  secret: (_request: unknown, token: { header: { kid: string; alg: string }; payload: { iss: string } }) =>
    getJwks.getPublicKey({ kid: token.header.kid, alg: token.header.alg, domain: token.payload.iss }),
  verify: { algorithms: ['RS256'], allowedIss: process.env.JWT_ISSUER }
} as never)

fastify.get('/', { schema: { response: { 200: TenantHealth } } }, async (request) => {
  const started = performance.now()
  const { rows } = await pool.query<{ current_schema: string }>('SELECT current_schema()')
  return {
    status: 'ok' as const,
    tenant: String(request.headers['x-tenant-id'] ?? ''),
    schema: rows[0].current_schema,
    database: { currentSchema: rows[0].current_schema, latencyMs: Math.round((performance.now() - started) * 1000) / 1000 }
  }
})

fastify.get<{ Params: { id: string } }>('/users/:id', { schema: { response: { 200: User } } }, async (request, reply) => {
  const claims = await request.jwtVerify<Record<string, unknown>>()
  const tenant = request.headers['x-tenant-id']
  if (typeof tenant !== 'string' || !TENANT_ID.test(tenant) || claims[tenantClaim] !== tenant) {
    return reply.code(403).send({ statusCode: 403, error: 'Forbidden', message: 'tenant mismatch' })
  }
  const { rows } = await pool.query<UserRow>(`SELECT ${USER_COLUMNS} FROM ${pg.escapeIdentifier(tenant)}.users WHERE id = $1`, [request.params.id])
  if (!rows[0]) return reply.code(404).send({ statusCode: 404, error: 'Not Found', message: 'no such user' })
  return toUser(rows[0])
})

await fastify.listen({ port: 0, host: '127.0.0.1' })
const address = fastify.server.address()
process.send?.({ listening: typeof address === 'object' && address !== null ? address.port : 0 })
const stop = () =>
  void fastify
    .close()
    .then(() => pool.end())
    .finally(() => process.exit(0))
process.once('disconnect', stop)
process.once('SIGTERM', stop)
