-- create_distributed_table and create_reference_table copy a table's rows into its shards and
-- leave the rows where they were, in the coordinator's own table, which every query then skips.
-- On a database that had rows before Citus (the single-node layout moved onto a coordinator,
-- docs/scale-out.md) that is a second copy of every tenant's organizations, subscriptions,
-- invoices, payment methods and registry rows: out of reach of every query, but on the
-- coordinator's disk, in its physical backups, and never deleted with its tenant. Citus's
-- truncate_local_data_after_distributing_table drops it; only tables that hold local rows are
-- touched (it takes the table's lock), so on a coordinator migrated from scratch nothing is.
DO $$
DECLARE
    r regclass;
BEGIN
    FOR r IN SELECT p.logicalrelid::regclass FROM pg_dist_partition p
               JOIN pg_class c ON c.oid = p.logicalrelid
              WHERE NOT c.relispartition
                AND (pg_catalog.pg_relation_size(p.logicalrelid) > 0
                     OR EXISTS (SELECT FROM pg_partition_tree(p.logicalrelid) t WHERE pg_catalog.pg_relation_size(t.relid) > 0))
              ORDER BY 1 LOOP
        PERFORM truncate_local_data_after_distributing_table(r);
    END LOOP;
END
$$;
