-- The extension puts two views in public, citus_tables and citus_schemas: every distributed
-- table's or schema's name, size, shard count and owner, readable by PUBLIC and run with the
-- rights of their owner (a superuser). They show no tenant's rows, but the isolation audit
-- (core/security.py) rightly reports a definer view billing_app can read, and applications need
-- neither: only admin roles read them now.
REVOKE ALL ON public.citus_tables, public.citus_schemas FROM PUBLIC;
