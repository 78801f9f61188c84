-- after: 0001
-- Metrics: a pooled tenant's storage is its share of the pool, estimated as its rows in the
-- pool (counted) times the pool's bytes per row (from the catalog's relpages and reltuples of
-- the pool's leaves, their TOAST and indexes, as of the last VACUUM or ANALYZE). A tenant with
-- a partition of its own is measured exactly, as before.
CREATE OR REPLACE FUNCTION fn_pool_bytes_per_row() RETURNS double precision
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
