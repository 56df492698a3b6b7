/**
 * CI: builds the service and runs the compiled server the way the image does (`node dist/server.js`,
 * NODE_ENV=production, nothing embedded) against a fresh database on the machine's PostgreSQL. It
 * must listen, answer /health/live and /health/ready, and exit 0 on SIGTERM.
 *
 *   tsx scripts/ci-smoke-prod.ts [--summary FILE] [--no-build] [--node PATH]
 *
 * --node runs the compiled server with another Node.js binary than the one running this script:
 * CI passes Node 24 LTS, the container image's runtime, so the image's `node dist/server.js` is
 * proven on the version it ships with even when the whole suite runs on the machine's Node 20.
 *
 * Production refuses to start without its dependencies, so a JWKS issuer and an S3-compatible
 * bucket are started here, on loopback. `productionEnv` below is the whole environment the server
 * gets: a new required variable goes there. The cluster is SMOKE_PG_URL, else TEST_DATABASE_URL,
 * else postgres://postgres@127.0.0.1:5432/postgres. Prints `N passed, M failed` last, and writes
 * the same counts as JSON to --summary.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { createScratchDatabase } from '../lib/embedded/postgres.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

interface Dependencies {
  databaseUrl: string
  /** The scratch database's role prefix: the tenant and spare roles the server makes are dropped with it. */
  rolePrefix: string
  issuer: string
  s3Endpoint: string
  bucket: string
}

/** Everything the compiled server is started with. */
function productionEnv(deps: Dependencies): Record<string, string> {
  return {
    NODE_ENV: 'production',
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    DATABASE_URL: deps.databaseUrl,
    TENANT_ROLE_PREFIX: deps.rolePrefix,
    JWT_ISSUER: deps.issuer,
    JWT_CLIENT_ID: 'ci-smoke-client',
    S3_BUCKET: deps.bucket,
    S3_ENDPOINT: deps.s3Endpoint,
    S3_FORCE_PATH_STYLE: 'true',
    S3_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    SHUTDOWN_GRACE_MS: '10000'
  }
}

const { values: options } = parseArgs({
  options: { summary: { type: 'string' }, 'no-build': { type: 'boolean', default: false }, node: { type: 'string' } }
})
const nodeBinary = options.node ?? process.execPath

const started = performance.now()
const results: { name: string; ok: boolean; detail?: string }[] = []
function check(name: string, ok: boolean, detail?: string) {
  results.push({ name, ok, detail })
  const at = ((performance.now() - started) / 1000).toFixed(1)
  console.log(`${ok ? 'ok' : 'not ok'} - ${name} [${at} s]${detail && !ok ? `: ${detail}` : ''}`)
  return ok
}

const cleanups: (() => Promise<unknown>)[] = []
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function runCommand(command: string, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: root, stdio: 'inherit' })
    child.on('error', () => resolve(1))
    child.on('exit', (code) => resolve(code ?? 1))
  })
}

async function createDatabase(): Promise<{ url: string; rolePrefix: string }> {
  const clusterUrl = process.env.SMOKE_PG_URL ?? process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const database = await createScratchDatabase(clusterUrl, 'smoke')
  cleanups.push(() => database.drop())
  return { url: database.url, rolePrefix: database.rolePrefix }
}

/** An issuer publishing one freshly generated RS256 key, as Cognito does under the pool's URL. */
async function startIssuer(): Promise<string> {
  const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'ci-smoke', alg: 'RS256', use: 'sig' }] })
  const server = http.createServer((request, response) => {
    if (request.url === '/ci-smoke-pool/.well-known/jwks.json') response.writeHead(200, { 'content-type': 'application/json' }).end(jwks)
    else response.writeHead(404).end()
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  cleanups.push(() => new Promise((resolve) => server.close(resolve)))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/ci-smoke-pool`
}

interface S3rverInstance {
  run(): Promise<AddressInfo>
  close(): Promise<void>
}
type S3rverConstructor = new (options: Record<string, unknown>) => S3rverInstance

async function startS3(bucket: string): Promise<string> {
  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverConstructor
  const directory = await mkdtemp(path.join(tmpdir(), 'tenant-service-smoke-s3-'))
  const s3 = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] })
  const { port } = await s3.run()
  cleanups.push(async () => {
    await s3.close()
    await rm(directory, { recursive: true, force: true })
  })
  return `http://127.0.0.1:${port}`
}

async function get(url: string): Promise<{ status: number; body: string }> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(5000) })
    return { status: response.status, body: await response.text() }
  } catch (error) {
    return { status: 0, body: (error as Error).message }
  }
}

