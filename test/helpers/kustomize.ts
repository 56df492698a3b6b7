import { readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { parse, parseAllDocuments } from 'yaml'

/**
 * Renders a kustomization as `kubectl kustomize` (and so `kubectl apply -k`) does, for the part of
 * kustomize that deploy/ uses, so the tests can render and check the base and its overlays on any
 * machine: npm packages neither kustomize nor kubectl, and not every machine has one. Where kubectl
 * (or kustomize) is on PATH, as on this project's CI, test/deploy.test.ts renders with it too and
 * requires the very same objects. Supported:
 *
 * - `resources`: manifest files, and directories holding a kustomization (rendered first);
 * - `patches`: each from `path` or inline `patch`, aimed by `target` (kind, name, group, version)
 *   or, for a strategic-merge patch, by its own apiVersion, kind and name. A JSON 6902 patch (a
 *   list of operations: add, remove, replace, test) is applied as RFC 6902 says. A strategic-merge
 *   patch is supported on maps only: kustomize merges lists by key, per field, and a patch with a
 *   list is refused here rather than merged differently;
 * - `namespace`: set on every (namespaced) object;
 * - `images`: `newName`, `newTag` and `digest` for containers whose image has that `name`.
 *
 * They run in kustomize's order: patches, then the namespace, then images. Any other field of a
 * kustomization is refused, so a rendering here never silently differs from kustomize's.
 */

export interface Resource {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  [field: string]: any
}

interface ImageOverride {
  name: string
  newName?: string
  newTag?: string
  digest?: string
}

interface PatchTarget {
  kind?: string
  name?: string
  group?: string
  version?: string
}

interface Patch {
  path?: string
  patch?: string
  target?: PatchTarget
}

interface Kustomization {
  apiVersion?: string
  kind?: string
  resources?: string[]
  namespace?: string
  images?: ImageOverride[]
  patches?: Patch[]
}

const FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'images', 'patches'])
const KUSTOMIZATION_FILES = ['kustomization.yaml', 'kustomization.yml', 'Kustomization']
/** Kinds that live outside any namespace: `namespace` leaves them alone. */
const CLUSTER_SCOPED = new Set([
  'Namespace',
  'ClusterRole',
  'ClusterRoleBinding',
  'CustomResourceDefinition',
  'PriorityClass',
  'StorageClass',
  'PersistentVolume'
])

export class KustomizeError extends Error {}

const isMap = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)

export const resourceId = (resource: Resource) =>
  `${resource.kind}/${resource.metadata.namespace ? `${resource.metadata.namespace}/` : ''}${resource.metadata.name}`

async function kustomizationFile(dir: string): Promise<string> {
  for (const name of KUSTOMIZATION_FILES) {
    const file = path.join(dir, name)
    if (
      await stat(file).then(
        (entry) => entry.isFile(),
        () => false
      )
    )
      return file
  }
  throw new KustomizeError(`${dir}: no kustomization.yaml`)
}

async function readManifests(file: string): Promise<Resource[]> {
  const resources: Resource[] = []
  for (const document of parseAllDocuments(await readFile(file, 'utf8'))) {
    if (document.errors.length > 0) throw new KustomizeError(`${file}: ${document.errors.map((error) => error.message).join('; ')}`)
    const resource = document.toJS() as Resource | null
    if (resource === null) continue
    if (!resource.apiVersion || !resource.kind || !resource.metadata?.name) {
      throw new KustomizeError(`${file}: a document without apiVersion, kind or metadata.name`)
    }
    resources.push(resource)
  }
  return resources
}

