/**
 * `npm run openapi`: writes openapi.json, the API contract, generated from the routes' schemas.
 * `npm run openapi -- --types FILE` also writes TypeScript types for a typed client (openapi-fetch).
 *
 * The service is built exactly as server.ts builds it, against a database address nothing
 * listens on: nothing queries at start, so no PostgreSQL is needed. The output is deterministic
 * (keys sorted, two-space indentation, trailing newline), so the committed file diffs cleanly and
 * a test can tell when it is stale.
 */
import { writeFile } from 'node:fs/promises'
import { register } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app from '../app.ts'
import { loadConfig } from '../schemas/env.ts'
import { serverOptions } from '../server.ts'

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..').replace(/[\\/]dist$/, '')
export const OPENAPI_FILE = path.join(PROJECT_ROOT, 'openapi.json')

// Port 1: refused at once, should anything try to connect.
const UNREACHABLE_DATABASE = 'postgres://openapi@127.0.0.1:1/openapi'

/** Objects with their keys in order, recursively; arrays keep theirs (order means something there). */
export function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value === null || typeof value !== 'object') return value
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((key) => [key, sortKeys((value as Record<string, unknown>)[key])])
  )
}

/** The OpenAPI document of the service as built from this checkout. */
export async function generateOpenApi(): Promise<Record<string, unknown>> {
  // Under tsx loaded with --import, @fastify/autoload cannot tell that TypeScript files are fine.
  process.env.FASTIFY_AUTOLOAD_TYPESCRIPT ??= '1'
  const config = loadConfig({ NODE_ENV: 'test', LOG_LEVEL: 'silent', DATABASE_URL: UNREACHABLE_DATABASE })
  const fastify = Fastify(serverOptions(config))
  try {
    await fastify.register(fp(app), { config })
    await fastify.ready()
    return sortKeys(fastify.swagger()) as Record<string, unknown>
  } finally {
    await fastify.close()
  }
}

export const serializeOpenApi = (document: unknown) => `${JSON.stringify(document, null, 2)}\n`

/**
 * openapi-typescript drives the TypeScript 5 compiler API, which TypeScript 7 (the project's
 * compiler) no longer has. It gets TypeScript 5, installed as `typescript5`, through this resolve
 * hook; package.json's `overrides` only tells npm that its peer is satisfied.
 */
const TYPESCRIPT5_FOR_GENERATOR = `export async function resolve(specifier, context, next) {
  if (specifier === 'typescript' && context.parentURL?.includes('/node_modules/openapi-typescript/')) return next('typescript5', context)
  return next(specifier, context)
}`
let generatorLoaded: Promise<typeof import('openapi-typescript')> | null = null

/** TypeScript declarations (`paths`, `components`, `operations`) for openapi-fetch's createClient<paths>(). */
export async function generateClientTypes(document: Record<string, unknown>): Promise<string> {
  generatorLoaded ??= (async () => {
    register(`data:text/javascript,${encodeURIComponent(TYPESCRIPT5_FOR_GENERATOR)}`)
    return import('openapi-typescript')
  })()
  const { default: openapiTS, astToString, COMMENT_HEADER } = await generatorLoaded
  const nodes = await openapiTS(document as unknown as Parameters<typeof openapiTS>[0], { alphabetize: true })
  return COMMENT_HEADER + astToString(nodes)
}

async function main() {
  const { values } = parseArgs({ options: { types: { type: 'string' }, help: { type: 'boolean', short: 'h' } } })
  if (values.help) {
    console.log('Usage: npm run openapi [-- --types FILE]\n\nWrites openapi.json; with --types, also the client types to FILE.')
    return
  }
  const document = await generateOpenApi()
  await writeFile(OPENAPI_FILE, serializeOpenApi(document))
  console.log(`wrote ${path.relative(process.cwd(), OPENAPI_FILE) || OPENAPI_FILE}`)
  if (values.types) {
    await writeFile(values.types, await generateClientTypes(document))
    console.log(`wrote ${values.types}`)
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  await main()
}
