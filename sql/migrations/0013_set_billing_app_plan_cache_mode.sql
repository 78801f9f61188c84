-- Applications' queries on usage_events prune to one tenant's partitions at plan time only
-- when the planner sees the tenant id (and the time bounds) as values. A prepared statement
-- that switches to a generic plan prunes at executor start-up instead, after locking every
-- partition of every tenant (66,000 locks at 10,000 tenants; docs/benchmarks/partitions.md).
-- billing_app therefore always gets custom plans.
ALTER ROLE billing_app SET plan_cache_mode = force_custom_plan;
