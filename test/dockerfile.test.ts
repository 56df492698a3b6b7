import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { copyFile, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises'
import { builtinModules } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { EnvSchema } from '../schemas/env.ts'
import { eventually } from './helpers/wait.ts'
import { setupApp } from './helpers/app.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const execFileAsync = promisify(execFile)
/** Runs a build tool as npm would: without the test runner's loaders in NODE_OPTIONS. */
const run = (file: string, args: string[], options: { cwd: string }) => {
  const { NODE_OPTIONS: _loaders, ...env } = process.env
  return execFileAsync(file, args, { ...options, env })
}

interface Instruction {
  keyword: string
  flags: Record<string, string>
  /** The arguments after the flags, as written. */
  args: string
  /** Exec form (`["node", "x.js"]`), when the arguments are a JSON array. */
  exec?: string[]
  line: number
}

interface Stage {
  index: number
  image: string
  name?: string
  instructions: Instruction[]
}

/**
 * Reads a Dockerfile the way the builder does for the instructions checked here: comment lines
 * (also inside continuations) are dropped, backslash continuations joined, leading `--flag=value`
 * options split off, exec-form arguments parsed as JSON.
 */
export function parseDockerfile(text: string): Stage[] {
  const lines = text.split(/\r?\n/)
  const escapeChar = /^#\s*escape\s*=\s*(\S)/im.exec(lines.slice(0, 5).join('\n'))?.[1] ?? '\\'
  const stages: Stage[] = []
  let pending = ''
  let startLine = 0
  const flush = () => {
    const body = pending.trim()
    pending = ''
    if (!body) return
    const match = /^(\S+)\s*([\s\S]*)$/.exec(body)!
    const keyword = match[1].toUpperCase()
    let rest = match[2]
    const flags: Record<string, string> = {}
    for (let flag = /^--([\w-]+)(?:=(\S*))?\s*/.exec(rest); flag; flag = /^--([\w-]+)(?:=(\S*))?\s*/.exec(rest)) {
      flags[flag[1]] = flag[2] ?? 'true'
      rest = rest.slice(flag[0].length)
    }
    const instruction: Instruction = { keyword, flags, args: rest.trim(), line: startLine }
    if (instruction.args.startsWith('[')) {
      try {
        instruction.exec = JSON.parse(instruction.args)
      } catch {
        // Shell form that happens to start with a bracket.
      }
    }
    if (keyword === 'FROM') {
      const [image, as, name] = instruction.args.split(/\s+/)
      stages.push({ index: stages.length, image, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [instruction] })
    } else {
      if (stages.length === 0) {
        if (keyword === 'ARG') return
        throw new Error(`line ${startLine}: ${keyword} before the first FROM`)
      }
      stages.at(-1)!.instructions.push(instruction)
    }
  }
  lines.forEach((raw, index) => {
    const line = raw.trimEnd()
    if (/^\s*#/.test(line)) return
    if (!pending) startLine = index + 1
    if (!pending && line.trim() === '') return
    if (line.endsWith(escapeChar)) {
      pending += `${line.slice(0, -1)} `
    } else {
      pending += line
      flush()
    }
  })
  flush()
  return stages
}

/** `ENV A=1 B="two"` and the legacy `ENV A 1`. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {}
  for (const instruction of stage.instructions.filter((i) => i.keyword === 'ENV')) {
    const pairs = [...instruction.args.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|'[^']*'|\S+)/g)]
    if (pairs.length === 0) {
      const [key, ...value] = instruction.args.split(/\s+/)
      env[key] = value.join(' ')
    }
    for (const [, key, value] of pairs) env[key] = value.replace(/^["']|["']$/g, '')
  }
  return env
}

const lastOf = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword).at(-1)
const runs = (stage: Stage) => stage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.exec?.join(' ') ?? i.args)
const installsAll = (command: string) => /\bnpm (ci|install)\b/.test(command) && !/--omit[= ]dev|--production\b/.test(command)
const installsProductionOnly = (command: string) => /\bnpm (ci|install|prune)\b/.test(command) && /--omit[= ]dev|--production\b/.test(command)

/** A stage and the stages it is built FROM, nearest first. */
function lineage(stages: Stage[], stage: Stage): Stage[] {
  const chain = [stage]
  let parent = stages.find((candidate) => candidate.name === stage.image && candidate.index < stage.index)
  while (parent) {
    chain.push(parent)
    const current: Stage = parent
    parent = stages.find((candidate) => candidate.name === current.image && candidate.index < current.index)
  }
  return chain
}

const dockerfile = await readFile(path.join(root, 'Dockerfile'), 'utf8')
const stages = parseDockerfile(dockerfile)
const runtime = stages.at(-1)!

t.test('the parser reads continuations, flags, comments and exec form', async (t) => {
  const parsed = parseDockerfile(
    [
      '# syntax=docker/dockerfile:1',
      'ARG BASE=node:24-slim',
      'FROM node:24-slim AS one',
      'RUN --mount=type=cache,target=/root/.npm \\',
      '    # a comment inside a continuation',
      '    npm ci \\',
      '      --omit=dev',
      'ENV A=1 B="two words"',
      'COPY --from=one --chown=node:node /app/x ./x',
      'FROM one',
      'CMD ["node", "dist/server.js"]'
    ].join('\n')
  )
  t.equal(parsed.length, 2)
  t.equal(parsed[0].name, 'one')
  t.equal(parsed[1].image, 'one')
  const [, runInstruction, env, copy] = parsed[0].instructions
  t.same(runInstruction.flags, { mount: 'type=cache,target=/root/.npm' })
  t.match(runInstruction.args, /^npm ci\s+--omit=dev$/)
  t.equal(runInstruction.line, 4)
  t.same(envOf({ ...parsed[0], instructions: [env] }), { A: '1', B: 'two words' })
  t.same(copy.flags, { from: 'one', chown: 'node:node' })
  t.same(parsed[1].instructions[1].exec, ['node', 'dist/server.js'])
})

t.test('three kinds of stage: install with dev dependencies, build, runtime', async (t) => {
  t.ok(stages.length >= 3, `${stages.length} stages`)
  const install = stages.find((stage) => runs(stage).some(installsAll))
  t.ok(install, 'a stage installs every dependency (the compiler included)')
  const build = stages.find((stage) => runs(stage).some((command) => /\bnpm run build\b/.test(command)))
  t.ok(build, 'a stage runs npm run build')
  t.ok(build && install && lineage(stages, build).includes(install), 'the build stage is built on the install stage')
  t.not(runtime, build, 'the runtime is a stage of its own')
  t.notOk(
    lineage(stages, runtime).some((stage) => stage === build || stage === install),
    'the runtime does not inherit the build tools'
  )
})

t.test('the runtime is Node 24 slim or alpine, in production mode, with no HEALTHCHECK', async (t) => {
  t.match(
    runtime.image,
    /^(docker\.io\/(library\/)?)?node:24([.-][\w.-]*)?-(bookworm-slim|bullseye-slim|trixie-slim|slim|alpine[\d.]*)(@sha256:[0-9a-f]{64})?$/
  )
  t.equal(envOf(runtime).NODE_ENV, 'production')
  t.notOk(
    stages.some((stage) => stage.instructions.some((i) => i.keyword === 'HEALTHCHECK')),
    'probes are Kubernetes’ job'
  )
  const exposed = runtime.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/))
  const port = envOf(runtime).PORT ?? String(EnvSchema.properties.PORT.default)
  t.ok(
    exposed.some((entry) => entry.replace(/\/tcp$/, '') === port),
    `EXPOSE ${port}`
  )
})

