-- reapply: usage_events
-- The Citus layout (issue 19), applied on a coordinator after sql/migrations/ built the
-- single-node schema there as plain local tables. Citus distributes; nothing here shards by
-- hand. (The runner applies sql/citus/functions/ first: fn_current_tenant_id and
-- fn_set_tenant_context for workers, fn_citus_premake_months.)
--
-- * Configuration, read by every tenant's queries and joined on every node: reference tables
--   (a copy on every node). tier_limits first: tenant_classifications and tiering_policy
--   reference it.
-- * organizations and every tenant table: distributed on the tenant column (organizations.id,
--   elsewhere organization_id), colocated, so that a tenant's rows of every table are on one
--   node and joins and foreign keys between them stay on it. Citus accepts a foreign key
--   between distributed tables only when both are colocated and the key holds the
--   distribution column, and towards a reference table; it refuses one from a local table to a
--   distributed one, so the keys are dropped while the tables are distributed one by one, then
--   added again as they were.
-- * A unique key of a distributed table must hold its distribution column: subscriptions,
--   invoices and payment_methods key on (organization_id, id) instead of (id). invoices'
--   reference to its subscription already named both (sql/migrations/0008).
--   tenant_schemas.schema_name loses its own UNIQUE: a name is tenant_<the tenant's hex>, and
--   the tenant is the key.
-- * usage events: partitioned by time (monthly, Citus's create_time_partitions) rather than
--   by tenant, since the distribution column already separates tenants. The single-node tree
--   (the pool, dedicated partitions) is replaced by one table of months; rows are copied over.
--   Like on a single node, usage events have no foreign key to organizations (events of a
--   tenant not onboarded yet are accepted).
-- * The work tables of tenant_pipelines (moves, logs) stay local to the coordinator.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

-- A local table may not reference a distributed one, even for the moment between two
-- create_distributed_table calls, and a local table that references a reference table is
-- turned into a Citus local table at once: every foreign key is dropped first, and added
-- again, as it was, once every table is distributed.
CREATE TEMP TABLE citus_foreign_keys ON COMMIT DROP AS
    SELECT c.conrelid::regclass AS relation, c.conname, pg_get_constraintdef(c.oid) AS definition
      FROM pg_constraint c
     WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace;
DO $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT * FROM citus_foreign_keys LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', k.relation, k.conname);
    END LOOP;
END
$$;

SELECT create_reference_table('public.tier_limits');
SELECT create_reference_table('public.tiering_policy');
SELECT create_reference_table('public.storage_tiers');
SELECT create_reference_table('public.partition_config');
SELECT create_reference_table('public.tenant_tables_version');

ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_organization_id_id_key;  -- invoices' key uses the new primary key
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_pkey;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_pkey PRIMARY KEY (organization_id, id);
ALTER TABLE invoices DROP CONSTRAINT invoices_pkey;
ALTER TABLE invoices ADD CONSTRAINT invoices_pkey PRIMARY KEY (organization_id, id);
ALTER TABLE payment_methods DROP CONSTRAINT payment_methods_pkey;
ALTER TABLE payment_methods ADD CONSTRAINT payment_methods_pkey PRIMARY KEY (organization_id, id);
ALTER TABLE tenant_schemas DROP CONSTRAINT tenant_schemas_schema_name_key;


SELECT create_distributed_table('public.organizations', 'id');
SELECT create_distributed_table('public.subscriptions', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.invoices', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.payment_methods', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.tenant_classifications', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.tenant_schemas', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.tenant_backup_config', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.tenant_metrics_history', 'organization_id', colocate_with => 'public.organizations');
SELECT create_distributed_table('public.tenant_placements', 'organization_id', colocate_with => 'public.organizations');
DO $$
DECLARE
    k record;
BEGIN
    FOR k IN SELECT * FROM citus_foreign_keys ORDER BY relation::text, conname LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.relation, k.conname, k.definition);
    END LOOP;
END
$$;

-- Usage events: the single-node tree is set aside (its names freed), the Citus table made,
-- protected like every tenant table, distributed, given its months, and filled.
ALTER TABLE usage_events_mt RENAME TO usage_events_mt_before_citus;
ALTER INDEX usage_events_mt_pkey RENAME TO usage_events_mt_before_citus_pkey;
ALTER INDEX usage_events_mt_timestamp_idx RENAME TO usage_events_mt_before_citus_timestamp_idx;
ALTER INDEX usage_events_mt_metric_timestamp_idx RENAME TO usage_events_mt_before_citus_metric_timestamp_idx;
CREATE TABLE usage_events_mt (
    id               uuid NOT NULL DEFAULT gen_random_uuid(),
    organization_id  uuid NOT NULL,
    metric_name      varchar(100) NOT NULL,
    quantity         numeric(20, 6) NOT NULL,
    "timestamp"      timestamptz NOT NULL,
    properties       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (organization_id, id, "timestamp")
) PARTITION BY RANGE ("timestamp");
CREATE INDEX usage_events_mt_timestamp_idx ON usage_events_mt ("timestamp" DESC);
CREATE INDEX usage_events_mt_metric_timestamp_idx ON usage_events_mt (metric_name, "timestamp" DESC);
ALTER TABLE usage_events_mt OWNER TO billing_owner;
SELECT fn_protect_tenant_table('public.usage_events_mt');
GRANT SELECT, INSERT, UPDATE, DELETE ON usage_events_mt TO billing_app;
SELECT create_distributed_table('public.usage_events_mt', 'organization_id', colocate_with => 'public.organizations');
SELECT fn_citus_premake_months((SELECT min("timestamp") FROM usage_events_mt_before_citus));
INSERT INTO usage_events_mt SELECT * FROM usage_events_mt_before_citus;
DROP TABLE usage_events_mt_before_citus CASCADE;  -- and the view usage_events over it: re-applied (header)
