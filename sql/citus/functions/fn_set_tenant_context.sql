-- grant: EXECUTE TO billing_app
-- Citus (replaces sql/functions/fn_set_tenant_context.sql on a coordinator). Enter one
-- tenant's context for the rest of the current transaction, on the coordinator and on every
-- worker the transaction reaches. set_config() is not propagated to workers; SET LOCAL is,
-- with citus.propagate_set_commands = 'local', which this function sets for the transaction
-- first: the value '<stamp><tenant uuid>' (the stamp: the transaction's start, which
-- fn_current_tenant_id() checks on the coordinator) is then sent to every worker connection
-- of the transaction, and ends with it. Refuses NULL and tenants that do not exist, takes the
-- tenant's advisory lock SHARED, and routes a schema tenant's names as on a single node
-- (schema tenants are not placed on Citus yet: docs/scale-out.md). Returns the tenant id.
CREATE OR REPLACE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    v_schema text;
    v_path   text;
    v_shared text;
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant context: the tenant id is NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the organization''s UUID';
    END IF;
    PERFORM pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
    EXECUTE pg_catalog.format('SET LOCAL app.current_tenant = %L',
        pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::text || p_tenant_id::text);
    IF NOT EXISTS (SELECT 1 FROM public.organizations o
                    WHERE o.id OPERATOR(pg_catalog.=) p_tenant_id) THEN
        SET LOCAL app.current_tenant = '';
        RAISE EXCEPTION 'unknown tenant %', p_tenant_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'onboard the organization first, or check the id';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(p_tenant_id));
    v_schema := public.fn_tenant_schema_route(p_tenant_id);
    v_path := pg_catalog.current_setting('search_path');
    v_shared := pg_catalog.regexp_replace(
        pg_catalog.regexp_replace(v_path, '(^|,)\s*"?tenant_[0-9a-f]{32}"?\s*(?=,|$)', '', 'gi'),
        '^\s*,\s*', '');
    IF v_shared ~ '^\s*$' THEN
        v_shared := '"$user", public';
    END IF;
    IF v_schema IS NOT NULL THEN
        PERFORM pg_catalog.set_config('search_path', pg_catalog.quote_ident(v_schema) OPERATOR(pg_catalog.||) ', '
                                      OPERATOR(pg_catalog.||) v_shared, true);
    ELSIF v_shared OPERATOR(pg_catalog.<>) v_path THEN
        PERFORM pg_catalog.set_config('search_path', v_shared, true);
    END IF;
    RETURN p_tenant_id;
END
$$;
