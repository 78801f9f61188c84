-- after: 0021
-- Drop whatever a move of p_schema.p_partition left behind. Returns whether there was anything.
CREATE OR REPLACE FUNCTION fn_move_abandon(p_partition text, p_schema name DEFAULT 'public') RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel  regclass := to_regclass(format('%I.%I', p_schema, p_partition));
    v_move tenant_pipelines.partition_moves%ROWTYPE;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m
     WHERE (m.partition_name = p_partition AND m.partition_schema = p_schema) OR m.partition_oid = v_rel;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_move.swapped_at IS NULL THEN  -- unfinished: the partition is the original, the shadow goes
        IF v_rel IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER IF EXISTS tiering_move_capture ON %s', v_rel);
            EXECUTE format('DROP TRIGGER IF EXISTS tiering_move_truncate ON %s', v_rel);
        END IF;
        EXECUTE format('DROP TABLE IF EXISTS tenant_pipelines.%I', v_move.shadow_name);
        EXECUTE format('DROP TABLE IF EXISTS tenant_pipelines.%I', v_move.log_name);
    END IF;
    -- swapped: the partition is the copy; only the replaced table is left to drop
    EXECUTE format('DROP TABLE IF EXISTS tenant_pipelines.%I', v_move.old_name);
    DELETE FROM tenant_pipelines.partition_moves m WHERE m.partition_oid = v_move.partition_oid;
    RETURN true;
END
$$;
