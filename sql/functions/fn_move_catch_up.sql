-- after: 0021
-- Re-copy the rows whose keys are in the log (delete the shadow's version, insert the
-- partition's current one), then forget those log entries. Only entries this transaction
-- sees are applied and removed: a writer that commits later leaves its keys for the next
-- catch-up. Returns the number of keys applied. The partition is p_schema's (fn_move_partition).
CREATE OR REPLACE FUNCTION fn_move_catch_up(p_partition text, p_schema name DEFAULT 'public') RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := CASE WHEN p_schema = 'public' THEN p_partition ELSE p_schema || '.' || p_partition END;  -- for messages
    v_move tenant_pipelines.partition_moves%ROWTYPE;
    v_n    bigint;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m WHERE m.partition_name = p_partition
       AND m.partition_schema = p_schema;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partition %: no move in progress', v_name USING HINT = 'start it with fn_move_begin';
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS move_keys (seq bigint, event_id uuid, event_ts timestamptz) ON COMMIT DROP;
    TRUNCATE move_keys;
    EXECUTE format('WITH taken AS (DELETE FROM tenant_pipelines.%I RETURNING seq, event_id, event_ts)'
                   ' INSERT INTO move_keys SELECT * FROM taken', v_move.log_name);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM move_keys WHERE event_id IS NULL) THEN
        RAISE EXCEPTION 'partition %: truncated while it was being moved', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 're-run tiering: the move starts again from the partition as it is now';
    END IF;
    -- The copy went by block and line pointer: a rewrite in between invalidates it.
    IF pg_relation_filenode(to_regclass(format('%I.%I', p_schema, p_partition))) IS DISTINCT FROM v_move.partition_filenode THEN
        RAISE EXCEPTION 'partition %: rewritten (VACUUM FULL, CLUSTER or TRUNCATE) while it was being moved', v_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 're-run tiering: the move starts again from the partition as it is now';
    END IF;
    IF v_n > 0 THEN
        EXECUTE format('DELETE FROM tenant_pipelines.%I s USING (SELECT DISTINCT event_id, event_ts FROM move_keys) k'
                       ' WHERE s.id = k.event_id AND s."timestamp" = k.event_ts', v_move.shadow_name);
        EXECUTE format('INSERT INTO tenant_pipelines.%I SELECT p.* FROM %I.%I p'
                       ' JOIN (SELECT DISTINCT event_id, event_ts FROM move_keys) k'
                       '   ON p.id = k.event_id AND p."timestamp" = k.event_ts', v_move.shadow_name, p_schema, p_partition);
    END IF;
    RETURN v_n;
END
$$;
