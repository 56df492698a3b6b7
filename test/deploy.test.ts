import { execFile } from 'node:child_process'
import { copyFile, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { Deployment } from 'kubernetes-models/apps/v1'
import { Job } from 'kubernetes-models/batch/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1'
import type { IContainer, IPodSpec, IProbe } from 'kubernetes-models/v1'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { EnvSchema, loadConfig } from '../schemas/env.ts'
import { setupApp } from './helpers/app.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const deployDir = path.join(root, 'deploy')

interface Manifest {
  file: string
  resource: { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } } & Record<string, any>
}

/** The models validate against the official OpenAPI schemas of the Kubernetes API. */
const models: Record<string, { type: string; create: (data: any) => { validate(): void } }> = {
  'v1/ConfigMap': { type: 'IConfigMap', create: (data) => new ConfigMap(data) },
  'v1/Secret': { type: 'ISecret', create: (data) => new Secret(data) },
  'v1/Service': { type: 'IService', create: (data) => new Service(data) },
  'v1/ServiceAccount': { type: 'IServiceAccount', create: (data) => new ServiceAccount(data) },
  'apps/v1/Deployment': { type: 'IDeployment', create: (data) => new Deployment(data) },
  'batch/v1/Job': { type: 'IJob', create: (data) => new Job(data) },
  'policy/v1/PodDisruptionBudget': { type: 'IPodDisruptionBudget', create: (data) => new PodDisruptionBudget(data) }
}
const typeModule: Record<string, string> = {
  v1: 'kubernetes-models/v1',
  'apps/v1': 'kubernetes-models/apps/v1',
  'batch/v1': 'kubernetes-models/batch/v1',
  'policy/v1': 'kubernetes-models/policy/v1'
}

const manifests: Manifest[] = []
for (const file of (await readdir(deployDir)).filter((name) => /\.ya?ml$/.test(name)).sort()) {
  for (const document of parseAllDocuments(await readFile(path.join(deployDir, file), 'utf8'))) {
    if (document.errors.length > 0) throw new Error(`${file}: ${document.errors.map((error) => error.message).join('; ')}`)
    const resource = document.toJS()
    // deploy/ may also hold files for other tools (Prometheus rules); only Kubernetes objects are checked here.
    if (resource?.apiVersion && resource?.kind) manifests.push({ file, resource })
  }
}

const one = (kind: string) => {
  const found = manifests.filter((manifest) => manifest.resource.kind === kind)
  if (found.length !== 1) throw new Error(`expected one ${kind} in deploy/, found ${found.length}`)
  return found[0].resource
}
const configMap = one('ConfigMap')
const secret = one('Secret')
const service = one('Service')
const deployment = one('Deployment')
const job = one('Job')
const pdb = one('PodDisruptionBudget')
const podSpec = deployment.spec.template.spec as IPodSpec
const container = podSpec.containers[0] as IContainer
const secretValues: Record<string, string> = {
  ...Object.fromEntries(Object.entries((secret.data ?? {}) as Record<string, string>).map(([key, value]) => [key, Buffer.from(value, 'base64').toString()])),
  ...(secret.stringData ?? {})
}
/** What the container sees, as far as the manifests say. */
const containerEnv: Record<string, string> = { ...configMap.data, ...secretValues }
const configured = (name: keyof typeof EnvSchema.properties) => Number(containerEnv[name] ?? EnvSchema.properties[name].default)

const matches = (selector: Record<string, string>, labels: Record<string, string> | undefined) =>
  Object.entries(selector).every(([key, value]) => labels?.[key] === value)

t.test('every manifest is a valid Kubernetes object', async (t) => {
  const kinds = manifests.map((manifest) => manifest.resource.kind).sort()
  t.same(kinds, ['ConfigMap', 'Deployment', 'Job', 'PodDisruptionBudget', 'Secret', 'Service', 'ServiceAccount'])
  for (const { file, resource } of manifests) {
    const model = models[`${resource.apiVersion}/${resource.kind}`]
    t.ok(model, `${file}: ${resource.apiVersion} ${resource.kind} is a known, current API`)
    if (!model) continue
    t.doesNotThrow(() => model.create(resource).validate(), `${file}: ${resource.kind} ${resource.metadata.name} matches the schema`)
  }
})

