-- Applications keep writing INSERT INTO usage_events on Citus too (issue 19). Citus refuses a
-- write through the simple view; an INSTEAD OF INSERT trigger (sql/citus/functions/
-- fn_usage_events_view_insert.sql) takes the row to usage_events_mt instead, with the table's
-- defaults. CREATE OR REPLACE VIEW (the view's file re-applied) keeps the trigger. UPDATE and
-- DELETE through the view stay refused by Citus: they name usage_events_mt.
DROP TRIGGER IF EXISTS usage_events_insert ON public.usage_events;
CREATE TRIGGER usage_events_insert INSTEAD OF INSERT ON public.usage_events
    FOR EACH ROW EXECUTE FUNCTION fn_usage_events_view_insert();