/** Renders the kustomization in `dir`: the objects `kubectl apply -k dir` would send. */
export async function render(dir: string): Promise<Resource[]> {
  const file = await kustomizationFile(dir)
  const kustomization = (parse(await readFile(file, 'utf8')) ?? {}) as Kustomization
  const unknown = Object.keys(kustomization).filter((field) => !FIELDS.has(field))
  if (unknown.length > 0) throw new KustomizeError(`${file}: ${unknown.join(', ')} not supported by this renderer (test/helpers/kustomize.ts)`)

  let resources: Resource[] = []
  for (const entry of kustomization.resources ?? []) {
    const target = path.resolve(dir, entry)
    const entryStat = await stat(target).catch(() => null)
    if (!entryStat) throw new KustomizeError(`${file}: resource ${entry} does not exist`)
    resources.push(...(entryStat.isDirectory() ? await render(target) : await readManifests(target)))
  }
  const seen = new Set<string>()
  for (const resource of resources) {
    const id = resourceId(resource)
    if (seen.has(id)) throw new KustomizeError(`${file}: ${id} appears twice`)
    seen.add(id)
  }

  for (const [index, patch] of (kustomization.patches ?? []).entries()) {
    resources = await applyPatch(resources, patch, dir, `${file}: patches[${index}]`)
  }
  if (kustomization.namespace !== undefined) {
    for (const resource of resources) {
      if (!CLUSTER_SCOPED.has(resource.kind)) resource.metadata.namespace = kustomization.namespace
    }
  }
  for (const image of kustomization.images ?? []) {
    for (const resource of resources) overrideImage(resource, image)
  }
  return resources
}

const groupVersion = (apiVersion: string) => {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : ['', apiVersion]
  return { group, version }
}

function selects(target: PatchTarget, resource: Resource): boolean {
  const unknown = Object.keys(target).filter((field) => !['kind', 'name', 'group', 'version'].includes(field))
  if (unknown.length > 0) throw new KustomizeError(`patch target field ${unknown.join(', ')} not supported by this renderer`)
  const { group, version } = groupVersion(resource.apiVersion)
  return (
    (target.kind === undefined || target.kind === resource.kind) &&
    (target.name === undefined || target.name === resource.metadata.name) &&
    (target.group === undefined || target.group === group) &&
    (target.version === undefined || target.version === version)
  )
}

async function applyPatch(resources: Resource[], patch: Patch, dir: string, where: string): Promise<Resource[]> {
  if ((patch.path === undefined) === (patch.patch === undefined)) throw new KustomizeError(`${where}: give either path or patch`)
  const text = patch.path !== undefined ? await readFile(path.resolve(dir, patch.path), 'utf8') : patch.patch!
  const body = parse(text) as unknown
  let target = patch.target
  if (!Array.isArray(body) && !target) {
    if (!isMap(body) || typeof body.kind !== 'string' || !isMap(body.metadata) || typeof body.metadata.name !== 'string') {
      throw new KustomizeError(`${where}: a strategic-merge patch without a target must name its kind and metadata.name`)
    }
    target = { kind: body.kind, name: body.metadata.name }
  }
  if (!target) throw new KustomizeError(`${where}: a JSON 6902 patch needs a target`)
  let matched = 0
  const patched = resources.map((resource) => {
    if (!selects(target, resource)) return resource
    matched++
    const copy = structuredClone(resource)
    if (Array.isArray(body)) return applyJson6902(copy, body, where) as Resource
    if (!isMap(body)) throw new KustomizeError(`${where}: a patch is a map (strategic merge) or a list of operations (JSON 6902)`)
    // As kustomize does, the object keeps its own identity: a patch's kind and name only aim it.
    const { apiVersion: _apiVersion, kind: _kind, metadata, ...rest } = body
    const { name: _name, namespace: _namespace, ...otherMetadata } = isMap(metadata) ? metadata : {}
    return mergeMaps(copy, metadata === undefined ? rest : { ...rest, metadata: otherMetadata }, where) as Resource
  })
  if (matched === 0) throw new KustomizeError(`${where}: no resource matches ${JSON.stringify(target)}`)
  return patched
}

function mergeMaps(base: Record<string, unknown>, patch: Record<string, unknown>, where: string): Record<string, unknown> {
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith('$')) throw new KustomizeError(`${where}: strategic-merge directive ${key} not supported by this renderer`)
    if (Array.isArray(value)) {
      throw new KustomizeError(`${where}: ${key} is a list; kustomize merges lists by key, this renderer does not: use a JSON 6902 patch`)
    }
    if (value === null) delete base[key]
    else if (isMap(value)) base[key] = mergeMaps(isMap(base[key]) ? base[key] : {}, value, where)
    else base[key] = value
  }
  return base
}

