-- Tenant partitions of usage_events_mt, and the functions that create them.
--
-- Layout (docs/partitioning.md has the reasoning and the figures):
--
--   usage_events_mt                          LIST (organization_id)
--   ├── usage_events_mt_default              DEFAULT: tenants not onboarded yet; kept drained
--   └── usage_events_mt_t_<32 hex>           one tenant, RANGE ("timestamp")
--       ├── usage_events_mt_t_<hex>_rest     DEFAULT: all of a small tenant's rows; the rest otherwise
--       └── usage_events_mt_t_<hex>_pYYYYMM  one month, for tenants split by month
--
-- A tenant is split into months when its tier says so (tier_limits.partition_by_month) or
-- when it outgrows partition_config.split_threshold_rows. Splitting is online: it touches
-- only that tenant's tables. Names are at most 58 bytes, under PostgreSQL's 63.
--
-- Every new table is created on its own first, then ATTACHed: ATTACH PARTITION takes
-- SHARE UPDATE EXCLUSIVE on the parent and never blocks other tenants' writers, where
-- CREATE TABLE ... PARTITION OF an attached parent would take ACCESS EXCLUSIVE.

ALTER TABLE tier_limits ADD COLUMN partition_by_month boolean NOT NULL DEFAULT false;
UPDATE tier_limits SET partition_by_month = (tier IN ('growth', 'enterprise'));

CREATE TABLE partition_config (
    singleton             boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    premake_months        integer NOT NULL DEFAULT 3 CHECK (premake_months BETWEEN 0 AND 36),
    max_history_months    integer NOT NULL DEFAULT 24 CHECK (max_history_months BETWEEN 0 AND 240),
    split_threshold_rows  bigint NOT NULL DEFAULT 1000000 CHECK (split_threshold_rows > 0),
    lock_timeout          text NOT NULL DEFAULT '2s'
);
INSERT INTO partition_config DEFAULT VALUES;
ALTER TABLE partition_config OWNER TO billing_owner;
GRANT SELECT ON partition_config TO billing_app;

-- Where new partitions go: the database's default tablespace here; storage tiering
-- (sql/0009) replaces this with the hot tier's tablespace.
CREATE FUNCTION fn_hot_tablespace() RETURNS text
    LANGUAGE sql STABLE
AS $$ SELECT ''::text $$;

CREATE FUNCTION fn_tenant_partition_name(p_tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'usage_events_mt_t_' || pg_catalog.replace(p_tenant::text, '-', '') $$;

CREATE FUNCTION fn_month_partition_name(p_tenant uuid, p_month date) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT public.fn_tenant_partition_name(p_tenant) || '_p' || pg_catalog.to_char(p_month, 'YYYYMM') $$;

-- A new partition: owned by billing_owner, RLS forced with no policy (queries go through the
-- parent, whose policies apply), no privileges for anyone else.
CREATE FUNCTION fn_secure_partition(p_table text) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('ALTER TABLE public.%I OWNER TO billing_owner', p_table);
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', p_table);
    EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', p_table);
    EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, billing_app', p_table);
END
$$;

CREATE FUNCTION fn_is_partition_of(p_child text, p_parent text) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_inherits i
         WHERE i.inhrelid = to_regclass('public.' || quote_ident(p_child))
           AND i.inhparent = to_regclass('public.' || quote_ident(p_parent)))
$$;