t.test('no manifest carries a field Kubernetes does not know', async (t) => {
  // The OpenAPI schemas allow unknown fields, which kubectl would then reject or drop. The models'
  // TypeScript types do not: an object literal with an unknown property fails to compile.
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-manifests-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await symlink(path.join(root, 'node_modules'), path.join(dir, 'node_modules'), 'dir')
  await copyFile(path.join(root, 'package.json'), path.join(dir, 'package.json'))
  const source = (documents: Manifest[]) => {
    const imports = new Map<string, Set<string>>()
    const lines = documents.map(({ resource }, index) => {
      const { type } = models[`${resource.apiVersion}/${resource.kind}`]
      const module = typeModule[resource.apiVersion]
      imports.set(module, (imports.get(module) ?? new Set()).add(type))
      return `export const m${index}: ${type} = ${JSON.stringify(resource, null, 2)}`
    })
    return [...[...imports].map(([module, types]) => `import type { ${[...types].join(', ')} } from '${module}'`), ...lines].join('\n')
  }
  const canary = structuredClone(manifests.find((manifest) => manifest.resource.kind === 'Deployment')!)
  canary.resource.spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem = true
  await writeFile(path.join(dir, 'manifests.ts'), source(manifests))
  await writeFile(path.join(dir, 'canary.ts'), source([canary]))
  await writeFile(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', skipLibCheck: true, types: [] },
      files: ['manifests.ts', 'canary.ts']
    })
  )
  const { NODE_OPTIONS: _loaders, ...env } = process.env
  const output = await promisify(execFile)(process.execPath, [path.join(root, 'node_modules/typescript/lib/tsc.js'), '-p', dir], { env, cwd: dir }).then(
    ({ stdout }) => stdout,
    (error: { stdout: string }) => error.stdout
  )
  const errors = output.split('\n').filter((line) => /error TS/.test(line))
  t.same(
    errors.filter((line) => !line.startsWith('canary.ts')),
    [],
    'the manifests type-check'
  )
  t.ok(
    errors.some((line) => line.startsWith('canary.ts') && /readOnlyRootFileSystem\W+does not exist/.test(line)),
    'a misspelt field is caught'
  )
})

t.test('the probe paths are routes of the service, and answer', async (t) => {
  const { app } = await setupApp(t)
  const probes: [string, IProbe | undefined][] = [
    ['startup', container.startupProbe],
    ['liveness', container.livenessProbe],
    ['readiness', container.readinessProbe]
  ]
  for (const [name, probe] of probes) {
    const url = probe?.httpGet?.path
    t.ok(url, `${name} probe is an HTTP GET`)
    if (!url) continue
    t.ok(app.hasRoute({ method: 'GET', url }), `${name}: GET ${url} is a route`)
    const response = await app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 200, `${name}: GET ${url} answers 200 on a healthy service`)
    t.ok(probe!.httpGet!.port === 'http' || probe!.httpGet!.port === configured('PORT'), `${name} probe targets the service port`)
  }
  t.equal(container.livenessProbe?.httpGet?.path, '/health/live', 'liveness never depends on the database')
  t.equal(container.readinessProbe?.httpGet?.path, '/health/ready')
})

t.test('the ports line up: PORT, the container, the Service', async (t) => {
  const port = configured('PORT')
  const http = container.ports?.find((entry) => entry.name === 'http')
  t.equal(http?.containerPort, port, `the container port is PORT (${port})`)
  const target = service.spec.ports[0].targetPort
  t.ok(target === 'http' || target === port, 'the Service targets the container port')
  t.ok(matches(service.spec.selector, deployment.spec.template.metadata.labels), 'the Service selects the pods')
  t.notOk(matches(service.spec.selector, job.spec.template.metadata.labels), 'the Service does not select the migration pod')
  t.ok(matches(deployment.spec.selector.matchLabels, deployment.spec.template.metadata.labels), 'the Deployment selects its pods')
})

t.test('shutdown: the grace period covers preStop and the drain', async (t) => {
  const drainSeconds = configured('SHUTDOWN_GRACE_MS') / 1000
  const preStop = container.lifecycle?.preStop
  const command = preStop?.exec?.command ?? []
  const sleepSeconds = preStop?.sleep?.seconds ?? (command[0] === 'sleep' ? Number(command[1]) : NaN)
  t.ok(sleepSeconds >= 1 && sleepSeconds <= 15, `preStop sleeps a few seconds (${sleepSeconds})`)
  const grace = podSpec.terminationGracePeriodSeconds ?? 30
  t.ok(grace > drainSeconds + sleepSeconds, `terminationGracePeriodSeconds ${grace} > ${drainSeconds} s drain + ${sleepSeconds} s preStop`)
  t.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0, 'a rollout never lowers capacity')
})

