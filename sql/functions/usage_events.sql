-- after: 0003
-- Applications keep the name usage_events. security_invoker makes the caller's privileges
-- and the caller's RLS policies apply, exactly as on the table.
CREATE OR REPLACE VIEW usage_events WITH (security_invoker = true) AS
    SELECT id, organization_id, metric_name, quantity, "timestamp", properties
    FROM usage_events_mt;

ALTER VIEW usage_events OWNER TO billing_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_events TO billing_app;
