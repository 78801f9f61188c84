-- grant: EXECUTE TO PUBLIC
-- Citus (replaces sql/functions/fn_current_tenant_id.sql on a coordinator and, propagated, on
-- every worker). The tenant in context, bound to its transaction on every node:
--
-- * On the coordinator (pg_dist_local_group.groupid = 0) exactly as on a single node: the value
--   '<stamp><tenant uuid>' counts only when the stamp is this transaction's start.
-- * On a worker the stamp cannot be checked (the worker's transaction started later than the
--   coordinator's), and need not be: the value reaches a worker only as a SET LOCAL that
--   fn_set_tenant_context made on the coordinator, propagated into the worker's transaction
--   (citus.propagate_set_commands = 'local'; a session-level SET and set_config() are never
--   propagated), so it ends with that transaction. A value that is not '<stamp><uuid>' is no
--   context. NULLIF(..., '')::uuid: workers reuse their connections, where a setting once made
--   reads '' afterwards, never unset.
-- Plain SQL, STABLE, no SET clause, as on a single node: inlined into the policies.
CREATE OR REPLACE FUNCTION fn_current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g) OPERATOR(pg_catalog.=) 0
        THEN NULLIF(pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true),
                                          pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text,
                                          2),
                    '')::pg_catalog.uuid
        ELSE NULLIF(pg_catalog.substring(pg_catalog.current_setting('app.current_tenant', true),
                                         '^[0-9]+\.[0-9]+([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$'),
                    '')::pg_catalog.uuid
    END
$$;
