-- after: 0001
-- Refuse a tablespace that does not exist, saying how to create one: before a partition is
-- moved there (fn_move_partition, fn_move_begin_shadow).
CREATE OR REPLACE FUNCTION fn_require_tablespace(p_tablespace name) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = p_tablespace) THEN
        RAISE EXCEPTION 'tablespace % does not exist', p_tablespace
            USING ERRCODE = 'undefined_object',
                  HINT = format('create it as a superuser, outside a transaction: CREATE TABLESPACE %I LOCATION ''/path'' '
                                '(the folder must exist, be empty and belong to the server''s OS user), '
                                'or point storage_tiers at an existing tablespace', p_tablespace);
    END IF;
END
$$;
