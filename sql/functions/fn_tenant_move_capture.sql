-- after: 0020
-- The capture trigger of an online move between placements (tenant_pipelines/core/moves.py):
-- installed on the moving tenant's source relations with a WHEN clause naming the tenant, so
-- no other tenant's row ever fires it. While the move copies (step copying or verified), it
-- logs the key of each row written (TG_ARGV[0]: the table, whose rows are keyed by id, and
-- usage events by id and "timestamp") for the next catch-up. Once the move has cut over, the
-- source is out of every route: a write that still reaches it (a qualified name, a client
-- that kept an old route) is refused, so it cannot be lost when the old copy is removed;
-- only the pipelines' own cleanup (a session of a member of billing_owner) may delete there.
-- It first takes the tenant's advisory lock SHARED, as fn_set_tenant_context does: a writer
-- whose context was written by hand (stamped, without the function) holds no lock, and a
-- transaction of it open across the cutover would have its row committed in the source after
-- the final catch-up, then removed with the old copy. Held to the end of the writer's
-- transaction, the lock makes the cutover (EXCLUSIVE) wait for it, like for every other
-- writer; a writer that comes after the cutover waits for it, then reads the new step.
-- SECURITY DEFINER: application writers fire it and may not read or write the move tables.
CREATE OR REPLACE FUNCTION fn_tenant_move_capture() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid := COALESCE(NEW.organization_id, OLD.organization_id);
    v_step   text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(v_tenant));
    SELECT m.step INTO v_step FROM tenant_pipelines.tenant_moves m WHERE m.organization_id = v_tenant;
    IF v_step = 'cut_over' THEN
        IF TG_OP = 'DELETE' AND pg_has_role(session_user, 'billing_owner', 'MEMBER') THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'tenant %: moved to its new placement; % is no longer where its rows live', v_tenant, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'retry the transaction: fn_set_tenant_context routes it to the new placement (use unqualified table names)';
    END IF;
    IF v_step IS NULL THEN
        RETURN NULL;  -- a trigger the move left behind; the next run of the move drops it
    END IF;
    IF TG_ARGV[0] = 'usage_events' THEN
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO tenant_pipelines.tenant_move_log (organization_id, table_name, row_id, row_ts)
            VALUES (v_tenant, TG_ARGV[0], NEW.id, NEW."timestamp");
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO tenant_pipelines.tenant_move_log (organization_id, table_name, row_id, row_ts)
            VALUES (v_tenant, TG_ARGV[0], OLD.id, OLD."timestamp");
        END IF;
    ELSE
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO tenant_pipelines.tenant_move_log (organization_id, table_name, row_id) VALUES (v_tenant, TG_ARGV[0], NEW.id);
        END IF;
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO tenant_pipelines.tenant_move_log (organization_id, table_name, row_id) VALUES (v_tenant, TG_ARGV[0], OLD.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
