"""The isolation conformance audit: a clean database has no findings, and each weakness,
planted in a scratch database, is found and named with its fix."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.core.security import audit_isolation, audit_pool_sizes, audit_tier_limits
from tenant_pipelines.core.pooling import pooler_config, render_pgbouncer_ini
from tenant_pipelines.errors import TenantPipelinesError
from tests.conftest import APP_PASSWORD, make_tenant


def findings(conn: psycopg.Connection) -> list[str]:
    return [str(f) for f in audit_isolation(conn)]


def test_a_clean_database_has_no_findings(admin_conn: psycopg.Connection) -> None:
    make_tenant(admin_conn, tier="enterprise")
    assert findings(admin_conn) == []
    assert audit_tier_limits(admin_conn) == []


def _on_database(statement: str) -> str:
    """``statement`` with %I as the current database's name."""
    return f"DO $$ BEGIN EXECUTE format('{statement}', current_database()); END $$"


# (name, SQL that plants it, what the finding says, SQL that undoes cluster-wide changes)
WEAKNESSES: list[tuple[str, list[str], str, list[str]]] = [
    ("rls disabled", ["ALTER TABLE invoices DISABLE ROW LEVEL SECURITY"],
     "table invoices: has row-level security disabled", []),
    ("rls not forced", ["ALTER TABLE subscriptions NO FORCE ROW LEVEL SECURITY"],
     "table subscriptions: does not force row-level security", []),
    ("no policy", ["DROP POLICY tenant_isolation ON payment_methods"],
     "table payment_methods: has no RLS policy", []),
    ("new tenant table not covered",
     ["CREATE TABLE credit_notes (id int, organization_id uuid)", "GRANT SELECT ON credit_notes TO billing_app"],
     "table credit_notes: has row-level security disabled", []),
    ("app owns a table", ["ALTER TABLE invoices OWNER TO billing_app"],
     "table invoices: is owned by billing_app", []),
    ("app has bypassrls", ["ALTER ROLE billing_app BYPASSRLS"],
     "role billing_app: has BYPASSRLS", ["ALTER ROLE billing_app NOBYPASSRLS"]),
    ("app is superuser", ["ALTER ROLE billing_app SUPERUSER"],
     "role billing_app: is a superuser", ["ALTER ROLE billing_app NOSUPERUSER"]),
    ("app member of a bypassing role", ["CREATE ROLE tp_etl NOLOGIN BYPASSRLS", "GRANT tp_etl TO billing_app"],
     "role billing_app: is a member of tp_etl", ["DROP ROLE tp_etl"]),
    ("login role bypassing rls", ["CREATE ROLE tp_reporting LOGIN BYPASSRLS"],
     "role tp_reporting: can log in and bypasses RLS", ["DROP ROLE tp_reporting"]),
    ("privilege on a partition", ["GRANT SELECT ON usage_events_mt_default TO billing_app"],
     "partition usage_events_mt_default: billing_app can access it directly", []),
    ("definer function without search_path",
     ["CREATE FUNCTION leaky() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'"],
     "function leaky(): is SECURITY DEFINER without a pinned search_path", []),
    ("permissive policy not scoped", ["CREATE POLICY open_read ON invoices FOR SELECT USING (true)"],
     "policy open_read on invoices: USING (true) is not scoped to the tenant", []),
    ("policy without with check",
     ["DROP POLICY tenant_isolation ON invoices",
      "CREATE POLICY tenant_isolation ON invoices USING (organization_id = fn_current_tenant_id())"],
     "policy tenant_isolation on invoices: has no explicit WITH CHECK", []),
    ("foreign key without tenant",
     ["ALTER TABLE payment_methods ADD COLUMN invoice_id uuid REFERENCES invoices (id)"],
     "foreign key payment_methods_invoice_id_fkey on payment_methods: references invoices without organization_id", []),
    ("definer view over tenant data",
     ["CREATE VIEW all_invoices AS SELECT * FROM invoices", "GRANT SELECT ON all_invoices TO billing_app"],
     "view all_invoices: runs with the rights of postgres", []),
    ("app can create temp tables (through PUBLIC)",
     [_on_database("GRANT TEMPORARY ON DATABASE %I TO PUBLIC")],
     "role billing_app: can create temporary tables in database", []),
    ("a login member of the app role can create temp tables",
     ["CREATE ROLE tp_app_login LOGIN IN ROLE billing_app",
      _on_database("GRANT TEMPORARY ON DATABASE %I TO tp_app_login")],
     "role tp_app_login: can create temporary tables in database",
     [_on_database("REVOKE TEMPORARY ON DATABASE %I FROM tp_app_login"), "DROP ROLE tp_app_login"]),
    # A role may set its own defaults; a pooler's RESET ALL restores them for every later client.
    ("app role's own default", ["ALTER ROLE billing_app SET row_security = off"],
     "role billing_app: has the role-level setting row_security=off:", ["ALTER ROLE billing_app RESET row_security"]),
    ("app role's default in this database",
     [_on_database("ALTER ROLE billing_app IN DATABASE %I SET default_transaction_read_only = on")],
     "role billing_app: has the role-level setting default_transaction_read_only=on in database",
     [_on_database("ALTER ROLE billing_app IN DATABASE %I RESET default_transaction_read_only")]),
    ("app role's plan cache mode changed", ["ALTER ROLE billing_app SET plan_cache_mode = auto"],
     "role billing_app: lacks its role-level setting plan_cache_mode=force_custom_plan",
     ["ALTER ROLE billing_app SET plan_cache_mode = force_custom_plan"]),
    ("app role's plan cache mode reset", ["ALTER ROLE billing_app RESET plan_cache_mode"],
     "role billing_app: lacks its role-level setting plan_cache_mode=force_custom_plan",
     ["ALTER ROLE billing_app SET plan_cache_mode = force_custom_plan"]),
    ("app can create large objects", ["GRANT EXECUTE ON FUNCTION lo_from_bytea(oid, bytea) TO PUBLIC"],
     "role billing_app: can create large objects (lo_from_bytea(oid, bytea))",
     ["REVOKE EXECUTE ON FUNCTION lo_from_bytea(oid, bytea) FROM PUBLIC"]),
    ("a large object the app can read",
     ["SELECT lo_from_bytea(4242, 'a tenant''s document')", "ALTER LARGE OBJECT 4242 OWNER TO billing_app"],
     "large objects (1): billing_app can read them", ["SELECT lo_unlink(4242)"]),
    ("a login member's default",
     ["CREATE ROLE tp_app_login2 LOGIN IN ROLE billing_app", "ALTER ROLE tp_app_login2 SET search_path = pg_catalog"],
     "role tp_app_login2: has the role-level setting search_path=pg_catalog", ["DROP ROLE tp_app_login2"]),
]


