-- after: 0001
CREATE OR REPLACE FUNCTION fn_is_partition_of(p_child text, p_parent text) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_inherits i
         WHERE i.inhrelid = to_regclass('public.' || quote_ident(p_child))
           AND i.inhparent = to_regclass('public.' || quote_ident(p_parent)))
$$;
