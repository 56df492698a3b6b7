/** `npm run migrate` timed over the bench database's tenants, with one new tenant migration. */
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type pg from 'pg'
import { latestVersion, loadMigrations, MIGRATIONS_ROOT } from '../lib/tenants/index.ts'
import { BenchError, checkpoint, log, onCleanup, runCommand } from './process.ts'
import { cell, round, table } from './report.ts'

const PROBE_MIGRATION = `-- A trivial tenant migration, added by npm run bench in a temporary migrations root to time
-- npm run migrate; it is never shipped.
CREATE TABLE bench_probe (
  id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  note text NOT NULL DEFAULT ''
);
`

/** `npm run migrate` (the script itself, in a process of its own) with one new tenant migration. */
export async function timeMigration(pool: pg.Pool, env: Record<string, string>, concurrency: number) {
  const root = await mkdtemp(path.join(os.tmpdir(), 'tenant-service-bench-migrations-'))
  onCleanup('removing the temporary migrations', () => rm(root, { recursive: true, force: true }))
  await cp(path.join(MIGRATIONS_ROOT, 'public'), path.join(root, 'public'), { recursive: true })
  await cp(path.join(MIGRATIONS_ROOT, 'tenant'), path.join(root, 'tenant'), { recursive: true })
  const version = latestVersion(await loadMigrations('tenant')) + 1
  await writeFile(path.join(root, 'tenant', `${String(version).padStart(4, '0')}_bench_probe.sql`), PROBE_MIGRATION)
  const { rows } = await pool.query<{ count: number }>('SELECT count(*)::int AS count FROM public.tenants')
  const total = rows[0].count
  log(`npm run migrate over ${total} tenants, one new migration (${version}), --concurrency ${concurrency}`)
  const begun = performance.now()
  const result = await runCommand(['--import', 'tsx', path.join('scripts', 'migrate.ts'), '--migrations-dir', root, '--concurrency', String(concurrency)], env)
  const wallMs = performance.now() - begun
  checkpoint()
  if (result.code !== 0) throw new BenchError(`npm run migrate exited with ${result.code}:\n${result.stdout}\n${result.stderr.slice(-2000)}`)
  const { rows: after } = await pool.query<{ migrated: number }>('SELECT count(*)::int AS migrated FROM public.tenants WHERE schema_version = $1', [version])
  if (after[0].migrated !== total) throw new BenchError(`npm run migrate left ${total - after[0].migrated} of ${total} tenants behind`)
  const reported = /^duration: ([\d.]+) (ms|s)$/m.exec(result.stdout)
  const migration = {
    tenants: total,
    concurrency,
    newVersion: version,
    wallSeconds: round(wallMs / 1000, 2),
    reportedSeconds: reported ? round(Number(reported[1]) / (reported[2] === 'ms' ? 1000 : 1), 2) : null,
    tenantsPerSecond: round(total / (wallMs / 1000), 1),
    summary: result.stdout.trim().split('\n')
  }
  process.stdout.write(
    `npm run migrate, one new tenant migration over ${total} tenants (--concurrency ${concurrency}):\n` +
      `${table(
        ['', 'wall s', 'reported s', 'tenants/s'],
        [['npm run migrate', cell(migration.wallSeconds ?? NaN), cell(migration.reportedSeconds ?? NaN), cell(migration.tenantsPerSecond ?? NaN, 1)]]
      )}\n\n`
  )
  return migration
}
