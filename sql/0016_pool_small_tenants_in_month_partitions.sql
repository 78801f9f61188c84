-- Bounded leaves: most tenants share a pool, split by month; only the largest get partitions.
--
-- Before: every onboarded tenant got a partition of its own, so usage_events_mt had one leaf
-- per tenant (14,001 at 10,000 tenants). A query that relies on RLS alone is planned over
-- every leaf (3.9 s at 10,000 tenants), and a time bound written with now() sets up run-time
-- pruning over all of them. bench/partitions.py measured RLS-only planning at 10,000
-- tenants in this layout: 2.5 ms with 150 leaves, about 4 ms with 200, 11-12 ms with 300.
-- The default budget is 200.
--
--   usage_events_mt                          LIST (organization_id)
--   ├── usage_events_mt_default              DEFAULT: the pool, shared by pooled tenants, RANGE ("timestamp")
--   │   ├── usage_events_mt_pool_before      MINVALUE up to the first month: rows older than the months
--   │   ├── usage_events_mt_pool_pYYYYMM     one month of every pooled tenant; tiered by the global policy
--   │   └── usage_events_mt_pool_after       after the last month, up to MAXVALUE: rows beyond the premade ones
--   └── usage_events_mt_t_<32 hex>           dedicated: a tenant that earned it, within the leaf budget
--
-- Onboarding a tenant is registering it: its rows land in the pool, with no DDL. A tenant
-- gets a dedicated partition when its tier says so (tier_limits.partition_by_month), when it
-- is flagged (tenant_classifications.dedicated_resources), or when it outgrows
-- partition_config.split_threshold_rows, and only while the leaves under usage_events_mt stay
-- within partition_config.leaf_budget. Otherwise it stays pooled, which is correct, only
-- less isolated physically: RLS guards the pool exactly as it guards a partition.
--
-- The pool has no DEFAULT partition of its own, but two open-ended ranges instead: a
-- partitioned DEFAULT partition with a DEFAULT of its own makes the planner test every
-- query's clauses against the pool's partition constraint (NOT organization_id = ANY(every
-- dedicated tenant)), 0.13 -> 0.60 ms of planning at 60 dedicated tenants, measured here.
--
-- Promotion is online (core/partitions.py): the pipelines hold the tenant's advisory lock,
-- add a NOT VALID CHECK (organization_id <> tenant) to every pool leaf in a short
-- transaction, then move the tenant's rows, VALIDATE those CHECKs (SHARE UPDATE EXCLUSIVE:
-- writers go on) and ATTACH in one transaction. With the CHECKs validated, ATTACH does not
-- scan the pool. Then the CHECKs are dropped.

ALTER TABLE partition_config ADD COLUMN leaf_budget integer NOT NULL DEFAULT 200 CHECK (leaf_budget > 0);

CREATE FUNCTION fn_pool_month_name(p_month date) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT 'usage_events_mt_pool_p' || pg_catalog.to_char(p_month, 'YYYYMM') $$;

