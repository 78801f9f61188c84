-- The tenant context is transaction-local: set_config(..., true). A pooled server connection
-- (PgBouncer, transaction mode) can never hand one tenant's context to the next client.
-- None of these functions is SECURITY DEFINER: they have no reason to run with more rights
-- than their caller.

-- The functions: sql/functions/fn_current_tenant_id.sql, fn_tenant_lock_key.sql,
-- fn_set_tenant_context.sql, fn_set_tenant_resources.sql (as sql/0017 left them).
