-- after: 0001
-- The trigger's function: the keys (id, "timestamp"; organization_id is the partition's own)
-- of the rows each statement writes, old and new. A TRUNCATE is logged as a NULL key: the
-- move cannot catch up with it and is restarted. SECURITY DEFINER so that billing_app's
-- writes can log into a table it has no privilege on; search_path pinned.
CREATE OR REPLACE FUNCTION fn_move_capture() RETURNS trigger
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
