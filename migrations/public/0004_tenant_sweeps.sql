-- Tenant prefixes (tenants/<id>/ in object storage) that the file sweep (lib/files/sweep.ts) must
-- visit: deleted files whose upload URL was still valid, staging objects of completed uploads,
-- and the whole prefix of a deleted tenant, where a late PUT with an old URL may still land.
--
-- due_at: the next visit. until: for a deleted tenant, when its last upload URL expires; the
-- prefix is visited until then, and once after. generation counts the changes, so that a sweep
-- finishing its visit does not overwrite a visit asked for meanwhile. leased_until: a sweeper
-- (of any replica) is at work on the prefix; others skip it until then.
CREATE TABLE public.tenant_sweeps (
  tenant_id    text PRIMARY KEY,
  due_at       timestamptz NOT NULL,
  until        timestamptz,
  generation   bigint NOT NULL DEFAULT 0,
  leased_until timestamptz
);

CREATE INDEX tenant_sweeps_due_at_idx ON public.tenant_sweeps (due_at);
