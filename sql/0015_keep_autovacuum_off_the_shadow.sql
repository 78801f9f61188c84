-- The online mover's swap must not wait for autovacuum.
--
-- A shadow receives a whole month of inserts, so autovacuum picks it up within a naptime or two.
-- When the swap then asks for its ACCESS EXCLUSIVE lock, it queues behind the autovacuum worker
-- until the deadlock check cancels that worker (deadlock_timeout, 1 s by default), and every
-- writer of the tenant queues behind the swap: the benchmark saw 1.0-1.5 s stalls of the
-- inserter in three runs out of four. The mover vacuums and analyses the shadow itself before
-- the swap, so autovacuum has nothing to do there.
--
-- Also: CREATE TABLE ... (LIKE ...) copies no storage parameters, so a moved partition lost
-- the ones a DBA had set (fillfactor, per-table autovacuum settings). The swap now gives the
-- new table the old one's, table and TOAST.
--
-- fn_move_begin and fn_move_finish keep their names, arguments and results: the 0014
-- functions are renamed and wrapped, not rewritten.

ALTER FUNCTION fn_move_begin(text, name) RENAME TO fn_move_begin_shadow;
ALTER FUNCTION fn_move_finish(text) RENAME TO fn_move_swap;

CREATE FUNCTION fn_move_begin(p_partition text, p_tablespace name, OUT shadow_name text, OUT blocks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT s.shadow_name, s.blocks INTO shadow_name, blocks FROM public.fn_move_begin_shadow(p_partition, p_tablespace) s;
    -- The shadow is new and nobody else knows it: no one waits for this.
    EXECUTE format('ALTER TABLE tenant_pipelines.%I SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)',
                   shadow_name);
END
$$;

CREATE FUNCTION fn_move_finish(p_partition text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rel     regclass := to_regclass('public.' || quote_ident(p_partition));
    v_options text[];
    v_toast   text[];
    v_moved   bigint;
BEGIN
    SELECT c.reloptions, t.reloptions INTO v_options, v_toast
      FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
     WHERE c.oid = v_rel;
    v_moved := public.fn_move_swap(p_partition);  -- the shadow is public.<p_partition> from here on
    v_rel := to_regclass('public.' || quote_ident(p_partition));
    EXECUTE format('ALTER TABLE %s RESET (autovacuum_enabled, toast.autovacuum_enabled)', v_rel);
    -- Stored as 'name=value' strings: quote each value, the catalog's names are plain words.
    IF v_options IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s SET (%s)', v_rel,
                       (SELECT string_agg(format('%s = %L', split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)), ', ')
                          FROM unnest(v_options) o));
    END IF;
    IF v_toast IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s SET (%s)', v_rel,
                       (SELECT string_agg(format('toast.%s = %L', split_part(o, '=', 1), substr(o, strpos(o, '=') + 1)), ', ')
                          FROM unnest(v_toast) o));
    END IF;
    RETURN v_moved;
END
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['fn_move_begin(text, name)', 'fn_move_finish(text)'] LOOP
        EXECUTE format('ALTER FUNCTION public.%s OWNER TO billing_owner', f);
        EXECUTE format('REVOKE ALL ON FUNCTION public.%s FROM PUBLIC', f);
    END LOOP;
END
$$;
