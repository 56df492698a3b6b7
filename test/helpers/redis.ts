import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'

/** Debian's Redis server binary, for tests that need a Redis of their own to stop and start. */
export const REDIS_SERVER = '/usr/bin/redis-server'
export const HAS_REDIS_SERVER = existsSync(REDIS_SERVER)

/** True when a Redis answers PING at `url`. */
export async function redisAnswers(url: string): Promise<boolean> {
  const probe = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null })
  probe.on('error', () => undefined)
  try {
    await probe.connect()
    return (await probe.ping()) === 'PONG'
  } catch {
    return false
  } finally {
    probe.disconnect()
  }
}

/** A Redis of this test's own, which it can stop and start again on the same port. */
export async function ownRedis(port: number) {
  let child: ChildProcess | null = null
  const start = async () => {
    child = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
    const url = `redis://127.0.0.1:${port}`
    for (let i = 0; i < 100 && !(await redisAnswers(url)); i++) await sleep(50)
  }
  const stop = async () => {
    const running = child
    child = null
    if (!running || running.exitCode !== null) return
    const exited = new Promise((resolve) => running.once('exit', resolve))
    running.kill('SIGKILL')
    await exited
  }
  await start()
  return { url: `redis://127.0.0.1:${port}`, start, stop }
}
