/**
 * Tenants, the control plane: the registry in `public.tenants`, provisioning (on the spot or from
 * spare schemas made ahead of need), migrations of the control plane and of every tenant schema,
 * the rules and SQL that turn a tenant id into names, and each tenant's usage.
 */
export {
  controlPlaneVersion,
  migrateAll,
  migrateControlPlane,
  latestVersion,
  loadMigrations,
  MIGRATIONS_ROOT,
  type Migration,
  type MigrationProgress,
  type MigrationSummary
} from './migrations.ts'
export { createTenantCatchUp, type LaggingTenant, type TenantCatchUp, type TenantMigrationMode } from './catch-up.ts'
export { provisionTenant } from './provisioning.ts'
export { deleteTenant, findTenant, getTenant, listTenants, TENANT_CHANGED_CHANNEL, toTenant, updateTenant, type TenantRow } from './registry.ts'
export { TenantSpares } from './spares.ts'
export { recreationIntervalMs } from './tombstones.ts'
export { assertValidTenantId, checkTenantId, tenantRoleName } from './sql.ts'
export {
  createTenantUsage,
  USAGE_RETENTION_DAYS,
  USAGE_TENANT_SCHEMA_VERSION,
  type TenantQueryable,
  type TenantUsageCounter
} from './usage.ts'
