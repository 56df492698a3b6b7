/** A run's figures against the targets of DESIGN §8, and the CI guard of --quick. */
import { GUARD_MIN_RATIO } from './options.ts'
import type { PhaseResult } from './phase.ts'
import { cell, table } from './report.ts'
import type { ScaleComparison } from './scale.ts'

export interface Target {
  figure: string
  measured: string
  target: string
  /** null: a figure reported for comparison, with no verdict. */
  met: boolean | null
}

/** What the verdicts are drawn from; a part left out of the run has no verdict. */
export interface RunFigures {
  phases: PhaseResult[]
  zipfTenants: number
  getRootOverPrototype?: number | null
  creationP50Ms?: number | null
  scale?: ScaleComparison[]
  migration?: { tenants: number; wallSeconds: number | null }
  idleInTransactionAfterLoad: number
}

export function evaluateTargets(figures: RunFigures): Target[] {
  const row = (phase: string, key: string) => figures.phases.find((candidate) => candidate.name === phase)?.summary.find((entry) => entry.key === key)
  const targets: Target[] = []
  const atLeast = (figure: string, value: number | null | undefined, minimum: number, decimals = 2) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return
    targets.push({ figure, measured: cell(value, decimals), target: `≥ ${minimum}`, met: value >= minimum })
  }
  const atMost = (figure: string, value: number | null | undefined, maximum: number, unit = '', decimals = 2) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return
    targets.push({ figure, measured: `${cell(value, decimals)}${unit}`, target: `≤ ${maximum}${unit}`, met: value <= maximum })
  }
  atLeast('GET / ÷ floor (req/s)', row('main', 'b')?.ratio, 0.9)
  atLeast('GET /users/:id with JWT ÷ floor (req/s)', row('main', 'c')?.ratio, 0.9)
  atLeast('GET / ÷ bare Fastify + pg process (req/s)', row('main', 'b')?.bareRatio, 0.9)
  atLeast('GET /users/:id with JWT ÷ bare process (req/s)', row('main', 'c')?.bareRatio, 0.9)
  atLeast(`same, Zipf over ${figures.zipfTenants} tenants`, row('zipf', 'd')?.ratio, 0.9)
  atMost('added p99, GET /', row('main', 'b')?.addedP99Ms, 0.5, ' ms')
  atMost('added p99, GET /users/:id', row('main', 'c')?.addedP99Ms, 0.5, ' ms')
  const prototype = row('main', 'e')?.ratio
  if (prototype !== null && prototype !== undefined) {
    targets.push({ figure: 'prototype ÷ floor (req/s)', measured: cell(prototype), target: '≈ 0.4–0.6 (expected)', met: null })
  }
  atLeast('GET / ÷ prototype (req/s)', figures.getRootOverPrototype, 1.5)
  for (const [key, route] of [
    ['b-pooled', 'GET /'],
    ['c-pooled', 'GET /users/:id']
  ] as const) {
    const pooled = row('pooler', key)?.ratio
    if (pooled !== null && pooled !== undefined)
      targets.push({ figure: `${route} through PgBouncer ÷ direct (req/s)`, measured: cell(pooled), target: 'report', met: null })
  }
  atMost('tenant creation p50', figures.creationP50Ms, 10, ' ms')
  for (const entry of figures.scale ?? []) {
    const figure = (percentileName: string) => `${percentileName} with ${entry.tenantsLarge} tenants ÷ ${entry.tenantsSmall}, case ${entry.case}`
    atMost(figure('p50'), entry.p50Ratio, 1.1)
    atMost(figure('p99'), entry.p99Ratio, 1.1)
  }
  if (figures.migration) atMost(`npm run migrate over ${figures.migration.tenants} tenants`, figures.migration.wallSeconds, 120, ' s', 1)
  atMost('connections idle in transaction after the load', figures.idleInTransactionAfterLoad, 0, '', 0)
  return targets
}

export function targetsTable(targets: Target[]): string {
  return table(
    ['figure', 'measured', 'target', 'met'],
    targets.map((target) => [target.figure, target.measured, target.target, target.met === null ? '–' : target.met ? 'yes' : 'NO'])
  )
}

export interface GuardCheck {
  case: string
  label: string
  ratio: number | null
  min: number
  ok: boolean
}

/** --quick: each tenant-scoped case of the main phase against its floor, failing only on a collapse. */
export function guard(main: PhaseResult): GuardCheck[] {
  return ['b', 'c'].map((key) => {
    const row = main.summary.find((entry) => entry.key === key)!
    return { case: key, label: row.label, ratio: row.ratio, min: GUARD_MIN_RATIO, ok: row.ratio !== null && row.ratio >= GUARD_MIN_RATIO }
  })
}
