-- after: 0003
-- grant: SELECT, INSERT, UPDATE, DELETE TO billing_app
-- Applications keep the name usage_events. security_invoker makes the caller's privileges
-- and the caller's RLS policies apply, exactly as on the table.
CREATE OR REPLACE VIEW usage_events WITH (security_invoker = true) AS
    SELECT id, organization_id, metric_name, quantity, "timestamp", properties
    FROM usage_events_mt;
