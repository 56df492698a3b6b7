-- When the last deletion of each tenant id finished. A token names its tenant by id and carries
-- its issue time (iat, whole seconds), not which tenant of that id it was issued for: the service
-- tells two tenants of one id apart only by comparing iat with the tenant's created_at, allowing
-- JWT_CLOCK_TOLERANCE_MS for the issuer's clock. That holds only if the id is created again at
-- least 2 × tolerance + 1 s after the earlier tenant's deletion finished, so creation refuses it
-- before then (409 TENANT_RECENTLY_DELETED), reading this table in its registering transaction.
--
-- A table of its own, not a column of public.tenant_sweeps: a sweep row exists only where object
-- storage is configured, its sweeper deletes it once the prefix is clean (an interval unrelated to
-- this one), and it is also written for tenants that are not deleted. Here a row is written by the
-- transaction that drops the tenant, and removed when the id is created again or, at the latest,
-- once older than the longest interval any configuration allows (lib/tenants/tombstones.ts), by
-- the next creation or deletion of any tenant: the table holds at most the ids deleted in the last
-- ten minutes or so, plus those of the last such batch.
CREATE TABLE public.tenant_tombstones (
  tenant_id  text PRIMARY KEY,
  deleted_at timestamptz NOT NULL
);

CREATE INDEX tenant_tombstones_deleted_at_idx ON public.tenant_tombstones (deleted_at);
