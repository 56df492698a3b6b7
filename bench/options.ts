/** The command line of `npm run bench`: its options, their defaults and its help. */
import { parseArgs } from 'node:util'

/** --quick fails below this tenant-scoped/floor throughput ratio: a collapse, not a slowdown. */
export const GUARD_MIN_RATIO = 0.6
export const PARTS = ['prototype', 'pooler', 'zipf', 'creation', 'migrate', 'scale'] as const
export type Part = (typeof PARTS)[number]

export const USAGE = `Usage: npm run bench -- [options]

Loads the service (production mode, bench/server.ts) with autocannon and compares its
tenant-scoped routes with bare routes doing the same query, in alternating rounds. It provisions
its own database (on BENCH_DATABASE_URL, else the PostgreSQL at 127.0.0.1:5432, else an embedded
one) and drops it, with its tenant roles, at the end. See bench/README.md.

Options:
  --tenants N                tenants the uniform cases spread over (default 100; --quick: 10);
                             --tenants 10000 is the full-scale run: every case, and npm run
                             migrate, over 10,000 tenants
  --zipf-tenants N           tenants the Zipf-skewed case d spreads over (default 1000)
  --rows N                   users and files rows per tenant (default 20)
  --duration S               seconds per case and round (default 10; --quick: 3)
  --rounds N                 rounds over the cases, alternating their order (default 3; --quick: 2)
  --warmup S                 warm-up seconds per case before the rounds (default 3; --quick: 1)
  --connections N            concurrent connections (default 50)
  --creations N              tenants created through POST /auth/tenants, one at a time (default 200)
  --migrate-tenants N        tenants in the database when npm run migrate is timed (default 1000,
                             or --tenants when more)
  --migrate-concurrency N    npm run migrate --concurrency (default 4)
  --scale-tenants N          tenants in the database for the scale comparison (default 10000),
                             loaded side by side with a second database of --tenants tenants;
                             left out when not more than --tenants
  --scale N                  sets both --scale-tenants and --migrate-tenants (e.g. --scale 10000)
  --skip-scale               leave out the scale comparison
  --skip LIST                leave out parts, comma-separated: ${PARTS.join(', ')}
  --provision-concurrency N  tenants provisioned at once (default 4)
  --env NAME=VALUE           extra service configuration, repeatable (e.g. --env PG_POOL_MAX=10)
  --as-cluster-user          the service connects as the cluster's own user, even a superuser
                             (default: a login role of the bench's own, no superuser, as deployed)
  --quick                    CI guard: few tenants, short cases, cases a to c only; exits 1 when a
                             tenant-scoped/floor throughput ratio is below ${GUARD_MIN_RATIO}
  --serve                    measure nothing: provision --tenants tenants, start the service and
                             the bare process, write their addresses, the tenants, their users and
                             tokens to --output (default bench/results/serve-<timestamp>.json), the
                             tenants once more beside it for bench/wrk.lua (.tenants.tsv), and keep
                             serving for a load generator of your own until Ctrl-C, which drops
                             the database
  --summary FILE             write {passed, failed, exitCode} to FILE (for .ci/run)
  --output FILE              the JSON report (default bench/results/<timestamp>.json)
  --profile DIR              V8 CPU profiles of the service and the bare process into DIR
                             (node --cpu-prof), written when they stop: where a request's time goes
  -h, --help                 show this help

Exit status: 0 done; 1 the --quick guard failed; 2 the bench could not measure (bad usage, a
setup failure, or non-2xx responses under load); 130 interrupted.`

export class UsageError extends Error {}

export interface Options {
  quick: boolean
  serve: boolean
  tenants: number
  zipfTenants: number
  rows: number
  duration: number
  rounds: number
  warmup: number
  connections: number
  creations: number
  migrateTenants: number
  migrateConcurrency: number
  scaleTenants: number
  provisionConcurrency: number
  skip: Set<Part>
  env: Record<string, string>
  asClusterUser: boolean
  summary?: string
  output?: string
  profile?: string
}

