-- after: 0020
-- grant: EXECUTE TO billing_app
-- Enter one tenant's context for the rest of the current transaction, stamped with the
-- transaction's start (fn_current_tenant_id() reads it in this transaction only). Refuses
-- NULL and tenants that do not exist. Takes the tenant's advisory lock SHARED (see
-- fn_tenant_lock_key), then routes: for a tenant in a schema of its own, that schema goes
-- first in a transaction-local search_path, so that usage_events, subscriptions, invoices
-- and payment_methods name its tables, and 'app.tenant_route' records it, stamped like the
-- context (fn_tenant_routed_to_schema): the shared tables refuse that tenant's writes
-- (migration 0023); for any other tenant, a schema a previous call of this transaction put
-- there is taken out, and so is the route. The route is read after the lock, so a move's cutover
-- (which takes the lock EXCLUSIVE) is never crossed by a transaction that read the old route;
-- in REPEATABLE READ or SERIALIZABLE, whose snapshot may predate the cutover, a snapshot older
-- than the tenant's last move is refused (fn_check_tenant_snapshot).
-- Returns the tenant id so calls can be chained. Not SECURITY DEFINER: it has no reason to
-- run with more rights than its caller. No `SET search_path` clause either: a function with
-- one restores the setting on exit, and the route is a setting made here for the caller. So
-- every name in it is qualified.
CREATE OR REPLACE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    v_schema text;
    v_path   text;
    v_shared text;
    v_stamp  text := pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::text;
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant context: the tenant id is NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the organization''s UUID';
    END IF;
    PERFORM pg_catalog.set_config(
        'app.current_tenant',
        v_stamp || p_tenant_id::text,
        true);
    IF NOT EXISTS (SELECT 1 FROM public.organizations o WHERE o.id OPERATOR(pg_catalog.=) p_tenant_id) THEN
        PERFORM pg_catalog.set_config('app.current_tenant', '', true);
        RAISE EXCEPTION 'unknown tenant %', p_tenant_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'onboard the organization first, or check the id';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(p_tenant_id));
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
        PERFORM public.fn_check_tenant_snapshot(p_tenant_id);  -- a snapshot older than a move's cutover
    END IF;
    v_schema := public.fn_tenant_schema_route(p_tenant_id);
    v_path := pg_catalog.current_setting('search_path');
    -- Every tenant schema out of the path, however it was spelled (quoted or not, any case,
    -- any spacing, anywhere in the list), then the leftover commas.
    v_shared := pg_catalog.regexp_replace(
        pg_catalog.regexp_replace(v_path, '(^|,)\s*"?tenant_[0-9a-f]{32}"?\s*(?=,|$)', '', 'gi'),
        '^\s*,\s*', '');
    IF v_shared ~ '^\s*$' THEN
        v_shared := '"$user", public';
    END IF;
    IF v_schema IS NOT NULL THEN
        PERFORM pg_catalog.set_config('search_path', pg_catalog.quote_ident(v_schema) OPERATOR(pg_catalog.||) ', '
                                      OPERATOR(pg_catalog.||) v_shared, true);
        PERFORM pg_catalog.set_config('app.tenant_route', v_stamp OPERATOR(pg_catalog.||) v_schema, true);
        RETURN p_tenant_id;
    END IF;
    IF COALESCE(pg_catalog.current_setting('app.tenant_route', true), '') OPERATOR(pg_catalog.<>) '' THEN
        PERFORM pg_catalog.set_config('app.tenant_route', '', true);
    END IF;
    IF v_shared OPERATOR(pg_catalog.<>) v_path THEN
        PERFORM pg_catalog.set_config('search_path', v_shared, true);
    END IF;
    RETURN p_tenant_id;
END
$$;
