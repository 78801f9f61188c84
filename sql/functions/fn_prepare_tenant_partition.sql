-- after: 0020
-- Step 1 of onboarding, and all of premaking: the pool's months, and, for a tenant that gets
-- a dedicated partition, that partition and its months (created standalone; months split off
-- the tenant's own _rest). A pooled tenant needs nothing else: the result says 'pooled'.
-- Placement policy (issue 17): a tenant whose override or tier says 'partition' gets one
-- (within the leaf budget), 'pooled' or 'schema' none; with neither, the rule below (tier's
-- partition_by_month, dedicated_resources, size). A tenant in a schema of its own, or in an
-- online move, is the placement mover's: only the pool's months are made for it ('schema' or
-- 'moving'), unless the move is one into a dedicated partition, which this prepares.
CREATE OR REPLACE FUNCTION fn_prepare_tenant_partition(p_tenant uuid, p_premake_months integer DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg          public.partition_config%ROWTYPE;
    v_pool       jsonb;
    v_part       text;
    v_rest       text;
    v_exists     boolean;
    v_attached   boolean;
    v_monthly    boolean;
    v_dedicated  boolean;
    v_tier       text;
    v_flagged    boolean;
    v_rows       double precision := 0;
    v_pooled     bigint;
    v_oldest     timestamptz;
    v_this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_first      date;
    v_last       date;
    v_month      date;
    v_leaf       text;
    v_moved      bigint := 0;
    v_leaves     integer;
    v_needed     integer;
    v_created    text[] := '{}';
    v_note       text := '';
    v_desired    text;
    v_placed     text;
    v_moving_to  text;
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
    PERFORM set_config('default_tablespace', public.fn_hot_tablespace(), true);
    v_part := public.fn_tenant_partition_name(p_tenant);
    v_rest := v_part || '_rest';
    v_exists := to_regclass('public.' || quote_ident(v_part)) IS NOT NULL;
    v_attached := v_exists AND public.fn_is_partition_of(v_part, 'usage_events_mt');

    SELECT tc.tier, tc.dedicated_resources INTO v_tier, v_flagged
      FROM public.tenant_classifications tc WHERE tc.organization_id = p_tenant;
    SELECT tl.partition_by_month, COALESCE(tc.placement_override, tl.placement) INTO v_monthly, v_desired
      FROM public.tier_limits tl
      LEFT JOIN public.tenant_classifications tc ON tc.organization_id = p_tenant
     WHERE tl.tier = COALESCE(v_tier, 'free');
    SELECT p.kind INTO v_placed FROM public.tenant_placements p WHERE p.organization_id = p_tenant;
    SELECT m.to_kind INTO v_moving_to FROM tenant_pipelines.tenant_moves m WHERE m.organization_id = p_tenant;
    IF (v_placed = 'schema' OR v_moving_to IS NOT NULL) AND v_moving_to IS DISTINCT FROM 'partition' THEN
        v_pool := public.fn_premake_pool_months(p_premake_months);
        RETURN jsonb_build_object(
            'tenant', p_tenant, 'partition', NULL,
            'layout', CASE WHEN v_moving_to IS NOT NULL THEN 'moving' ELSE 'schema' END,
            'tables_created', v_pool->'tables_created',
            'rows_split_into_months', (v_pool->>'rows_split_into_months')::bigint,
            'note', CASE WHEN v_moving_to IS NOT NULL THEN 'moving to ' || v_moving_to
                         ELSE 'in a schema of its own: no partition' END);
    END IF;
    v_monthly := COALESCE(v_monthly, false);
    -- Size: catalog estimates of its own partition, plus its rows in the pool, counted up to
    -- the threshold (an index-only range of the pool's primary key).
    IF v_exists THEN
        SELECT COALESCE(sum(GREATEST(c.reltuples, 0)), 0) INTO v_rows
          FROM pg_partition_tree(to_regclass('public.' || quote_ident(v_part))) t
          JOIN pg_class c ON c.oid = t.relid
         WHERE t.isleaf;
    END IF;
    SELECT count(*) INTO v_pooled FROM (
        SELECT 1 FROM public.usage_events_mt_default WHERE organization_id = p_tenant
         LIMIT cfg.split_threshold_rows) s;
    v_rows := v_rows + v_pooled;
    v_dedicated := v_exists OR v_monthly OR COALESCE(v_flagged, false) OR v_rows >= cfg.split_threshold_rows;
    IF v_moving_to = 'partition' OR v_desired = 'partition' THEN
        v_dedicated := true;
    ELSIF v_desired IN ('pooled', 'schema') AND NOT v_exists THEN
        v_dedicated := false;
    END IF;
    v_monthly := v_monthly OR v_rows >= cfg.split_threshold_rows;

    IF v_monthly THEN
        IF v_exists THEN
            EXECUTE format('SELECT min("timestamp") FROM public.%I', v_part) INTO v_oldest;
        END IF;
        v_oldest := LEAST(v_oldest, (SELECT min("timestamp") FROM public.usage_events_mt_default
                                      WHERE organization_id = p_tenant));
        v_first := GREATEST(COALESCE(date_trunc('month', v_oldest AT TIME ZONE 'UTC')::date, v_this_month),
                            (v_this_month - make_interval(months => cfg.max_history_months))::date);
        v_first := LEAST(v_first, v_this_month);
        v_last := (v_this_month + make_interval(months => p_premake_months))::date;
    END IF;

    -- Within the leaf budget? Leaves it has already count as spent.
    IF v_dedicated THEN
        v_leaves := public.fn_leaf_count();
        IF NOT v_exists THEN
            v_needed := 1;
        ELSE
            v_needed := 0;
        END IF;
        IF v_monthly THEN
            SELECT v_needed + count(*) FILTER (WHERE NOT public.fn_is_partition_of(
                       public.fn_month_partition_name(p_tenant, m::date), v_part))
              INTO v_needed
              FROM generate_series(v_first, v_last, interval '1 month') m;
        END IF;
        IF v_leaves + v_needed > cfg.leaf_budget THEN
            IF v_exists THEN
                -- It has a partition: keep it, without the months that do not fit.
                v_note := format('leaf budget full (%s of %s leaves, %s more needed): no new months; '
                                 'raise partition_config.leaf_budget', v_leaves, cfg.leaf_budget, v_needed);
                v_monthly := false;
            ELSIF NOT v_exists THEN
                v_note := format('leaf budget full (%s of %s leaves, %s needed): stays pooled; '
                                 'raise partition_config.leaf_budget to promote it', v_leaves, cfg.leaf_budget, v_needed);
                v_dedicated := false;
            END IF;
        END IF;
    END IF;

    -- A dedicated tenant's writers wait from here (its month splits need that). Taken before
    -- the pool's premake, which may lock the pool: a writer takes this lock first too, so the
    -- two never wait for each other in opposite order.
    IF v_dedicated THEN
        PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
    END IF;
    v_pool := public.fn_premake_pool_months(p_premake_months);
    PERFORM set_config('lock_timeout', cfg.lock_timeout, true);

    IF NOT v_dedicated THEN
        PERFORM public.fn_record_placement(p_tenant, 'pooled', 'usage_events_mt_default');
        RETURN jsonb_build_object(
            'tenant', p_tenant, 'partition', 'usage_events_mt_default', 'layout', 'pooled',
            'tables_created', v_pool->'tables_created',
            'rows_split_into_months', (v_pool->>'rows_split_into_months')::bigint,
            'note', v_note);
    END IF;
    IF v_attached THEN  -- already in place: make sure the registry says so
        PERFORM public.fn_record_placement(p_tenant, 'partition', v_part);
    END IF;

    IF NOT v_exists THEN
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

    IF v_monthly THEN
        FOR v_month IN SELECT generate_series(v_first, v_last, interval '1 month')::date LOOP
            v_leaf := public.fn_month_partition_name(p_tenant, v_month);
            CONTINUE WHEN public.fn_is_partition_of(v_leaf, v_part);
            IF public.fn_create_month_table(v_part, v_leaf, v_month) THEN
                v_created := v_created || v_leaf;
            END IF;
            -- SHARE ROW EXCLUSIVE holds off this tenant's writers to _rest while readers go on.
            PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
            EXECUTE format('LOCK TABLE public.%I IN SHARE ROW EXCLUSIVE MODE', v_rest);
            v_moved := v_moved + public.fn_attach_month(v_part, v_leaf, v_month, v_rest);
        END LOOP;
    END IF;

    RETURN jsonb_build_object(
        'tenant', p_tenant,
        'partition', v_part,
        'layout', CASE WHEN EXISTS (SELECT 1 FROM pg_inherits i
                                     WHERE i.inhparent = to_regclass('public.' || quote_ident(v_part))
                                       AND i.inhrelid <> to_regclass('public.' || quote_ident(v_rest)))
                       THEN 'monthly' ELSE 'single' END,
        'tables_created', to_jsonb(v_created) || (v_pool->'tables_created'),
        'rows_split_into_months', v_moved + (v_pool->>'rows_split_into_months')::bigint,
        'note', v_note);
END
$$;
