/** `npm run bench -- --serve`: the bench's setup kept up for a load generator of one's own. */
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { TOKEN_LIFETIME_S } from './cases.ts'
import { RESULTS_DIR, startStamp } from './process.ts'

export interface ServedTenant {
  id: string
  token: string
  userIds: string[]
}

/**
 * --serve: what a load generator of one's own needs to measure the service against the bare
 * process, written to a file, and the processes kept up until Ctrl-C (the signal handler cleans up
 * as at the end of a run, and exits 130). The service is configured as for a run, its rate limit
 * out of the way included.
 */
export async function serveUntilStopped(serving: {
  output?: string
  database: string
  tenantRolePrefix: string
  service: string
  bareProcess: string
  adminToken: string
  tenants: ServedTenant[]
}): Promise<never> {
  const output = serving.output ? path.resolve(serving.output) : path.join(RESULTS_DIR, `serve-${startStamp}.json`)
  const file = {
    tool: 'npm run bench -- --serve',
    database: serving.database,
    tenantRolePrefix: serving.tenantRolePrefix,
    service: serving.service,
    bareProcess: serving.bareProcess,
    routes: {
      service: {
        'GET /': 'tenant-scoped; X-Tenant-ID',
        'GET /users/:id': "tenant-scoped; X-Tenant-ID and the tenant's token",
        'GET /bench/floor': 'floor of GET /: the same hooks and query, no tenant context; X-Tenant-ID',
        'GET /bench/floor/users/:id': 'floor of GET /users/:id: the same token check, a schema-qualified query',
        'GET /bench/prototype': "the old prototype's SET search_path, query, RESET; X-Tenant-ID",
        'POST /auth/tenants': 'tenant creation; adminToken'
      },
      bareProcess: {
        'GET /': 'bare Fastify + pg: SELECT current_schema(); X-Tenant-ID echoed',
        'GET /users/:id': 'bare Fastify + pg: @fastify/jwt against the JWKS, a schema-qualified query'
      }
    },
    tokensExpireAt: new Date(Date.now() + TOKEN_LIFETIME_S * 1000).toISOString(),
    adminToken: serving.adminToken,
    tenants: serving.tenants
  }
  // The same tenants as lines of id, token and a user id, for load generators that cannot read
  // JSON (bench/wrk.lua).
  const tenantsFile = output.replace(/(\.json)?$/, '.tenants.tsv')
  await mkdir(path.dirname(output), { recursive: true })
  await writeFile(output, `${JSON.stringify(file, null, 2)}\n`)
  await writeFile(tenantsFile, serving.tenants.map((tenant) => `${tenant.id}\t${tenant.token}\t${tenant.userIds[0]}\n`).join(''))
  const [tenant] = serving.tenants
  const user = tenant.userIds[0]
  const autocannon = (url: string, auth = '') => `  npx autocannon -c 50 -d 10 -H 'x-tenant-id=${tenant.id}'${auth} ${url}\n`
  const bearer = ` -H "authorization=Bearer $TOKEN"`
  const wrk = (url: string, route: string) => `  wrk -t2 -c50 -d10 -s bench/wrk.lua ${url} -- ${tenantsFile} ${route}\n`
  process.stdout.write(
    `serving ${serving.tenants.length} tenants; addresses, routes, tenants, users and tokens: ${output}\n` +
      `  service        ${serving.service}\n  bare process   ${serving.bareProcess}\n` +
      `for example, from the project's directory: one tenant with autocannon,\n` +
      autocannon(`${serving.service}/`) +
      autocannon(`${serving.bareProcess}/`) +
      `  TOKEN=$(node -p 'require(${JSON.stringify(output)}).tenants[0].token')\n` +
      autocannon(`${serving.service}/users/${user}`, bearer) +
      autocannon(`${serving.bareProcess}/users/${user}`, bearer) +
      `or every tenant, picked at random per request, with wrk (Debian's package wrk):\n` +
      wrk(serving.service, 'root') +
      wrk(serving.bareProcess, 'root') +
      wrk(serving.service, 'users') +
      wrk(serving.bareProcess, 'users') +
      `Ctrl-C stops both and drops the database ${serving.database} and its tenant roles\n`
  )
  return new Promise<never>(() => undefined)
}
