import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'

/**
 * The layout's rules (lib/README.md, plugins/README.md): lib/ is plain modules that load without
 * Fastify, plugins/ holds only plugins, and code outside a lib/ group goes through its front door.
 */

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

async function tsFiles(dir: string): Promise<string[]> {
  const entries = await readdir(path.join(root, dir), { recursive: true, withFileTypes: true })
  return entries
    .filter((entry) => entry.isFile() && entry.name.endsWith('.ts'))
    .map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)))
    .sort()
}

/** Every module specifier a file imports or re-exports at run time (`import type` is erased). */
function runtimeImports(source: string): string[] {
  const specifiers: string[] = []
  for (const match of source.matchAll(/^\s*(import|export)\s+(type\s+)?[^'";]*?from\s+'([^']+)'/gm)) {
    if (!match[2]) specifiers.push(match[3])
  }
  for (const match of source.matchAll(/^\s*import\s+'([^']+)'/gm)) specifiers.push(match[1])
  for (const match of source.matchAll(/\bimport\(\s*['`]([^'`]+)['`]/g)) specifiers.push(match[1])
  return specifiers
}

const isFastify = (specifier: string) => /^(fastify|fastify-plugin|@fastify\/)/.test(specifier)

t.test('lib/ imports nothing from Fastify at run time', async (t) => {
  const files = await tsFiles('lib')
  t.ok(files.length > 20, `found lib/'s modules (${files.length})`)
  for (const file of files) {
    const fastify = runtimeImports(await readFile(path.join(root, file), 'utf8')).filter(isFastify)
    t.same(fastify, [], `${file} imports Fastify only as types`)
  }
})

t.test("lib/'s modules load in a process where Fastify cannot be found", async (t) => {
  const files = (await tsFiles('lib')).filter((file) => !file.startsWith('lib/embedded/'))
  // A resolve hook that refuses Fastify's packages, then every module of lib/ imported.
  const refuseFastify = `export async function resolve(specifier, context, next) {
    if (/^(fastify|fastify-plugin|@fastify\\/)/.test(specifier)) throw new Error('lib/ loaded ' + specifier + ' from ' + context.parentURL)
    return next(specifier, context)
  }`
  const script = [
    `import { register } from 'node:module'`,
    `register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(refuseFastify)}))`,
    ...files.map((file) => `await import(${JSON.stringify(pathToFileURL(path.join(root, file)).href)})`),
    `console.log('loaded ${files.length}')`
  ].join('\n')
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root })
  t.match(stdout, `loaded ${files.length}`, 'every module loaded')
})

t.test('plugins/ holds only Fastify plugins', async (t) => {
  for (const file of await tsFiles('plugins')) {
    const source = await readFile(path.join(root, file), 'utf8')
    t.match(source, /^export default fp\(/m, `${file} exports a plugin wrapped in fastify-plugin`)
  }
})

t.test('outside lib/, a lib/ group is reached through its front door (index.ts)', async (t) => {
  const groups = new Set<string>()
  for (const entry of await readdir(path.join(root, 'lib'), { withFileTypes: true })) {
    const index = path.join(root, 'lib', entry.name, 'index.ts')
    if (entry.isDirectory() && (await readFile(index, 'utf8').catch(() => null)) !== null) groups.add(entry.name)
  }
  t.ok(groups.has('tenant-db') && groups.has('tenants'), 'the groups with a front door are found')
  const files = ['app.ts', 'server.ts', ...(await tsFiles('plugins')), ...(await tsFiles('routes')), ...(await tsFiles('scripts'))]
  for (const file of files) {
    const source = await readFile(path.join(root, file), 'utf8')
    const behind = [...source.matchAll(/from\s+'([^']*\/lib\/([\w-]+)\/([\w.-]+)\.ts)'/g)]
      .filter(([, , group, module]) => groups.has(group) && module !== 'index')
      .map(([, specifier]) => specifier)
    t.same(behind, [], `${file} imports no group's private module`)
  }
})

t.test("lib/tenant-db's front door exports the handle's type, not its class", async (t) => {
  const front = await import('../lib/tenant-db/index.ts')
  t.notOk('TenantScopedDb' in front, 'nothing outside lib/tenant-db can construct a handle')
  t.type(front.createTenantDb, 'function', 'handles come from createTenantDb(…).open')
})