interface Operation {
  op: string
  path: string
  value?: unknown
}

function pointer(path: string, where: string): string[] {
  if (path === '') return []
  if (!path.startsWith('/')) throw new KustomizeError(`${where}: ${path} is not a JSON pointer`)
  return path
    .slice(1)
    .split('/')
    .map((token) => token.replaceAll('~1', '/').replaceAll('~0', '~'))
}

function applyJson6902(document: unknown, operations: Operation[], where: string): unknown {
  for (const operation of operations) {
    const tokens = pointer(operation.path, where)
    if (tokens.length === 0) throw new KustomizeError(`${where}: an operation on the whole document is not supported`)
    const last = tokens.at(-1)!
    let parent: unknown = document
    for (const token of tokens.slice(0, -1)) {
      parent = Array.isArray(parent) ? parent[Number(token)] : isMap(parent) ? parent[token] : undefined
      if (parent === undefined) throw new KustomizeError(`${where}: ${operation.op} ${operation.path}: no such path`)
    }
    const fail = () => {
      throw new KustomizeError(`${where}: ${operation.op} ${operation.path}: no such path`)
    }
    if (Array.isArray(parent)) {
      const index = last === '-' ? parent.length : Number(last)
      if (!Number.isInteger(index) || index < 0 || index > parent.length) fail()
      if (operation.op === 'add') parent.splice(index, 0, structuredClone(operation.value))
      else if (index >= parent.length) fail()
      else if (operation.op === 'remove') parent.splice(index, 1)
      else if (operation.op === 'replace') parent[index] = structuredClone(operation.value)
      else if (operation.op === 'test') testValue(parent[index], operation, where)
      else throw new KustomizeError(`${where}: operation ${operation.op} not supported by this renderer`)
    } else if (isMap(parent)) {
      if (operation.op === 'add') parent[last] = structuredClone(operation.value)
      else if (!(last in parent)) fail()
      else if (operation.op === 'remove') delete parent[last]
      else if (operation.op === 'replace') parent[last] = structuredClone(operation.value)
      else if (operation.op === 'test') testValue(parent[last], operation, where)
      else throw new KustomizeError(`${where}: operation ${operation.op} not supported by this renderer`)
    } else {
      fail()
    }
  }
  return document
}

function testValue(actual: unknown, operation: Operation, where: string) {
  if (JSON.stringify(actual) !== JSON.stringify(operation.value)) {
    throw new KustomizeError(`${where}: test ${operation.path} failed: ${JSON.stringify(actual)} is not ${JSON.stringify(operation.value)}`)
  }
}

/** `registry/name:tag@digest` → its name (what `images[].name` matches) and the rest. */
export function splitImage(image: string): { name: string; tag?: string; digest?: string } {
  const [withTag, digest] = image.split('@') as [string, string | undefined]
  const colon = withTag.lastIndexOf(':')
  const hasTag = colon > withTag.lastIndexOf('/')
  return { name: hasTag ? withTag.slice(0, colon) : withTag, tag: hasTag ? withTag.slice(colon + 1) : undefined, digest }
}

function overrideImage(node: unknown, image: ImageOverride) {
  if (Array.isArray(node)) {
    for (const item of node) overrideImage(item, image)
    return
  }
  if (!isMap(node)) return
  for (const [key, value] of Object.entries(node)) {
    if ((key === 'containers' || key === 'initContainers') && Array.isArray(value)) {
      for (const container of value) {
        if (!isMap(container) || typeof container.image !== 'string') continue
        const current = splitImage(container.image)
        if (current.name !== image.name) continue
        const name = image.newName ?? current.name
        if (image.digest) container.image = `${name}@${image.digest}`
        else {
          const tag = image.newTag ?? current.tag
          container.image = `${name}${tag ? `:${tag}` : ''}${!image.newTag && current.digest ? `@${current.digest}` : ''}`
        }
      }
    } else {
      overrideImage(value, image)
    }
  }
}
