-- fn_create_tenant_schema gains p_premake_months (sql/functions/fn_create_tenant_schema.sql):
-- `partitions ensure --premake-months N` and the tenant_partition asset premake a schema
-- tenant's months as far ahead as a dedicated tenant's. A new argument is a new signature:
-- the old one goes here, and the file, which names this migration as its `after`, creates
-- the new one.
DROP FUNCTION IF EXISTS fn_create_tenant_schema(uuid, date);
