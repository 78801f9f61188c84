-- after: 0001
-- grant: EXECUTE TO PUBLIC
-- Where new partitions and their indexes go: the hot tier's tablespace ('' for the database's
-- default, which is what default_tablespace takes).
CREATE OR REPLACE FUNCTION fn_hot_tablespace() RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN tablespace = 'pg_default' THEN '' ELSE tablespace::text END
      FROM public.storage_tiers WHERE storage_tier = 'hot'
$$;
