-- grant: EXECUTE TO PUBLIC
-- Citus (replaces sql/functions/fn_tenant_routed_to_schema.sql on a coordinator and,
-- propagated, on every worker). There are no schema tenants on Citus yet (sql/citus's
-- fn_set_tenant_context routes nowhere), so no transaction is routed to a schema. It exists on
-- every node so that a single-node database being moved onto a coordinator, whose shared tables
-- carry sql/migrations/0023's policies calling it, can be distributed; sql/citus/migrations/0005
-- then drops those policies.
CREATE OR REPLACE FUNCTION fn_tenant_routed_to_schema() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT false
$$;
