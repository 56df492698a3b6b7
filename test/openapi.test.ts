import { readFile } from 'node:fs/promises'
import SwaggerParser from '@apidevtools/swagger-parser'
import t from 'tap'
import { generateOpenApi, OPENAPI_FILE, serializeOpenApi, sortKeys } from '../scripts/openapi.ts'
import { ERROR_CATALOGUE } from '../schemas/errors.ts'
import { setupApp } from './helpers/app.ts'

interface Operation {
  parameters?: { in: string; name: string; required?: boolean; schema?: { format?: string } }[]
  requestBody?: unknown
  responses: Record<string, { content?: Record<string, { schema?: Record<string, unknown> }>; headers?: Record<string, { schema?: { type?: string } }> }>
  security?: Record<string, string[]>[]
}

interface Document {
  openapi: string
  paths: Record<string, Record<string, Operation>>
  components: { schemas: Record<string, unknown>; securitySchemes?: Record<string, { type: string; scheme?: string }> }
}

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']
const ERROR_REF = '#/components/schemas/ErrorBody'

const operations = (document: Document) =>
  Object.entries(document.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => METHODS.includes(method))
      .map(([method, operation]) => ({ path, method, operation, name: `${method.toUpperCase()} ${path}` }))
  )

const tenantHeader = (operation: Operation) =>
  operation.parameters?.find((parameter) => parameter.in === 'header' && parameter.name.toLowerCase() === 'x-tenant-id')

const committed = JSON.parse(await readFile(OPENAPI_FILE, 'utf8')) as Document

t.test('openapi.json is what the routes generate (run `npm run openapi` after changing a route)', async (t) => {
  const generated = serializeOpenApi(await generateOpenApi())
  t.equal(await readFile(OPENAPI_FILE, 'utf8'), generated, 'openapi.json is up to date')
  t.equal(serializeOpenApi(await generateOpenApi()), generated, 'generation is deterministic')
})

t.test('an independent validator accepts the document', async (t) => {
  const api = await SwaggerParser.validate(structuredClone(committed) as never)
  t.equal((api as { openapi?: string }).openapi, committed.openapi)
})

t.test('every operation documents a typed success and the error body', async (t) => {
  const all = operations(committed)
  t.ok(all.length >= 10, `${all.length} operations`)
  for (const { name, operation } of all) {
    const statuses = Object.keys(operation.responses)
    const success = statuses.filter((status) => /^2\d\d$/.test(status))
    t.ok(success.length > 0, `${name} documents a 2xx`)
    for (const status of success) {
      if (status === '204') {
        t.notOk(operation.responses[status].content, `${name} ${status} has no body`)
        continue
      }
      const schema = operation.responses[status].content?.['application/json']?.schema
      t.ok(schema && (schema.$ref || schema.type), `${name} ${status} has a typed JSON body`)
    }
    const errors = statuses.filter((status) => /^[45]\d\d$/.test(status))
    t.ok(
      errors.some((status) => operation.responses[status].content?.['application/json']?.schema?.$ref === ERROR_REF),
      `${name} documents an error response with the error body`
    )
  }
})

t.test('every 503 and 429 declares Retry-After, which the service sends with each of them', async (t) => {
  let declared = 0
  for (const { name, operation } of operations(committed)) {
    for (const [status, response] of Object.entries(operation.responses)) {
      if (status === '503' || status === '429') {
        t.equal(response.headers?.['Retry-After']?.schema?.type, 'integer', `${name} ${status} declares Retry-After, in seconds`)
        declared++
      } else {
        t.notOk(response.headers?.['Retry-After'], `${name} ${status} does not`)
      }
    }
  }
  t.ok(declared > 10, `${declared} responses declare it`)
})

t.test('the scrape endpoint and the docs themselves are not part of the contract', async (t) => {
  for (const path of Object.keys(committed.paths)) {
    t.notMatch(path, /^\/(metrics|docs)(\/|$)/, `${path} is an API path`)
  }
})

