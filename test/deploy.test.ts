import { execFile } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1'
import { Deployment } from 'kubernetes-models/apps/v1'
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2'
import { Job } from 'kubernetes-models/batch/v1'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import { ConfigMap, Secret, Service, ServiceAccount } from 'kubernetes-models/v1'
import type { IContainer, IPodSpec, IProbe } from 'kubernetes-models/v1'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { cognitoIssuer, EnvSchema, loadConfig } from '../schemas/env.ts'
import { main as migrate, parseOptions as migrateOptions } from '../scripts/migrate.ts'
import { setupApp } from './helpers/app.ts'
import { type Resource, render, resourceId } from './helpers/kustomize.ts'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const deployDir = path.join(root, 'deploy')
const baseDir = path.join(deployDir, 'base')
const overlayDir = path.join(deployDir, 'overlays', 'example')

/**
 * The models validate against the official OpenAPI schemas of the Kubernetes API, and, for the
 * Prometheus Operator's kinds, against the schemas of its CustomResourceDefinitions.
 */
const models: Record<string, { type: string; module: string; create: (data: any) => { validate(): void } }> = {
  'v1/ConfigMap': { type: 'IConfigMap', module: 'kubernetes-models/v1', create: (data) => new ConfigMap(data) },
  'v1/Secret': { type: 'ISecret', module: 'kubernetes-models/v1', create: (data) => new Secret(data) },
  'v1/Service': { type: 'IService', module: 'kubernetes-models/v1', create: (data) => new Service(data) },
  'v1/ServiceAccount': { type: 'IServiceAccount', module: 'kubernetes-models/v1', create: (data) => new ServiceAccount(data) },
  'apps/v1/Deployment': { type: 'IDeployment', module: 'kubernetes-models/apps/v1', create: (data) => new Deployment(data) },
  'batch/v1/Job': { type: 'IJob', module: 'kubernetes-models/batch/v1', create: (data) => new Job(data) },
  'policy/v1/PodDisruptionBudget': { type: 'IPodDisruptionBudget', module: 'kubernetes-models/policy/v1', create: (data) => new PodDisruptionBudget(data) },
  'autoscaling/v2/HorizontalPodAutoscaler': {
    type: 'IHorizontalPodAutoscaler',
    module: 'kubernetes-models/autoscaling/v2',
    create: (data) => new HorizontalPodAutoscaler(data)
  },
  'networking.k8s.io/v1/NetworkPolicy': { type: 'INetworkPolicy', module: 'kubernetes-models/networking.k8s.io/v1', create: (data) => new NetworkPolicy(data) },
  'monitoring.coreos.com/v1/ServiceMonitor': {
    type: 'IServiceMonitor',
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
    create: (data) => new ServiceMonitor(data)
  },
  'monitoring.coreos.com/v1/PrometheusRule': {
    type: 'IPrometheusRule',
    module: '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
    create: (data) => new PrometheusRule(data)
  }
}

/** What `kubectl apply -k` sends: the base as deploy/ applies it, and the example overlay. */
const renderings = { base: await render(deployDir), overlay: await render(overlayDir) }
/** The Secret is created out of band; 00-secret.yaml is its example, kept out of the base. */
const secretExample = parse(await readFile(path.join(baseDir, '00-secret.yaml'), 'utf8')) as Resource

