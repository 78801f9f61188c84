"""Audits of the live catalog for ways tenant isolation could have been weakened."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

APP_ROLE = "billing_app"


@dataclass(frozen=True)
class Finding:
    obj: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.obj}: {self.problem}; fix: {self.fix}"


def audit_isolation(conn: psycopg.Connection, app_role: str = APP_ROLE) -> list[Finding]:
    """Every finding that lets ``app_role`` see or change another tenant's rows."""
    findings: list[Finding] = []
    role = conn.execute(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (app_role,)
    ).fetchone()
    if role is None:
        return [Finding(f"role {app_role}", "does not exist", "run 'tenant-pipelines db migrate'")]
    if role[0]:
        findings.append(Finding(f"role {app_role}", "is a superuser and bypasses RLS",
                                f"ALTER ROLE {app_role} NOSUPERUSER"))
    if role[1]:
        findings.append(Finding(f"role {app_role}", "has BYPASSRLS",
                                f"ALTER ROLE {app_role} NOBYPASSRLS"))
    # Tables (not partitions) that hold organization_id, or are organizations itself.
    rows = conn.execute(
        """
        SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity,
               EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid),
               pg_has_role(%s, c.relowner, 'USAGE')
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenant_pipelines')
           AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'
           AND (c.relname = 'organizations' OR EXISTS (
                SELECT 1 FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped))
         ORDER BY 1
        """,
        (app_role,),
    ).fetchall()
    for table, enabled, forced, has_policy, owned in rows:
        if not enabled:
            findings.append(Finding(f"table {table}", "has row-level security disabled",
                                    f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
        if not forced:
            findings.append(Finding(f"table {table}", "does not force row-level security on its owner",
                                    f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
        if not has_policy:
            findings.append(Finding(f"table {table}", "has no RLS policy",
                                    "add a tenant_isolation policy with USING and WITH CHECK"))
        if owned:
            findings.append(Finding(f"table {table}", f"is owned by {app_role} (or a role it belongs to)",
                                    f"ALTER TABLE {table} OWNER TO billing_owner"))
    partitions = conn.execute(
        """
        SELECT c.oid::regclass::text
          FROM pg_class c
         WHERE c.relispartition
           AND (has_table_privilege(%s, c.oid, 'SELECT') OR has_table_privilege(%s, c.oid, 'INSERT')
             OR has_table_privilege(%s, c.oid, 'UPDATE') OR has_table_privilege(%s, c.oid, 'DELETE'))
         ORDER BY 1
        """,
        (app_role,) * 4,
    ).fetchall()
    for (partition,) in partitions:
        findings.append(Finding(f"partition {partition}", f"{app_role} can access it directly",
                                f"REVOKE ALL ON {partition} FROM {app_role}, PUBLIC"))
    return findings