t.test('the runtime runs as a non-root user under an init', async (t) => {
  const users = runtime.instructions.filter((i) => i.keyword === 'USER')
  const cmd = lastOf(runtime, 'CMD')!
  t.ok(users.length > 0, 'USER is set in the runtime stage')
  const user = users.at(-1)!
  t.notOk(/^(root|0)(:|$)/.test(user.args), `USER ${user.args} is not root`)
  t.ok(user.line < cmd.line, 'USER comes before CMD')
  t.notOk(
    runtime.instructions.some((i) => i.keyword === 'RUN' && i.line > user.line),
    'nothing runs as the service user at build time'
  )

  const entrypoint = lastOf(runtime, 'ENTRYPOINT')
  t.ok(entrypoint?.exec, 'ENTRYPOINT in exec form, so the init is PID 1')
  t.match(path.basename(entrypoint?.exec?.[0] ?? ''), /^(tini|dumb-init)$/)
  const init = path.basename(entrypoint?.exec?.[0] ?? 'tini')
  t.ok(
    runs(runtime).some((command) => command.includes(init)),
    `the runtime installs ${init}`
  )
})

t.test('the runtime has production dependencies only', async (t) => {
  for (const command of runs(runtime)) t.notOk(installsAll(command), `no full install in the runtime: ${command}`)
  const copies = runtime.instructions.filter((i) => i.keyword === 'COPY' && /node_modules/.test(i.args))
  const installsInPlace = runs(runtime).some(installsProductionOnly)
  t.ok(copies.length > 0 || installsInPlace, 'node_modules comes from somewhere')
  for (const copy of copies) {
    const source = stages.find((stage) => stage.name === copy.flags.from || String(stage.index) === copy.flags.from)
    t.ok(source, `COPY ${copy.args} names a stage`)
    if (!source) continue
    const commands = lineage(stages, source).flatMap(runs)
    t.ok(commands.some(installsProductionOnly), `${source.name} installs with --omit=dev`)
    t.notOk(commands.some(installsAll), `${source.name} never installed dev dependencies`)
  }
})

