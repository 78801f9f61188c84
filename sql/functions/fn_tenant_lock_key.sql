-- after: 0001
-- grant: EXECUTE TO PUBLIC
-- One advisory lock per tenant serialises a tenant's writers with changes to its partitions
-- (fn_prepare_tenant_partition, fn_attach_tenant_partition). Why: a writer plans its INSERT
-- with the partition layout of the moment. If a partition is attached between that and the
-- row's routing (into DEFAULT or the tenant's _rest), the row fails the partition check and
-- the INSERT errors. So every tenant transaction takes the lock SHARED (fn_set_tenant_context),
-- before any INSERT starts, and attaching takes it EXCLUSIVE: only that tenant's writers
-- wait, for the attach only; other tenants never do.
CREATE OR REPLACE FUNCTION fn_tenant_lock_key(p_tenant uuid) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT pg_catalog.hashtextextended(p_tenant::text, 7364) $$;
