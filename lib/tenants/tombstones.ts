import pg from 'pg'
import { MAX_JWT_CLOCK_TOLERANCE_MS } from '../../schemas/env.ts'
import { ApiError } from '../../schemas/errors.ts'

/**
 * Tombstones of deleted tenant ids (`public.tenant_tombstones`, control-plane migration 0007).
 *
 * A tenant-bound token carries its tenant's id and its issue time, nothing of which tenant of that
 * id it was issued for. Requests refuse a token issued before their tenant was created
 * (plugins/app/tenant-context.ts): `(iat + 1) s + tolerance < created_at`, the second for iat's
 * resolution, the tolerance for the issuer's clock. A token of the deleted tenant can have been
 * issued up to the end of its deletion, and carry an iat up to `tolerance` later still; so it is
 * refused by a tenant of the same id created more than `2 × tolerance + 1 s` after that end, and
 * only then. Creation refuses the id until that interval has passed.
 */

/** How long after a deletion its id may not be created again, for a JWT_CLOCK_TOLERANCE_MS. */
export const recreationIntervalMs = (clockToleranceMs: number) => 2 * Math.max(0, Math.trunc(clockToleranceMs)) + 1000

/**
 * Tombstones older than this are removed whatever the configuration: the interval of the largest
 * tolerance accepted, so instances configured with different tolerances never prune a tombstone
 * that another still needs.
 */
export const TOMBSTONE_RETENTION_MS = recreationIntervalMs(MAX_JWT_CLOCK_TOLERANCE_MS)

/** Tombstones past the retention, skipping those another transaction is removing. */
const EXPIRED = `SELECT tenant_id FROM public.tenant_tombstones
  WHERE deleted_at < now() - interval '${TOMBSTONE_RETENTION_MS} milliseconds' FOR UPDATE SKIP LOCKED`

/**
 * The last statement of a deletion's transaction: records when it finished (clock_timestamp(),
 * after the schema was dropped, not when the transaction began), and prunes expired tombstones.
 */
export const recordTombstoneSql = (id: string) =>
  `WITH pruned AS (DELETE FROM public.tenant_tombstones WHERE tenant_id IN (${EXPIRED}) AND tenant_id <> ${pg.escapeLiteral(id)})
   INSERT INTO public.tenant_tombstones (tenant_id, deleted_at) VALUES (${pg.escapeLiteral(id)}, clock_timestamp())
   ON CONFLICT (tenant_id) DO UPDATE SET deleted_at = excluded.deleted_at`

/**
 * Two statements of a creation's transaction, sent after the registry row is inserted: the INSERT
 * has then waited for a concurrent deletion of the id to commit, so its tombstone is seen.
 * - the first answers `wait_ms`, how much earlier than allowed the new tenant's created_at is, when
 *   it is too early (no row otherwise);
 * - the second removes the id's tombstone (the tenant it was for is gone, and the next deletion
 *   writes its own) and expired ones.
 */
export const checkTombstoneSql = (id: string, intervalMs: number) => {
  const interval = `interval '${Math.max(0, Math.trunc(intervalMs))} milliseconds'`
  return [
    `SELECT ceil(extract(epoch FROM d.deleted_at + ${interval} - n.created_at) * 1000)::bigint AS wait_ms
       FROM public.tenant_tombstones d JOIN public.tenants n ON n.id = d.tenant_id
      WHERE d.tenant_id = ${pg.escapeLiteral(id)} AND n.created_at <= d.deleted_at + ${interval}`,
    `DELETE FROM public.tenant_tombstones WHERE tenant_id = ${pg.escapeLiteral(id)} OR tenant_id IN (${EXPIRED})`
  ]
}

/** 409 TENANT_RECENTLY_DELETED, with the whole seconds left as Retry-After (rounded up, and at least 1). */
export function recentlyDeleted(id: string, waitMs: number, intervalMs: number): ApiError {
  const seconds = Math.floor(Math.max(0, waitMs) / 1000) + 1
  return new ApiError(
    'TENANT_RECENTLY_DELETED',
    `Tenant "${id}" was deleted less than ${intervalMs / 1000} s ago; tokens issued for it could not be told from the new tenant's: retry in ${seconds} s`,
    { 'retry-after': String(seconds) }
  )
}
