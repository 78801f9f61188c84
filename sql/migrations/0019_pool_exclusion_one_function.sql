-- fn_pool_exclude_tenant(uuid) became fn_pool_exclude_tenant(uuid, boolean DEFAULT true), which
-- both adds and drops the exclusion CHECKs (sql/functions/fn_pool_exclude_tenant.sql); the
-- old signature would be an overload that calls with one argument cannot choose between.
DROP FUNCTION IF EXISTS fn_pool_exclude_tenant(uuid);
