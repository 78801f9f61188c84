-- after: 0001
-- Keep the pool's months in place: from its oldest row (at most max_history_months back) to
-- premake_months ahead. The months are contiguous, between _before (MINVALUE to the first
-- month) and _after (the end of the last month to MAXVALUE). A month in the middle that went
-- missing is created and ATTACHed: SHARE UPDATE EXCLUSIVE on the pool, writers go on. Moving
-- an edge: _after (or _before) is DETACHed, which holds ACCESS EXCLUSIVE on the pool until the
-- caller's transaction commits, its rows of the new months move into them, the months are
-- ATTACHed and the edge is ATTACHed again with its new bound. Tables are created beforehand,
-- so the pool is locked for the moves and the attaches only (rows beyond the horizon are
-- rare), about once a month; the lock is waited for 100 ms at most (the caller retries). The
-- caller commits soon after: the pipelines call this in a transaction of its own or in a
-- tenant's prepare step. Serialised by an advisory lock when something is missing.
CREATE OR REPLACE FUNCTION fn_premake_pool_months(p_premake_months integer DEFAULT NULL) RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg          public.partition_config%ROWTYPE;
    v_this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_oldest     timestamptz;
    v_lo         date;
    v_hi         date;
    v_first      date;
    v_last       date;
    v_month      date;
    v_missing    date[];
    v_created    text[] := '{}';
    v_moved      bigint := 0;
    v_edge       text;
    v_months     date[];
BEGIN
    SELECT * INTO STRICT cfg FROM public.partition_config;
    p_premake_months := COALESCE(p_premake_months, cfg.premake_months);
    IF p_premake_months NOT BETWEEN 0 AND 36 THEN
        RAISE EXCEPTION 'pool: premake months must be between 0 and 36, not %', p_premake_months;
    END IF;
    PERFORM set_config('lock_timeout', cfg.lock_timeout, true);
    PERFORM set_config('default_tablespace', public.fn_hot_tablespace(), true);
    FOR v_pass IN 1 .. 2 LOOP
        -- The months there now (contiguous: v_lo up to v_hi), and the months wanted.
        SELECT min(m), (max(m) + interval '1 month')::date INTO v_lo, v_hi FROM (
            SELECT to_date(right(c.relname, 6), 'YYYYMM') AS m
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'public.usage_events_mt_default'::regclass
               AND c.relname ~ '^usage_events_mt_pool_p[0-9]{6}$') s;
        v_lo := COALESCE(v_lo, v_this_month);
        v_hi := COALESCE(v_hi, v_this_month);
        SELECT min("timestamp") INTO v_oldest FROM public.usage_events_mt_pool_before;
        v_first := GREATEST(COALESCE(date_trunc('month', v_oldest AT TIME ZONE 'UTC')::date, v_lo),
                            (v_this_month - make_interval(months => cfg.max_history_months))::date);
        v_first := LEAST(v_first, v_lo);
        v_last := GREATEST((v_this_month + make_interval(months => p_premake_months))::date, v_hi - 1);
        SELECT array_agg(m::date ORDER BY m) INTO v_missing
          FROM generate_series(v_first, v_last, interval '1 month') m
         WHERE NOT public.fn_is_partition_of(public.fn_pool_month_name(m::date), 'usage_events_mt_default');
        EXIT WHEN v_missing IS NULL;
        EXIT WHEN v_pass = 2;
        -- Something to do: one premaker at a time, then look again.
        PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key('00000000-0000-0000-0000-000000000000'));
    END LOOP;
    IF v_missing IS NULL THEN
        RETURN jsonb_build_object('tables_created', '[]'::jsonb, 'rows_split_into_months', 0);
    END IF;

    FOREACH v_month IN ARRAY v_missing LOOP
        IF public.fn_create_month_table('usage_events_mt_default', public.fn_pool_month_name(v_month), v_month) THEN
            v_created := v_created || public.fn_pool_month_name(v_month);
        END IF;
    END LOOP;

    -- Inside the range: nothing else holds those rows, attach as they are.
    FOREACH v_month IN ARRAY v_missing LOOP
        CONTINUE WHEN v_month < v_lo OR v_month >= v_hi;
        PERFORM public.fn_attach_month('usage_events_mt_default', public.fn_pool_month_name(v_month), v_month, NULL);
    END LOOP;
    -- Past either edge: the edge partition gives up the months, under the pool's lock.
    FOREACH v_edge IN ARRAY ARRAY['after', 'before'] LOOP
        IF v_edge = 'after' THEN
            SELECT array_agg(m ORDER BY m) INTO v_months FROM unnest(v_missing) m WHERE m >= v_hi;
        ELSE
            SELECT array_agg(m ORDER BY m) INTO v_months FROM unnest(v_missing) m WHERE m < v_lo;
        END IF;
        CONTINUE WHEN v_months IS NULL;
        PERFORM public.fn_cap_lock_timeout(100);
        EXECUTE format('ALTER TABLE public.usage_events_mt_default DETACH PARTITION public.%I',
                       'usage_events_mt_pool_' || v_edge);
        FOREACH v_month IN ARRAY v_months LOOP
            v_moved := v_moved + public.fn_attach_month('usage_events_mt_default', public.fn_pool_month_name(v_month),
                                                        v_month, 'usage_events_mt_pool_' || v_edge);
        END LOOP;
        IF v_edge = 'after' THEN
            EXECUTE format('ALTER TABLE public.usage_events_mt_default ATTACH PARTITION public.usage_events_mt_pool_after'
                           ' FOR VALUES FROM (%L) TO (MAXVALUE)',
                           (v_months[array_upper(v_months, 1)] + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        ELSE
            EXECUTE format('ALTER TABLE public.usage_events_mt_default ATTACH PARTITION public.usage_events_mt_pool_before'
                           ' FOR VALUES FROM (MINVALUE) TO (%L)', v_months[1]::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
    RETURN jsonb_build_object('tables_created', to_jsonb(v_created), 'rows_split_into_months', v_moved);
END
$$;