/** Polls until `url` answers 200, or the deadline passes; returns the last answer. */
async function until200(url: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  let last = await get(url)
  while (last.status !== 200 && Date.now() < deadline) {
    await sleep(250)
    last = await get(url)
  }
  return last
}

async function smoke() {
  const nodeVersion = spawnSync(nodeBinary, ['--version'], { encoding: 'utf8' }).stdout?.trim()
  if (!check(`${nodeBinary} runs`, Boolean(nodeVersion))) return
  if (!options['no-build']) {
    const built = check('npm run build', (await runCommand('npm', ['run', 'build'])) === 0)
    if (!built) return
  }

  const bucket = 'ci-smoke'
  const database = await createDatabase()
  const deps: Dependencies = {
    databaseUrl: database.url,
    rolePrefix: database.rolePrefix,
    issuer: await startIssuer(),
    s3Endpoint: await startS3(bucket),
    bucket
  }

  const { NODE_OPTIONS: _loaders, ...inherited } = process.env
  const server: ChildProcess = spawn(nodeBinary, ['dist/server.js'], {
    cwd: root,
    env: { ...inherited, ...productionEnv(deps) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    server.on('exit', (code, signal) => resolve({ code, signal }))
  )
  cleanups.push(async () => {
    if (server.exitCode === null && server.signalCode === null) {
      server.kill('SIGKILL')
      await exited
    }
  })

  let stdout = ''
  let stderr = ''
  server.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
  server.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))

  const deadline = Date.now() + 60_000
  let base: string | undefined
  while (!base && Date.now() < deadline && server.exitCode === null) {
    base = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(stdout)?.[1]
    if (!base) await sleep(100)
  }
  if (!check(`the compiled server listens in production mode on Node ${nodeVersion}`, base !== undefined, `${stdout}\n${stderr}`.trim().slice(-2000))) return

  const live = await until200(`${base}/health/live`, 10_000)
  check('GET /health/live is 200', live.status === 200, `${live.status} ${live.body}`)
  const ready = await until200(`${base}/health/ready`, 20_000)
  check('GET /health/ready is 200', ready.status === 200, `${ready.status} ${ready.body}`)

  const client = new pg.Client({ connectionString: deps.databaseUrl })
  await client.connect()
  const { rows } = await client
    .query<{ count: number }>('SELECT count(*)::int AS count FROM public.schema_migrations')
    .catch((error: Error) => ({ rows: [{ count: 0 }], error }))
  await client.end()
  check('the control plane was migrated at start', rows[0].count > 0)

  server.kill('SIGTERM')
  const timeout = sleep(20_000).then(() => 'timeout' as const)
  const outcome = await Promise.race([exited, timeout])
  check(
    'SIGTERM drains and exits 0',
    outcome !== 'timeout' && outcome.code === 0,
    outcome === 'timeout' ? 'still running after 20 s' : `exit code ${outcome.code}, signal ${outcome.signal}\n${stderr.slice(-2000)}`
  )

  const lines = stdout.split('\n').filter((line) => line.trim() !== '')
  const notJson = lines.filter((line) => {
    try {
      JSON.parse(line)
      return false
    } catch {
      return true
    }
  })
  check('production logs are one JSON object per line', notJson.length === 0, notJson.slice(0, 3).join('\n'))
}

try {
  await smoke()
} catch (error) {
  check('the smoke run completed', false, (error as Error).stack)
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup().catch((error) => console.error(`cleanup: ${(error as Error).message}`))
}

const passed = results.filter((result) => result.ok).length
const failed = results.length - passed
if (options.summary) await writeFile(options.summary, JSON.stringify({ passed, failed, exitCode: failed > 0 ? 1 : 0 }))
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed > 0 ? 1 : 0)