t.test('the document tells the truth about tokens and X-Tenant-ID, route by route', async (t) => {
  const { app, auth } = await setupApp(t)
  const all = operations(committed)
  const schemes = committed.components.securitySchemes ?? {}
  const bearer = Object.entries(schemes).find(([, scheme]) => scheme.type === 'http' && scheme.scheme === 'bearer')?.[0]
  t.ok(bearer, 'an http bearer security scheme is declared')

  let scoped = 0
  let guarded = 0
  for (const { name, path, method, operation } of all) {
    // Concrete path parameters: a UUID where the schema says so, an id-shaped string otherwise.
    const url = path.replace(/\{(\w+)\}/g, (_, param: string) => {
      const schema = operation.parameters?.find((p) => p.in === 'path' && p.name === param)?.schema
      return schema?.format === 'uuid' ? '0b6c1c4e-3b8a-4d5e-9f7a-2d1c0e9b8a76' : 'some-id'
    })
    const send = (headers: Record<string, string>) =>
      app.inject({ method: method.toUpperCase() as 'GET', url, headers, ...(operation.requestBody ? { payload: {} } : {}) })

    // Without any credentials: exactly the routes that declare the bearer scheme answer 401.
    const anonymous = await send({})
    const declared = Boolean(bearer && operation.security?.some((requirement) => bearer in requirement))
    if (anonymous.statusCode === 401) {
      guarded++
      t.ok(declared, `${name} needs a token and declares the bearer scheme`)
      t.equal(operation.responses['401']?.content?.['application/json']?.schema?.$ref, ERROR_REF, `${name} documents its 401`)
      t.match(String(anonymous.headers['www-authenticate']), /^Bearer/, `${name}: the 401 carries WWW-Authenticate`)
    } else {
      t.notOk(declared, `${name} answers without a token (${anonymous.statusCode}) and declares no security`)
    }

    // An administrator's request without the header: only tenant-scoped routes miss it.
    const response = await send(auth.admin())
    const needsTenant = response.statusCode === 400 && response.json().code === 'TENANT_ID_MISSING'
    const header = tenantHeader(operation)
    if (needsTenant) {
      scoped++
      t.ok(header, `${name} documents the X-Tenant-ID header`)
      t.equal(header?.required, true, `${name}: X-Tenant-ID is required`)
    } else {
      t.notOk(header, `${name} is not tenant-scoped (answered ${response.statusCode}) and does not ask for X-Tenant-ID`)
    }
  }
  t.ok(scoped >= 6, `${scoped} tenant-scoped operations found, the users routes and GET / among them`)
  t.ok(guarded >= 10, `${guarded} operations need a token, the tenant and users routes among them`)
  for (const name of ['GET /', 'POST /users', 'GET /users/{id}']) {
    const operation = all.find((candidate) => candidate.name === name)
    t.ok(operation && tenantHeader(operation.operation), `${name} is tenant-scoped`)
  }
})

t.test('the running service serves the committed contract', async (t) => {
  const { app } = await setupApp(t)
  const served = (await app.inject({ method: 'GET', url: '/docs/json' })).json()
  t.equal(serializeOpenApi(sortKeys(served)), serializeOpenApi(committed))
})

t.test('schemas/README.md lists every error code of the catalogue with its one status', async (t) => {
  const readme = await readFile(new URL('../schemas/README.md', import.meta.url), 'utf8')
  const documented = new Map<string, number>()
  for (const line of readme.split('\n')) {
    const row = /^\| ((?:`[A-Z_]+`(?:, )?)+) \| (\d{3}) \|/.exec(line)
    if (!row) continue
    for (const [, code] of row[1].matchAll(/`([A-Z_]+)`/g)) documented.set(code, Number(row[2]))
  }
  for (const [code, [status]] of Object.entries(ERROR_CATALOGUE)) t.equal(documented.get(code), status, code)
})