@pytest.mark.parametrize("name, plant, expected, undo", WEAKNESSES, ids=[w[0] for w in WEAKNESSES])
def test_each_planted_weakness_is_found(admin_conn: psycopg.Connection, name: str, plant: list[str],
                                        expected: str, undo: list[str]) -> None:
    try:
        for statement in plant:
            admin_conn.execute(statement)
        found = findings(admin_conn)
        assert any(f.startswith(expected) and "fix: " in f for f in found), found
    finally:
        for statement in undo:
            admin_conn.execute(statement)


def place_in_schema(admin: psycopg.Connection, tenant) -> str:
    """The tenant in a schema of its own (no rows to move), as tests/core/test_schema_routing.py does."""
    schema = admin.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
    admin.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    return schema


def test_a_clean_database_with_schema_tenants_has_no_findings(admin_conn: psycopg.Connection) -> None:
    for tier in ("enterprise", "free"):
        place_in_schema(admin_conn, make_tenant(admin_conn, tier=tier))
    make_tenant(admin_conn, tier="starter")  # and one in the shared tables
    assert findings(admin_conn) == []


_STRAY = "tenant_0123456789abcdef0123456789abcdef"
# Weaknesses of a tenant schema: {s} is the schema, {t} its tenant, {m} one of its months, {o}
# another tenant. (name, SQL that plants it, what the finding says)
SCHEMA_WEAKNESSES: list[tuple[str, list[str], str]] = [
    ("schema table rls disabled", ["ALTER TABLE {s}.invoices DISABLE ROW LEVEL SECURITY"],
     "table {s}.invoices: has row-level security disabled"),
    ("schema month rls disabled", ["ALTER TABLE {s}.{m} DISABLE ROW LEVEL SECURITY"],
     "month {s}.{m}: has row-level security disabled"),
    ("schema month rls not forced", ["ALTER TABLE {s}.{m} NO FORCE ROW LEVEL SECURITY"],
     "month {s}.{m}: does not force row-level security"),
    ("schema table rls not forced", ["ALTER TABLE {s}.usage_events NO FORCE ROW LEVEL SECURITY"],
     "table {s}.usage_events: does not force row-level security"),
    ("schema default partition without policy", ["DROP POLICY tenant_isolation ON {s}.usage_events_rest"],
     "month {s}.usage_events_rest: has no tenant_isolation policy"),
    ("schema policy opened", ["DROP POLICY tenant_isolation ON {s}.subscriptions",
                              "CREATE POLICY tenant_isolation ON {s}.subscriptions USING (true) WITH CHECK (true)"],
     "table {s}.subscriptions: has a tenant_isolation policy"),
    ("schema policy only for select", ["DROP POLICY tenant_isolation ON {s}.invoices",
                                       "CREATE POLICY tenant_isolation ON {s}.invoices FOR SELECT"
                                       " USING (organization_id = fn_current_tenant_id())"],
     "table {s}.invoices: has a tenant_isolation policy (command r"),
    ("schema extra permissive policy", ["CREATE POLICY open_read ON {s}.invoices FOR SELECT USING (true)"],
     "policy open_read on {s}.invoices: is a permissive policy besides tenant_isolation"),
    ("schema without tenant_only_check", ["ALTER TABLE {s}.payment_methods DROP CONSTRAINT tenant_only_check"],
     "table {s}.payment_methods: has no CHECK tenant_only_check"),
    ("schema tenant_only_check for another tenant",
     ["ALTER TABLE {s}.invoices DROP CONSTRAINT tenant_only_check",
      "ALTER TABLE {s}.invoices ADD CONSTRAINT tenant_only_check CHECK (organization_id = '{o}'::uuid) NOT VALID"],
     "table {s}.invoices: has tenant_only_check CHECK ((organization_id = '{o}'::uuid)) NOT VALID, not"),
    ("schema table owned by app", ["ALTER TABLE {s}.invoices OWNER TO billing_app"],
     "table {s}.invoices: is owned by billing_app, not billing_owner"),
    ("schema month owned by another role", ["ALTER TABLE {s}.{m} OWNER TO postgres"],
     "month {s}.{m}: is owned by postgres, not billing_owner"),
    ("schema owned by app", ["ALTER SCHEMA {s} OWNER TO billing_app"],
     "schema {s}: is owned by billing_app, not billing_owner"),
    ("app can create in the schema", ["GRANT CREATE ON SCHEMA {s} TO billing_app"],
     "schema {s}: billing_app can CREATE in it"),
    ("app can create in the schema (through PUBLIC)", ["GRANT CREATE ON SCHEMA {s} TO PUBLIC"],
     "schema {s}: billing_app can CREATE in it"),
    ("schema usage for PUBLIC", ["GRANT USAGE ON SCHEMA {s} TO PUBLIC"],
     "schema {s}: grants privileges to PUBLIC"),
    ("app without usage on the schema", ["REVOKE USAGE ON SCHEMA {s} FROM billing_app"],
     "schema {s}: billing_app has no USAGE on it"),
    ("app with truncate on a schema table", ["GRANT TRUNCATE ON {s}.invoices TO billing_app"],
     "table {s}.invoices: billing_app has TRUNCATE on it"),
    ("app with references and trigger", ["GRANT REFERENCES, TRIGGER ON {s}.subscriptions TO billing_app"],
     "table {s}.subscriptions: billing_app has REFERENCES, TRIGGER on it"),
    ("app without delete on a schema table", ["REVOKE DELETE ON {s}.payment_methods FROM billing_app"],
     "table {s}.payment_methods: billing_app lacks DELETE"),
    ("app with select on a month", ["GRANT SELECT ON {s}.{m} TO billing_app"],
     "month {s}.{m}: billing_app has SELECT on it"),
    ("app with insert on the default partition", ["GRANT INSERT ON {s}.usage_events_rest TO billing_app"],
     "month {s}.usage_events_rest: billing_app has INSERT on it"),
    ("app with a column privilege on a month", ["GRANT SELECT (organization_id) ON {s}.{m} TO billing_app"],
     "month {s}.{m}: billing_app has column privileges on it"),
    ("schema table granted to PUBLIC", ["GRANT SELECT ON {s}.subscriptions TO PUBLIC"],
     "table {s}.subscriptions: grants privileges to PUBLIC"),
    ("new table in a schema not covered", ["CREATE TABLE {s}.credit_notes (id int, organization_id uuid)"],
     "table {s}.credit_notes: has row-level security disabled"),
    ("function in a tenant schema",
     ["CREATE FUNCTION {s}.fn_current_tenant_id() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'"],
     "function {s}.fn_current_tenant_id(): sits in tenant schema {s}"),
    ("view in a tenant schema", ["CREATE VIEW {s}.all_invoices AS SELECT * FROM public.invoices"],
     "view {s}.all_invoices: sits in tenant schema {s}"),
    ("tenant schema in no registry", ["CREATE SCHEMA " + _STRAY],
     "schema " + _STRAY + ": is named like a tenant schema but no registry"),
    ("schema tenant without its schema", ["DROP SCHEMA {s} CASCADE"],
     "schema tenant {t}: is placed in schema {s}, which does not exist"),
    ("schema registered to two tenants", ["SELECT fn_record_placement('{o}', 'schema', '{s}')"],
     "schema {s}: is registered to more than one tenant"),
]


