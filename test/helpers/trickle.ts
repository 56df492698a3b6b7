import net from 'node:net'
import { once } from 'node:events'

/**
 * Sends a POST's headers and the first ten bytes of its body to a listening server, and answers a
 * function that sends the rest and resolves with the status and the body: a client whose body
 * arrives slowly, while the test changes the world the request was let in under.
 */
export async function trickle(port: number, path: string, headers: Record<string, string>, body: string) {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const lines = Object.entries({ ...headers, host: 'localhost', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) })
  let answer = ''
  const answered = new Promise<void>((resolve) => {
    socket.on('data', (chunk) => {
      answer += chunk.toString()
      // The whole answer: a JSON body after the headers, whose length they state.
      const length = Number(/content-length: (\d+)/i.exec(answer)?.[1] ?? Number.NaN)
      if (answer.length - answer.indexOf('\r\n\r\n') - 4 >= length) resolve()
    })
    socket.on('close', () => resolve())
  })
  socket.write(`POST ${path} HTTP/1.1\r\n${lines.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n${body.slice(0, 10)}`)
  return async () => {
    // Not end(): a client that half-closes has left, as far as Node is concerned.
    socket.write(body.slice(10))
    await answered
    socket.destroy()
    return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1]), body: answer.slice(answer.indexOf('\r\n\r\n') + 4) }
  }
}
