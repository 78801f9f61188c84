-- after: 0001
-- A lock that pooled tenants' writers queue behind (ACCESS EXCLUSIVE on the pool or on one of
-- its leaves) is waited for at most this long, then given up and retried, so that an open
-- transaction somewhere stalls the pool for 100 ms at most, not for lock_timeout. Compared
-- in ms from pg_settings, however lock_timeout was written; 0 (none) is capped too.
CREATE OR REPLACE FUNCTION fn_cap_lock_timeout(p_ms integer) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT set_config('lock_timeout', p_ms || 'ms', true) FROM pg_settings
     WHERE name = 'lock_timeout' AND (setting::bigint = 0 OR setting::bigint > p_ms)
$$;
