import pg from 'pg'
import { ApiError } from '../../schemas/errors.ts'
import { runInTransaction, sendEach } from '../transaction.ts'
import { latestVersion, loadMigrations, type Migration } from './migrations.ts'
import { TENANT_CHANGED_CHANNEL, TENANT_COLUMNS, type TenantRow } from './registry.ts'
import type { TenantSpares } from './spares.ts'
import { assertValidTenantId, tenantRoleName, tenantSchemaSql } from './sql.ts'
import { checkTombstoneSql, recentlyDeleted, TOMBSTONE_RETENTION_MS } from './tombstones.ts'

export interface ProvisionOptions {
  rolePrefix: string
  /** Tenant migrations to apply; the files in migrations/tenant by default. */
  migrations?: Migration[]
  /** Schemas made ahead of need to take one from (see spares.ts); without, every tenant is built on the spot. */
  spares?: TenantSpares | null
  /**
   * How long after a deletion its id may not be created again (tombstones.ts): the service passes
   * recreationIntervalMs(JWT_CLOCK_TOLERANCE_MS). Without it, the longest any configuration needs.
   */
  recreateAfterMs?: number
}

/**
 * Creates a tenant: registry row, role, schema and every tenant migration, in one transaction, one
 * statement per message (Citus refuses several DDL statements in one, DESIGN §9); or,
 * when `spares` has one ready, by renaming a spare schema and role built the same way at the same
 * migration version, in one transaction too. Any failure rolls all of it back, so there is never a
 * schema without a row, or the reverse (a spare taken is put back). An id deleted less than
 * `recreateAfterMs` ago is refused the same way, whichever way the schema was made: 409
 * TENANT_RECENTLY_DELETED, nothing created.
 */
export async function provisionTenant(pool: pg.Pool, input: { id: string; name: string }, options: ProvisionOptions): Promise<TenantRow> {
  assertValidTenantId(input.id)
  const migrations = options.migrations ?? (await loadMigrations('tenant'))
  const identity = { schema: input.id, role: tenantRoleName(options.rolePrefix, input.id) }
  const version = latestVersion(migrations)
  const id = pg.escapeLiteral(input.id)
  const recreateAfterMs = options.recreateAfterMs ?? TOMBSTONE_RETENTION_MS

  let tookSpare = false
  let row: TenantRow | undefined
  try {
    row = await runInTransaction(pool, async (client) => {
      const spare = options.spares ? await options.spares.take(client, version) : null
      tookSpare = spare !== null
      const schema = spare
        ? [
            `ALTER SCHEMA ${pg.escapeIdentifier(spare.schema)} RENAME TO ${pg.escapeIdentifier(identity.schema)}`,
            `ALTER ROLE ${pg.escapeIdentifier(spare.role)} RENAME TO ${pg.escapeIdentifier(identity.role)}`
          ]
        : tenantSchemaSql(identity, migrations)
      const script = [
        `INSERT INTO public.tenants (id, name, schema, role, schema_version)
           VALUES (${id}, ${pg.escapeLiteral(input.name)}, ${pg.escapeLiteral(identity.schema)}, ${pg.escapeLiteral(identity.role)}, ${version})`,
        // Right after the INSERT, which waited for a concurrent deletion of the id to commit.
        ...checkTombstoneSql(input.id, recreateAfterMs),
        ...schema,
        `NOTIFY ${TENANT_CHANGED_CHANNEL}, ${id}`,
        `SELECT ${TENANT_COLUMNS} FROM public.tenants WHERE id = ${id}`
      ]
      // One statement per message (DESIGN §9), all in one round trip where the pool pipelines.
      const results = await sendEach<TenantRow & { wait_ms: string }>(client, script)
      // Too soon: thrown, so all of it (a spare's renames included) rolls back.
      const tooSoon = results[1].rows[0]
      if (tooSoon) throw recentlyDeleted(input.id, Number(tooSoon.wait_ms), recreateAfterMs)
      return results.at(-1)?.rows[0]
    })
  } catch (error) {
    throw mapProvisioningError(error, input.id)
  }
  if (tookSpare) options.spares!.replace()
  if (!row) throw new Error('Provisioning returned no tenant row')
  return row
}

function mapProvisioningError(error: unknown, id: string): unknown {
  const code = (error as { code?: string }).code
  // 23505: registry row exists; 42P06: a schema of that name exists; 42710: the role exists.
  if (code === '23505' || code === '42P06' || code === '42710') {
    return new ApiError('TENANT_EXISTS', `Tenant "${id}" already exists`)
  }
  return error
}
