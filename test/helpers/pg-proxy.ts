import net from 'node:net'
import type { AddressInfo } from 'node:net'

/**
 * A TCP proxy in front of PostgreSQL that reads the frontend's side of the wire protocol and
 * records the SQL of every simple Query and every Parse, passing everything on unchanged. Tests use
 * it to see how the service sends its statements, for example that no message carries more than
 * one (Citus refuses several DDL statements in one, DESIGN §9). With `refuse` set, it answers new
 * connections with that FATAL error instead, as a server out of connections does.
 */
export interface PgProxy {
  /** A connection string for the same database through the proxy. */
  url: string
  /** The SQL of each Query ('Q') and Parse ('P') message, in the order they arrived. */
  messages: { type: 'query' | 'parse'; sql: string }[]
  close(): Promise<void>
}

export interface PgProxyOptions {
  /** Answer every new connection with this FATAL error (a SQLSTATE and a message), and close it. */
  refuse?: { code: string; message: string }
}

/** A backend ErrorResponse: severity, SQLSTATE and message fields. */
function errorResponse(code: string, message: string): Buffer {
  const fields = Buffer.from(`SFATAL\0VFATAL\0C${code}\0M${message}\0\0`, 'utf8')
  const header = Buffer.alloc(5)
  header.write('E', 0)
  header.writeInt32BE(fields.length + 4, 1)
  return Buffer.concat([header, fields])
}

export async function startPgProxy(target: string, options: PgProxyOptions = {}): Promise<PgProxy> {
  const upstream = new URL(target)
  const messages: PgProxy['messages'] = []
  const sockets = new Set<net.Socket>()

  const server = net.createServer((client) => {
    if (options.refuse) {
      // After the startup message, as PostgreSQL does.
      client.once('data', () => client.end(errorResponse(options.refuse!.code, options.refuse!.message)))
      client.on('error', () => undefined)
      return
    }
    const backend = net.connect(Number(upstream.port || 5432), upstream.hostname)
    sockets.add(client).add(backend)
    let buffered = Buffer.alloc(0)
    let started = false
    client.on('data', (chunk: Buffer) => {
      backend.write(chunk)
      buffered = Buffer.concat([buffered, chunk])
      for (;;) {
        if (!started) {
          // The startup message (and an SSLRequest before it) has a length and no type byte.
          if (buffered.length < 8) return
          const length = buffered.readInt32BE(0)
          if (buffered.length < length) return
          const code = buffered.readInt32BE(4)
          buffered = buffered.subarray(length)
          if (code !== 80877103) started = true // not an SSLRequest: the startup message
          continue
        }
        if (buffered.length < 5) return
        const type = String.fromCharCode(buffered[0])
        const length = buffered.readInt32BE(1)
        if (buffered.length < 1 + length) return
        const body = buffered.subarray(5, 1 + length)
        if (type === 'Q') messages.push({ type: 'query', sql: body.toString('utf8', 0, body.indexOf(0)) })
        if (type === 'P') {
          const nameEnd = body.indexOf(0)
          messages.push({ type: 'parse', sql: body.toString('utf8', nameEnd + 1, body.indexOf(0, nameEnd + 1)) })
        }
        buffered = buffered.subarray(1 + length)
      }
    })
    backend.on('data', (chunk) => client.write(chunk))
    const end = () => {
      client.destroy()
      backend.destroy()
      sockets.delete(client)
      sockets.delete(backend)
    }
    client.on('close', end).on('error', end)
    backend.on('close', end).on('error', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = new URL(target)
  url.hostname = '127.0.0.1'
  url.port = String((server.address() as AddressInfo).port)
  return {
    url: url.toString(),
    messages,
    close: async () => {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