-- Step 1 of onboarding, and all of premaking: make sure the tenant's partition and its month
-- partitions exist. Creates tables standalone and attaches months to the tenant's own
-- partition, moving that month's rows out of the tenant's _rest partition in the same
-- transaction. Takes no lock on usage_events_mt or on any other tenant's table.
CREATE FUNCTION fn_prepare_tenant_partition(p_tenant uuid, p_premake_months integer DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg          public.partition_config%ROWTYPE;
    v_part       text;
    v_rest       text;
    v_monthly    boolean;
    v_tier       text;
    v_rows       double precision;
    v_oldest     timestamptz;
    v_this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_first      date;
    v_last       date;
    v_month      date;
    v_leaf       text;
    v_from       timestamptz;
    v_to         timestamptz;
    v_moved      bigint := 0;
    v_n          bigint;
    v_created    text[] := '{}';
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant partition: the tenant id is NULL' USING HINT = 'pass the organization''s UUID';
    END IF;
    SELECT * INTO STRICT cfg FROM public.partition_config;
    p_premake_months := COALESCE(p_premake_months, cfg.premake_months);
    IF p_premake_months NOT BETWEEN 0 AND 36 THEN
        RAISE EXCEPTION 'tenant %: premake months must be between 0 and 36, not %', p_tenant, p_premake_months;
    END IF;
    PERFORM set_config('lock_timeout', cfg.lock_timeout, true);
    -- New tables and their indexes go to the hot tier.
    PERFORM set_config('default_tablespace', public.fn_hot_tablespace(), true);
    v_part := public.fn_tenant_partition_name(p_tenant);
    v_rest := v_part || '_rest';

    IF to_regclass('public.' || quote_ident(v_part)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE public.%I (LIKE public.usage_events_mt INCLUDING DEFAULTS INCLUDING INDEXES)'
            ' PARTITION BY RANGE ("timestamp")', v_part);
        -- Lets ATTACH skip scanning the new partition for rows of other tenants.
        EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT tenant_partition_check CHECK (organization_id = %L::uuid)',
                       v_part, p_tenant);
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I DEFAULT', v_rest, v_part);
        PERFORM public.fn_secure_partition(v_part);
        PERFORM public.fn_secure_partition(v_rest);
        v_created := v_created || v_part || v_rest;
    END IF;

    SELECT tc.tier INTO v_tier FROM public.tenant_classifications tc WHERE tc.organization_id = p_tenant;
    SELECT tl.partition_by_month INTO v_monthly FROM public.tier_limits tl WHERE tl.tier = COALESCE(v_tier, 'free');
    v_monthly := COALESCE(v_monthly, false);
    IF NOT v_monthly THEN
        -- Grown past the threshold? Estimates from the catalog, plus the exact count still in DEFAULT.
        SELECT COALESCE(sum(GREATEST(c.reltuples, 0)), 0) INTO v_rows
          FROM pg_partition_tree(to_regclass('public.' || quote_ident(v_part))) t
          JOIN pg_class c ON c.oid = t.relid
         WHERE t.isleaf;
        SELECT v_rows + count(*) INTO v_rows FROM public.usage_events_mt_default WHERE organization_id = p_tenant;
        v_monthly := v_rows >= cfg.split_threshold_rows;
    END IF;

    IF v_monthly THEN
        EXECUTE format('SELECT min("timestamp") FROM public.%I', v_part) INTO v_oldest;
        v_oldest := LEAST(v_oldest, (SELECT min("timestamp") FROM public.usage_events_mt_default
                                      WHERE organization_id = p_tenant));
        v_first := GREATEST(COALESCE(date_trunc('month', v_oldest AT TIME ZONE 'UTC')::date, v_this_month),
                            (v_this_month - make_interval(months => cfg.max_history_months))::date);
        v_first := LEAST(v_first, v_this_month);
        v_last := (v_this_month + make_interval(months => p_premake_months))::date;
        FOR v_month IN SELECT generate_series(v_first, v_last, interval '1 month')::date LOOP
            v_leaf := public.fn_month_partition_name(p_tenant, v_month);
            CONTINUE WHEN public.fn_is_partition_of(v_leaf, v_part);
            v_from := v_month::timestamp AT TIME ZONE 'UTC';
            v_to := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
            IF to_regclass('public.' || quote_ident(v_leaf)) IS NULL THEN
                EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING INDEXES'
                               ' INCLUDING CONSTRAINTS)', v_leaf, v_part);
                -- Lets ATTACH skip scanning the new month for rows outside it.
                EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT month_bounds_check'
                               ' CHECK ("timestamp" >= %L AND "timestamp" < %L)', v_leaf, v_from, v_to);
                PERFORM public.fn_secure_partition(v_leaf);
                v_created := v_created || v_leaf;
            END IF;
            -- The month's rows move out of the tenant's _rest in the same transaction as the
            -- attach. SHARE ROW EXCLUSIVE holds off this tenant's writers to _rest while
            -- readers go on; ATTACH then takes ACCESS EXCLUSIVE on _rest for its (now quick) check.
            PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
            EXECUTE format('LOCK TABLE public.%I IN SHARE ROW EXCLUSIVE MODE', v_rest);
            EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE "timestamp" >= %L AND "timestamp" < %L'
                           ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', v_rest, v_from, v_to, v_leaf);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_moved := v_moved + v_n;
            EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
                           v_part, v_leaf, v_from, v_to);
        END LOOP;
    END IF;

    RETURN jsonb_build_object(
        'tenant', p_tenant,
        'partition', v_part,
        'layout', CASE WHEN v_monthly THEN 'monthly' ELSE 'single' END,
        'tables_created', to_jsonb(v_created),
        'rows_split_into_months', v_moved);
