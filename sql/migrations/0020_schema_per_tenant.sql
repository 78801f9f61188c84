-- Schema-per-tenant (issue 17): a tenant may live in a schema of its own, tenant_<32 hex>,
-- holding its own usage_events (partitioned by month), subscriptions, invoices and
-- payment_methods, LIKE the shared tables (sql/functions/fn_create_tenant_schema.sql). Its
-- organizations, tenant_classifications and tenant_backup_config rows stay shared.
--
-- The registry says where it lives: tenant_placements.kind = 'schema', location = the schema.
-- fn_set_tenant_context routes the names usage_events, subscriptions, invoices and
-- payment_methods to that schema for the rest of the transaction (a transaction-local
-- search_path), once the tenant's in-flight transactions are done (its advisory lock).
ALTER TABLE tenant_placements DROP CONSTRAINT tenant_placements_kind_check;
ALTER TABLE tenant_placements ADD CONSTRAINT tenant_placements_kind_check
    CHECK (kind IN ('pooled', 'partition', 'schema'));

-- Each tenant schema's migration version: the newest migration of the tenant tables
-- (a migration whose first line is `-- tenant tables`) that has been applied to it; and the
-- version the shared tables are at, which db migrate writes in the transaction that applies
-- such a migration to them. A schema behind the shared tables is not routed to
-- (fn_tenant_schema_route raises).
CREATE TABLE tenant_tables_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   text NOT NULL DEFAULT '0000' CHECK (version ~ '^[0-9]{4}$')
);
INSERT INTO tenant_tables_version DEFAULT VALUES;
ALTER TABLE tenant_tables_version OWNER TO billing_owner;
REVOKE ALL ON tenant_tables_version FROM PUBLIC;
GRANT SELECT ON tenant_tables_version TO billing_app;
ALTER TABLE tenant_schemas ADD COLUMN migrated_to text NOT NULL DEFAULT '0000'
    CHECK (migrated_to ~ '^[0-9]{4}$');
-- Rows written before this (by hand, as the seed suggested) keep their names: NOT VALID.
ALTER TABLE tenant_schemas ADD CONSTRAINT tenant_schemas_name_check
    CHECK (schema_name ~ '^tenant_[0-9a-f]{32}$') NOT VALID;

-- Policy: where a tenant belongs. Per tier (NULL: today's rule, a dedicated partition when
-- partition_by_month or dedicated_resources says so, else the pool) and per tenant (an
-- override that wins over its tier's).
ALTER TABLE tier_limits ADD COLUMN placement text CHECK (placement IN ('pooled', 'partition', 'schema'));
ALTER TABLE tenant_classifications ADD COLUMN placement_override text
    CHECK (placement_override IN ('pooled', 'partition', 'schema'));

-- An online move between placements, one row a tenant while it runs (core/moves.py):
--   copying   capture triggers on the source, rows copied in batches (resumable at last_key)
--   verified  counts and content hashes of both sides equal, but for the keys still logged
--   cut_over  final catch-up and the routing flip done under the tenant's lock; the old copy
--             is out of every route and is being removed
-- The row is deleted once the old copy is gone. Each step's time is kept in steps.
CREATE TABLE tenant_pipelines.tenant_moves (
    organization_id uuid PRIMARY KEY,
    from_kind       text NOT NULL CHECK (from_kind IN ('pooled', 'partition', 'schema')),
    from_location   text NOT NULL,
    to_kind         text NOT NULL CHECK (to_kind IN ('pooled', 'partition', 'schema')),
    to_location     text NOT NULL,
    step            text NOT NULL CHECK (step IN ('copying', 'verified', 'cut_over')),
    last_key        jsonb,
    steps           jsonb NOT NULL DEFAULT '{}',
    started_at      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_pipelines.tenant_moves OWNER TO billing_owner;
REVOKE ALL ON tenant_pipelines.tenant_moves FROM PUBLIC;

-- Keys of the moving tenant's rows changed on the source since the copy began, written by the
-- capture triggers (fn_tenant_move_capture) and consumed by each catch-up.
CREATE TABLE tenant_pipelines.tenant_move_log (
    seq             bigserial PRIMARY KEY,
    organization_id uuid NOT NULL,
    table_name      text NOT NULL,
    row_id          uuid NOT NULL,
    row_ts          timestamptz
);
CREATE INDEX tenant_move_log_tenant_idx ON tenant_pipelines.tenant_move_log (organization_id, table_name);
ALTER TABLE tenant_pipelines.tenant_move_log OWNER TO billing_owner;
REVOKE ALL ON tenant_pipelines.tenant_move_log FROM PUBLIC;