@pytest.mark.parametrize("name, plant, expected", SCHEMA_WEAKNESSES, ids=[w[0] for w in SCHEMA_WEAKNESSES])
def test_each_planted_schema_weakness_is_found(admin_conn: psycopg.Connection, name: str, plant: list[str],
                                               expected: str) -> None:
    tenant, other = make_tenant(admin_conn, tier="enterprise"), make_tenant(admin_conn)
    schema = place_in_schema(admin_conn, tenant)
    month = admin_conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass"
        " AND c.relname <> 'usage_events_rest' ORDER BY 1 LIMIT 1", (f"{schema}.usage_events",)).fetchone()[0]
    assert findings(admin_conn) == []
    names = {"s": schema, "t": tenant, "m": month, "o": other}
    for statement in plant:
        admin_conn.execute(statement.format(**names))
    found = findings(admin_conn)
    assert any(f.startswith(expected.format(**names)) and "fix: " in f for f in found), found


def test_the_generic_checks_do_not_repeat_the_schema_findings(admin_conn: psycopg.Connection) -> None:
    """A weakness in a tenant schema is one finding, the tenant-schema audit's, not also the
    generic table and partition checks'."""
    schema = place_in_schema(admin_conn, make_tenant(admin_conn))
    admin_conn.execute(f"ALTER TABLE {schema}.invoices DISABLE ROW LEVEL SECURITY")
    admin_conn.execute(f"GRANT SELECT ON {schema}.usage_events_rest TO billing_app")
    assert findings(admin_conn) == [
        f"table {schema}.invoices: has row-level security disabled; fix: ALTER TABLE {schema}.invoices ENABLE ROW "
        "LEVEL SECURITY",
        f"month {schema}.usage_events_rest: billing_app has SELECT on it (it may have exactly nothing); fix: REVOKE "
        f"SELECT ON {schema}.usage_events_rest FROM billing_app, PUBLIC",
    ]


