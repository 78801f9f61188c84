-- An online mover for month partitions: copy-and-swap instead of ALTER TABLE ... SET TABLESPACE.
--
-- SET TABLESPACE copies a partition's files at full disk speed and WAL-logs every page in one
-- go; it takes no lock that live writers of other partitions wait for, yet their commits queue
-- behind that burst of I/O (docs/benchmarks/tiering.md: p99 insert latency 15x). Here a move is
-- split so that the pipelines can pace it:
--
--   fn_move_begin    a shadow copy of the partition (same columns, checks and indexes) in the
--                    target tablespace, in the work schema tenant_pipelines; a change log; and a
--                    row trigger on the partition that records the key of every row written
--                    from then on. Short transaction, lock_timeout.
--   (copy)           the caller copies the partition's blocks into the shadow in small batches,
--                    one transaction each, sleeping between them (core/tiering.py).
--   fn_move_catch_up re-copies the rows whose keys the log holds, then forgets those keys.
--   fn_move_finish   under lock: the last catch-up, DETACH the partition, ATTACH the shadow in
--                    its place, drop the old table, give the shadow the old names. Milliseconds:
--                    the data is already there.
--   fn_move_abandon  drops a move's shadow, log and trigger (a crashed or cancelled move), or,
--                    after the swap, the replaced table (parked in tenant_pipelines by the swap).
--
-- A crash at any point leaves the partition itself untouched and complete: the next run
-- abandons the leftovers and starts that partition's copy again.

CREATE TABLE tenant_pipelines.partition_moves (
    partition_oid    oid PRIMARY KEY,
    partition_name   text NOT NULL,
    partition_filenode oid NOT NULL,  -- a rewrite (TRUNCATE, VACUUM FULL, CLUSTER) changes it
    shadow_name      text NOT NULL,
    log_name         text NOT NULL,
    old_name         text NOT NULL,   -- the replaced table, parked here after the swap
    target_tablespace name NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    swapped_at       timestamptz      -- set by the swap; the row goes when the old table does
);
ALTER TABLE tenant_pipelines.partition_moves OWNER TO billing_owner;
GRANT USAGE ON SCHEMA tenant_pipelines TO billing_owner;
REVOKE ALL ON tenant_pipelines.partition_moves FROM PUBLIC;

-- The trigger's function: the keys (id, "timestamp"; organization_id is the partition's own)
-- of the rows each statement writes, old and new. A TRUNCATE is logged as a NULL key: the
-- move cannot catch up with it and is restarted. SECURITY DEFINER so that billing_app's
-- writes can log into a table it has no privilege on; search_path pinned.
CREATE FUNCTION fn_move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
        EXECUTE format('INSERT INTO tenant_pipelines.%I (event_id, event_ts) VALUES (NULL, NULL)', TG_ARGV[0]);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        EXECUTE format('INSERT INTO tenant_pipelines.%I (event_id, event_ts) VALUES ($1, $2)', TG_ARGV[0])
            USING OLD.id, OLD."timestamp";
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        EXECUTE format('INSERT INTO tenant_pipelines.%I (event_id, event_ts) VALUES ($1, $2)', TG_ARGV[0])
            USING NEW.id, NEW."timestamp";
    END IF;
    RETURN NULL;
END
$$;

-- Drop whatever a move of p_partition left behind. Returns whether there was anything.
CREATE FUNCTION fn_move_abandon(p_partition text) RETURNS boolean
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel  regclass := to_regclass('public.' || quote_ident(p_partition));
    v_move record;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m
     WHERE m.partition_name = p_partition OR m.partition_oid = v_rel;
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

-- Start a move: returns the shadow's name and the partition's size in blocks (what the
-- caller copies; rows written after this transaction are in the log as well).
CREATE FUNCTION fn_move_begin(p_partition text, p_tablespace name, OUT shadow_name text, OUT blocks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel   regclass := to_regclass('public.' || quote_ident(p_partition));
    v_log   text;
    v_index regclass;
BEGIN
    IF v_rel IS NULL OR (SELECT relkind FROM pg_class WHERE oid = v_rel) <> 'r'
       OR NOT (SELECT relispartition FROM pg_class WHERE oid = v_rel) THEN
        RAISE EXCEPTION 'partition %: no such leaf partition', p_partition
            USING HINT = 'only leaf partitions hold data; parents are never moved';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = p_tablespace) THEN
        RAISE EXCEPTION 'tablespace % does not exist', p_tablespace
            USING ERRCODE = 'undefined_object',
                  HINT = format('create it as a superuser, outside a transaction: CREATE TABLESPACE %I LOCATION ''/path'' '
                                '(the folder must exist, be empty and belong to the server''s OS user), '
                                'or point storage_tiers at an existing tablespace', p_tablespace);
    END IF;
    PERFORM public.fn_move_abandon(p_partition);
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
        (partition_oid, partition_name, partition_filenode, shadow_name, log_name, old_name, target_tablespace)
    VALUES (v_rel, p_partition, pg_relation_filenode(v_rel), shadow_name, v_log, 'tiering_old_' || v_rel::oid,
            p_tablespace);
    blocks := pg_relation_size(v_rel) / current_setting('block_size')::bigint;