t.test('installing without scripts loses nothing the image needs', async (t) => {
  const ignoring = stages.flatMap(runs).filter((command) => /\bnpm ci\b/.test(command) && /--ignore-scripts/.test(command))
  if (ignoring.length === 0) return t.pass('scripts are not ignored')
  const lock = JSON.parse(await readFile(path.join(root, 'package-lock.json'), 'utf8')) as {
    packages: Record<string, { dev?: boolean; hasInstallScript?: boolean }>
  }
  // A script package.json's allowScripts refuses runs on no install, this one's included.
  const { allowScripts = {} } = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { allowScripts?: Record<string, boolean> }
  const productionScripts = Object.entries(lock.packages)
    .filter(([name, entry]) => name && entry.hasInstallScript && !entry.dev)
    .map(([name]) => name)
    .filter((name) => allowScripts[name.slice(name.lastIndexOf('node_modules/') + 'node_modules/'.length)] !== false)
  t.same(productionScripts, [], 'no production dependency has an install script that an install would run')
})

t.test('.dockerignore keeps host state out of the build context', async (t) => {
  const ignored = (await readFile(path.join(root, '.dockerignore'), 'utf8'))
    .split('\n')
    .map((line) => line.trim().replace(/^\/|\/$/g, ''))
    .filter((line) => line && !line.startsWith('#'))
  for (const entry of ['node_modules', '.data', 'dist', '.git', '.tap']) t.ok(ignored.includes(entry), entry)
})

/** Bare specifiers that the compiled files reachable from `entries` import statically. */
async function staticPackageImports(entries: string[], base: string): Promise<Map<string, string>> {
  const seen = new Set<string>()
  const packages = new Map<string, string>()
  const queue = [...entries]
  while (queue.length > 0) {
    const file = queue.pop()!
    if (seen.has(file)) continue
    seen.add(file)
    const source = await readFile(file, 'utf8')
    const specifiers = [
      ...source.matchAll(/^\s*(?:import|export)\s[^'";]*?\sfrom\s*['"]([^'"]+)['"]/gm),
      ...source.matchAll(/^\s*import\s*['"]([^'"]+)['"]/gm)
    ].map((match) => match[1])
    for (const specifier of specifiers) {
      if (specifier.startsWith('.')) queue.push(path.resolve(path.dirname(file), specifier))
      else if (!specifier.startsWith('node:') && !builtinModules.includes(specifier)) {
        const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]
        packages.set(name, path.relative(base, file))
      }
    }
  }
  return packages
}

async function jsFiles(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return []
  const entries = await readdir(dir, { recursive: true })
  return entries.filter((entry) => entry.endsWith('.js')).map((entry) => path.join(dir, entry))
}

