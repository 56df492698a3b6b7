-- Tenant schemas made ahead of need (lib/tenants/spares.ts): each row is a schema and a
-- role built exactly as a tenant's, at a tenant migration version, that no tenant has yet. Creating
-- a tenant renames one and registers it in one transaction, so the files of the tenant's tables are
-- not created while its client waits. Every schema the service made is in exactly one of
-- public.tenants and public.tenant_spares.
CREATE TABLE public.tenant_spares (
  schema         text PRIMARY KEY,
  role           text NOT NULL UNIQUE,
  schema_version integer NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now()
);