END
$$;

-- Step 2 of onboarding: move the tenant's rows out of DEFAULT and ATTACH its partition, in
-- one transaction: nothing lost, nothing doubled. SHARE ROW EXCLUSIVE on DEFAULT keeps new
-- rows of the tenant from slipping in between the move and the attach, and lets readers go
-- on. ATTACH takes SHARE UPDATE EXCLUSIVE on usage_events_mt: other tenants' writers never
-- wait. A no-op when the partition is attached already.
CREATE FUNCTION fn_attach_tenant_partition(p_tenant uuid) RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_part  text;
    v_moved bigint := 0;
BEGIN
    IF p_tenant IS NULL THEN
        RAISE EXCEPTION 'tenant partition: the tenant id is NULL' USING HINT = 'pass the organization''s UUID';
    END IF;
    v_part := public.fn_tenant_partition_name(p_tenant);
    IF to_regclass('public.' || quote_ident(v_part)) IS NULL THEN
        RAISE EXCEPTION 'tenant %: partition % does not exist', p_tenant, v_part
            USING HINT = 'run fn_prepare_tenant_partition() first, or fn_create_tenant_partition()';
    END IF;
    IF public.fn_is_partition_of(v_part, 'usage_events_mt') THEN
        RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', false, 'rows_moved', 0);
    END IF;
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
    LOCK TABLE public.usage_events_mt_default IN SHARE ROW EXCLUSIVE MODE;
    EXECUTE format('WITH moved AS (DELETE FROM public.usage_events_mt_default WHERE organization_id = %L::uuid'
                   ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', p_tenant, v_part);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE public.usage_events_mt ATTACH PARTITION public.%I FOR VALUES IN (%L)',
                   v_part, p_tenant);
    RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', true, 'rows_moved', v_moved);
END
$$;

-- For DBAs: both steps in one call (one transaction). Idempotent; re-run it after any failure.
CREATE FUNCTION fn_create_tenant_partition(p_tenant uuid, p_premake_months integer DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN public.fn_prepare_tenant_partition(p_tenant, p_premake_months)
        || public.fn_attach_tenant_partition(p_tenant);
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'fn_secure_partition(text)', 'fn_is_partition_of(text, text)',
        'fn_prepare_tenant_partition(uuid, integer)', 'fn_attach_tenant_partition(uuid)',
        'fn_create_tenant_partition(uuid, integer)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION public.%s OWNER TO billing_owner', f);
        EXECUTE format('REVOKE ALL ON FUNCTION public.%s FROM PUBLIC', f);
    END LOOP;
END
$$;
ALTER FUNCTION fn_tenant_partition_name(uuid) OWNER TO billing_owner;
ALTER FUNCTION fn_hot_tablespace() OWNER TO billing_owner;
ALTER FUNCTION fn_month_partition_name(uuid, date) OWNER TO billing_owner;
