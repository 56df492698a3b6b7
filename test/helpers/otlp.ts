import http from 'node:http'
import type { AddressInfo } from 'node:net'

/** A span as the OTLP/HTTP JSON encoding carries it, flattened with its resource's attributes. */
export interface ReceivedSpan {
  traceId: string
  spanId: string
  parentSpanId: string
  name: string
  /** 1 internal, 2 server, 3 client. */
  kind: number
  attributes: Record<string, unknown>
  resource: Record<string, unknown>
  scope: string
  status: { code?: number; message?: string }
}

interface AnyValue {
  stringValue?: string
  intValue?: string | number
  boolValue?: boolean
  doubleValue?: number
  arrayValue?: { values?: AnyValue[] }
}

interface KeyValue {
  key: string
  value: AnyValue
}

function decoded(value: AnyValue): unknown {
  if ('stringValue' in value) return value.stringValue
  if ('intValue' in value) return Number(value.intValue)
  if ('boolValue' in value) return value.boolValue
  if ('doubleValue' in value) return value.doubleValue
  if (value.arrayValue) return (value.arrayValue.values ?? []).map(decoded)
  return undefined
}

const attributesOf = (list: KeyValue[] | undefined) => Object.fromEntries((list ?? []).map(({ key, value }) => [key, decoded(value)]))

/** OTLP JSON ids are hex strings; tolerate base64 too, as some encoders send. */
const hexId = (id: string | undefined) =>
  id === undefined || id === '' ? '' : /^[0-9a-f]+$/i.test(id) ? id.toLowerCase() : Buffer.from(id, 'base64').toString('hex')

/**
 * An OTLP/HTTP receiver for traces in the JSON encoding (OTEL_EXPORTER_OTLP_PROTOCOL=http/json):
 * POST /v1/traces, every span kept. Anything else is answered 404 or 415, and counted.
 */
export async function startOtlpReceiver() {
  const spans: ReceivedSpan[] = []
  const refused: string[] = []
  let waiters: (() => void)[] = []
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      if (request.method !== 'POST' || request.url !== '/v1/traces') {
        refused.push(`${request.method} ${request.url}`)
        response.writeHead(404).end()
        return
      }
      if (!String(request.headers['content-type']).startsWith('application/json')) {
        refused.push(`${request.headers['content-type']}`)
        response.writeHead(415).end()
        return
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
        resourceSpans?: {
          resource?: { attributes?: KeyValue[] }
          scopeSpans?: {
            scope?: { name?: string }
            spans?: {
              traceId: string
              spanId: string
              parentSpanId?: string
              name: string
              kind: number
              attributes?: KeyValue[]
              status?: { code?: number; message?: string }
            }[]
          }[]
        }[]
      }
      for (const resourceSpans of body.resourceSpans ?? []) {
        const resource = attributesOf(resourceSpans.resource?.attributes)
        for (const scopeSpans of resourceSpans.scopeSpans ?? []) {
          for (const span of scopeSpans.spans ?? []) {
            spans.push({
              traceId: hexId(span.traceId),
              spanId: hexId(span.spanId),
              parentSpanId: hexId(span.parentSpanId),
              name: span.name,
              kind: span.kind,
              attributes: attributesOf(span.attributes),
              resource,
              scope: scopeSpans.scope?.name ?? '',
              status: span.status ?? {}
            })
          }
        }
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}')
      const woken = waiters
      waiters = []
      for (const wake of woken) wake()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    refused,
    /** Resolves once `done(spans)` holds, or rejects after `timeoutMs`, with what arrived. */
    async until(done: (spans: ReceivedSpan[]) => boolean, timeoutMs = 20_000): Promise<ReceivedSpan[]> {
      const deadline = Date.now() + timeoutMs
      while (!done(spans)) {
        const left = deadline - Date.now()
        if (left <= 0)
          throw new Error(
            `the spans awaited did not arrive; received:\n${spans.map((s) => `${s.traceId} ${s.name} ${JSON.stringify(s.attributes)}`).join('\n')}`
          )
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, 500))
          waiters.push(() => {
            clearTimeout(timer)
            resolve()
          })
        })
      }
      return spans
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}
