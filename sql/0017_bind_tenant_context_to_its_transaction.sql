-- The tenant context counts only in the transaction that set it (issue 15).
--
-- A pooled server connection (PgBouncer, transaction mode) hands its session to the next
-- client with whatever the last one left there. set_config(..., true) already ends with the
-- transaction, but nothing stopped a client from writing the setting for the session:
-- `SET app.current_tenant = X` or set_config('app.current_tenant', X, false), the seed's own
-- mistake (SEED-REVIEW item 2). Every later client on that connection that set no context
-- then ran as tenant X.
--
-- So fn_set_tenant_context stamps the value with the start of the current transaction, as
-- '<tenant uuid>/<epoch seconds of transaction_timestamp()>', and fn_current_tenant_id()
-- returns the tenant only when the stamp is this transaction's. A value written any other
-- way (a bare uuid, the session-level value of an earlier transaction, garbage) reads as no
-- context: NULL, never an error and never a tenant.
--
-- Why the transaction's start time: it is the same for every statement of a transaction
-- and in parallel workers, it differs between two transactions of one session (a stamp from
-- an earlier transaction never matches a later one), and reading it costs no lock and no
-- transaction id. The epoch is numeric, whose text form depends on no setting (DateStyle,
-- TimeZone, extra_float_digits): a client that changes those after setting its context keeps
-- it. Forging a stamp for a later transaction means guessing its start to the microsecond.
-- Inside its own transaction, a client that writes a correctly stamped value by hand gets
-- that tenant's context, as it would by calling fn_set_tenant_context: billing_app may
-- choose any tenant, the context is not an authentication; what is bound here is that no
-- context outlives its transaction.
--
-- fn_current_tenant_id() stays plain SQL, STABLE, without a SET clause, so that it is
-- inlined into the policies and partition pruning on organization_id = fn_current_tenant_id()
-- still happens at executor start-up (bench/partitions.py measures it).

CREATE OR REPLACE FUNCTION fn_current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true), '/', 2)
             = pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text
        THEN pg_catalog.split_part(pg_catalog.current_setting('app.current_tenant', true), '/', 1)::pg_catalog.uuid
    END
$$;

CREATE OR REPLACE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant context: the tenant id is NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the organization''s UUID';
    END IF;
    PERFORM pg_catalog.set_config(
        'app.current_tenant',
        p_tenant_id::text || '/' || pg_catalog.extract('epoch', pg_catalog.transaction_timestamp())::text,
        true);
    IF NOT EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = p_tenant_id) THEN
        PERFORM pg_catalog.set_config('app.current_tenant', '', true);
        RAISE EXCEPTION 'unknown tenant %', p_tenant_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'onboard the organization first, or check the id';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(p_tenant_id));
    RETURN p_tenant_id;
END
$$;

-- Temporary objects are the other thing a session keeps: a temp table named usage_events
-- shadows the real one for every later client of the connection (pg_temp comes first in the
-- search path), which then reads the first client's rows and writes into a table that
-- disappears. billing_app must not create them. TEMPORARY on a database is granted to PUBLIC
-- by default and is not copied by CREATE DATABASE ... TEMPLATE, so `db migrate` revokes it
-- on every run (tenant_pipelines/db/migrate.py), not here once; the isolation audit reports
-- an application role that still has it.
