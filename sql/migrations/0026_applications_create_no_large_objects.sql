-- Large objects have no row-level security and no tenant: one created by billing_app belongs
-- to billing_app, so every other tenant's session can read it back (lo_get), and nothing a
-- pooler resets removes it. An application that keeps a tenant's document there shares it with
-- every tenant (and can fill the disk). PUBLIC may create them by default: the creating
-- functions are taken back. Existing large objects are left alone (the audit reports any that
-- billing_app can read). They are pg_catalog's, owned by the bootstrap superuser: run by a role
-- that is not a superuser, this changes nothing and says so, and the audit keeps reporting it.
DO $$
DECLARE
    f text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE NOTICE 'not a superuser: large objects stay creatable by PUBLIC; a superuser can run '
                     'REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea) FROM PUBLIC';
        RETURN;
    END IF;
    FOREACH f IN ARRAY ARRAY['pg_catalog.lo_create(oid)', 'pg_catalog.lo_creat(integer)',
                             'pg_catalog.lo_from_bytea(oid, bytea)', 'pg_catalog.lo_import(text)',
                             'pg_catalog.lo_import(text, oid)'] LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