const oneOf = (resources: Resource[], kind: string, name?: string) => {
  const found = resources.filter((resource) => resource.kind === kind && (name === undefined || resource.metadata.name === name))
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`)
  return found[0]
}
const base = renderings.base
const one = (kind: string, name?: string) => oneOf(base, kind, name)
const configMap = one('ConfigMap')
const secret = secretExample
const service = one('Service')
const deployment = one('Deployment')
const job = one('Job')
const pdb = one('PodDisruptionBudget')
const hpa = one('HorizontalPodAutoscaler')
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

const KINDS = [
  'ConfigMap',
  'Deployment',
  'HorizontalPodAutoscaler',
  'Job',
  'NetworkPolicy',
  'NetworkPolicy',
  'PodDisruptionBudget',
  'PrometheusRule',
  'Service',
  'ServiceAccount',
  'ServiceMonitor'
]

t.test('the base and the overlay render to valid Kubernetes objects', async (t) => {
  for (const [name, resources] of Object.entries(renderings)) {
    t.same(resources.map((resource) => resource.kind).sort(), KINDS, `${name}: the objects of the base`)
    for (const resource of [...resources, secretExample]) {
      const model = models[`${resource.apiVersion}/${resource.kind}`]
      t.ok(model, `${name}: ${resource.apiVersion} ${resource.kind} is a known, current API`)
      if (!model) continue
      t.doesNotThrow(() => model.create(resource).validate(), `${name}: ${resourceId(resource)} matches the schema`)
    }
  }
  const invalid = structuredClone(oneOf(renderings.overlay, 'ServiceMonitor'))
  invalid.spec.endpoints[0].port = 9464
  t.throws(() => models['monitoring.coreos.com/v1/ServiceMonitor'].create(invalid).validate(), 'the CRD schema catches a wrong type')
  for (const resource of renderings.overlay) t.equal(resource.metadata.namespace, 'tenant-service', `overlay: ${resource.kind} in its namespace`)
  t.notOk(
    base.some((resource) => resource.kind === 'Secret'),
    'applying the base never overwrites the real Secret with placeholders'
  )
})

t.test('every manifest of deploy/base is in its kustomization', async (t) => {
  const kustomization = parse(await readFile(path.join(baseDir, 'kustomization.yaml'), 'utf8')) as { resources: string[] }
  const files = (await readdir(baseDir)).filter((name) => /\.ya?ml$/.test(name) && name !== 'kustomization.yaml' && name !== '00-secret.yaml')
  t.same([...kustomization.resources].sort(), files.sort())
})

/**
 * The real kustomize, to hold the renderer to: kubectl's built-in one (`kubectl kustomize`, on
 * this machine and CI's), and the standalone `kustomize` where it is installed. Each that is on
 * PATH renders deploy/ and the example overlay, and must give exactly the renderer's objects.
 */
const kustomizeTools = [
  { command: 'kubectl', args: ['kustomize'], version: ['version', '--client'] },
  { command: 'kustomize', args: ['build'], version: ['version'] }
] as const
const run = promisify(execFile)
const installed = async (command: string, args: readonly string[]) =>
  run(command, [...args], { timeout: 10_000 }).then(
    () => true,
    () => false
  )

for (const tool of kustomizeTools) {
  const present = await installed(tool.command, tool.version)
  t.test(
    `\`${tool.command} ${tool.args.join(' ')}\` renders the same objects as the renderer`,
    { skip: present ? false : `${tool.command} is not on PATH: the renderer alone renders (test/helpers/kustomize.ts)` },
    async (t) => {
      for (const [name, dir] of [
        ['base', deployDir],
        ['overlay', overlayDir]
      ] as const) {
        const { stdout } = await run(tool.command, [...tool.args, dir], { maxBuffer: 16 << 20 })
        const parsed = parseAllDocuments(stdout)
        t.same(
          parsed.flatMap((document) => document.errors.map((error) => error.message)),
          [],
          `${name}: ${tool.command} printed valid YAML`
        )
        const documents = parsed.map((document) => document.toJS() as Resource)
        const theirs = new Map(documents.map((resource) => [resourceId(resource), resource]))
        t.equal(theirs.size, documents.length, `${name}: ${tool.command} renders each object once`)
        // Order-insensitive: kustomize sorts by kind, the renderer keeps the kustomization's order.
        t.same([...theirs.keys()].sort(), renderings[name].map(resourceId).sort(), `${name}: the same objects as ${tool.command}`)
        for (const resource of renderings[name]) {
          t.strictSame(resource, theirs.get(resourceId(resource)), `${name}: ${resourceId(resource)} as ${tool.command} renders it`)
        }
      }
    }
  )
}

