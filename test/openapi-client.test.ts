import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { generateClientTypes, OPENAPI_FILE, PROJECT_ROOT } from '../scripts/openapi.ts'
import { setupApp } from './helpers/app.ts'
import { startTestS3 } from './helpers/s3.ts'

/**
 * A client program written against the generated types only. It is type-checked with the
 * project's compiler before it runs, so the types are proven to fit the flows it drives; the
 * `@ts-expect-error` lines prove they also refuse what the API refuses.
 */
const CLIENT_PROGRAM = `
import createClient, { type Client } from 'openapi-fetch'
import type { components, paths } from './schema.ts'

type Tenant = components['schemas']['Tenant']
type User = components['schemas']['User']
type StoredFile = components['schemas']['File']

export interface Callers {
  baseUrl: string
  admin: Record<string, string>
  tenantUser(tenant: string): Record<string, string>
}

function dataOf<T>(result: { data?: T; error?: unknown; response: Response }, what: string): T {
  if (result.data === undefined) throw new Error(\`\${what}: \${result.response.status} \${JSON.stringify(result.error)}\`)
  return result.data
}

export async function flows({ baseUrl, admin, tenantUser }: Callers) {
  const client: Client<paths> = createClient<paths>({ baseUrl })

  const tenant: Tenant = dataOf(
    await client.POST('/auth/tenants', { headers: admin, body: { id: 'typed-client', name: 'Typed Client' } }),
    'create tenant'
  )
  const again = await client.POST('/auth/tenants', { headers: admin, body: { id: tenant.id, name: 'Again' } })
  const conflict: { status: number; code: string | undefined } = { status: again.response.status, code: again.error?.code }

  const headers = tenantUser(tenant.id)
  const scoped = { header: { 'x-tenant-id': tenant.id } }
  const user: User = dataOf(
    await client.POST('/users', { params: scoped, headers, body: { email: 'ada@typed.test', name: 'Ada' } }),
    'create user'
  )
  const fetched: User = dataOf(await client.GET('/users/{id}', { params: { ...scoped, path: { id: user.id } }, headers }), 'get user')

  const started = dataOf(
    await client.POST('/files', { params: scoped, headers, body: { filename: 'hello.txt', contentType: 'text/plain', size: 5 } }),
    'start an upload'
  )
  const method: 'PUT' = started.upload.method
  const put = await fetch(started.upload.url, { method, headers: started.upload.headers, body: 'hello' })
  if (!put.ok) throw new Error(\`upload: \${put.status} \${await put.text()}\`)
  const file: StoredFile = dataOf(
    await client.POST('/files/{id}/complete', { params: { ...scoped, path: { id: started.file.id } }, headers }),
    'finish the upload'
  )

  return { tenant, conflict, user, fetched, file, uploadUrl: started.upload.url }
}

/** Never called: it only has to fail to compile, line by line. */
export function refusedByTheTypes(client: Client<paths>) {
  // @ts-expect-error tenant-scoped routes require the X-Tenant-ID header parameter
  void client.POST('/users', { body: { email: 'a@b.test', name: 'A' } })
  // @ts-expect-error a user needs an email
  void client.POST('/users', { params: { header: { 'x-tenant-id': 'acme' } }, body: { name: 'A' } })
  // @ts-expect-error a tenant is active or suspended, nothing else
  void client.PATCH('/auth/tenants/{id}', { params: { path: { id: 'acme' } }, body: { status: 'deleted' } })
  // @ts-expect-error no such route
  void client.GET('/no-such-route')
  // @ts-expect-error an upload declares its size
  void client.POST('/files', { params: { header: { 'x-tenant-id': 'acme' } }, body: { filename: 'a', contentType: 'text/plain' } })
}
`

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022',
    module: 'NodeNext',
    moduleResolution: 'NodeNext',
    strict: true,
    noEmit: true,
    allowImportingTsExtensions: true,
    skipLibCheck: true,
    types: []
  },
  files: ['flows.ts']
}

const execFileAsync = promisify(execFile)

t.test('a client generated from openapi.json drives the main flows', async (t) => {
  // Inside the project (gitignored), so that the program resolves openapi-fetch from node_modules.
  const cache = path.join(PROJECT_ROOT, 'node_modules/.cache')
  await mkdir(cache, { recursive: true })
  const dir = await mkdtemp(path.join(cache, 'openapi-client-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))

  const document = JSON.parse(await readFile(OPENAPI_FILE, 'utf8')) as Record<string, unknown>
  const types = await generateClientTypes(document)
  t.match(types, /export interface paths/)
  await writeFile(path.join(dir, 'schema.ts'), types)
  await writeFile(path.join(dir, 'flows.ts'), CLIENT_PROGRAM)
  await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify(TSCONFIG, null, 2))

  const tsc = path.join(PROJECT_ROOT, 'node_modules/typescript/lib/tsc.js')
  // The compiler runs as plain node, without the hooks the test runner passes to child processes.
  const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '' }
  const checked = await execFileAsync(process.execPath, [tsc, '--noEmit', '-p', dir], { cwd: PROJECT_ROOT, env }).then(
    () => ({ ok: true, output: '' }),
    (error: { stdout?: string; stderr?: string }) => ({ ok: false, output: `${error.stdout ?? ''}${error.stderr ?? ''}` })
  )
  t.ok(checked.ok, 'the client program type-checks against the generated types')
  if (!checked.ok) {
    t.comment(checked.output)
    return
  }

  const s3 = await startTestS3()
  t.teardown(() => s3.stop())
  const { app, auth, admin, config } = await setupApp(t, s3.env)
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' })

  const program = (await import(pathToFileURL(path.join(dir, 'flows.ts')).href)) as {
    flows: (callers: { baseUrl: string; admin: Record<string, string>; tenantUser(tenant: string): Record<string, string> }) => Promise<{
      tenant: { id: string; status: string }
      conflict: { status: number; code?: string }
      user: { id: string; email: string }
      fetched: { id: string; email: string }
      file: { id: string; status: string; size: number }
      uploadUrl: string
    }>
  }
  const result = await program.flows({ baseUrl, admin: auth.admin(), tenantUser: (tenant) => auth.tenantUser(tenant) })

  t.equal(result.tenant.id, 'typed-client')
  t.equal(result.tenant.status, 'active')
  t.same(result.conflict, { status: 409, code: 'TENANT_EXISTS' }, 'errors arrive typed, with their code')
  t.same(result.fetched, result.user)
  t.equal(result.file.status, 'uploaded')
  t.equal(result.file.size, 5)

  const { rows: tenants } = await admin.query('SELECT id, status FROM public.tenants')
  t.same(tenants, [{ id: 'typed-client', status: 'active' }], 'the tenant exists, once')
  const { rows: users } = await admin.query('SELECT email FROM "typed-client".users WHERE id = $1', [result.user.id])
  t.same(users, [{ email: 'ada@typed.test' }], "the user is in the tenant's schema")
  const { rows: files } = await admin.query('SELECT key, status FROM "typed-client".files WHERE id = $1', [result.file.id])
  t.equal(files[0]?.status, 'uploaded')
  t.match(files[0]?.key, /^tenants\/typed-client\//, "the object key is under the tenant's prefix")
  t.equal((await s3.get(files[0].key))?.toString(), 'hello', 'the bytes are in the bucket')
  t.ok(config.S3_BUCKET, 'the flows ran against the test bucket')
})