CREATE FUNCTION fn_pool_exclusion_name(p_tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'pool_excludes_' || pg_catalog.replace(p_tenant::text, '-', '') $$;

-- The DEFAULT partition becomes the pool: a partitioned table of the same name. Its rows
-- (tenants not onboarded before this migration) are moved into it, then into its months.
ALTER TABLE usage_events_mt DETACH PARTITION usage_events_mt_default;
ALTER TABLE usage_events_mt_default RENAME TO usage_events_mt_default_before_0016;
DO $$
DECLARE
    v_index text;
BEGIN
    -- Free the index names for the pool's own indexes.
    FOR v_index IN SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                    WHERE x.indrelid = 'public.usage_events_mt_default_before_0016'::regclass LOOP
        EXECUTE format('ALTER INDEX public.%I RENAME TO %I', v_index, left('old_' || v_index, 63));
    END LOOP;
END
$$;

-- The primary key leads with organization_id, which serves the pool's per-tenant lookups:
-- no extra index to maintain on every insert.
CREATE TABLE usage_events_mt_default (LIKE usage_events_mt INCLUDING DEFAULTS)
    PARTITION BY RANGE ("timestamp");
DO $$
DECLARE
    v_this_month timestamptz := date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('CREATE TABLE public.usage_events_mt_pool_before PARTITION OF public.usage_events_mt_default'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', v_this_month);
    EXECUTE format('CREATE TABLE public.usage_events_mt_pool_after PARTITION OF public.usage_events_mt_default'
                   ' FOR VALUES FROM (%L) TO (MAXVALUE)', v_this_month);
END
$$;
ALTER TABLE usage_events_mt ATTACH PARTITION usage_events_mt_default DEFAULT;
SELECT fn_secure_partition(t)
  FROM unnest(ARRAY['usage_events_mt_default', 'usage_events_mt_pool_before', 'usage_events_mt_pool_after']) t;
INSERT INTO usage_events_mt SELECT * FROM usage_events_mt_default_before_0016;
DROP TABLE usage_events_mt_default_before_0016;

-- A lock that pooled tenants' writers queue behind (ACCESS EXCLUSIVE on the pool or on one of
-- its leaves) is waited for at most this long, then given up and retried, so that an open
-- transaction somewhere stalls the pool for 100 ms at most, not for lock_timeout. Compared
-- in ms from pg_settings, however lock_timeout was written; 0 (none) is capped too.
CREATE FUNCTION fn_cap_lock_timeout(p_ms integer) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT set_config('lock_timeout', p_ms || 'ms', true) FROM pg_settings
     WHERE name = 'lock_timeout' AND (setting::bigint = 0 OR setting::bigint > p_ms)
$$;

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
CREATE FUNCTION fn_premake_pool_months(p_premake_months integer DEFAULT NULL) RETURNS jsonb
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

-- A month table for p_parent (the pool, or a tenant's partition), created standalone if it is
-- not there yet: LIKE the parent, its columns, defaults, indexes and CHECKs (a tenant's), plus
-- one for the month, which lets ATTACH skip scanning it for rows outside the month; secured
-- like every partition. Returns whether it was created.
CREATE FUNCTION fn_create_month_table(p_parent text, p_leaf text, p_month date) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('public.' || quote_ident(p_leaf)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING INDEXES'
                   ' INCLUDING CONSTRAINTS)', p_leaf, p_parent);
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT month_bounds_check'
                   ' CHECK ("timestamp" >= %L AND "timestamp" < %L)', p_leaf,
                   p_month::timestamp AT TIME ZONE 'UTC', (p_month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    PERFORM public.fn_secure_partition(p_leaf);
    RETURN true;
END
$$;

-- A month table, created already, ATTACHed to p_parent for its month, with that month's rows
-- moved into it first out of p_from (a detached edge of the pool, or a tenant's _rest), if
-- given: in the caller's transaction, so nothing is lost or doubled. Returns the rows moved.
CREATE FUNCTION fn_attach_month(p_parent text, p_leaf text, p_month date, p_from text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from timestamptz := p_month::timestamp AT TIME ZONE 'UTC';
    v_to   timestamptz := (p_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    v_n    bigint := 0;
BEGIN
    IF p_from IS NOT NULL THEN
        EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE "timestamp" >= %L AND "timestamp" < %L'
                       ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', p_from, v_from, v_to, p_leaf);
        GET DIAGNOSTICS v_n = ROW_COUNT;
    END IF;
    EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)',
                   p_parent, p_leaf, v_from, v_to);
    RETURN v_n;
END
$$;
SELECT fn_premake_pool_months();

-- Leaves under usage_events_mt now, and the budget.
CREATE FUNCTION fn_leaf_count() RETURNS integer
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT count(*)::int FROM pg_partition_tree('public.usage_events_mt'::regclass) WHERE isleaf $$;

-- Step 1 of onboarding, and all of premaking: the pool's months, and, for a tenant that gets
-- a dedicated partition, that partition and its months (created standalone; months split off
-- the tenant's own _rest). A pooled tenant needs nothing else: the result says 'pooled'.
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
    SELECT tl.partition_by_month INTO v_monthly FROM public.tier_limits tl WHERE tl.tier = COALESCE(v_tier, 'free');
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
        RETURN jsonb_build_object(
            'tenant', p_tenant, 'partition', 'usage_events_mt_default', 'layout', 'pooled',
            'tables_created', v_pool->'tables_created',
            'rows_split_into_months', (v_pool->>'rows_split_into_months')::bigint,
            'note', v_note);
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

-- Promotion, step 1 (its own short transaction; the caller holds the tenant's advisory lock
-- so that none of its rows enter the pool until the attach): a NOT VALID CHECK
-- (organization_id <> tenant) on every pool leaf. Each ADD takes ACCESS EXCLUSIVE on one leaf
-- for an instant. Returns how many were added.
CREATE FUNCTION fn_pool_exclude_tenant(p_tenant uuid) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := public.fn_pool_exclusion_name(p_tenant);
    v_leaf regclass;
    v_n    integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM public.fn_cap_lock_timeout(100);
    FOR v_leaf IN SELECT relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass) WHERE isleaf LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = v_leaf AND conname = v_name);
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I CHECK (organization_id <> %L::uuid) NOT VALID',
                       v_leaf, v_name, p_tenant);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;

-- Promotion, last step: drop those CHECKs again (each an instant under ACCESS EXCLUSIVE).
CREATE FUNCTION fn_pool_unexclude_tenant(p_tenant uuid) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := public.fn_pool_exclusion_name(p_tenant);
    v_leaf regclass;
    v_n    integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM public.fn_cap_lock_timeout(100);
    FOR v_leaf IN SELECT conrelid::regclass FROM pg_constraint WHERE conname = v_name
                     AND conrelid IN (SELECT relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass)) LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_leaf, v_name);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END
$$;

-- Step 2 of onboarding a dedicated tenant: move its rows out of the pool and ATTACH its
-- partition, in one transaction: nothing lost, nothing doubled. The tenant's advisory lock,
-- taken EXCLUSIVE, holds off its writers (they take it shared in fn_set_tenant_context);
-- other tenants' writers never wait for the move. When the pool's leaves carry the tenant's
-- exclusion CHECKs (fn_pool_exclude_tenant), they are validated here, and ATTACH does not
-- scan the pool; without them (a DBA's one-call fn_create_tenant_partition), ATTACH scans
-- the pool under ACCESS EXCLUSIVE, which pooled writers wait for. A no-op when attached.
CREATE OR REPLACE FUNCTION fn_attach_tenant_partition(p_tenant uuid) RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_part  text;
    v_leaf  regclass;
    v_moved bigint := 0;
    v_validated integer := 0;
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
        RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', false, 'rows_moved', 0,
                                  'checks_validated', 0);
    END IF;
    PERFORM set_config('lock_timeout', (SELECT lock_timeout FROM public.partition_config), true);
    PERFORM pg_advisory_xact_lock(public.fn_tenant_lock_key(p_tenant));
    EXECUTE format('WITH moved AS (DELETE FROM public.usage_events_mt_default WHERE organization_id = %L::uuid'
                   ' RETURNING *) INSERT INTO public.%I SELECT * FROM moved', p_tenant, v_part);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    FOR v_leaf IN SELECT c.conrelid::regclass FROM pg_constraint c
                   WHERE c.conname = public.fn_pool_exclusion_name(p_tenant) AND NOT c.convalidated
                     AND c.conrelid IN (SELECT relid FROM pg_partition_tree('public.usage_events_mt_default'::regclass)) LOOP
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', v_leaf, public.fn_pool_exclusion_name(p_tenant));
        v_validated := v_validated + 1;
    END LOOP;
    PERFORM public.fn_cap_lock_timeout(100);
    EXECUTE format('ALTER TABLE public.usage_events_mt ATTACH PARTITION public.%I FOR VALUES IN (%L)',
                   v_part, p_tenant);
    RETURN jsonb_build_object('tenant', p_tenant, 'partition', v_part, 'attached_now', true, 'rows_moved', v_moved,
                              'checks_validated', v_validated);
END
$$;

-- For DBAs: both steps in one call (one transaction). Idempotent; re-run it after any failure.
CREATE OR REPLACE FUNCTION fn_create_tenant_partition(p_tenant uuid, p_premake_months integer DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_prepared jsonb := public.fn_prepare_tenant_partition(p_tenant, p_premake_months);
BEGIN
    IF v_prepared->>'layout' = 'pooled' THEN
        RETURN v_prepared || jsonb_build_object('attached_now', false, 'rows_moved', 0);
    END IF;
    RETURN v_prepared || public.fn_attach_tenant_partition(p_tenant);
END
$$;

-- Tiering: the pool's months age like a tenant's and move by the global policy (the
-- tiering_policy row for all tiers). fn_tier_plan lists them with a NULL tenant, when asked
-- for every partition; asked for one tenant, it lists that tenant's months only.
CREATE OR REPLACE FUNCTION fn_tier_plan(p_tenant uuid DEFAULT NULL, p_as_of timestamptz DEFAULT now())
    RETURNS TABLE (
        partition_name    text,
        tenant            uuid,
        month_start       date,
        age               interval,
        current_tier      text,
        target_tier       text,
        current_tablespace name,
        target_tablespace name,
        misplaced_indexes integer,
        bytes             bigint,
        movable           boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    WITH db AS (
        SELECT dattablespace FROM pg_database WHERE datname = current_database()
    ), months AS (
        SELECT c.oid, c.relname::text AS partition_name, c.reltablespace,
               CASE WHEN p.relname = 'usage_events_mt_default' THEN NULL ELSE uuid(substr(p.relname, 19)) END AS tenant,
               to_date(right(c.relname, 6), 'YYYYMM') AS month_start
          FROM pg_inherits pi
          JOIN pg_class p ON p.oid = pi.inhparent
          JOIN pg_class c ON c.oid = pi.inhrelid
         WHERE pi.inhparent IN (SELECT i.inhrelid FROM pg_inherits i
                                 WHERE i.inhparent = 'public.usage_events_mt'::regclass)
           AND c.relkind = 'r'
           AND (c.relname ~ '^usage_events_mt_t_[0-9a-f]{32}_p[0-9]{6}$'
                OR (p.relname = 'usage_events_mt_default' AND c.relname ~ '^usage_events_mt_pool_p[0-9]{6}$'))
           AND (p_tenant IS NULL OR p.relname = public.fn_tenant_partition_name(p_tenant))
    ), aged AS (
        SELECT m.*,
               p_as_of - ((m.month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC') AS age,
               (SELECT spcname FROM pg_tablespace
                 WHERE oid = COALESCE(NULLIF(m.reltablespace, 0), (SELECT dattablespace FROM db))) AS current_tablespace,
               CASE WHEN m.tenant IS NULL THEN NULL
                    ELSE COALESCE((SELECT tc.tier FROM public.tenant_classifications tc
                                    WHERE tc.organization_id = m.tenant), 'free') END AS tenant_tier
          FROM months m
    ), targeted AS (
        SELECT a.*,
               CASE WHEN a.age >= pol.cold_after THEN 'cold'
                    WHEN a.age >= pol.warm_after THEN 'warm'
                    ELSE 'hot' END AS target_tier
          FROM aged a
          CROSS JOIN LATERAL (
              SELECT tp.warm_after, tp.cold_after FROM public.tiering_policy tp
               WHERE tp.tenant_tier = a.tenant_tier OR tp.tenant_tier IS NULL
               ORDER BY tp.tenant_tier NULLS LAST LIMIT 1) pol
    )
    SELECT t.partition_name, t.tenant, t.month_start, t.age,
           (SELECT st.storage_tier FROM public.storage_tiers st WHERE st.tablespace = t.current_tablespace
             ORDER BY st.rank LIMIT 1),
           t.target_tier, t.current_tablespace, st.tablespace,
           (SELECT count(*)::int FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
             WHERE x.indrelid = t.oid
               AND (SELECT spcname FROM pg_tablespace
                     WHERE oid = COALESCE(NULLIF(ic.reltablespace, 0), (SELECT dattablespace FROM db)))
                   IS DISTINCT FROM st.tablespace),
           pg_total_relation_size(t.oid),
           t.age > interval '0'
      FROM targeted t
      JOIN public.storage_tiers st ON st.storage_tier = t.target_tier
     ORDER BY t.tenant NULLS FIRST, t.month_start
$$;

-- Moving a pool month online: the swap ATTACHes the shadow to the pool, and PostgreSQL must
-- prove that no row of the shadow belongs to a dedicated tenant (the pool is the DEFAULT
-- partition), which meant a scan of the whole month while the pool is locked. The shadow now
-- gets the pool's partition constraint as a CHECK when it is created (empty: instant; the
-- copy then checks row by row), so ATTACH proves it from the catalog. If a tenant is promoted
-- during the copy, the constraint differs and ATTACH scans, as before: slower, still correct.
CREATE OR REPLACE FUNCTION fn_move_begin(p_partition text, p_tablespace name, OUT shadow_name text, OUT blocks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_qual text;
BEGIN
    SELECT s.shadow_name, s.blocks INTO shadow_name, blocks FROM public.fn_move_begin_shadow(p_partition, p_tablespace) s;
    -- The shadow is new and nobody else knows it: no one waits for this.
    EXECUTE format('ALTER TABLE tenant_pipelines.%I SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)',
                   shadow_name);
    IF public.fn_is_partition_of(p_partition, 'usage_events_mt_default') THEN
        v_qual := pg_get_partition_constraintdef('public.usage_events_mt_default'::regclass);
        -- A month moved before carries the constraint of its time, copied by LIKE: replace it.
        EXECUTE format('ALTER TABLE tenant_pipelines.%I DROP CONSTRAINT IF EXISTS pool_partition_check', shadow_name);
        IF v_qual IS NOT NULL THEN
            EXECUTE format('ALTER TABLE tenant_pipelines.%I ADD CONSTRAINT pool_partition_check CHECK (%s)',
                           shadow_name, v_qual);
        END IF;
    END IF;
END
$$;

-- Metrics: a pooled tenant's storage is its share of the pool, estimated as its rows in the
-- pool (counted) times the pool's bytes per row (from the catalog's relpages and reltuples of
-- the pool's leaves, their TOAST and indexes, as of the last VACUUM or ANALYZE). A tenant with
-- a partition of its own is measured exactly, as before.
CREATE FUNCTION fn_pool_bytes_per_row() RETURNS double precision
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN sum(GREATEST(c.reltuples, 0)) > 0
                THEN sum(c.relpages::double precision
                         + COALESCE((SELECT t.relpages FROM pg_class t WHERE t.oid = NULLIF(c.reltoastrelid, 0)), 0)
                         + COALESCE((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                      WHERE x.indrelid = c.oid), 0))
                     * current_setting('block_size')::double precision / sum(GREATEST(c.reltuples, 0))
                ELSE 0 END
      FROM pg_partition_tree('public.usage_events_mt_default'::regclass) p
      JOIN pg_class c ON c.oid = p.relid
     WHERE p.isleaf
$$;

CREATE OR REPLACE FUNCTION fn_tenant_usage_stats(p_tenant uuid, p_now timestamptz DEFAULT now())
    RETURNS TABLE (events_last_24h bigint, events_this_month bigint, last_activity timestamptz,
                   storage_bytes bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_part   regclass := to_regclass('public.' || quote_ident(public.fn_tenant_partition_name(p_tenant)));
    v_month  timestamptz := date_trunc('month', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_24h    bigint := 0;
    v_month_n bigint := 0;
    v_last   timestamptz;
    v_bytes  bigint := 0;
    d_24h    bigint;
    d_month  bigint;
    d_last   timestamptz;
    d_rows   bigint;
BEGIN
    IF v_part IS NOT NULL THEN
        EXECUTE format('SELECT count(*), max("timestamp") FROM %s'
                       ' WHERE "timestamp" > $1 - interval ''24 hours'' AND "timestamp" <= $1', v_part)
            INTO v_24h, v_last USING p_now;
        EXECUTE format('SELECT count(*) FROM %s WHERE "timestamp" >= $1 AND "timestamp" <= $2', v_part)
            INTO v_month_n USING v_month, p_now;
        IF v_last IS NULL THEN
            EXECUTE format('SELECT max("timestamp") FROM %s WHERE "timestamp" <= $1', v_part)
                INTO v_last USING p_now;
        END IF;
        SELECT COALESCE(sum(pg_total_relation_size(t.relid)), 0) INTO v_bytes
          FROM pg_partition_tree(v_part) t;
    END IF;
    SELECT count(*) FILTER (WHERE d."timestamp" > p_now - interval '24 hours' AND d."timestamp" <= p_now),
           count(*) FILTER (WHERE d."timestamp" >= v_month AND d."timestamp" <= p_now),
           max(d."timestamp") FILTER (WHERE d."timestamp" <= p_now),
           count(*)
      INTO d_24h, d_month, d_last, d_rows
      FROM public.usage_events_mt_default d WHERE d.organization_id = p_tenant;
    IF d_rows > 0 THEN
        v_bytes := v_bytes + round(d_rows * public.fn_pool_bytes_per_row())::bigint;
    END IF;
    v_bytes := v_bytes + COALESCE((
        SELECT sum(pg_total_relation_size(c.oid))
          FROM public.tenant_schemas ts
          JOIN pg_namespace n ON n.nspname = ts.schema_name
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
         WHERE ts.organization_id = p_tenant), 0);
    events_last_24h := v_24h + d_24h;
    events_this_month := v_month_n + d_month;
    last_activity := GREATEST(v_last, d_last);
    storage_bytes := v_bytes;
    RETURN NEXT;
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'fn_premake_pool_months(integer)', 'fn_create_month_table(text, text, date)',
        'fn_attach_month(text, text, date, text)', 'fn_leaf_count()', 'fn_pool_bytes_per_row()', 'fn_pool_exclude_tenant(uuid)',
        'fn_pool_unexclude_tenant(uuid)', 'fn_cap_lock_timeout(integer)', 'fn_pool_month_name(date)', 'fn_pool_exclusion_name(uuid)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION public.%s OWNER TO billing_owner', f);
        EXECUTE format('REVOKE ALL ON FUNCTION public.%s FROM PUBLIC', f);
    END LOOP;
END
$$;
ALTER TABLE usage_events_mt_default OWNER TO billing_owner;
