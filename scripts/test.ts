/**
 * `npm test`: finds a PostgreSQL for the suite, runs tap, and prints `N passed, M failed`.
 *
 * The cluster is, in order: TEST_DATABASE_URL when set; the machine's server at 127.0.0.1:5432
 * when it answers (TEST_PG_PROBE_URL overrides where to look); otherwise a throwaway embedded
 * PostgreSQL, so the suite passes on a machine with no server at all. TEST_PG=embedded forces the
 * embedded one. Each test file then creates and drops its own database on that cluster.
 */
import { spawn } from 'node:child_process'
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { Parser } from 'tap-parser'
import { findScratchCluster } from '../lib/embedded/postgres.ts'

const RESULTS_DIR = '.tap/test-results'

/** Counts every assertion in tap's saved per-file results, nested subtests included. */
async function countResults(): Promise<{ passed: number; failed: number }> {
  const totals = { passed: 0, failed: 0 }
  let files: string[] = []
  try {
    files = (await readdir(RESULTS_DIR, { recursive: true })).filter((file) => file.endsWith('.tap'))
  } catch {
    return totals
  }
  for (const file of files) {
    const parser = new Parser()
    const watch = (p: Parser) => {
      p.on('assert', (result: { ok: boolean; skip?: unknown; todo?: unknown }) => {
        if (result.skip || result.todo) return
        if (result.ok) totals.passed++
        else totals.failed++
      })
      p.on('child', watch)
    }
    watch(parser)
    const done = new Promise<void>((resolve) => parser.on('complete', () => resolve()))
    parser.end(await readFile(path.join(RESULTS_DIR, file), 'utf8'))
    await done
  }
  return totals
}

/**
 * package.json drops tap's ts-node loader (it breaks with TypeScript 7; tsx loads the tests). tap
 * notices a changed plugin list only after it has already started the first run's test processes
 * with the old one, so a fresh install is rebuilt here, before tap runs.
 */
async function ensureTapBuiltWithoutTsNode(): Promise<void> {
  const built = await readFile('node_modules/@tapjs/test/test-built/dist/esm/index.js', 'utf8').catch(() => '')
  if (!built.includes('@tapjs/typescript')) return
  console.log('rebuilding tap with the configured plugins')
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, [path.resolve('node_modules/tap/dist/esm/run.mjs'), 'build'], { stdio: 'inherit' })
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`tap build exited with ${code}`))))
  })
}

const cluster = await findScratchCluster({
  configured: process.env.TEST_DATABASE_URL ? { name: 'TEST_DATABASE_URL', url: process.env.TEST_DATABASE_URL } : undefined,
  probeUrl: process.env.TEST_PG_PROBE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  forceEmbedded: process.env.TEST_PG === 'embedded'
})
console.log(`tests run against ${cluster.label}`)
await rm(RESULTS_DIR, { recursive: true, force: true })

const tapBin = path.resolve('node_modules/tap/dist/esm/run.mjs')
await ensureTapBuiltWithoutTsNode()
const code = await new Promise<number>((resolve) => {
  const child = spawn(process.execPath, [tapBin, ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, TEST_DATABASE_URL: cluster.url }
  })
  child.on('exit', (exitCode, signal) => resolve(exitCode ?? (signal ? 1 : 0)))
})
await cluster.stop?.()

const { passed, failed } = await countResults()
if (process.env.TEST_SUMMARY_FILE) await writeFile(process.env.TEST_SUMMARY_FILE, JSON.stringify({ passed, failed, exitCode: code }))
console.log(`${passed} passed, ${failed} failed`)
process.exit(code !== 0 && failed === 0 ? code : failed > 0 ? 1 : 0)
