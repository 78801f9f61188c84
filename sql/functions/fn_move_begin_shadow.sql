-- after: 0021
-- The first half of fn_move_begin (sql/migrations/0014's fn_move_begin, renamed by 0015): the
-- shadow, its change log and the capture triggers. Returns the shadow's name and the
-- partition's size in blocks (what the caller copies; rows written after this transaction are
-- in the log as well). The partition is p_schema's: public for the shared table's months,
-- tenant_<hex> for a schema tenant's, whose months carry the tenant_isolation policy
-- (fn_protect_tenant_table): the shadow gets it too (public months have none: queries go
-- through the parent).
CREATE OR REPLACE FUNCTION fn_move_begin_shadow(p_partition text, p_tablespace name, p_schema name DEFAULT 'public',
                                                OUT shadow_name text, OUT blocks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel   regclass := to_regclass(format('%I.%I', p_schema, p_partition));
    v_name  text := CASE WHEN p_schema = 'public' THEN p_partition ELSE p_schema || '.' || p_partition END;
    v_log   text;
    v_index regclass;
BEGIN
    IF v_rel IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_rel) <> 'r'
       OR NOT (SELECT relispartition FROM pg_class WHERE oid = v_rel) THEN
        RAISE EXCEPTION 'partition %: no such leaf partition', v_name
            USING HINT = 'only leaf partitions hold data; parents are never moved';
    END IF;
    PERFORM public.fn_require_tablespace(p_tablespace);
    PERFORM public.fn_move_abandon(p_partition, p_schema);
    shadow_name := 'tiering_move_' || v_rel::oid;
    v_log := shadow_name || '_log';

    -- Same columns, defaults, CHECKs (the tenant's and the month's: ATTACH skips its scan)
    -- and indexes; all of it in the target tablespace.
    PERFORM set_config('default_tablespace', p_tablespace, true);
    EXECUTE format('CREATE TABLE tenant_pipelines.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING INDEXES INCLUDING STORAGE) TABLESPACE %I', shadow_name, v_rel, p_tablespace);
    FOR v_index IN SELECT indexrelid::regclass FROM pg_index
                    WHERE indrelid = format('tenant_pipelines.%I', shadow_name)::regclass LOOP
        EXECUTE format('ALTER INDEX %s SET TABLESPACE %I', v_index, p_tablespace);  -- empty: instant
    END LOOP;
    EXECUTE format('ALTER TABLE tenant_pipelines.%I OWNER TO billing_owner', shadow_name);
    EXECUTE format('ALTER TABLE tenant_pipelines.%I ENABLE ROW LEVEL SECURITY', shadow_name);
    EXECUTE format('ALTER TABLE tenant_pipelines.%I FORCE ROW LEVEL SECURITY', shadow_name);
    EXECUTE format('REVOKE ALL ON tenant_pipelines.%I FROM PUBLIC, billing_app', shadow_name);
    IF EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = v_rel AND polname = 'tenant_isolation') THEN
        PERFORM public.fn_protect_tenant_table(format('tenant_pipelines.%I', shadow_name)::regclass);
    END IF;

    EXECUTE format('CREATE TABLE tenant_pipelines.%I (seq bigserial PRIMARY KEY, event_id uuid, event_ts timestamptz)',
                   v_log);
    EXECUTE format('ALTER TABLE tenant_pipelines.%I OWNER TO billing_owner', v_log);
    EXECUTE format('REVOKE ALL ON tenant_pipelines.%I FROM PUBLIC, billing_app', v_log);

    -- SHARE ROW EXCLUSIVE on the partition for a moment (its writers wait; lock_timeout).
    EXECUTE format('CREATE TRIGGER tiering_move_capture AFTER INSERT OR UPDATE OR DELETE ON %s'
                   ' FOR EACH ROW EXECUTE FUNCTION public.fn_move_capture(%L)', v_rel, v_log);
    EXECUTE format('CREATE TRIGGER tiering_move_truncate AFTER TRUNCATE ON %s'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION public.fn_move_capture(%L)', v_rel, v_log);
    INSERT INTO tenant_pipelines.partition_moves
        (partition_oid, partition_name, partition_schema, partition_filenode, shadow_name, log_name, old_name,
         target_tablespace)
    VALUES (v_rel, p_partition, p_schema, pg_relation_filenode(v_rel), shadow_name, v_log, 'tiering_old_' || v_rel::oid,
            p_tablespace);
    blocks := pg_relation_size(v_rel) / current_setting('block_size')::bigint;
END
$$;