END
$$;

-- Re-copy the rows whose keys are in the log (delete the shadow's version, insert the
-- partition's current one), then forget those log entries. Only entries this transaction
-- sees are applied and removed: a writer that commits later leaves its keys for the next
-- catch-up. Returns the number of keys applied.
CREATE FUNCTION fn_move_catch_up(p_partition text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_move record;
    v_n    bigint;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m WHERE m.partition_name = p_partition;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partition %: no move in progress', p_partition USING HINT = 'start it with fn_move_begin';
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS move_keys (seq bigint, event_id uuid, event_ts timestamptz) ON COMMIT DROP;
    TRUNCATE move_keys;
    EXECUTE format('WITH taken AS (DELETE FROM tenant_pipelines.%I RETURNING seq, event_id, event_ts)'
                   ' INSERT INTO move_keys SELECT * FROM taken', v_move.log_name);
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF EXISTS (SELECT 1 FROM move_keys WHERE event_id IS NULL) THEN
        RAISE EXCEPTION 'partition %: truncated while it was being moved', p_partition
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 're-run tiering: the move starts again from the partition as it is now';
    END IF;
    -- The copy went by block and line pointer: a rewrite in between invalidates it.
    IF pg_relation_filenode(to_regclass('public.' || quote_ident(p_partition))) IS DISTINCT FROM v_move.partition_filenode THEN
        RAISE EXCEPTION 'partition %: rewritten (VACUUM FULL, CLUSTER or TRUNCATE) while it was being moved', p_partition
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 're-run tiering: the move starts again from the partition as it is now';
    END IF;
    IF v_n > 0 THEN
        EXECUTE format('DELETE FROM tenant_pipelines.%I s USING (SELECT DISTINCT event_id, event_ts FROM move_keys) k'
                       ' WHERE s.id = k.event_id AND s."timestamp" = k.event_ts', v_move.shadow_name);
        EXECUTE format('INSERT INTO tenant_pipelines.%I SELECT p.* FROM public.%I p'
                       ' JOIN (SELECT DISTINCT event_id, event_ts FROM move_keys) k'
                       '   ON p.id = k.event_id AND p."timestamp" = k.event_ts', v_move.shadow_name, p_partition);
    END IF;
    RETURN v_n;
END
$$;

-- The swap. The caller sets lock_timeout and retries. Takes ACCESS EXCLUSIVE on the tenant's
-- partition (DETACH needs it): the tenant's writers wait for this transaction only. Returns
-- the moved partition's total size in bytes.
CREATE FUNCTION fn_move_finish(p_partition text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_move   record;
    v_rel    regclass := to_regclass('public.' || quote_ident(p_partition));
    v_parent regclass;
    v_bound  text;
    v_parent_indexes oid[];
    v_old_names      text[];
    v_new_index      regclass;
    k                integer;
BEGIN
    SELECT * INTO v_move FROM tenant_pipelines.partition_moves m WHERE m.partition_name = p_partition;
    IF NOT FOUND OR v_rel IS NULL OR v_rel::oid <> v_move.partition_oid THEN
        RAISE EXCEPTION 'partition %: no move in progress', p_partition USING HINT = 're-run tiering';
    END IF;
    SELECT i.inhparent::regclass INTO v_parent FROM pg_inherits i WHERE i.inhrelid = v_rel;
    -- Parent first, as writers lock it (routing) before the partition: no deadlock.
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_parent);
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_rel);
    PERFORM public.fn_move_catch_up(p_partition);
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
    EXECUTE format('ALTER TABLE tenant_pipelines.%I SET SCHEMA public', v_move.shadow_name);
    EXECUTE format('ALTER TABLE public.%I RENAME TO %I', v_move.shadow_name, p_partition);
    FOR k IN 1 .. coalesce(array_length(v_parent_indexes, 1), 0) LOOP
        SELECT pi.inhrelid::regclass INTO v_new_index
          FROM pg_inherits pi JOIN pg_index x ON x.indexrelid = pi.inhrelid
         WHERE pi.inhparent = v_parent_indexes[k]
           AND x.indrelid = to_regclass('public.' || quote_ident(p_partition));
        IF v_new_index IS NOT NULL THEN
            EXECUTE format('ALTER INDEX %s RENAME TO %I', v_new_index, v_old_names[k]);
        END IF;
    END LOOP;
    UPDATE tenant_pipelines.partition_moves m SET swapped_at = now() WHERE m.partition_oid = v_move.partition_oid;
    RETURN pg_total_relation_size(to_regclass('public.' || quote_ident(p_partition)));
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'fn_move_capture()', 'fn_move_abandon(text)', 'fn_move_begin(text, name)',
        'fn_move_catch_up(text)', 'fn_move_finish(text)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION public.%s OWNER TO billing_owner', f);
        EXECUTE format('REVOKE ALL ON FUNCTION public.%s FROM PUBLIC', f);
    END LOOP;
END
$$;
