import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { freePort } from '../../lib/embedded/postgres.ts'

/** Debian's PgBouncer (1.18 on this machine); `.ci/run` installs it. */
export const PGBOUNCER_BINARY = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'].find((candidate) => existsSync(candidate)) ?? null

export interface PgBouncer {
  /** `url` with its host and port swapped for the pooler's. */
  through(url: string): string
  /** The pooler's log so far. */
  log(): Promise<string>
  stop(): Promise<void>
}

/**
 * A PgBouncer in transaction mode in front of the PostgreSQL at `clusterUrl`, on a free loopback
 * port, with a configuration of its own in a temporary directory. Clients may name any database
 * and user; the pooler logs in with the cluster URL's user and password (`auth_type = any`), as a
 * deployment with one service role does. Run as root, it drops to the `postgres` user, since
 * PgBouncer refuses to run as root.
 */
export async function startPgBouncer(clusterUrl: string, options: { poolSize?: number } = {}): Promise<PgBouncer> {
  if (!PGBOUNCER_BINARY) throw new Error('PgBouncer is not installed (apt-get install pgbouncer)')
  const cluster = new URL(clusterUrl)
  const dir = await mkdtemp(path.join(tmpdir(), 'pgbouncer-'))
  await chmod(dir, 0o777)
  const port = await freePort()
  const credentials = [`user=${decodeURIComponent(cluster.username || 'postgres')}`]
  if (cluster.password) credentials.push(`password=${decodeURIComponent(cluster.password)}`)
  const config = path.join(dir, 'pgbouncer.ini')
  await writeFile(
    config,
    [
      '[databases]',
      `* = host=${cluster.hostname} port=${cluster.port || 5432} ${credentials.join(' ')}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = any',
      'pool_mode = transaction',
      'max_client_conn = 1000',
      `default_pool_size = ${options.poolSize ?? 20}`,
      // node-postgres sends these at startup; PgBouncer would refuse the connection otherwise.
      'ignore_startup_parameters = extra_float_digits,options',
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      ''
    ].join('\n'),
    { mode: 0o644 }
  )
  const asRoot = process.getuid?.() === 0
  const child: ChildProcess = spawn(PGBOUNCER_BINARY, [...(asRoot ? ['-u', 'postgres'] : []), config], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const through = (url: string) => {
    const pooled = new URL(url)
    pooled.hostname = '127.0.0.1'
    pooled.port = String(port)
    return pooled.toString()
  }
  const log = () => readFile(path.join(dir, 'pgbouncer.log'), 'utf8').catch(() => '')
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT')
    await Promise.race([exited, sleep(5000)])
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  }
  // Ready once a query answers through it.
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client({ connectionString: through(clusterUrl), connectionTimeoutMillis: 1000 })
    client.on('error', () => undefined)
    try {
      await client.connect()
      await client.query('SELECT 1')
      await client.end()
      break
    } catch (error) {
      await client.end().catch(() => undefined)
      if (attempt >= 50 || child.exitCode !== null) {
        await stop()
        throw new Error(`PgBouncer did not start: ${(error as Error).message}\n${await log()}`)
      }
      await sleep(100)
    }
  }
  return { through, log, stop }
}
