-- Citus splits and moves a tenant's shards (isolate_tenant_to_new_shard,
-- citus_move_shard_placement, the rebalancer) over connections to the workers as the tables'
-- owner, billing_owner, which sql/migrations/0001 made NOLOGIN, and creates the new shards in
-- public as that role. On Citus it may log in, and still cannot in practice from anywhere but
-- the nodes themselves: it has no password (so scram-sha-256 over TCP never lets it in;
-- PASSWORD NULL makes sure), the embedded workers refuse every role but the superuser over
-- TCP, and the nodes' Unix sockets, where Citus connects, are the server OS user's alone
-- (local/citus.py). It may create in public, as the owner of everything there. It stays
-- NOSUPERUSER, NOBYPASSRLS, obeys the policies it owns (FORCE ROW LEVEL SECURITY), and no
-- application role is a member of it.
ALTER ROLE billing_owner LOGIN PASSWORD NULL;
GRANT CREATE ON SCHEMA public TO billing_owner;
