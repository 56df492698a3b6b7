/**
 * The bench process's plumbing: its log, the cleanup that undoes everything it started (at the
 * end, on failure and on Ctrl-C), and the processes it runs: the service under test and scripts.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import http from 'node:http'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
/** Where reports go unless --output says otherwise (ignored by git). */
export const RESULTS_DIR = path.join(ROOT, 'bench', 'results')

/** The bench cannot produce a valid measurement. */
export class BenchError extends Error {}
/** Raised at the next checkpoint once Ctrl-C was pressed. */
export class Interrupted extends Error {}

export const startedAt = new Date()
/** The start time as a file name: reports are named after it. */
export const startStamp = startedAt.toISOString().replace(/[:.]/g, '-')
export const clock = performance.now()
export const log = (message: string) => process.stderr.write(`[${((performance.now() - clock) / 1000).toFixed(1).padStart(7)} s] ${message}\n`)
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const cleanups: { name: string; run: () => Promise<unknown> }[] = []
let cleaning: Promise<void> | null = null

/** Registers what undoes something just started. */
export function onCleanup(name: string, run: () => Promise<unknown>): void {
  cleanups.push({ name, run })
}

/** Undoes everything, last started first; runs once, whoever asks first (the end, an error, Ctrl-C). */
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const { name, run } of cleanups.reverse()) {
      try {
        await run()
      } catch (error) {
        log(`cleanup: ${name}: ${(error as Error).message}`)
      }
    }
  })()
  return cleaning
}

let interruptedAt = 0
/** `interrupted` is set by Ctrl-C; `stopLoad` ends the load under way, if any. */
export const state = { interrupted: false, stopLoad: null as (() => void) | null }
export function checkpoint() {
  if (state.interrupted) throw new Interrupted()
}
export function onSignal(signal: NodeJS.Signals) {
  // One Ctrl-C can arrive twice, from the terminal and relayed by a wrapper (tsx, npm).
  if (state.interrupted && performance.now() - interruptedAt < 1000) return
  if (state.interrupted) {
    process.stderr.write(`\n${signal} again: quitting now; the bench database and its tenant roles may remain\n`)
    process.exit(130)
  }
  state.interrupted = true
  interruptedAt = performance.now()
  process.stderr.write(`\n${signal}: stopping and dropping the bench database (${signal} again quits at once)\n`)
  state.stopLoad?.()
  void cleanup().finally(() => process.exit(130))
}

/** On a terminal one line redrawn in place, otherwise a line per tenth. */
export function progressReporter(label: string) {
  const tty = process.stderr.isTTY === true
  const begun = performance.now()
  let lastDraw = 0
  let lastTenth = 0
  const text = (done: number, total: number) => {
    const seconds = (performance.now() - begun) / 1000
    return `${label}: ${done}/${total} (${seconds > 0 ? (done / seconds).toFixed(1) : '–'}/s)`
  }
  return {
    update(done: number, total: number) {
      if (tty) {
        const now = performance.now()
        if (done < total && now - lastDraw < 100) return
        lastDraw = now
        process.stderr.write(`\r\x1b[2K${text(done, total)}`)
        return
      }
      const tenth = Math.floor((done * 10) / total)
      if (tenth > lastTenth) {
        lastTenth = tenth
        log(text(done, total))
      }
    },
    end() {
      if (tty) process.stderr.write('\n')
    }
  }
}

export interface Service {
  url: string
  pid: number
  /** The last log lines (warn and above) the service wrote, and how many it wrote in all. */
  lines: string[]
  lineCount(): number
  stop(): Promise<void>
}

const SHOWN_SERVICE_LINES = 20
const KEPT_SERVICE_LINES = 500

/**
 * CPU time (user and system) a process has used so far, in seconds, from /proc; null where there
 * is no /proc (not Linux). Clock ticks are 1/100 s on Linux.
 */
export function cpuSecondsOf(pid: number): number | null {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return null
  }
}

/**
 * CPU time, in seconds, that each process of a local PostgreSQL has used so far: its postmaster and
 * every process the postmaster started (backends, autovacuum, the checkpointer). Null without /proc.
 */
export function clusterCpuSnapshot(postmasterPid: number): Map<number, number> | null {
  const own = cpuSecondsOf(postmasterPid)
  if (own === null) return null
  const snapshot = new Map([[postmasterPid, own]])
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const fields = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1].split(' ')
      if (Number(fields[1]) === postmasterPid) snapshot.set(Number(entry), (Number(fields[11]) + Number(fields[12])) / 100)
    } catch {
      // It ended while the list was read.
    }
  }
  return snapshot
}