t.test('the renderer refuses what it does not implement, and applies the patches it does', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-kustomize-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const kustomization = async (name: string, body: string) => {
    await mkdir(path.join(dir, name), { recursive: true })
    await writeFile(path.join(dir, name, 'kustomization.yaml'), body)
    return path.join(dir, name)
  }
  const base = `resources: [${JSON.stringify(baseDir)}]\n`
  await t.rejects(render(await kustomization('prefix', `${base}namePrefix: staging-\n`)), /namePrefix not supported/, 'namePrefix is refused')
  await t.rejects(
    render(
      await kustomization(
        'list',
        `${base}patches:\n  - patch: |-\n      kind: Deployment\n      metadata: { name: tenant-service }\n      spec: { template: { spec: { containers: [] } } }\n`
      )
    ),
    /JSON 6902/,
    'a strategic-merge patch of a list is refused'
  )
  await t.rejects(
    render(
      await kustomization(
        'test-op',
        `${base}patches:\n  - target: { kind: HorizontalPodAutoscaler }\n    patch: '[{op: test, path: /spec/maxReplicas, value: 99}]'\n`
      )
    ),
    /test \/spec\/maxReplicas failed/,
    'a failed test operation stops the rendering'
  )
  await t.rejects(
    render(await kustomization('no-match', `${base}patches:\n  - target: { kind: CronJob }\n    patch: '[{op: remove, path: /spec}]'\n`)),
    /no resource matches/,
    'a patch that matches nothing is an error'
  )
  const patched = await render(
    await kustomization(
      'ops',
      `${base}patches:\n  - target: { kind: Deployment, name: tenant-service }\n    patch: |-\n      - { op: add, path: /spec/template/spec/containers/0/args, value: [--x] }\n      - { op: remove, path: /spec/revisionHistoryLimit }\n      - { op: replace, path: /spec/template/metadata/labels/app.kubernetes.io~1component, value: web }\n`
    )
  )
  const patchedDeployment = oneOf(patched, 'Deployment')
  t.same(patchedDeployment.spec.template.spec.containers[0].args, ['--x'], 'add')
  t.notOk('revisionHistoryLimit' in patchedDeployment.spec, 'remove')
  t.equal(patchedDeployment.spec.template.metadata.labels['app.kubernetes.io/component'], 'web', 'replace, with ~1 for a slash')
})

