-- after: 0024
-- grant: EXECUTE TO billing_app
-- For fn_set_tenant_context in a REPEATABLE READ or SERIALIZABLE transaction: refuse a snapshot
-- taken before the tenant's last change of placement. Such a snapshot shows the old registry row
-- and the old move step, so the transaction would be routed to the old copy and its writes
-- logged for a catch-up that already ran: acknowledged, then removed with the old copy. Row
-- locks see past the snapshot: FOR SHARE on the tenant's registry row, and on its move's row if
-- it has one, fails with a serialization failure when either was updated or deleted after the
-- snapshot (the cutover updates both; the move's clean-up deletes its row). FOR SHARE, not FOR
-- KEY SHARE: a key share lock is granted on a row whose other columns were updated since. The
-- caller holds the tenant's advisory lock, so no cutover is under way: nothing waits here; the
-- lock holds the mover's next progress update of that row until this transaction ends.
-- SECURITY DEFINER: billing_app may neither lock the registry's rows nor read the moves; the
-- registry's policy still applies (the tenant in context sees its own row).
CREATE OR REPLACE FUNCTION fn_check_tenant_snapshot(p_tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM public.tenant_placements p WHERE p.organization_id = p_tenant FOR SHARE;
    PERFORM 1 FROM tenant_pipelines.tenant_moves m WHERE m.organization_id = p_tenant FOR SHARE;
EXCEPTION WHEN serialization_failure THEN
    RAISE EXCEPTION 'tenant %: moved to another placement after this transaction''s snapshot was taken', p_tenant
        USING ERRCODE = 'serialization_failure',
              HINT = 'retry the transaction: a new snapshot is routed to the new placement';
END
$$;
