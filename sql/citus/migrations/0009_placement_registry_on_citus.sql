-- The placement registry, tenant_placements (sql/migrations/0018), on Citus (issue 19). Its rows
-- said pooled, partition or schema: the single-node layout's kinds, which mean nothing on a
-- coordinator. Here a tenant is
--   shared    in a shard group with other tenants (where every tenant starts), or
--   isolated  in a shard group of its own (isolate_tenant_to_new_shard), on any worker;
-- and its location is usage_events_mt, the table that holds its events on both. The worker is
-- not recorded: the rebalancer moves shared shard groups, and Citus's metadata stays the only
-- word on it. core/citus.py's record_citus_placement writes a tenant's row after each change
-- (onboarding, isolate, move); placements_match_policy reports a row that disagrees with Citus.
--
-- 0010 then refuses a single-node kind on a coordinator. (Its CHECK is validated on the
-- coordinator's own table too: that is how the copies 0008 drops were found.)
-- The DDL is in a DO block: Citus sends a DDL statement's text to the shards, and the text of a
-- file of several statements is refused there ("cannot insert multiple commands into a prepared
-- statement").
DO $$
DECLARE
    t uuid;
BEGIN
    EXECUTE 'ALTER TABLE public.tenant_placements DROP CONSTRAINT IF EXISTS tenant_placements_kind_check';
    UPDATE public.tenant_placements SET kind = 'shared', location = 'usage_events_mt', state = 'placed'
     WHERE (kind, location, state) IS DISTINCT FROM ('shared', 'usage_events_mt', 'placed');
    FOR t IN SELECT o.id FROM public.organizations o
               JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column('public.organizations', o.id)
              WHERE s.shardminvalue::bigint = s.shardmaxvalue::bigint LOOP
        UPDATE public.tenant_placements SET kind = 'isolated' WHERE organization_id = t;
    END LOOP;
END
$$;
