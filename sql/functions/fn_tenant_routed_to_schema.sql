-- after: 0022
-- grant: EXECUTE TO PUBLIC
-- True when this transaction's tenant context routes to a schema of the tenant's own:
-- fn_set_tenant_context wrote 'app.tenant_route' = '<stamp><schema>' in this very
-- transaction (the stamp as in fn_current_tenant_id, so a value left from another
-- transaction, or set for the session, is no route). False otherwise, never NULL: the
-- RESTRICTIVE policies of the shared tenant tables (migration 0023) refuse a schema tenant's
-- writes there, and a NULL would refuse everyone's.
--
-- Plain SQL, STABLE, no SET clause: inlined into the policies' WITH CHECK, evaluated per
-- row written, so it reads one setting and nothing else.
CREATE OR REPLACE FUNCTION fn_tenant_routed_to_schema() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(pg_catalog.split_part(pg_catalog.current_setting('app.tenant_route', true),
                                          pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text,
                                          2),
                    '') OPERATOR(pg_catalog.<>) ''
$$;
