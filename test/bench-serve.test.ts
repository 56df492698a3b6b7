import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import { clusterUrl } from './helpers/database.ts'
import { PROJECT_ROOT } from './helpers/server.ts'
import { eventually } from './helpers/wait.ts'

interface Served {
  database: string
  tenantRolePrefix: string
  service: string
  bareProcess: string
  adminToken: string
  tenants: { id: string; token: string; userIds: string[] }[]
}

const get = async (url: string, headers: Record<string, string>) => {
  const response = await fetch(url, { headers })
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

t.test(
  'npm run bench -- --serve: the service and the bare process over its tenants, for a load generator of your own; Ctrl-C drops its database',
  async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tenant-service-serve-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const output = path.join(dir, 'serve.json')
    const bench = spawn(
      process.execPath,
      ['--import', 'tsx', 'bench/run.ts', '--serve', '--tenants', '2', '--rows', '3', '--env', 'TENANT_SPARES=2', '--output', output],
      {
        cwd: PROJECT_ROOT,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: process.env.TMPDIR, BENCH_DATABASE_URL: clusterUrl },
        stdio: ['ignore', 'pipe', 'pipe']
      }
    )
    let printed = ''
    bench.stdout.setEncoding('utf8').on('data', (chunk: string) => (printed += chunk))
    bench.stderr.setEncoding('utf8').on('data', (chunk: string) => (printed += chunk))
    const exited = new Promise<number | null>((resolve) => bench.on('exit', (code) => resolve(code)))
    t.teardown(() => {
      if (bench.exitCode === null && bench.signalCode === null) bench.kill('SIGKILL')
    })

    const ready = await eventually(() => printed.includes('Ctrl-C stops both') || bench.exitCode !== null, 90_000, 100)
    t.ok(ready && bench.exitCode === null, 'serving', { printed })
    if (!ready || bench.exitCode !== null) return
    const served = JSON.parse(await readFile(output, 'utf8')) as Served
    t.equal(served.tenants.length, 2, 'every tenant, with its token and users, is in the file')
    t.same(
      (await readFile(output.replace(/\.json$/, '.tenants.tsv'), 'utf8')).split('\n'),
      [...served.tenants.map((tenant) => `${tenant.id}\t${tenant.token}\t${tenant.userIds[0]}`), ''],
      'and in the tenants file for bench/wrk.lua, a line each'
    )
    const [first, second] = served.tenants
    t.match(printed, `x-tenant-id=${first.id}`, 'ready-made load commands are printed')

    const root = await get(`${served.service}/`, { 'x-tenant-id': second.id })
    t.equal(root.status, 200, 'GET / answers')
    t.equal((root.body.database as { currentSchema: string }).currentSchema, second.id, 'GET / runs in the tenant named')
    const user = await get(`${served.service}/users/${first.userIds[0]}`, { 'x-tenant-id': first.id, authorization: `Bearer ${first.token}` })
    t.same([user.status, user.body.id], [200, first.userIds[0]], "GET /users/:id reads the tenant's user with its token")
    const crossed = await get(`${served.service}/users/${second.userIds[0]}`, { 'x-tenant-id': second.id, authorization: `Bearer ${first.token}` })
    t.equal(crossed.status, 403, "one tenant's token does not read another's users")
    const bareUser = await get(`${served.bareProcess}/users/${first.userIds[0]}`, { 'x-tenant-id': first.id, authorization: `Bearer ${first.token}` })
    t.same([bareUser.status, bareUser.body.id], [200, first.userIds[0]], 'the bare process answers the same read')
    const floor = await get(`${served.service}/bench/floor`, { 'x-tenant-id': first.id })
    t.equal(floor.status, 200, 'the floor routes are served too')

    bench.kill('SIGINT')
    t.equal(await exited, 130, 'Ctrl-C ends it')
    const admin = new pg.Client({ connectionString: clusterUrl })
    await admin.connect()
    t.teardown(() => admin.end())
    const { rows } = await admin.query<{ databases: number; roles: number }>(
      `SELECT (SELECT count(*)::int FROM pg_database WHERE datname = $1) AS databases,
            (SELECT count(*)::int FROM pg_roles WHERE starts_with(rolname, $2)) AS roles`,
      [served.database, served.tenantRolePrefix]
    )
    t.same(rows[0], { databases: 0, roles: 0 }, 'its database and its roles are dropped')
  }
)
