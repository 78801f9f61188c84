-- Storage tiers: month partitions move hot -> warm -> cold as they age.
--
-- A month partition's age is the age of the newest row it can hold: now minus its upper
-- bound. So a month turns warm when all of it is older than warm_after, and the current and
-- future months (upper bound ahead of now) are always hot and never moved. _rest partitions
-- and partitioned parents are never moved: a parent holds no data, and ALTER TABLE ... SET
-- TABLESPACE on it only changes where future partitions go.

-- Which tablespace serves each tier. Tablespaces are created by a DBA (or, for the embedded
-- cluster, by tenant-pipelines): CREATE TABLESPACE cannot run inside a transaction, and its
-- folder must exist and belong to the server's OS user.
CREATE TABLE storage_tiers (
    storage_tier  text PRIMARY KEY CHECK (storage_tier IN ('hot', 'warm', 'cold')),
    tablespace    name NOT NULL,
    rank          integer NOT NULL UNIQUE
);
INSERT INTO storage_tiers (storage_tier, tablespace, rank) VALUES
    ('hot',  'pg_default',   1),
    ('warm', 'warm_storage', 2),
    ('cold', 'cold_storage', 3);

-- When months turn warm and cold: one row per tenant tier, or the NULL row for all tiers.
CREATE TABLE tiering_policy (
    tenant_tier  text UNIQUE NULLS NOT DISTINCT REFERENCES tier_limits (tier),
    warm_after   interval NOT NULL CHECK (warm_after > interval '0'),
    cold_after   interval NOT NULL,
    CHECK (cold_after > warm_after)
);
INSERT INTO tiering_policy (tenant_tier, warm_after, cold_after) VALUES (NULL, '30 days', '90 days');

ALTER TABLE storage_tiers OWNER TO billing_owner;
ALTER TABLE tiering_policy OWNER TO billing_owner;
GRANT SELECT ON storage_tiers, tiering_policy TO billing_app;

-- The functions: sql/functions/fn_hot_tablespace.sql (now the hot tier's tablespace),
-- fn_tier_plan.sql, fn_move_partition.sql, fn_tier_usage_data.sql.
