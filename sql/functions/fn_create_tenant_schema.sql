-- after: 0024
-- A tenant's own schema, tenant_<32 hex>, empty and ready: usage_events (partitioned by month,
-- the months from p_first_month to p_premake_months ahead, partition_config.premake_months
-- when NULL, and a DEFAULT partition _rest),
-- subscriptions, invoices and payment_methods, LIKE the shared tables (columns, defaults,
-- keys, indexes, CHECKs) plus a CHECK that every row is the tenant's, with the shared tables' foreign keys (to the schema's own tables
-- where the shared ones point at a tenant table, else to the shared one). Every table is
-- protected like a shared tenant table (RLS enabled and forced, the same policy);
-- billing_app may use the schema and read and write the four tables, and nothing else: no
-- CREATE, no privilege on a month. Recorded in tenant_schemas at the tenant tables' current
-- migration version. Creates no placement: the tenant moves in with core/moves.py.
-- Idempotent: what exists is kept. Returns the schema's name.
CREATE OR REPLACE FUNCTION fn_create_tenant_schema(p_tenant uuid, p_first_month date DEFAULT NULL,
                                                   p_premake_months integer DEFAULT NULL) RETURNS text
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg         public.partition_config%ROWTYPE;
    v_schema    text := public.fn_tenant_schema_name(p_tenant);
    v_table     text;
    v_con       record;
    v_this      date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_month     date;
    v_leaf      text;
BEGIN
    IF p_tenant IS NULL OR NOT EXISTS (SELECT 1 FROM public.organizations WHERE id = p_tenant) THEN
        RAISE EXCEPTION 'unknown tenant %', p_tenant
            USING ERRCODE = 'no_data_found', HINT = 'onboard the organization first, or check the id';
    END IF;
    SELECT * INTO STRICT cfg FROM public.partition_config;
    p_premake_months := COALESCE(p_premake_months, cfg.premake_months);
    IF p_premake_months NOT BETWEEN 0 AND 36 THEN
        RAISE EXCEPTION 'tenant %: premake months must be between 0 and 36, not %', p_tenant, p_premake_months
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('lock_timeout', cfg.lock_timeout, true);
    PERFORM set_config('default_tablespace', public.fn_hot_tablespace(), true);
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION billing_owner', v_schema);
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', v_schema);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO billing_app', v_schema);
    FOREACH v_table IN ARRAY ARRAY['subscriptions', 'invoices', 'payment_methods', 'usage_events'] LOOP
        CONTINUE WHEN to_regclass(format('%I.%I', v_schema, v_table)) IS NOT NULL;
        IF v_table = 'usage_events' THEN
            EXECUTE format('CREATE TABLE %I.usage_events (LIKE public.usage_events_mt INCLUDING ALL)'
                           ' PARTITION BY RANGE ("timestamp")', v_schema);
            EXECUTE format('CREATE TABLE %I.usage_events_rest PARTITION OF %I.usage_events DEFAULT', v_schema, v_schema);
            EXECUTE format('ALTER TABLE %I.usage_events_rest OWNER TO billing_owner', v_schema);
            PERFORM public.fn_protect_tenant_table(format('%I.usage_events_rest', v_schema)::regclass);
        ELSE
            EXECUTE format('CREATE TABLE %I.%I (LIKE public.%I INCLUDING ALL)', v_schema, v_table, v_table);
        END IF;
        EXECUTE format('ALTER TABLE %I.%I OWNER TO billing_owner', v_schema, v_table);
        PERFORM public.fn_protect_tenant_table(format('%I.%I', v_schema, v_table)::regclass);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO billing_app', v_schema, v_table);
    END LOOP;
    -- The shared tables' foreign keys, pointed at the schema's own tenant tables.
    FOR v_con IN SELECT c.conname, r.relname AS tbl,
                        regexp_replace(pg_get_constraintdef(c.oid),
                                       'REFERENCES public\.(subscriptions|invoices|payment_methods)\(',
                                       'REFERENCES ' || quote_ident(v_schema) || '.\1(') AS def
                   FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid
                  WHERE c.contype = 'f' AND r.relnamespace = 'public'::regnamespace
                    AND r.relname IN ('subscriptions', 'invoices', 'payment_methods')
                  ORDER BY r.relname, c.conname LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conname = v_con.conname
                                 AND x.conrelid = format('%I.%I', v_schema, v_con.tbl)::regclass);
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', v_schema, v_con.tbl, v_con.conname, v_con.def);
    END LOOP;
    -- Nobody's rows but the tenant's, whoever writes (the owner and superusers too).
    FOREACH v_table IN ARRAY ARRAY['subscriptions', 'invoices', 'payment_methods', 'usage_events'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conname = 'tenant_only_check'
                                 AND x.conrelid = format('%I.%I', v_schema, v_table)::regclass);
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT tenant_only_check CHECK (organization_id = %L::uuid)',
                       v_schema, v_table, p_tenant);
    END LOOP;
    -- Its months, as a dedicated tenant's: from the oldest it needs to p_premake_months ahead.
    v_month := LEAST(COALESCE(date_trunc('month', p_first_month)::date, v_this),
                     v_this)::date;
    v_month := GREATEST(v_month, (v_this - make_interval(months => cfg.max_history_months))::date);
    WHILE v_month <= (v_this + make_interval(months => p_premake_months))::date LOOP
        v_leaf := 'usage_events_p' || to_char(v_month, 'YYYYMM');
        IF to_regclass(format('%I.%I', v_schema, v_leaf)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.usage_events FOR VALUES FROM (%L) TO (%L)',
                           v_schema, v_leaf, v_schema,
                           v_month::timestamp AT TIME ZONE 'UTC',
                           (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            EXECUTE format('ALTER TABLE %I.%I OWNER TO billing_owner', v_schema, v_leaf);
            PERFORM public.fn_protect_tenant_table(format('%I.%I', v_schema, v_leaf)::regclass);
        END IF;
        v_month := (v_month + interval '1 month')::date;
    END LOOP;
    INSERT INTO public.tenant_schemas (organization_id, schema_name, migrated_to)
    VALUES (p_tenant, v_schema,
            (SELECT v.version FROM public.tenant_tables_version v))
    ON CONFLICT (organization_id) DO NOTHING;
    RETURN v_schema;
END
$$;
