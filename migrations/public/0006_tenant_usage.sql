-- Requests per tenant per hour (lib/tenants/usage.ts). Each instance counts in memory and adds its
-- counts here in batches, so replicas add up. The foreign key drops a tenant's rows with it; a
-- batch names only tenants that still exist. Rows older than eight days are deleted as counting goes.
CREATE TABLE public.tenant_usage (
  tenant_id text NOT NULL REFERENCES public.tenants (id) ON DELETE CASCADE,
  hour      timestamptz NOT NULL,
  requests  bigint NOT NULL CHECK (requests >= 0),
  PRIMARY KEY (tenant_id, hour)
);

-- The retention sweep deletes by hour across every tenant.
CREATE INDEX tenant_usage_hour_idx ON public.tenant_usage (hour);
