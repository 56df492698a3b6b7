import { createHash } from 'node:crypto'
import pg from 'pg'
import { TENANT_ID_PATTERN } from '../../schemas/common.ts'
import { ApiError } from '../../schemas/errors.ts'
import type { Migration } from './migrations.ts'
import { statementsOf } from './split-sql.ts'

/**
 * Everything that turns a tenant id into SQL text lives here. Identifiers go through
 * `pg.escapeIdentifier` and literals through `pg.escapeLiteral`, never through string building of
 * any other kind (DESIGN §4).
 */

/** Names no tenant may take: PostgreSQL's own schemas and those of extensions we run beside. */
const RESERVED_SCHEMAS = new Set(['public', 'information_schema', 'citus', 'citus_internal', 'columnar', 'columnar_internal'])

const TENANT_ID = new RegExp(TENANT_ID_PATTERN)

export type TenantIdProblem = 'invalid' | 'reserved'

/**
 * Reserved names are recognised before the format, so `information_schema` or `pg_catalog` is
 * answered as reserved rather than as malformed (their underscore alone would make them invalid).
 */
export function checkTenantId(id: string): TenantIdProblem | null {
  if (RESERVED_SCHEMAS.has(id) || id.startsWith('pg_') || id.startsWith('pg-')) return 'reserved'
  if (!TENANT_ID.test(id)) return 'invalid'
  return null
}

/** Rejects ids that are malformed or reserved, before anything touches the database. */
export function assertValidTenantId(id: string): void {
  const problem = checkTenantId(id)
  if (problem === 'invalid') {
    throw new ApiError('TENANT_ID_INVALID', 'Tenant id must be 3–63 characters of a-z, 0-9 and -, starting with a letter')
  }
  if (problem === 'reserved') throw new ApiError('TENANT_ID_RESERVED', `"${id}" is a reserved name`)
}

const MAX_IDENTIFIER_BYTES = 63

/**
 * The tenant's role name. PostgreSQL silently truncates identifiers past 63 bytes, which would let
 * two long tenant ids share one role, so long names keep a readable head plus a hash of the full id.
 */
export function tenantRoleName(prefix: string, tenantId: string): string {
  const full = prefix + tenantId
  if (full.length <= MAX_IDENTIFIER_BYTES) return full
  const hash = createHash('sha256').update(tenantId).digest('hex').slice(0, 10)
  return `${full.slice(0, MAX_IDENTIFIER_BYTES - hash.length - 1)}_${hash}`
}

export interface TenantIdentity {
  schema: string
  role: string
}

/**
 * Rights of the tenant role, for provisioning: its own schema's rows, nothing else, granted through
 * default privileges so that every table a later migration creates in the schema is covered at
 * creation. (Granting ON ALL TABLES IN SCHEMA instead scans all of pg_class, which holds every
 * tenant's relations, so each provisioning and each tenant migration would slow down as tenants
 * are added.)
 */
export function tenantPrivilegesSql(tenant: TenantIdentity): string[] {
  const schema = pg.escapeIdentifier(tenant.schema)
  const role = pg.escapeIdentifier(tenant.role)
  return [
    `GRANT USAGE ON SCHEMA ${schema} TO ${role}`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA ${schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${role}`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA ${schema} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO ${role}`
  ]
}

/** The same rights re-granted on everything already in the schema: the repair of a recreated role. */
export function grantTenantRoleSql(tenant: TenantIdentity): string[] {
  const schema = pg.escapeIdentifier(tenant.schema)
  const role = pg.escapeIdentifier(tenant.role)
  return [
    ...tenantPrivilegesSql(tenant),
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${schema} TO ${role}`,
    `GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA ${schema} TO ${role}`
  ]
}

/**
 * What makes a tenant's schema: its role, the schema, the role's rights and every tenant
 * migration, for one transaction that also registers it (a tenant) or records it (a spare). One
 * statement per element, to be sent one per message (DESIGN §9).
 */
export function tenantSchemaSql(identity: TenantIdentity, migrations: Migration[]): string[] {
  const schema = pg.escapeIdentifier(identity.schema)
  const role = pg.escapeIdentifier(identity.role)
  return [
    // LOGIN without a password: nobody can authenticate as it, yet Citus can open worker connections as it (DESIGN §6).
    `CREATE ROLE ${role} LOGIN`,
    // Membership lets a non-superuser service role SET ROLE to the tenant and drop it later.
    `GRANT ${role} TO CURRENT_USER`,
    `CREATE SCHEMA ${schema}`,
    // Before the migrations, so that every table they create is granted to the role at creation.
    ...tenantPrivilegesSql(identity),
    `SET LOCAL search_path TO ${schema}`,
    ...migrations.flatMap(statementsOf)
  ]
}
