"""The isolation conformance audit: a clean database has no findings, and each weakness,
planted in a scratch database, is found and named with its fix."""

from __future__ import annotations

import psycopg
import pytest

from tenant_pipelines.core.conformance import audit_isolation, audit_tier_limits
from tests.conftest import make_tenant


def findings(conn: psycopg.Connection) -> list[str]:
    return [str(f) for f in audit_isolation(conn)]


def test_a_clean_database_has_no_findings(admin_conn: psycopg.Connection) -> None:
    make_tenant(admin_conn, tier="enterprise")
    assert findings(admin_conn) == []
    assert audit_tier_limits(admin_conn) == []


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


def test_role_level_override_is_found(admin_conn: psycopg.Connection) -> None:
    try:
        admin_conn.execute("ALTER ROLE billing_app SET statement_timeout = '5min'")
        assert any("statement_timeout=5min" in str(f) for f in audit_tier_limits(admin_conn))
    finally:
        admin_conn.execute("ALTER ROLE billing_app RESET statement_timeout")
