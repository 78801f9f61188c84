-- The placement registry: where each tenant lives, in one row, written in the same transaction
-- as the change that moves it (fn_record_placement, called by fn_attach_tenant_partition and
-- fn_prepare_tenant_partition). tenant_pipelines/core/placement.py reads it; nothing infers a
-- tenant's placement from catalog names any more. The audit (tenant_partitions_complete)
-- reports a registry row that disagrees with the catalog.
--
--   kind      pooled: its rows in the shared partition (usage_events_mt_default, split by month)
--             partition: a dedicated partition of usage_events_mt (split by month or not)
--   location  the relation in public that holds its usage events
--   state     placed (later issues add the states of an online move)
--   since     when it got there
--
-- A tenant without a row is pooled: events of a tenant the onboarding sensor has not seen yet
-- land in the pool.
CREATE TABLE tenant_placements (
    organization_id uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('pooled', 'partition')),
    location        text NOT NULL CHECK (location ~ '^[a-z_][a-z0-9_]{0,62}$'),
    state           text NOT NULL DEFAULT 'placed' CHECK (state IN ('placed')),
    since           timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenant_placements OWNER TO billing_owner;

-- A tenant table like the others: RLS enabled and forced, scoped to the tenant in context.
-- billing_app may read its own row (later: routing); only the pipelines write it.
SELECT fn_protect_tenant_table('tenant_placements');
GRANT SELECT ON tenant_placements TO billing_app;

-- Where every tenant lives today: a dedicated partition attached under usage_events_mt (its
-- bound names the tenant), else the pool for every organization.
INSERT INTO tenant_placements (organization_id, kind, location)
SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), '''([0-9a-f-]{36})'''))[1]::uuid, 'partition', c.relname
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'public.usage_events_mt'::regclass
   AND c.relname <> 'usage_events_mt_default'
   AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT';
INSERT INTO tenant_placements (organization_id, kind, location)
SELECT o.id, 'pooled', 'usage_events_mt_default' FROM organizations o
ON CONFLICT (organization_id) DO NOTHING;
