-- after: 0001
-- grant: EXECUTE TO PUBLIC
-- The tenant in context: NULL unless fn_set_tenant_context set it in this very transaction.
-- The value is '<stamp><tenant uuid>', the stamp being the transaction's start in epoch seconds
-- with six decimals (docs/pooling.md has why). What follows this transaction's stamp is the
-- tenant id. A value with another stamp, or none (a bare uuid, the session-level value of an
-- earlier transaction, garbage, empty, unset), has no second field: '' (or NULL), which NULLIF
-- turns into NULL: no context, never an error and never a tenant. (The stamp has a '.' at a
-- fixed place and a uuid has none, so one stamp is never found inside a value of another.)
--
-- Plain SQL, STABLE, no SET clause: it is inlined into policies, so partition pruning on
-- organization_id = fn_current_tenant_id() happens at executor start-up. The planner evaluates
-- it once per function call in it for every partition it estimates, so it is kept to a few
-- calls (bench/partitions.py measures what it costs against the unbound sql/0005 version).
CREATE OR REPLACE FUNCTION fn_current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT NULLIF(pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true),
                                        pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text,
                                        2),
                  '')::pg_catalog.uuid
$$;