const parseCommandLine = (argv: string[]) =>
  parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      tenants: { type: 'string' },
      'zipf-tenants': { type: 'string' },
      rows: { type: 'string' },
      duration: { type: 'string' },
      rounds: { type: 'string' },
      warmup: { type: 'string' },
      connections: { type: 'string' },
      creations: { type: 'string' },
      'migrate-tenants': { type: 'string' },
      'migrate-concurrency': { type: 'string' },
      'scale-tenants': { type: 'string' },
      scale: { type: 'string' },
      'skip-scale': { type: 'boolean' },
      skip: { type: 'string' },
      'provision-concurrency': { type: 'string' },
      env: { type: 'string', multiple: true },
      'as-cluster-user': { type: 'boolean' },
      quick: { type: 'boolean' },
      serve: { type: 'boolean' },
      summary: { type: 'string' },
      output: { type: 'string' },
      profile: { type: 'string' },
      help: { type: 'boolean', short: 'h' }
    }
  })

export function parseOptions(argv: string[]): Options | null {
  let values: ReturnType<typeof parseCommandLine>['values']
  try {
    values = parseCommandLine(argv).values
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
  if (values.help) return null
  const integer = (name: string, fallback: number, min = 1, max = 1_000_000): number => {
    const raw = (values as Record<string, unknown>)[name]
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (typeof raw !== 'string' || !/^\d+$/.test(raw) || value < min || value > max) {
      throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got "${String(raw)}")`)
    }
    return value
  }
  const quick = values.quick === true
  const serve = values.serve === true
  if (quick && serve) throw new UsageError('--quick and --serve exclude each other')
  const scale = integer('scale', 0, 1, 99_999)
  const skip = new Set<Part>()
  for (const part of (values.skip ?? '')
    .split(',')
    .map((word) => word.trim())
    .filter(Boolean)) {
    if (!(PARTS as readonly string[]).includes(part)) throw new UsageError(`--skip: unknown part "${part}" (parts: ${PARTS.join(', ')})`)
    skip.add(part as Part)
  }
  if (values['skip-scale']) skip.add('scale')
  if (quick || serve) for (const part of PARTS) skip.add(part)
  const env: Record<string, string> = {}
  for (const assignment of values.env ?? []) {
    const match = /^([A-Z][A-Z0-9_]*)=(.*)$/s.exec(assignment)
    if (!match) throw new UsageError(`--env takes NAME=VALUE (got "${assignment}")`)
    env[match[1]] = match[2]
  }
  const tenants = integer('tenants', quick ? 10 : 100, 1, 99_999)
  // --tenants 10000 is a full-scale run: npm run migrate is then timed over all of them, and the
  // 10,000-tenant comparison has nothing to compare with unless asked for with more tenants.
  const scaleTenants = integer('scale-tenants', scale || Math.max(10_000, tenants), 1, 99_999)
  if (scaleTenants <= tenants) skip.add('scale')
  return {
    quick,
    serve,
    tenants,
    zipfTenants: integer('zipf-tenants', 1000, 1, 99_999),
    rows: integer('rows', 20, 1, 10_000),
    duration: integer('duration', quick ? 3 : 10, 1, 3600),
    rounds: integer('rounds', quick ? 2 : 3, 1, 100),
    warmup: integer('warmup', quick ? 1 : 3, 0, 600),
    connections: integer('connections', 50, 1, 10_000),
    creations: integer('creations', 200, 1, 100_000),
    migrateTenants: integer('migrate-tenants', scale || Math.max(1000, tenants), 1, 99_999),
    migrateConcurrency: integer('migrate-concurrency', 4, 1, 256),
    scaleTenants,
    provisionConcurrency: integer('provision-concurrency', 4, 1, 64),
    skip,
    env,
    asClusterUser: values['as-cluster-user'] === true,
    summary: values.summary,
    output: values.output,
    profile: values.profile
  }
}
