import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Config } from '../../schemas/env.ts'

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

type Env = Record<string, string | undefined>

/**
 * The environment of a service process started from a test: production mode (no embedded
 * defaults), a kernel-chosen port on loopback, JSON logs at info. With a test context, the process
 * talks to that context's database with its settings. Nothing is inherited from the test runner's
 * environment beyond what a process needs to run, so a variable a test did not mean to set cannot
 * leak in. `overrides` win; an override of `undefined` removes the variable.
 */
export function serverEnv(context?: { config: Config }, overrides: Env = {}): Record<string, string> {
  const env: Env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    NODE_ENV: 'production',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info'
  }
  if (context) {
    env.DATABASE_URL = context.config.DATABASE_URL
    env.DATABASE_DIRECT_URL = context.config.DATABASE_DIRECT_URL
    env.PG_PREPARED_STATEMENTS = String(context.config.PG_PREPARED_STATEMENTS)
    env.TENANT_ROLE_PREFIX = context.config.TENANT_ROLE_PREFIX
    env.TENANT_SPARES = String(context.config.TENANT_SPARES)
    if (context.config.PG_POOL_MIN !== undefined) env.PG_POOL_MIN = String(context.config.PG_POOL_MIN)
    // Production requires an issuer: the context's, so its tokens work against the process too.
    env.JWT_ISSUER = context.config.JWT_ISSUER
    env.JWT_CLIENT_ID = context.config.JWT_CLIENT_ID
    // Production requires a bucket: the context's store (setupApp with { s3: true }), with the
    // credentials the test process holds for it.
    if (context.config.S3_BUCKET) {
      env.S3_BUCKET = context.config.S3_BUCKET
      env.S3_REGION = context.config.S3_REGION
      env.S3_ENDPOINT = context.config.S3_ENDPOINT
      env.S3_FORCE_PATH_STYLE = String(context.config.S3_FORCE_PATH_STYLE)
      env.AWS_ACCESS_KEY_ID = process.env.AWS_ACCESS_KEY_ID
      env.AWS_SECRET_ACCESS_KEY = process.env.AWS_SECRET_ACCESS_KEY
    }
  }
  Object.assign(env, overrides)
  return Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined))
}

export interface ProcessResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a TypeScript entry point of the project (`node --import tsx <file>`) to completion. */
export function runScript(file: string, args: string[], env: Record<string, string>, timeoutMs = 120_000): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', file, ...args], { cwd: PROJECT_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${file} ${args.join(' ')} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`))
    }, timeoutMs)
    child.on('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

export interface ServerProcess {
  child: ChildProcess
  port: number
  url: string
  /** Every JSON log line so far, parsed. */
  logs: Record<string, unknown>[]
  stderr(): string
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Kills the process if it still runs and waits for it to exit. */
  kill(): Promise<void>
}

/**
 * Spawns the real service (`node --import tsx server.ts`) and resolves once it logs that it is
 * listening, with the port taken from that line.
 */
export async function startServer(env: Record<string, string>, timeoutMs = 60_000): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server.ts'], { cwd: PROJECT_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const logs: Record<string, unknown>[] = []
  let stderr = ''
  let rawStdout = ''
  let pending = ''
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }))
  })

  const listening = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not listen within ${timeoutMs} ms\n${rawStdout}\n${stderr}`)), timeoutMs)
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      rawStdout += chunk
      pending += chunk
      const lines = pending.split('\n')
      pending = lines.pop() ?? ''
      for (const line of lines) {
        if (!line.trim()) continue
        let entry: Record<string, unknown>
        try {
          entry = JSON.parse(line) as Record<string, unknown>
        } catch {
          continue
        }
        logs.push(entry)
        const match = typeof entry.msg === 'string' ? /^Server listening at http:\/\/[^:]+:(\d+)/.exec(entry.msg) : null
        if (match) {
          clearTimeout(timer)
          resolve(Number(match[1]))
        }
      }
    })
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`the server exited (code ${code}, signal ${signal}) before listening\n${rawStdout}\n${stderr}`))
    })
  })

  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  }
  let port: number
  try {
    port = await listening
  } catch (error) {
    await kill()
    throw error
  }
  return { child, port, url: `http://127.0.0.1:${port}`, logs, stderr: () => stderr, exited, kill }
}