t.test('npm run build produces what the image runs, and the compiled service works', async (t) => {
  // Laid out like /app in the image: package.json, node_modules, dist/.
  const app = await mkdtemp(path.join(tmpdir(), 'tenant-service-build-'))
  t.teardown(() => rm(app, { recursive: true, force: true }))
  await copyFile(path.join(root, 'package.json'), path.join(app, 'package.json'))
  await symlink(path.join(root, 'node_modules'), path.join(app, 'node_modules'), 'dir')
  const dist = path.join(app, 'dist')
  await run(process.execPath, [path.join(root, 'node_modules/typescript/lib/tsc.js'), '-p', 'tsconfig.build.json', '--outDir', dist], { cwd: root })
  await run(process.execPath, ['scripts/copy-migrations.mjs', dist], { cwd: root })

  const cmd = lastOf(runtime, 'CMD')?.exec
  t.same(cmd, ['node', 'dist/server.js'], 'CMD starts the compiled server with no build step')
  t.ok(existsSync(path.join(app, cmd?.[1] ?? 'dist/server.js')), `${cmd?.[1]} is in the build output`)

  // Every command the deploy manifests start the image with exists in the build too.
  const deployDir = path.join(root, 'deploy')
  const manifests = existsSync(deployDir) ? (await readdir(deployDir)).filter((name) => /\.ya?ml$/.test(name)) : []
  for (const name of manifests) {
    for (const document of parseAllDocuments(await readFile(path.join(deployDir, name), 'utf8'))) {
      const resource = document.toJS() as { spec?: { template?: { spec?: { containers?: { command?: string[] }[] } } } } | null
      for (const container of resource?.spec?.template?.spec?.containers ?? []) {
        const command = container.command
        if (command?.[0] === 'node') t.ok(existsSync(path.join(app, command[1])), `${name}: ${command.join(' ')} is in the build output`)
      }
    }
  }

  const emitted = await readdir(dist, { recursive: true })
  t.same(
    emitted.filter((file) => /\.(d\.)?ts$/.test(file)),
    [],
    'no TypeScript or declaration files in dist/'
  )
  t.notOk(
    emitted.some((file) => file.startsWith('test') || file.startsWith('bench')),
    'no tests or benchmarks in dist/'
  )
  const sourceMigrations = (await readdir(path.join(root, 'migrations'), { recursive: true })).filter((file) => file.endsWith('.sql')).sort()
  const builtMigrations = (await readdir(path.join(dist, 'migrations'), { recursive: true })).filter((file) => file.endsWith('.sql')).sort()
  t.same(builtMigrations, sourceMigrations, 'every migration is copied to dist/migrations')

  // The image installs production dependencies only: the compiled service must not import a
  // devDependency from any file it loads (the embedded stand-ins are loaded on demand, outside production).
  const manifest = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  const entries = [
    path.join(dist, 'server.js'),
    ...(await jsFiles(path.join(dist, 'scripts'))),
    ...(await jsFiles(path.join(dist, 'plugins/external'))),
    ...(await jsFiles(path.join(dist, 'plugins/app'))),
    ...(await jsFiles(path.join(dist, 'routes')))
  ]
  const imported = await staticPackageImports(entries, app)
  t.ok(imported.has('fastify'), 'the import graph was followed')
  for (const [name, from] of imported) t.ok(name in manifest.dependencies, `${name} (imported by ${from}) is a production dependency`)

  // Autoload finds the compiled plugins and routes: the built service has the same routes as the sources.
  const context = await setupApp(t)
  const compiledApp = ((await import(pathToFileURL(path.join(dist, 'app.js')).href)) as typeof import('../app.ts')).default
  const { serverOptions } = (await import(pathToFileURL(path.join(dist, 'server.js')).href)) as typeof import('../server.ts')
  let compiled: FastifyInstance | undefined
  try {
    compiled = Fastify(serverOptions(context.config))
    await compiled.register(fp(compiledApp), { config: context.config })
    await compiled.ready()
    t.equal(compiled.printRoutes({ commonPrefix: false }), context.app.printRoutes({ commonPrefix: false }))
    const live = await compiled.inject({ method: 'GET', url: '/health/live' })
    t.equal(live.statusCode, 200)
    // Ready once its dependencies answer: on a loaded machine the first JWKS fetch may need its retry.
    const probe = () => compiled!.inject({ method: 'GET', url: '/health/ready?verbose', headers: context.auth.admin() })
    await eventually(async () => (await probe()).statusCode === 200, 15_000, 200)
    const ready = await probe()
    if (ready.statusCode !== 200) t.comment(ready.body)
    t.equal(ready.statusCode, 200, 'the compiled service is ready')
    t.equal(ready.json().status, 'ready')
  } finally {
    await compiled?.close()
  }
})
