-- The write guard of 0005 also checks which tenant of an id a write is for. A tenant id can be
-- deleted and created again while a request that resolved the earlier tenant still waits for its
-- body; the new tenant has the same schema and role names, so only the registry row's created_at
-- tells the two apart. The request passes the created_at it resolved (read into the tenant cache
-- as a JavaScript Date, so to the millisecond, below the microseconds PostgreSQL stores); a
-- registry row created at another instant is another tenant, refused as a missing one (TS404).
-- The comparison allows the millisecond the Date dropped: two tenants of one id are created at
-- least a second apart (public.tenant_tombstones), and always more than a millisecond.
--
-- The one-argument function stays for instances of the earlier code during a rolling deploy.
CREATE FUNCTION public.tenant_accepts_writes(tenant_id text, created_at timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  registered_status text;
  registered_at timestamptz;
BEGIN
  SELECT t.status, t.created_at INTO registered_status, registered_at FROM public.tenants t WHERE t.id = tenant_id;
  IF NOT FOUND OR registered_at <= created_at - interval '1 millisecond' OR registered_at >= created_at + interval '1 millisecond' THEN
    RAISE EXCEPTION 'tenant "%" does not exist', tenant_id USING ERRCODE = 'TS404';
  END IF;
  IF registered_status <> 'active' THEN
    RAISE EXCEPTION 'tenant "%" is %', tenant_id, registered_status USING ERRCODE = 'TS403', DETAIL = registered_status;
  END IF;
  RETURN true;
END
$$;
