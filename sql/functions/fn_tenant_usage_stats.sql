-- after: 0001
-- Usage figures of one tenant, from where it lives (tenant_placements):
-- - a schema tenant (kind 'schema'): its events counted in its schema's usage_events, and its
--   storage the size of its schema's relations (every table and month, with their indexes and
--   TOAST);
-- - any other: its events in its own partition tree plus its rows in the pool, and the storage
--   of its partition tree plus any schema registered to it in tenant_schemas (an enterprise
--   schema, or the target of a move to a schema not cut over yet). A pooled tenant's storage
--   is its share of the pool: its rows there times fn_pool_bytes_per_row().
CREATE OR REPLACE FUNCTION fn_tenant_usage_stats(p_tenant uuid, p_now timestamptz DEFAULT now())
    RETURNS TABLE (events_last_24h bigint, events_this_month bigint, last_activity timestamptz,
                   storage_bytes bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema text := public.fn_get_tenant_schema(p_tenant);
    v_part   regclass;
    v_month  timestamptz := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_24h    bigint := 0;
    v_month_n bigint := 0;
    v_last   timestamptz;
    v_bytes  bigint := 0;
    d_24h    bigint := 0;
    d_month  bigint := 0;
    d_last   timestamptz;
    d_rows   bigint;
BEGIN
    IF v_schema IS NOT NULL THEN
        v_part := to_regclass(format('%I.usage_events', v_schema));
    ELSE
        v_part := to_regclass('public.' || quote_ident(public.fn_tenant_partition_name(p_tenant)));
    END IF;
    IF v_part IS NOT NULL THEN
        -- Both hold the tenant's rows only (a partition's bound, a schema's tenant_only_check).
        EXECUTE format('SELECT count(*), max("timestamp") FROM %s'
                       ' WHERE "timestamp" > $1 - interval ''24 hours'' AND "timestamp" <= $1', v_part)
            INTO v_24h, v_last USING p_now;
        EXECUTE format('SELECT count(*) FROM %s WHERE "timestamp" >= $1 AND "timestamp" <= $2', v_part)
            INTO v_month_n USING v_month, p_now;
        IF v_last IS NULL THEN
            EXECUTE format('SELECT max("timestamp") FROM %s WHERE "timestamp" <= $1', v_part)
                INTO v_last USING p_now;
        END IF;
        IF v_schema IS NULL THEN
            SELECT COALESCE(sum(pg_total_relation_size(t.relid)), 0) INTO v_bytes
              FROM pg_partition_tree(v_part) t;
        END IF;
    END IF;
    IF v_schema IS NULL THEN
        SELECT count(*) FILTER (WHERE d."timestamp" > p_now - interval '24 hours' AND d."timestamp" <= p_now),
               count(*) FILTER (WHERE d."timestamp" >= v_month AND d."timestamp" <= p_now),
               max(d."timestamp") FILTER (WHERE d."timestamp" <= p_now),
               count(*)
          INTO d_24h, d_month, d_last, d_rows
          FROM public.usage_events_mt_default d WHERE d.organization_id = p_tenant;
        IF d_rows > 0 THEN
            v_bytes := v_bytes + round(d_rows * public.fn_pool_bytes_per_row())::bigint;
        END IF;
    END IF;
    v_bytes := v_bytes + COALESCE((
        SELECT sum(pg_total_relation_size(c.oid))
          FROM pg_namespace n
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
         WHERE n.nspname = v_schema
            OR n.nspname IN (SELECT ts.schema_name FROM public.tenant_schemas ts WHERE ts.organization_id = p_tenant)), 0);
    events_last_24h := v_24h + d_24h;
    events_this_month := v_month_n + d_month;
    last_activity := GREATEST(v_last, d_last);
    storage_bytes := v_bytes;
    RETURN NEXT;
END
$$;