t.test('the pods run locked down, as the image user', async (t) => {
  for (const resource of [deployment, job]) {
    const spec = resource.spec.template.spec as IPodSpec
    const name = `${resource.kind} ${resource.metadata.name}`
    for (const c of spec.containers) {
      const context = { ...spec.securityContext, ...c.securityContext }
      t.equal(context.runAsNonRoot, true, `${name}: runAsNonRoot`)
      t.equal(context.runAsUser, 1000, `${name}: runs as uid 1000 (node)`)
      t.equal(c.securityContext?.readOnlyRootFilesystem, true, `${name}: read-only root filesystem`)
      t.equal(c.securityContext?.allowPrivilegeEscalation, false, `${name}: no privilege escalation`)
      t.same(c.securityContext?.capabilities?.drop, ['ALL'], `${name}: every capability dropped`)
      t.equal(context.seccompProfile?.type, 'RuntimeDefault', `${name}: RuntimeDefault seccomp profile`)
      const tmp = c.volumeMounts?.find((mount) => mount.mountPath === '/tmp')
      const volume = spec.volumes?.find((entry) => entry.name === tmp?.name)
      t.ok(volume?.emptyDir, `${name}: /tmp is a writable emptyDir`)
      for (const kind of ['requests', 'limits'] as const) {
        t.ok(c.resources?.[kind]?.cpu && c.resources?.[kind]?.memory, `${name}: cpu and memory ${kind}`)
      }
    }
    t.equal(spec.automountServiceAccountToken, false, `${name}: no Kubernetes API token`)
  }
})

t.test('configuration: a ConfigMap and a Secret that make a valid production configuration', async (t) => {
  for (const resource of [deployment, job]) {
    const envFrom = (resource.spec.template.spec as IPodSpec).containers[0].envFrom ?? []
    t.ok(
      envFrom.some((source) => source.configMapRef?.name === configMap.metadata.name),
      `${resource.kind} reads the ConfigMap`
    )
    t.ok(
      envFrom.some((source) => source.secretRef?.name === secret.metadata.name),
      `${resource.kind} reads the Secret`
    )
  }
  t.ok(secretValues.DATABASE_URL, 'DATABASE_URL is in the Secret')
  t.notOk('DATABASE_URL' in (configMap.data ?? {}), 'no connection string in the ConfigMap')

  const known = new Set(Object.keys(EnvSchema.properties))
  for (const key of Object.keys(containerEnv)) t.ok(known.has(key) || key.startsWith('AWS_'), `${key} is a variable the service reads`)
  t.equal(configMap.data.NODE_ENV, 'production')
  const config = loadConfig(containerEnv)
  t.equal(config.NODE_ENV, 'production', 'loadConfig accepts the manifests’ configuration')
})

t.test('the migration Job runs the built migrate command once per rollout', async (t) => {
  const spec = job.spec.template.spec as IPodSpec
  t.same(spec.containers[0].command, ['node', 'dist/scripts/migrate.js'])
  t.equal(spec.restartPolicy, 'Never', 'a failed run is a new pod, not a restart in place')
  t.ok(Number.isInteger(job.spec.backoffLimit) && job.spec.backoffLimit <= 5, `backoffLimit ${job.spec.backoffLimit}`)
  t.equal(spec.containers[0].image, container.image, 'the Job migrates with the image the Deployment rolls out')
  const build = JSON.parse(await readFile(path.join(root, 'tsconfig.build.json'), 'utf8')) as { include: string[] }
  t.ok(build.include.includes('scripts/migrate.ts'), 'the build compiles scripts/migrate.ts to dist/scripts/migrate.js')
})

t.test('the PodDisruptionBudget lets a drain proceed while keeping a replica', async (t) => {
  t.ok(matches(pdb.spec.selector.matchLabels, deployment.spec.template.metadata.labels), 'it covers the Deployment’s pods')
  t.ok(pdb.spec.minAvailable >= 1, 'at least one replica stays up')
  t.ok(pdb.spec.minAvailable < deployment.spec.replicas, 'a node can still be drained')
})
