import { createHash } from 'node:crypto'
import pg from 'pg'

/**
 * Everything that turns a tenant id into SQL text lives here. Identifiers go through
 * `pg.escapeIdentifier` and literals through `pg.escapeLiteral`, never through string building of
 * any other kind (DESIGN §4).
 */

/** Names no tenant may take: PostgreSQL's own schemas and those of extensions we run beside. */
const RESERVED_SCHEMAS = new Set(['public', 'information_schema', 'citus', 'citus_internal', 'columnar', 'columnar_internal'])

export const TENANT_ID_REGEX = /^[a-z][a-z0-9-]{1,61}[a-z0-9]$/

export type TenantIdProblem = 'invalid' | 'reserved'

/**
 * Reserved names are recognised before the format, so `information_schema` or `pg_catalog` is
 * answered as reserved rather than as malformed (their underscore alone would make them invalid).
 */
export function checkTenantId(id: string): TenantIdProblem | null {
  if (RESERVED_SCHEMAS.has(id) || id.startsWith('pg_') || id.startsWith('pg-')) return 'reserved'
  if (!TENANT_ID_REGEX.test(id)) return 'invalid'
  return null
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
 * The values of a tenant's context statement (see ScopedQuery): its schema as a search_path entry,
 * its role, and the statement timeout. Built once per tenant and cached with it.
 */
export function contextValues(tenant: TenantIdentity, statementTimeoutMs: number): readonly string[] {
  return [pg.escapeIdentifier(tenant.schema), tenant.role, String(Math.trunc(statementTimeoutMs))]
}

/**
 * Rights of the tenant role, for provisioning: its own schema's rows, nothing else, granted through
 * default privileges so that every table a later migration creates in the schema is covered at
 * creation. (Granting ON ALL TABLES IN SCHEMA instead scans all of pg_class, which with thousands
 * of tenants makes each provisioning and each tenant migration tens of milliseconds slower.)
 */
export function tenantPrivilegesSql(tenant: TenantIdentity): string {
  const schema = pg.escapeIdentifier(tenant.schema)
  const role = pg.escapeIdentifier(tenant.role)
  return [
    `GRANT USAGE ON SCHEMA ${schema} TO ${role}`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA ${schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${role}`,
    `ALTER DEFAULT PRIVILEGES IN SCHEMA ${schema} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO ${role}`
  ].join('; ')
}

/** The same rights re-granted on everything already in the schema: the repair of a recreated role. */
export function grantTenantRoleSql(tenant: TenantIdentity): string {
  const schema = pg.escapeIdentifier(tenant.schema)
  const role = pg.escapeIdentifier(tenant.role)
  return [
    tenantPrivilegesSql(tenant),
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${schema} TO ${role}`,
    `GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA ${schema} TO ${role}`
  ].join('; ')
}
