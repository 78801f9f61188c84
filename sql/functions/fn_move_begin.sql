-- after: 0021
-- Start a move of one month partition online: the shadow (fn_move_begin_shadow), with
-- autovacuum off (the mover vacuums and analyses it itself before the swap, which must not
-- queue behind an autovacuum worker). A pool month's shadow gets the pool's partition
-- constraint as a CHECK (empty: instant; the copy then checks row by row), so that the swap's
-- ATTACH to the pool proves it from the catalog instead of scanning the month under lock. If
-- a tenant is promoted during the copy, the constraint differs and ATTACH scans: slower,
-- still correct. Returns the shadow's name and the partition's size in blocks. The partition
-- is p_schema's (public, or a schema tenant's tenant_<hex>: no pool there).
CREATE OR REPLACE FUNCTION fn_move_begin(p_partition text, p_tablespace name, p_schema name DEFAULT 'public',
                                         OUT shadow_name text, OUT blocks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_qual text;
BEGIN
    SELECT s.shadow_name, s.blocks INTO shadow_name, blocks FROM public.fn_move_begin_shadow(p_partition, p_tablespace, p_schema) s;
    -- The shadow is new and nobody else knows it: no one waits for this.
    EXECUTE format('ALTER TABLE tenant_pipelines.%I SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)',
                   shadow_name);
    IF p_schema = 'public' AND public.fn_is_partition_of(p_partition, 'usage_events_mt_default') THEN
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
