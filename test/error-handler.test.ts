import net, { type AddressInfo } from 'node:net'
import t from 'tap'
import { ERROR_CATALOGUE, type ErrorCode } from '../schemas/errors.ts'
import { setupApp } from './helpers/app.ts'

/**
 * Every code the service answers is in the catalogue (schemas/errors.ts) with its one status: the
 * client errors that Fastify, its router, Node's parser and the plugins raise included, none named
 * after its status on the spot.
 */

const catalogued = (body: { statusCode: number; code: string }) =>
  Object.hasOwn(ERROR_CATALOGUE, body.code) && ERROR_CATALOGUE[body.code as ErrorCode][0] === body.statusCode

/** One raw request on a socket, for methods no HTTP client library sends: the status line and body. */
async function raw(port: number, request: string): Promise<{ status: number; body: { statusCode: number; code: string } }> {
  const text = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request))
    let received = ''
    socket.on('data', (chunk) => (received += chunk))
    socket.on('close', () => resolve(received))
    socket.on('error', reject)
  })
  return { status: Number(text.split(' ')[1]), body: JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)) }
}

t.test('a method no route serves gets a code of the catalogue, not one made up from its status', async (t) => {
  const ctx = await setupApp(t)
  for (const method of ['PUT', 'PROPFIND', 'TRACE', 'PURGE', 'SEARCH'] as const) {
    const response = await ctx.app.inject({ method: method as 'PUT', url: '/users' })
    t.equal(response.statusCode, 404, `${method} /users`)
    t.same(response.json(), { statusCode: 404, code: 'ROUTE_NOT_FOUND', error: 'Not Found', message: `Route ${method} /users not found` })
  }
  const noType = await ctx.app.inject({ method: 'QUERY' as 'GET', url: '/users' })
  t.equal(noType.statusCode, 400, 'a QUERY without Content-Type is refused before routing')
  t.equal(noType.json().code, 'INVALID_REQUEST')

  await ctx.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = ctx.app.server.address() as AddressInfo
  const unknown = await raw(port, 'BREW /users HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
  t.equal(unknown.status, 400, 'a method Node does not know')
  t.equal(unknown.body.code, 'BAD_REQUEST')
  const known = await raw(port, 'MKCALENDAR /users HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
  t.equal(known.status, 404, 'a method Node knows and no route serves')
  t.equal(known.body.code, 'ROUTE_NOT_FOUND')
  for (const answer of [unknown, known]) t.ok(catalogued(answer.body), `${answer.body.code} is catalogued with ${answer.status}`)
})

t.test("the errors of /docs's files are catalogued, each with its status", async (t) => {
  const ctx = await setupApp(t)
  const file = '/docs/static/swagger-ui.css'
  t.equal((await ctx.app.inject({ method: 'GET', url: file })).statusCode, 200, 'the file is served')
  const cases: [string, Record<string, string>, number, ErrorCode][] = [
    [file, { range: 'bytes=999999999-' }, 416, 'RANGE_NOT_SATISFIABLE'],
    [file, { 'if-match': '"another"' }, 412, 'PRECONDITION_FAILED'],
    [file, { 'if-unmodified-since': 'Mon, 01 Jan 1990 00:00:00 GMT' }, 412, 'PRECONDITION_FAILED'],
    ['/docs/static/a%00b', {}, 403, 'PATH_FORBIDDEN']
  ]
  for (const [url, headers, status, code] of cases) {
    const response = await ctx.app.inject({ method: 'GET', url, headers })
    const label = `${url} ${JSON.stringify(headers)}`
    t.equal(response.statusCode, status, label)
    t.equal(response.json().code, code, label)
    t.ok(catalogued(response.json()), `${code} is catalogued with ${status}`)
  }
})

t.test('a client error nothing names is answered with BAD_REQUEST, its catalogue status', async (t) => {
  const ctx = await setupApp(
    t,
    {},
    {
      beforeReady: (app) => {
        app.get('/teapot', { config: { rateLimit: false } }, async () => {
          throw Object.assign(new Error("I'm a teapot"), { statusCode: 418 })
        })
        app.get('/gone', { config: { rateLimit: false } }, async () => {
          throw Object.assign(new Error('Gone with its own code'), { statusCode: 410, code: 'SOME_PLUGIN_GONE' })
        })
      }
    }
  )
  for (const url of ['/teapot', '/gone']) {
    const response = await ctx.app.inject({ method: 'GET', url })
    t.equal(response.statusCode, 400, url)
    t.match(response.json(), { statusCode: 400, code: 'BAD_REQUEST', error: 'Bad Request' })
  }
})
