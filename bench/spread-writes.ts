/**
 * `npx tsx bench/spread-writes.ts`: a write load spread over every tenant of a running deployment,
 * for what one PostgreSQL cannot show: a Citus cluster (DESIGN §9), a pooler, several replicas.
 * It creates the tenants it lacks, then for `--duration` seconds has `--connections` clients each
 * create users, every request for the next tenant in turn, and finally reads every tenant's users
 * back from the database to count what a 201 promised and the database does not hold.
 *
 *   npx tsx bench/spread-writes.ts --url http://127.0.0.1:3000 --admin-token "$ADMIN" \
 *     --database-url postgres://…/tenant_service --tenants 1000 --duration 30 --connections 50
 *
 * Prints the answers by status, the throughput, and the rows lost (a 201 without its row) or
 * foreign (a row in the wrong tenant); exits 1 if any answer was 5xx or any row lost or foreign.
 * The admin token acts on every tenant (ADMIN_GROUP); `npm run -s token -- --admin` logs one in
 * from the embedded user pool.
 */
import { parseArgs } from 'node:util'
import pg from 'pg'

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:3000' },
    'admin-token': { type: 'string' },
    'database-url': { type: 'string' },
    tenants: { type: 'string', default: '1000' },
    prefix: { type: 'string', default: 'spread' },
    duration: { type: 'string', default: '30' },
    connections: { type: 'string', default: '50' }
  }
})
if (!values['admin-token'] || !values['database-url']) {
  console.error('usage: npx tsx bench/spread-writes.ts --admin-token TOKEN --database-url URL [--url URL] [--tenants N] [--duration S] [--connections N]')
  process.exit(2)
}
const base = values.url!.replace(/\/+$/, '')
const authorization = `Bearer ${values['admin-token']}`
const tenantCount = Number(values.tenants)
const durationMs = Number(values.duration) * 1000
const connections = Number(values.connections)
const tenants = Array.from({ length: tenantCount }, (_, i) => `${values.prefix}-${String(i + 1).padStart(5, '0')}`)
const log = (message: string) => process.stderr.write(`${message}\n`)

async function call(method: string, path: string, tenant: string | null, body?: unknown) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { authorization, ...(tenant ? { 'x-tenant-id': tenant } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  return { status: response.status, body: (await response.json().catch(() => null)) as Record<string, unknown> | null }
}

// The tenants: created where missing, a few at a time.
const db = new pg.Pool({ connectionString: values['database-url'], max: 4 })
const { rows: existing } = await db.query<{ id: string }>('SELECT id FROM public.tenants WHERE id = ANY($1)', [tenants])
const missing = tenants.filter((id) => !existing.some((row) => row.id === id))
const creationStarted = performance.now()
let next = 0
await Promise.all(
  Array.from({ length: 4 }, async () => {
    while (next < missing.length) {
      const id = missing[next++]
      const created = await call('POST', '/auth/tenants', null, { id, name: id })
      if (created.status !== 201) throw new Error(`creating ${id}: ${created.status} ${JSON.stringify(created.body)}`)
      if (next % 100 === 0) log(`created ${next} of ${missing.length} tenants`)
    }
  })
)
if (missing.length > 0) log(`created ${missing.length} tenants in ${((performance.now() - creationStarted) / 1000).toFixed(1)} s`)

// The load: each client takes the next tenant in turn, so every tenant is written.
const statuses: Record<number, number> = {}
const created = new Map<string, string[]>()
const errors = new Map<string, number>()
let turn = 0
let sequence = 0
const runId = Date.now().toString(36)
const started = performance.now()
const deadline = started + durationMs
await Promise.all(
  Array.from({ length: connections }, async () => {
    while (performance.now() < deadline) {
      const tenant = tenants[turn++ % tenants.length]
      const email = `w${runId}-${sequence++}@${tenant}.test`
      try {
        const answer = await call('POST', '/users', tenant, { email, name: 'Spread' })
        statuses[answer.status] = (statuses[answer.status] ?? 0) + 1
        if (answer.status === 201) created.set(tenant, [...(created.get(tenant) ?? []), answer.body!.id as string])
        else if (answer.status >= 500) errors.set(String(answer.body?.code), (errors.get(String(answer.body?.code)) ?? 0) + 1)
      } catch (error) {
        statuses[0] = (statuses[0] ?? 0) + 1
        errors.set((error as Error).message, (errors.get((error as Error).message) ?? 0) + 1)
      }
    }
  })
)
const seconds = (performance.now() - started) / 1000

// Every 201 must have its row, in its tenant, and no tenant any other's.
let lost = 0
let foreign = 0
for (const tenant of tenants) {
  const { rows } = await db.query<{ id: string; email: string }>(`SELECT id, email FROM ${pg.escapeIdentifier(tenant)}.users`)
  const ids = new Set(rows.map((row) => row.id))
  for (const id of created.get(tenant) ?? []) if (!ids.has(id)) lost++
  foreign += rows.filter((row) => !row.email.endsWith(`@${tenant}.test`)).length
}
await db.end()

const total = Object.values(statuses).reduce((sum, count) => sum + count, 0)
const failed = Object.entries(statuses)
  .filter(([status]) => Number(status) >= 500 || Number(status) === 0)
  .reduce((sum, [, count]) => sum + count, 0)
const touched = [...created.keys()].length
console.log(
  JSON.stringify(
    {
      tenants: tenantCount,
      tenantsWritten: touched,
      connections,
      seconds: Math.round(seconds * 10) / 10,
      requests: total,
      perSecond: Math.round(total / seconds),
      statuses,
      errors: Object.fromEntries(errors),
      rowsLost: lost,
      rowsForeign: foreign
    },
    null,
    2
  )
)
process.exit(failed > 0 || lost > 0 || foreign > 0 ? 1 : 0)
