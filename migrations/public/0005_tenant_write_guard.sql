-- A write re-checks its tenant when its transaction starts, not only when the request's headers
-- arrived: a body can take long to arrive, and the tenant may be suspended or deleted meanwhile.
-- The request's context statement calls this function in the same flight as BEGIN, so the check
-- costs no round trip. It runs as its owner (SECURITY DEFINER): tenant roles cannot read the
-- registry themselves. The SQLSTATEs are the service's own (class TS), mapped to 404 and 403.
CREATE FUNCTION public.tenant_accepts_writes(tenant_id text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  tenant_status text;
BEGIN
  SELECT status INTO tenant_status FROM public.tenants WHERE id = tenant_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tenant "%" does not exist', tenant_id USING ERRCODE = 'TS404';
  END IF;
  IF tenant_status <> 'active' THEN
    RAISE EXCEPTION 'tenant "%" is %', tenant_id, tenant_status USING ERRCODE = 'TS403', DETAIL = tenant_status;
  END IF;
  RETURN true;
END
$$;
