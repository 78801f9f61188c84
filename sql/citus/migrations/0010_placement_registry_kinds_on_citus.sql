-- The kinds of the placement registry on Citus (0009): shared or isolated. A single-node kind
-- (pooled, partition, schema) written on a coordinator is refused.
ALTER TABLE public.tenant_placements ADD CONSTRAINT tenant_placements_kind_check
    CHECK (kind IN ('shared', 'isolated'));
