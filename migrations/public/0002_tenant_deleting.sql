-- Deleting a tenant first removes its files from object storage, which can fail halfway and
-- cannot be part of the transaction that drops the schema. The tenant is marked 'deleting' in a
-- transaction of its own beforehand: it then refuses requests like a suspended one, and running
-- the deletion again finishes the job.
ALTER TABLE public.tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE public.tenants ADD CONSTRAINT tenants_status_check CHECK (status IN ('active', 'suspended', 'deleting'));
