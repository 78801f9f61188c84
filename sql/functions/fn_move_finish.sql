-- after: 0021
-- The swap. The caller sets lock_timeout and retries. Takes ACCESS EXCLUSIVE on the tenant's
-- partition (DETACH needs it): the tenant's writers wait for this transaction only. The
-- parent is locked ONLY: the plain form locks every month of the tenant, and would wait for
-- autovacuum on any of them. The new table gets the old one's storage parameters (CREATE
-- TABLE ... LIKE copies none). Returns the moved partition's total size in bytes. The
-- partition is p_schema's (public, or a schema tenant's tenant_<hex>); the copy takes its
-- place there.
CREATE OR REPLACE FUNCTION fn_move_finish(p_partition text, p_schema name DEFAULT 'public') RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_move   tenant_pipelines.partition_moves%ROWTYPE;
    v_rel    regclass := to_regclass(format('%I.%I', p_schema, p_partition));
    v_name   text := CASE WHEN p_schema = 'public' THEN p_partition ELSE p_schema || '.' || p_partition END;
    v_parent regclass;
    v_bound  text;
    v_parent_indexes oid[];
    v_old_names      text[];
    v_new_index      regclass;
    k                integer;
    v_options        text[];
    v_toast          text[];
    v_set            text;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m WHERE m.partition_name = p_partition
       AND m.partition_schema = p_schema;
    IF NOT FOUND OR v_rel IS NULL OR v_rel::oid <> v_move.partition_oid THEN
        RAISE EXCEPTION 'partition %: no move in progress', v_name USING HINT = 're-run tiering';
    END IF;
    SELECT i.inhparent::regclass INTO v_parent FROM pg_inherits i WHERE i.inhrelid = v_rel;
    -- Parent first, as writers lock it (routing) before the partition: no deadlock. ONLY: the
    -- plain form locks every month of the tenant, and waits for autovacuum on any of them.
    EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', v_parent);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_rel);
    PERFORM public.fn_move_catch_up(p_partition, p_schema);
    SELECT c.reloptions, t.reloptions INTO v_options, v_toast
      FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
     WHERE c.oid = v_rel;
    -- The bound as the catalog prints it ("FOR VALUES FROM (...) TO (...)"), not user input.
    v_bound := pg_get_expr((SELECT relpartbound FROM pg_class WHERE oid = v_rel), v_rel);
    -- The shadow's indexes get the partition's index names: pair them through the parent's
    -- partitioned indexes they are both attached to.
    SELECT array_agg(pi.inhparent ORDER BY c.relname), array_agg(c.relname::text ORDER BY c.relname)
      INTO v_parent_indexes, v_old_names
      FROM pg_inherits pi JOIN pg_index x ON x.indexrelid = pi.inhrelid
      JOIN pg_class c ON c.oid = x.indexrelid
     WHERE x.indrelid = v_rel;
    EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', v_parent, v_rel);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION tenant_pipelines.%I %s', v_parent, v_move.shadow_name, v_bound);
    -- The old table is not dropped here: dropping truncates its files at COMMIT (tens of ms
    -- for a large month) while this transaction still holds the tenant's partition. It is
    -- parked in the work schema and dropped by fn_move_abandon, in a transaction of its own.
    EXECUTE format('DROP TRIGGER tiering_move_capture ON %s', v_rel);
    EXECUTE format('DROP TRIGGER tiering_move_truncate ON %s', v_rel);
    EXECUTE format('ALTER TABLE %s SET SCHEMA tenant_pipelines', v_rel);
    EXECUTE format('ALTER TABLE tenant_pipelines.%I RENAME TO %I', p_partition, v_move.old_name);
    EXECUTE format('DROP TABLE tenant_pipelines.%I', v_move.log_name);
    EXECUTE format('ALTER TABLE tenant_pipelines.%I SET SCHEMA %I', v_move.shadow_name, p_schema);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', p_schema, v_move.shadow_name, p_partition);
    FOR k IN 1 .. coalesce(array_length(v_parent_indexes, 1), 0) LOOP
        SELECT pi.inhrelid::regclass INTO v_new_index
          FROM pg_inherits pi JOIN pg_index x ON x.indexrelid = pi.inhrelid
         WHERE pi.inhparent = v_parent_indexes[k]
           AND x.indrelid = to_regclass(format('%I.%I', p_schema, p_partition));
        IF v_new_index IS NOT NULL THEN
            EXECUTE format('ALTER INDEX %s RENAME TO %I', v_new_index, v_old_names[k]);
        END IF;
    END LOOP;
    -- Autovacuum back on, and the old table's storage parameters, table and TOAST (stored as
    -- 'name=value'; the names are the catalog's plain words, the values are quoted).
    EXECUTE format('ALTER TABLE %I.%I RESET (autovacuum_enabled, toast.autovacuum_enabled)', p_schema, p_partition);
    v_set := (SELECT string_agg(format('%s%s = %L', prefix, split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)), ', ')
                FROM (SELECT '' AS prefix, o FROM unnest(v_options) o
                      UNION ALL SELECT 'toast.', o FROM unnest(v_toast) o) stored);
    IF v_set IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I.%I SET (%s)', p_schema, p_partition, v_set);
    END IF;
    UPDATE tenant_pipelines.partition_moves m SET swapped_at = now() WHERE m.partition_oid = v_move.partition_oid;
    RETURN pg_total_relation_size(to_regclass(format('%I.%I', p_schema, p_partition)));
END
$$;
