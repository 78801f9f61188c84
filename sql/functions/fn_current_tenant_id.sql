-- after: 0001
-- The tenant in context: NULL unless fn_set_tenant_context set it in this very transaction.
-- The value is '<tenant uuid>/<epoch seconds of transaction_timestamp()>'; a value written any
-- other way (a bare uuid, the session-level value of an earlier transaction, garbage) reads as
-- no context: NULL, never an error and never a tenant (docs/pooling.md has why the stamp is
-- the transaction's start).
--
-- Plain SQL, STABLE, no SET clause: it is inlined into policies, so partition pruning on
-- organization_id = fn_current_tenant_id() happens at executor start-up.
CREATE OR REPLACE FUNCTION fn_current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true), '/', 2)
             = pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text
        THEN pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true), '/', 1)::pg_catalog.uuid
    END
$$;

ALTER FUNCTION fn_current_tenant_id() OWNER TO billing_owner;
