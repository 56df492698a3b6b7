-- The tenant registry. One row per tenant; the schema and role named here exist exactly as long
-- as the row does (provisioning and deletion are single transactions).
CREATE TABLE public.tenants (
  id               text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{1,61}[a-z0-9]$'),
  name             text NOT NULL,
  schema           text NOT NULL UNIQUE,
  role             text NOT NULL UNIQUE,
  status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  schema_version   integer NOT NULL DEFAULT 0,
  migration_status text NOT NULL DEFAULT 'ok' CHECK (migration_status IN ('ok', 'failed')),
  migration_error  text,
  created_at       timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  updated_at       timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now())
);

CREATE INDEX tenants_created_at_id_idx ON public.tenants (created_at, id);