/**
 * CPU seconds the cluster spent between two snapshots, counted over the processes alive at the
 * second (those started in between from zero). A process that ended in between is not counted:
 * read it around a load whose connections stay open, as the service's do.
 */
export function clusterCpuSpent(before: Map<number, number>, after: Map<number, number>): number {
  let spent = 0
  for (const [pid, seconds] of after) spent += Math.max(0, seconds - (before.get(pid) ?? 0))
  return spent
}

/** The postmaster of the PostgreSQL that `pool` reaches, when it runs on this machine; else null. */
export async function localPostmasterPid(pool: { query: (text: string) => Promise<{ rows: { pid: number }[] }> }): Promise<number | null> {
  const { rows } = await pool.query('SELECT pg_backend_pid() AS pid')
  try {
    const stat = readFileSync(`/proc/${rows[0].pid}/stat`, 'utf8')
    // A pid on this machine that is not a postgres process means the server is elsewhere.
    if (!/^\d+ \(postgres\)/.test(stat)) return null
    return Number(stat.split(') ')[1].split(' ')[1])
  } catch {
    return null
  }
}

export interface ServiceOptions {
  /** The entry point, from the project root: bench/server.ts (the service) unless said otherwise. */
  script?: string
  /** Options for node itself, such as --cpu-prof. */
  nodeArgs?: string[]
}

export async function startService(env: Record<string, string>, options: ServiceOptions = {}): Promise<Service> {
  const script = options.script ?? path.join('bench', 'server.ts')
  // Its own process group: Ctrl-C reaches the bench, which then stops the service in order.
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), '--import', 'tsx', script], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    detached: true
  })
  const lines: string[] = []
  let count = 0
  const collect = (stream: NodeJS.ReadableStream) => {
    let pending = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => {
      pending += chunk
      const parts = pending.split('\n')
      pending = parts.pop() ?? ''
      for (const line of parts) {
        if (!line.trim()) continue
        count++
        lines.push(line)
        if (lines.length > KEPT_SERVICE_LINES) lines.shift()
        if (count <= SHOWN_SERVICE_LINES) log(`service: ${line.slice(0, 400)}`)
        else if (count === SHOWN_SERVICE_LINES + 1) log(`service: (more log lines; the last ${KEPT_SERVICE_LINES} go into the JSON report)`)
      }
    })
  }
  collect(child.stdout!)
  collect(child.stderr!)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal }))
  )
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    await exited
    clearTimeout(timer)
  }
  onCleanup('stopping the service', stop)

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new BenchError('the service did not listen within 60 s')), 60_000)
    child.on('message', (message: { listening?: unknown }) => {
      if (typeof message?.listening === 'number') {
        clearTimeout(timer)
        resolve(message.listening)
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new BenchError(`the service exited (code ${code}, signal ${signal}) before listening:\n${lines.slice(-20).join('\n')}`))
    })
  })
  return { url: `http://127.0.0.1:${port}`, pid: child.pid!, lines, lineCount: () => count, stop }
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })

export interface Answer {
  status: number
  body: any
  ms: number
}

/** One request on a kept-alive connection; `ms` runs until the whole body is in. */
export function call(base: string, method: string, urlPath: string, headers: Record<string, string> = {}, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const sent = performance.now()
    const request = http.request(
      `${base}${urlPath}`,
      {
        method,
        agent,
        headers: payload === undefined ? headers : { ...headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }
      },
      (response) => {
        let text = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (text += chunk))
        response.on('end', () => {
          const ms = performance.now() - sent
          let parsed: unknown = text
          try {
            parsed = JSON.parse(text)
          } catch {
            // not JSON: kept as text
          }
          resolve({ status: response.statusCode ?? 0, body: parsed, ms })
        })
      }
    )
    request.setTimeout(30_000, () => request.destroy(new Error(`${method} ${urlPath}: no answer within 30 s`)))
    request.on('error', reject)
    request.end(payload)
  })
}

export async function waitUntilReady(base: string): Promise<void> {
  const deadline = Date.now() + 60_000
  let last: unknown = null
  while (Date.now() < deadline) {
    checkpoint()
    const answer = await call(base, 'GET', '/health/ready').catch((error: Error) => ({ status: 0, body: error.message, ms: 0 }))
    if (answer.status === 200) return
    last = answer.body
    await sleep(250)
  }
  throw new BenchError(`the service did not become ready within 60 s: ${JSON.stringify(last)}`)
}

/** Runs a command to completion, its stderr shown as progress, its stdout kept. */
export function runCommand(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const kill = async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    }
    onCleanup(`stopping ${args.join(' ')}`, kill)
    let stdout = ''
    let stderr = ''
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk
      for (const line of chunk.split(/[\r\n]+/)) if (line.trim()) log(`  ${line.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').trim()}`)
    })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}