def test_a_planted_schema_leak_is_real(admin_conn: psycopg.Connection, app_dsn: str) -> None:
    """What two schema findings mean, seen as billing_app: an extra permissive policy shows a
    schema tenant's rows to another tenant's context through the qualified name, and a month
    granted by mistake is readable by name."""
    a, b = make_tenant(admin_conn), make_tenant(admin_conn)
    schema = place_in_schema(admin_conn, b)
    admin_conn.execute(f"INSERT INTO {schema}.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (b,))
    admin_conn.execute(f"CREATE POLICY open_read ON {schema}.invoices FOR SELECT USING (true)")
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (a,))
        assert app.execute(f"SELECT count(*) FROM {schema}.invoices").fetchone()[0] == 1
    assert any(f.startswith(f"policy open_read on {schema}.invoices") for f in findings(admin_conn))


def test_the_planted_leaks_are_real(admin_conn: psycopg.Connection, app_dsn: str) -> None:
    """What two of the findings mean, seen as billing_app."""
    a, b = make_tenant(admin_conn), make_tenant(admin_conn)
    for tenant in (a, b):
        admin_conn.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (tenant,))
    admin_conn.execute("CREATE POLICY open_read ON invoices FOR SELECT USING (true)")
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (a,))
        assert app.execute("SELECT count(DISTINCT organization_id) FROM invoices").fetchone()[0] == 2


