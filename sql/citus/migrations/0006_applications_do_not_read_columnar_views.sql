-- citus_columnar (cold months, core/citus.py) puts views in the schema columnar (storage,
-- options, stripe, chunk_group, chunk): the layout of every columnar table, readable by PUBLIC
-- and run with the rights of their owner (a superuser). Like citus_tables (0003) they show no
-- tenant's rows, the isolation audit rightly reports them, and applications need none of them:
-- only admin roles read them now. Columnar scans do not read them.
DO $$
BEGIN
    IF to_regnamespace('columnar') IS NOT NULL THEN
        EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA columnar FROM PUBLIC';
    END IF;
END
$$;
