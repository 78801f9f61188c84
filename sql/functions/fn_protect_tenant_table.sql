-- after: 0001
-- Make a table a tenant table the way every tenant table is (sql/migrations/0006): RLS enabled
-- and forced (its owner obeys it too), one policy tenant_isolation whose USING and WITH CHECK
-- are both <tenant column> = fn_current_tenant_id(), and no privilege for PUBLIC. Idempotent.
-- For the migrations that add tenant tables and for the tables a restore creates in a scratch
-- schema; the audit (tenant_isolation_holds) checks the result.
CREATE OR REPLACE FUNCTION fn_protect_tenant_table(p_table regclass, p_tenant_column name DEFAULT 'organization_id')
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', p_table);
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = p_table AND polname = 'tenant_isolation') THEN
        EXECUTE format('CREATE POLICY tenant_isolation ON %s AS PERMISSIVE FOR ALL TO PUBLIC '
                       'USING (%I = public.fn_current_tenant_id()) WITH CHECK (%I = public.fn_current_tenant_id())',
                       p_table, p_tenant_column, p_tenant_column);
    END IF;
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', p_table);
END
$$;