t.test('no manifest carries a field Kubernetes does not know', async (t) => {
  // The OpenAPI schemas allow unknown fields, which kubectl would then reject or drop. The models'
  // TypeScript types do not: an object literal with an unknown property fails to compile.
  const dir = await mkdtemp(path.join(tmpdir(), 'tenant-service-manifests-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await symlink(path.join(root, 'node_modules'), path.join(dir, 'node_modules'), 'dir')
  await copyFile(path.join(root, 'package.json'), path.join(dir, 'package.json'))
  const source = (documents: Resource[]) => {
    const imports = new Map<string, Set<string>>()
    const lines = documents.map((resource, index) => {
      const { type, module } = models[`${resource.apiVersion}/${resource.kind}`]
      imports.set(module, (imports.get(module) ?? new Set()).add(type))
      return `export const m${index}: ${type} = ${JSON.stringify(resource, null, 2)}`
    })
    return [...[...imports].map(([module, types]) => `import type { ${[...types].join(', ')} } from '${module}'`), ...lines].join('\n')
  }
  const canary = structuredClone(deployment)
  canary.spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem = true
  await writeFile(path.join(dir, 'manifests.ts'), source([...renderings.base, ...renderings.overlay, secretExample]))
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

t.test('the images: the kustomization names the build, the Job migrates with the Deployment’s', async (t) => {
  const kustomization = parse(await readFile(path.join(baseDir, 'kustomization.yaml'), 'utf8')) as {
    images: { name: string; newName: string; newTag: string }[]
  }
  const [image] = kustomization.images
  t.equal(container.image, `${image.newName}:${image.newTag}`, 'the base sets the Deployment’s image')
  for (const [name, resources] of Object.entries(renderings)) {
    const deploymentImage = oneOf(resources, 'Deployment').spec.template.spec.containers[0].image
    t.equal(
      oneOf(resources, 'Job').spec.template.spec.containers[0].image,
      deploymentImage,
      `${name}: the Job migrates with the image the Deployment rolls out`
    )
  }
  t.equal(oneOf(renderings.overlay, 'Deployment').spec.template.spec.containers[0].image, `${image.newName}:0.2.0`, 'the overlay moves the tag')
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

t.test('the ports line up: PORT, the container, the Service; the metrics port beside them', async (t) => {
  const port = configured('PORT')
  const containerPort = (name: string) => container.ports?.find((entry) => entry.name === name)
  const servicePort = (name: string) =>
    (service.spec.ports as { name: string; port: number; targetPort: string | number }[]).find((entry) => entry.name === name)
  t.equal(containerPort('http')?.containerPort, port, `the container port is PORT (${port})`)
  const target = servicePort('http')?.targetPort
  t.ok(target === 'http' || target === port, 'the Service targets the container port')
  t.equal(containerPort('metrics')?.containerPort, 9464, 'the container has a metrics port, 9464')
  t.equal(servicePort('metrics')?.targetPort, 'metrics', 'the Service has a metrics port, to the container’s')
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
  for (const [name, resources] of Object.entries(renderings)) {
    const data = oneOf(resources, 'ConfigMap').data as Record<string, string>
    for (const key of Object.keys({ ...data, ...secretValues }))
      t.ok(known.has(key) || key.startsWith('AWS_'), `${name}: ${key} is a variable the service reads`)
    const config = loadConfig({ ...data, ...secretValues })
    t.equal(config.NODE_ENV, 'production', `${name}: loadConfig accepts the manifests’ configuration`)
    // A Cognito pool, as deploy/README.md recommends: with its id, members are managed and the pool
    // is checked at start; the issuer is derived from it, never written beside it (that would
    // declare a pool not on AWS).
    t.ok(config.COGNITO_REGION && config.COGNITO_USER_POOL_ID, `${name}: a Cognito user pool is configured, so members are on`)
    t.notOk('JWT_ISSUER' in data, `${name}: the issuer is not set by hand`)
    t.equal(config.JWT_ISSUER, cognitoIssuer(config.COGNITO_REGION!, config.COGNITO_USER_POOL_ID!), `${name}: the issuer is the pool’s`)
    t.ok(config.JWT_CLIENT_ID, `${name}: tokens are checked against an app client`)
  }
  const [baseData, overlayData] = [renderings.base, renderings.overlay].map((resources) => oneOf(resources, 'ConfigMap').data as Record<string, string>)
  for (const key of ['COGNITO_REGION', 'COGNITO_USER_POOL_ID', 'JWT_CLIENT_ID']) {
    t.not(overlayData[key], baseData[key], `the overlay sets its own ${key}`)
  }
})

t.test('the migration Job runs the built migrate command once per rollout, and knows its exit codes', async (t) => {
  const spec = job.spec.template.spec as IPodSpec
  t.same(spec.containers[0].command, ['node', 'dist/scripts/migrate.js'])
  t.equal(spec.restartPolicy, 'Never', 'a failed run is a new pod, not a restart in place (podFailurePolicy requires it)')
  t.ok(Number.isInteger(job.spec.backoffLimit) && job.spec.backoffLimit <= 5, `backoffLimit ${job.spec.backoffLimit}`)
  const build = JSON.parse(await readFile(path.join(root, 'tsconfig.build.json'), 'utf8')) as { include: string[] }
  t.ok(build.include.includes('scripts/migrate.ts'), 'the build compiles scripts/migrate.ts to dist/scripts/migrate.js')

  const rules = job.spec.podFailurePolicy?.rules as {
    action: string
    onExitCodes?: { containerName?: string; operator: string; values: number[] }
    onPodConditions?: { type: string; status: string }[]
  }[]
  t.ok(rules?.length, 'the Job has a podFailurePolicy')
  const disruption = rules.findIndex((rule) => rule.onPodConditions?.some((condition) => condition.type === 'DisruptionTarget' && condition.status === 'True'))
  t.equal(rules[disruption]?.action, 'Ignore', 'a pod evicted or preempted is replaced without counting as a failure')
  const failJob = rules.find((rule) => rule.action === 'FailJob')
  t.equal(failJob?.onExitCodes?.operator, 'In')
  t.equal(failJob?.onExitCodes?.containerName, spec.containers[0].name, 'the rule names the migrate container')
  t.ok(rules.indexOf(failJob!) > disruption, 'a disruption is recognised before an exit code')
  // The exit codes that fail the Job at once are those migrate gives when a rerun cannot help.
  const quiet = process.stderr.write
  process.stderr.write = () => true
  const statuses = await Promise.all([
    migrate(['--concurrency', '0']),
    migrate([], { NODE_ENV: 'production' }),
    migrate([], { NODE_ENV: 'production', DATABASE_URL: 'not a url' })
  ]).finally(() => {
    process.stderr.write = quiet
  })
  t.same(failJob?.onExitCodes?.values, [...new Set(statuses)], `FailJob on ${statuses.join(', ')}: bad usage, configuration missing or invalid`)
  t.notOk(failJob?.onExitCodes?.values.includes(1), 'a failed tenant (exit 1) is retried: a rerun finishes the rest')
})

t.test('the PodDisruptionBudget lets a drain proceed while keeping a replica', async (t) => {
  t.ok(matches(pdb.spec.selector.matchLabels, deployment.spec.template.metadata.labels), 'it covers the Deployment’s pods')
  t.ok(pdb.spec.minAvailable >= 1, 'at least one replica stays up')
  t.ok(pdb.spec.minAvailable < hpa.spec.minReplicas, 'a node can still be drained at the fewest replicas')
})

t.test('the autoscaler: replicas × connections stay within the database’s connection budget', async (t) => {
  t.notOk('replicas' in deployment.spec, 'the Deployment leaves the replica count to the autoscaler')
  t.same(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name }, 'it scales the Deployment')
  t.ok(hpa.spec.minReplicas >= 2 && hpa.spec.minReplicas <= hpa.spec.maxReplicas, `minReplicas ${hpa.spec.minReplicas}`)
  for (const [name, resources] of Object.entries(renderings)) {
    const autoscaler = oneOf(resources, 'HorizontalPodAutoscaler')
    const annotation = (key: string) => {
      const value = Number(autoscaler.metadata.annotations?.[`tenant-service/${key}`])
      t.ok(Number.isInteger(value) && value >= 0, `${name}: annotation tenant-service/${key} is a count (${value})`)
      return value
    }
    const maxConnections = annotation('postgres-max-connections')
    const reserved = annotation('postgres-reserved-connections')
    const others = annotation('postgres-other-connections')
    const migrateJob = oneOf(resources, 'Job')
    const { concurrency } = migrateOptions(migrateJob.spec.template.spec.containers[0].args ?? [])
    const poolMax = Number(oneOf(resources, 'ConfigMap').data.PG_POOL_MAX ?? EnvSchema.properties.PG_POOL_MAX.default)
    // The pool (read lanes included), the LISTEN connection for tenant changes, and one more at
    // start (the control-plane migration, then the database check), never two at once.
    const perPod = poolMax + 2
    const surge = oneOf(resources, 'Deployment').spec.strategy.rollingUpdate.maxSurge
    t.ok(Number.isInteger(surge), `${name}: maxSurge is a number of pods (${surge})`)
    const budget = maxConnections - reserved - others - concurrency
    const pods = autoscaler.spec.maxReplicas + surge
    t.ok(
      pods * perPod <= budget,
      `${name}: (${autoscaler.spec.maxReplicas} + ${surge}) pods × (PG_POOL_MAX ${poolMax} + 2) = ${pods * perPod} ≤ ${maxConnections} − ${reserved} − ${others} − ${concurrency} = ${budget}`
    )
    t.ok((pods + 1) * perPod > budget, `${name}: maxReplicas is the most the budget allows (one more pod: ${(pods + 1) * perPod} > ${budget})`)
  }
})

t.test('the network policy admits the API from the cluster, metrics from Prometheus only', async (t) => {
  type Peer = { namespaceSelector?: { matchLabels?: Record<string, string> }; podSelector?: { matchLabels?: Record<string, string> }; ipBlock?: unknown }
  type Rule = { from?: Peer[]; to?: Peer[]; ports?: { port: string | number; protocol?: string }[] }
  const policies = base.filter((resource) => resource.kind === 'NetworkPolicy')
  const forPods = (labels: Record<string, string>) => policies.filter((policy) => matches(policy.spec.podSelector.matchLabels, labels))
  const [api] = forPods(deployment.spec.template.metadata.labels)
  t.equal(forPods(deployment.spec.template.metadata.labels).length, 1, 'one policy selects the service’s pods')
  t.same(api.spec.policyTypes, ['Ingress', 'Egress'], 'it restricts both directions')
  const ingress = api.spec.ingress as Rule[]
  const rulesFor = (port: string) => ingress.filter((rule) => rule.ports?.some((entry) => entry.port === port))
  for (const rule of ingress) {
    for (const entry of rule.ports ?? [])
      t.ok(
        container.ports?.some((p) => p.name === entry.port),
        `ingress port ${entry.port} is a container port`
      )
    t.ok(rule.ports?.length, 'no ingress rule opens every port')
  }
  t.same(rulesFor('http')[0]?.from, [{ namespaceSelector: {} }], 'http: from any namespace of the cluster')
  const metrics = rulesFor('metrics')
  t.equal(metrics.length, 1, 'metrics: one rule')
  t.same(
    metrics[0]?.from?.map((peer) => [peer.namespaceSelector?.matchLabels, peer.podSelector?.matchLabels]),
    [[{ 'kubernetes.io/metadata.name': 'monitoring' }, { 'app.kubernetes.io/name': 'prometheus' }]],
    'metrics: from the Prometheus pods of the monitoring namespace only'
  )
  const egressPorts = (policy: Resource) =>
    new Set((policy.spec.egress as Rule[]).flatMap((rule) => (rule.ports ?? []).map((entry) => `${entry.port}/${entry.protocol ?? 'TCP'}`)))
  t.same(
    [...egressPorts(api)].sort(),
    ['4317/TCP', '4318/TCP', '443/TCP', '53/TCP', '53/UDP', '5432/TCP', '6379/TCP'],
    'out: DNS, PostgreSQL, Redis, HTTPS, OTLP'
  )
  // An in-cluster OpenTelemetry collector listens on the OTLP ports, not 443: without them, a
  // configured OTEL_EXPORTER_OTLP_ENDPOINT exports nothing.
  for (const port of [4317, 4318]) {
    t.ok(
      (api.spec.egress as Rule[]).some(
        (rule) => rule.to === undefined && rule.ports?.some((entry) => entry.port === port && (entry.protocol ?? 'TCP') === 'TCP')
      ),
      `out: OTLP ${port}/TCP to any collector address`
    )
  }
  const [migrateJob] = forPods(job.spec.template.metadata.labels)
  t.ok(migrateJob, 'a policy selects the migration pod')
  t.same(migrateJob?.spec.ingress, [], 'nothing reaches the migration pod')
  t.same([...egressPorts(migrateJob)].sort(), ['53/TCP', '53/UDP', '5432/TCP'], 'the migration pod reaches DNS and PostgreSQL only')
})

t.test('the ServiceMonitor scrapes the metrics port, under the job the alerts select', async (t) => {
  const monitor = one('ServiceMonitor')
  t.ok(matches(monitor.spec.selector.matchLabels, service.metadata.labels), 'it selects the Service')
  t.same(
    monitor.spec.endpoints.map((endpoint: { port: string; path: string }) => [endpoint.port, endpoint.path]),
    [['metrics', '/metrics']],
    'port metrics, path /metrics'
  )
  const job = service.metadata.labels?.[monitor.spec.jobLabel]
  t.equal(job, 'tenant-service', `the job is named after the Service’s ${monitor.spec.jobLabel} label`)
  const rules = one('PrometheusRule').spec.groups.flatMap((group: { rules: { expr: string }[] }) => group.rules)
  const jobs = new Set(rules.flatMap((rule: { expr: string }) => [...rule.expr.matchAll(/job="([^"]*)"/g)].map((match) => match[1])))
  t.same([...jobs], [job], 'the alerts select that job')
})