def test_tier_drift_is_found(admin_conn: psycopg.Connection) -> None:
    make_tenant(admin_conn, tier="growth")
    admin_conn.execute("""CREATE OR REPLACE FUNCTION fn_set_tenant_resources(p_tenant_id uuid) RETURNS text
                          LANGUAGE sql AS $$ SELECT 'growth'::text $$""")
    assert any("tier growth: tenant" in str(f) and "128MB" in str(f) for f in audit_tier_limits(admin_conn))


def test_the_app_role_can_set_its_own_defaults_and_the_audit_sees_it(admin_conn: psycopg.Connection,
                                                                       app_dsn: str) -> None:
    """PostgreSQL 15 lets any role ALTER ROLE itself SET what it may SET: billing_app can give
    every later server connection row_security = off (each tenant query then fails) and no
    pooler reset clears it. It cannot be refused; the isolation audit (and so the
    tenant_isolation_holds check) reports it with the fix."""
    try:
        with psycopg.connect(app_dsn, autocommit=True) as app:
            app.execute("ALTER ROLE billing_app SET row_security = off")
        with psycopg.connect(app_dsn, autocommit=True) as app:
            assert app.execute("SHOW row_security").fetchone()[0] == "off"
            app.execute("RESET ALL")  # what PgBouncer's reset does: back to the role's default
            assert app.execute("SHOW row_security").fetchone()[0] == "off"
        found = findings(admin_conn)
        assert any(f.startswith("role billing_app: has the role-level setting row_security=off")
                   and "fix: ALTER ROLE billing_app RESET row_security" in f for f in found), found
    finally:
        admin_conn.execute("ALTER ROLE billing_app RESET row_security")
    assert findings(admin_conn) == []


def test_the_app_role_creates_no_large_objects(app_dsn: str) -> None:
    """sql/0026: a large object has no policy; billing_app may not make one (any tenant could
    read it back through a pooled connection)."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for statement in ("SELECT lo_from_bytea(0, 'x')", "SELECT lo_create(0)", "SELECT lo_creat(-1)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)


def test_role_level_override_is_found(admin_conn: psycopg.Connection) -> None:
    try:
        admin_conn.execute("ALTER ROLE billing_app SET statement_timeout = '5min'")
        assert any("statement_timeout=5min" in str(f) for f in audit_tier_limits(admin_conn))
    finally:
        admin_conn.execute("ALTER ROLE billing_app RESET statement_timeout")


def rendered_ini(conn: psycopg.Connection, dsn: str, **changes: object) -> str:
    """pgbouncer.ini as `pgbouncer up` writes it from the database's tier_limits, with ``changes``."""
    cfg = pooler_config(conn, dsn, listen_port=6432, auth_file="/tmp/userlist.txt")
    return render_pgbouncer_ini(replace(cfg, **changes))


