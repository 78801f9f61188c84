-- Citus only. The months of usage_events_mt (partitioned by RANGE ("timestamp") on Citus, and
-- distributed on organization_id: sql/citus/migrations/0001) from p_from's month (default:
-- this month) to partition_config.premake_months ahead, made with Citus's
-- create_time_partitions (which distributes each month like its parent), and each secured as
-- every partition is (fn_secure_partition: owned by billing_owner, RLS forced with no policy,
-- no privilege for PUBLIC or billing_app: applications reach the months through the parent).
-- Idempotent: months that exist are kept. Returns how many months the table has.
CREATE OR REPLACE FUNCTION fn_citus_premake_months(p_from timestamptz DEFAULT NULL) RETURNS integer
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ahead  integer;
    v_from   timestamptz;
    v_to     timestamptz;
    v_part   text;
    v_count  integer := 0;
BEGIN
    SELECT pc.premake_months INTO v_ahead FROM public.partition_config pc;
    v_from := date_trunc('month', COALESCE(LEAST(p_from, now()), now()) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_to := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => COALESCE(v_ahead, 3) + 1))
            AT TIME ZONE 'UTC';
    PERFORM pg_catalog.create_time_partitions('public.usage_events_mt'::regclass, '1 month'::interval, v_to, v_from);
    FOR v_part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = 'public.usage_events_mt'::regclass LOOP
        v_count := v_count + 1;
        IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = format('public.%I', v_part)::regclass
                      AND c.relforcerowsecurity AND c.relowner = 'billing_owner'::regrole AND c.relacl IS NOT NULL) THEN
            CONTINUE;
        END IF;
        PERFORM public.fn_secure_partition(v_part);
    END LOOP;
    RETURN v_count;
END
$$;
