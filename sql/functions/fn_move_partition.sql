-- after: 0021
-- Move one partition, its TOAST table and its indexes to a tablespace, in the current
-- transaction. SET TABLESPACE rewrites under ACCESS EXCLUSIVE on the partition only: the
-- caller sets lock_timeout and retries, and moves only months whose rows are all old. The
-- partition is p_schema's: public for the shared table's, tenant_<hex> for a schema tenant's.
CREATE OR REPLACE FUNCTION fn_move_partition(p_partition text, p_tablespace name, p_schema name DEFAULT 'public')
    RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name text := CASE WHEN p_schema = 'public' THEN p_partition ELSE p_schema || '.' || p_partition END;  -- for messages
    v_rel   regclass := to_regclass(format('%I.%I', p_schema, p_partition));
    v_index regclass;
BEGIN
    IF v_rel IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_rel) <> 'r' THEN
        RAISE EXCEPTION 'partition %: no such table partition', v_name
            USING HINT = 'only leaf partitions hold data; parents are never moved';
    END IF;
    PERFORM public.fn_require_tablespace(p_tablespace);
    EXECUTE format('ALTER TABLE %s SET TABLESPACE %I', v_rel, p_tablespace);
    FOR v_index IN SELECT indexrelid::regclass FROM pg_index WHERE indrelid = v_rel LOOP
        EXECUTE format('ALTER INDEX %s SET TABLESPACE %I', v_index, p_tablespace);
    END LOOP;
    RETURN pg_total_relation_size(v_rel);
END
$$;