def test_a_config_rendered_from_tier_limits_has_no_pool_findings(admin_conn: psycopg.Connection, admin_dsn: str,
                                                                tmp_path: Path) -> None:
    # The plain `billing` pool is not a tier's: its size is not checked.
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(rendered_ini(admin_conn, admin_dsn, default_pool_size=3))
    assert audit_pool_sizes(admin_conn, ini.read_text()) == []
    make_tenant(admin_conn, tier="starter")
    assert audit_tier_limits(admin_conn, pgbouncer_ini=ini) == []


def test_pool_size_drift_is_found(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path: Path) -> None:
    """A changed size, a missing tier and a pool for an unknown tier: one finding each."""
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(rendered_ini(admin_conn, admin_dsn,
                                pool_sizes={"enterprise": 50, "growth": 30, "starter": 10, "gold": 3}))
    found = [str(f) for f in audit_pool_sizes(admin_conn, ini)]
    assert len(found) == 3, found
    changed, missing, unknown = found
    assert changed.startswith("tier growth: pool billing_growth has pool_size 30 in " + str(ini))
    assert "tier_limits.pool_size is 25" in changed and "tenant-pipelines pgbouncer up" in changed
    assert missing.startswith("tier free: has no pool billing_free in " + str(ini)) and "pool_size is 5" in missing
    assert unknown.startswith("pool billing_gold: in " + str(ini) + " (pool_size 3) is for tier gold, which "
                              "tier_limits does not have") and "fix: " in unknown
    # The same findings through the tier drift check, and none without a config to compare.
    assert [str(f) for f in audit_tier_limits(admin_conn, pgbouncer_ini=ini)] == found
    assert audit_tier_limits(admin_conn) == []


def test_a_changed_tier_limit_drifts_from_the_config(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    text = rendered_ini(admin_conn, admin_dsn)
    admin_conn.execute("UPDATE tier_limits SET pool_size = 8 WHERE tier = 'free'")
    found = audit_pool_sizes(admin_conn, text)
    assert [f.obj for f in found] == ["tier free"]
    assert "pool_size 5 in the PgBouncer config; tier_limits.pool_size is 8" in str(found[0])


def test_an_unreadable_config_is_an_error_naming_it(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[databases]\nbilling_free host=127.0.0.1\n")
    with pytest.raises(TenantPipelinesError, match=re.escape(str(ini)) + ": .*PgBouncer cannot read.*pgbouncer up"):
        audit_pool_sizes(admin_conn, ini)
    missing = tmp_path / "missing.ini"
    with pytest.raises(TenantPipelinesError, match=re.escape(f"PgBouncer config {missing}: cannot read it")):
        audit_tier_limits(admin_conn, pgbouncer_ini=missing)


def test_db_migrate_takes_temporary_back(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    """A database whose grants were reset (CREATE DATABASE does not copy them from a template)
    is mended by the next db migrate."""
    from tenant_pipelines.db.migrate import migrate

    admin_conn.execute(_on_database("GRANT TEMPORARY ON DATABASE %I TO PUBLIC"))
    assert any(f.startswith("role billing_app: can create temporary tables") for f in findings(admin_conn))
    migrate(admin_conn)
    assert findings(admin_conn) == []
    with psycopg.connect(admin_dsn, user="billing_app", password=APP_PASSWORD) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="temporary"):
            app.execute("CREATE TEMP TABLE usage_events (x int)")


@pytest.mark.parametrize("changes, problem", [
    ({"server_reset_query_always": False}, "server_reset_query_always is off"),
    ({"server_reset_query": "SELECT 1"}, "server_reset_query is 'SELECT 1', which does not clear every session's state"),
])
def test_a_pooler_that_keeps_session_state_is_found(admin_conn: psycopg.Connection, admin_dsn: str,
                                                    changes: dict, problem: str) -> None:
    found = [str(f) for f in audit_pool_sizes(admin_conn, rendered_ini(admin_conn, admin_dsn, **changes))]
    assert len(found) == 1 and problem in found[0] and "server_reset_query_always = 1" in found[0], found
