-- Citus only: the INSTEAD OF INSERT trigger of the view usage_events (sql/citus/migrations/0007).
-- Citus refuses a write through a simple view of a distributed table ("cannot modify views when
-- the query contains citus tables"); an INSERT into a view with an INSTEAD OF trigger names no
-- Citus table, so PostgreSQL plans it, and the trigger inserts the row into usage_events_mt,
-- which Citus routes to the tenant's shard. SECURITY INVOKER: the caller's privileges and RLS
-- (WITH CHECK) apply to that insert exactly as to a direct one. The row is returned, so
-- INSERT ... RETURNING works; COPY usage_events FROM STDIN works too (COPY into a view runs its
-- INSTEAD OF INSERT trigger). A trigger-updatable view has no column defaults of its own, and
-- Citus refuses to give a view some: the table's (sql/citus/migrations/0001: id and properties)
-- are applied here to what the statement left NULL. Both columns are NOT NULL, so an explicit
-- NULL, refused by the table, gets the default instead.
CREATE OR REPLACE FUNCTION fn_usage_events_view_insert() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.id := COALESCE(NEW.id, gen_random_uuid());
    NEW.properties := COALESCE(NEW.properties, '{}'::jsonb);
    INSERT INTO public.usage_events_mt (id, organization_id, metric_name, quantity, "timestamp", properties)
    VALUES (NEW.id, NEW.organization_id, NEW.metric_name, NEW.quantity, NEW."timestamp", NEW.properties);
    RETURN NEW;
END
$$;
