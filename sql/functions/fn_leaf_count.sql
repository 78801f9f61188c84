-- after: 0001
-- Leaves under usage_events_mt now, and the budget.
CREATE OR REPLACE FUNCTION fn_leaf_count() RETURNS integer
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT count(*)::int FROM pg_partition_tree('public.usage_events_mt'::regclass) WHERE isleaf $$;
