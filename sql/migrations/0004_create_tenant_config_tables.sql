-- Policy lives in the database: the pipelines read it, nothing hard-codes it.

-- Per-tier resource limits and default quotas (the seed's fn_set_tenant_resources CASE).
CREATE TABLE tier_limits (
    tier                  text PRIMARY KEY CHECK (tier IN ('free', 'starter', 'growth', 'enterprise')),
    work_mem              text NOT NULL,
    statement_timeout     text NOT NULL,
    pool_size             integer NOT NULL CHECK (pool_size > 0),
    monthly_events_limit  bigint,
    storage_quota_gb      integer,
    priority              integer NOT NULL DEFAULT 5
);
INSERT INTO tier_limits (tier, work_mem, statement_timeout, pool_size, monthly_events_limit, storage_quota_gb, priority) VALUES
    ('enterprise', '256MB', '60s', 50, NULL,       NULL, 1),
    ('growth',     '128MB', '30s', 25, 50000000,   500,  3),
    ('starter',    '64MB',  '15s', 10, 5000000,    50,   5),
    ('free',       '32MB',  '10s', 5,  100000,     1,    9);

CREATE TABLE tenant_classifications (
    organization_id       uuid PRIMARY KEY REFERENCES organizations (id),
    tier                  text NOT NULL REFERENCES tier_limits (tier),
    monthly_events_limit  bigint CHECK (monthly_events_limit >= 0),
    storage_quota_gb      integer CHECK (storage_quota_gb >= 0),
    priority              integer NOT NULL DEFAULT 5,
    dedicated_resources   boolean NOT NULL DEFAULT false,
    custom_indexes        boolean NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Enterprise tenants with a schema of their own.
CREATE TABLE tenant_schemas (
    organization_id  uuid PRIMARY KEY REFERENCES organizations (id),
    schema_name      name NOT NULL UNIQUE,
    tenant_type      text NOT NULL DEFAULT 'enterprise' CHECK (tenant_type IN ('enterprise')),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- next_backup_at is computed in UTC: timestamptz + interval is only STABLE (it depends on
-- the session time zone), which a stored generated column does not allow. A tenant never
-- backed up has no next_backup_at and is due at once.
CREATE TABLE tenant_backup_config (
    organization_id         uuid PRIMARY KEY REFERENCES organizations (id),
    backup_frequency        interval NOT NULL DEFAULT '24 hours' CHECK (backup_frequency > interval '0'),
    retention_days          integer NOT NULL DEFAULT 30 CHECK (retention_days > 0),
    encryption_enabled      boolean NOT NULL DEFAULT true,
    point_in_time_recovery  boolean NOT NULL DEFAULT false,
    cross_region_backup     boolean NOT NULL DEFAULT false,
    last_backup_at          timestamptz,
    next_backup_at          timestamptz GENERATED ALWAYS AS (
        pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', last_backup_at) + backup_frequency)
    ) STORED
);

ALTER TABLE tier_limits OWNER TO billing_owner;
ALTER TABLE tenant_classifications OWNER TO billing_owner;
ALTER TABLE tenant_schemas OWNER TO billing_owner;
ALTER TABLE tenant_backup_config OWNER TO billing_owner;
