"""Audits of the live catalog (and of PgBouncer's configuration) for ways tenant isolation, or
the tier limits, could have been weakened. Each finding names the object and the fix."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tenant_pipelines.core.pooling import (
    SERVER_RESET_QUERY,
    SESSION_RESET_QUERY,
    pgbouncer_session_reset,
    pgbouncer_tier_pool_sizes,
    read_pgbouncer_ini,
    tier_alias,
    tier_pool_sizes,
)
from tenant_pipelines.core.findings import Finding
from tenant_pipelines.errors import InvalidInput
from tenant_pipelines.db.names import APP_ROLE

# Tables with an organization_id that are not tenant data (none yet); everything else is audited.
NOT_TENANT_TABLES: frozenset[str] = frozenset()


def audit_isolation(conn: psycopg.Connection, app_role: str = APP_ROLE,
                    trusted_roles: tuple[str, ...] = ()) -> list[Finding]:
    """Every way ``app_role`` (or an application) could see or change another tenant's rows.

    ``trusted_roles``: login roles allowed to bypass RLS (the operators' admin roles). The
    bootstrap superuser and the role running the audit are always trusted.
    """
    role = conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (app_role,)).fetchone()
    if role is None:
        return [Finding(f"role {app_role}", "does not exist", "run 'tenant-pipelines db migrate'")]
    findings: list[Finding] = []
    findings += _app_role(conn, app_role, role)
    findings += _bypassing_login_roles(conn, app_role, trusted_roles)
    findings += _tenant_tables(conn, app_role)
    findings += _policies(conn)
    findings += _partitions(conn, app_role)
    findings += _definer_functions(conn)
    findings += _foreign_keys(conn)
    findings += _definer_views(conn, app_role)
    return findings


def _app_role(conn: psycopg.Connection, app_role: str, role: tuple[bool, bool]) -> list[Finding]:
    findings = []
    if role[0]:
        findings.append(Finding(f"role {app_role}", "is a superuser and bypasses RLS", f"ALTER ROLE {app_role} NOSUPERUSER"))
    if role[1]:
        findings.append(Finding(f"role {app_role}", "has BYPASSRLS", f"ALTER ROLE {app_role} NOBYPASSRLS"))
    for (other,) in conn.execute(
        """SELECT r.rolname FROM pg_roles r
            WHERE r.rolname <> %s AND pg_has_role(%s, r.oid, 'MEMBER') AND (r.rolsuper OR r.rolbypassrls)
            ORDER BY 1""",
        (app_role, app_role),
    ):
        findings.append(Finding(f"role {app_role}", f"is a member of {other}, which bypasses RLS",
                                f"REVOKE {other} FROM {app_role}"))
    findings += _temporary_objects(conn, app_role)
    return findings


def _temporary_objects(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    """An application role (``app_role``, or a login role that is a member of it) that can
    create temporary tables can shadow a tenant table for every later client of a pooled
    server connection: pg_temp comes first in the search path (sql/0017)."""
    rows = conn.execute(
        """SELECT r.rolname, current_database() FROM pg_roles r
            WHERE (r.rolname = %s OR (r.rolcanlogin AND NOT r.rolsuper AND pg_has_role(r.oid, %s, 'MEMBER')))
              AND has_database_privilege(r.oid, current_database(), 'TEMPORARY')
            ORDER BY r.rolname = %s DESC, 1""",
        (app_role, app_role, app_role),
    ).fetchall()
    return [Finding(f"role {name}", f"can create temporary tables in database {database}: a temp table named like a "
                    "tenant table shadows it for every later client of a pooled connection",
                    f"REVOKE TEMPORARY ON DATABASE {database} FROM PUBLIC, {name} ('tenant-pipelines db migrate' "
                    "does it), and from any role that grants it")
            for name, database in rows]


def _bypassing_login_roles(conn: psycopg.Connection, app_role: str, trusted: tuple[str, ...]) -> list[Finding]:
    rows = conn.execute(
        """SELECT rolname FROM pg_roles
            WHERE rolcanlogin AND (rolsuper OR rolbypassrls) AND rolname <> %s
              AND oid <> 10 AND rolname <> current_user AND NOT rolname = ANY(%s)
            ORDER BY 1""",
        (app_role, list(trusted)),
    ).fetchall()
    return [Finding(f"role {name}", "can log in and bypasses RLS: an application using it sees every tenant",
                    f"ALTER ROLE {name} NOBYPASSRLS NOSUPERUSER, or NOLOGIN if no application uses it")
            for (name,) in rows]


_TENANT_TABLES = """
    SELECT c.oid, c.oid::regclass::text
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenant_pipelines')
       AND n.nspname NOT LIKE 'pg\\_temp%%' AND n.nspname NOT LIKE 'pg\\_toast%%'
       AND (c.oid = 'public.organizations'::regclass OR EXISTS (
            SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped))
"""


def _tenant_tables(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    findings = []
    rows = conn.execute(
        f"""SELECT t.name, c.relrowsecurity, c.relforcerowsecurity,
                   EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid),
                   pg_has_role(%s, c.relowner, 'USAGE')
              FROM ({_TENANT_TABLES}) t(oid, name) JOIN pg_class c ON c.oid = t.oid ORDER BY 1""",
        (app_role,),
    ).fetchall()
    for table, enabled, forced, has_policy, owned in rows:
        if table in NOT_TENANT_TABLES:
            continue
        if not enabled:
            findings.append(Finding(f"table {table}", "has row-level security disabled",
                                    f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
        if not forced:
            findings.append(Finding(f"table {table}", "does not force row-level security on its owner",
                                    f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
        if not has_policy:
            findings.append(Finding(f"table {table}", "has no RLS policy",
                                    "add a tenant_isolation policy with USING and WITH CHECK on organization_id"))
        if owned:
            findings.append(Finding(f"table {table}", f"is owned by {app_role} (or a role it belongs to)",
                                    f"ALTER TABLE {table} OWNER TO billing_owner"))
    return findings


def _policies(conn: psycopg.Connection) -> list[Finding]:
    """A permissive policy on a tenant table that does not scope rows to the tenant in context
    opens the table: permissive policies are OR-ed together."""
    rows = conn.execute(
        f"""SELECT t.name, p.polname, p.polcmd,
                   COALESCE(pg_get_expr(p.polqual, p.polrelid), ''),
                   COALESCE(pg_get_expr(p.polwithcheck, p.polrelid), '')
              FROM ({_TENANT_TABLES}) t(oid, name) JOIN pg_policy p ON p.polrelid = t.oid
             WHERE p.polpermissive ORDER BY 1, 2"""
    ).fetchall()
    findings = []
    for table, policy, cmd, using, check in rows:
        reads = cmd in ("*", "r", "w", "d")
        writes = cmd in ("*", "a", "w")
        if reads and "fn_current_tenant_id()" not in using:
            findings.append(Finding(f"policy {policy} on {table}", f"USING ({using or 'none'}) is not scoped to the tenant",
                                    f"DROP POLICY {policy} ON {table}, or scope it with fn_current_tenant_id()"))
        if writes and check and "fn_current_tenant_id()" not in check:
            findings.append(Finding(f"policy {policy} on {table}", f"WITH CHECK ({check}) is not scoped to the tenant",
                                    f"DROP POLICY {policy} ON {table}, or scope it with fn_current_tenant_id()"))
        if writes and not check:
            findings.append(Finding(f"policy {policy} on {table}", "has no explicit WITH CHECK",
                                    "write WITH CHECK (organization_id = fn_current_tenant_id()) explicitly"))
    return findings


def _partitions(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    rows = conn.execute(
        """SELECT c.oid::regclass::text FROM pg_class c
            WHERE c.relispartition
              AND (has_table_privilege(%s, c.oid, 'SELECT') OR has_table_privilege(%s, c.oid, 'INSERT')
                OR has_table_privilege(%s, c.oid, 'UPDATE') OR has_table_privilege(%s, c.oid, 'DELETE'))
            ORDER BY 1""",
        (app_role,) * 4,
    ).fetchall()
    return [Finding(f"partition {p}", f"{app_role} can access it directly", f"REVOKE ALL ON {p} FROM {app_role}, PUBLIC")
            for (p,) in rows]


def _definer_functions(conn: psycopg.Connection) -> list[Finding]:
    rows = conn.execute(
        """SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND NOT EXISTS (SELECT 1 FROM unnest(COALESCE(p.proconfig, '{}')) c WHERE c LIKE 'search\\_path=%%')
            ORDER BY 1"""
    ).fetchall()
    return [Finding(f"function {f}", "is SECURITY DEFINER without a pinned search_path: a caller can hijack it",
                    f"ALTER FUNCTION {f} SET search_path = pg_catalog, pg_temp (and schema-qualify what it uses)")
            for (f,) in rows]


def _foreign_keys(conn: psycopg.Connection) -> list[Finding]:
    """Foreign-key checks bypass RLS: a key between tenant tables must include organization_id,
    or one tenant's row can point at (and pin, and reveal) another tenant's."""
    rows = conn.execute(
        f"""SELECT con.conname, con.conrelid::regclass::text, con.confrelid::regclass::text
              FROM pg_constraint con
             WHERE con.contype = 'f'
               AND con.conrelid IN (SELECT oid FROM ({_TENANT_TABLES}) t(oid, name))
               AND con.confrelid IN (SELECT oid FROM ({_TENANT_TABLES}) t(oid, name))
               AND con.confrelid <> 'public.organizations'::regclass
               AND NOT EXISTS (SELECT 1 FROM unnest(con.conkey) k
                                JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k
                               WHERE a.attname = 'organization_id')
             ORDER BY 2, 1"""
    ).fetchall()
    return [Finding(f"foreign key {name} on {table}", f"references {ref} without organization_id, and key checks bypass RLS",
                    f"reference {ref} (organization_id, id) instead")
            for name, table, ref in rows]


def _definer_views(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    """A view runs with its owner's rights unless security_invoker is set: owned by a role that
    bypasses RLS and readable by the application, it shows every tenant."""
    rows = conn.execute(
        """SELECT c.oid::regclass::text, r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
            WHERE c.relkind = 'v' AND (r.rolsuper OR r.rolbypassrls)
              AND NOT COALESCE('security_invoker=true' = ANY(c.reloptions), false)
              AND has_table_privilege(%s, c.oid, 'SELECT')
              AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
            ORDER BY 1""",
        (app_role,),
    ).fetchall()
    return [Finding(f"view {view}", f"runs with the rights of {owner}, who bypasses RLS, and {app_role} can read it",
                    f"ALTER VIEW {view} SET (security_invoker = true)")
            for view, owner in rows]


def audit_tier_limits(conn: psycopg.Connection, app_role: str = APP_ROLE,
                      pgbouncer_ini: Path | None = None) -> list[Finding]:
    """The limits in force match the tiers: for one tenant of each tier, what tenant_session
    actually applies equals tier_limits; no role-level setting of ``app_role`` overrides
    them outside a tenant session; and, given ``pgbouncer_ini``, its tier pools have the sizes
    of tier_limits (``audit_pool_sizes``)."""
    findings = []
    tiers = conn.execute(
        """SELECT tl.tier, tl.work_mem, tl.statement_timeout,
                  (SELECT tc.organization_id FROM tenant_classifications tc WHERE tc.tier = tl.tier LIMIT 1)
             FROM tier_limits tl ORDER BY tl.tier"""
    ).fetchall()
    for tier, work_mem, timeout, tenant in tiers:
        if tenant is None:
            continue
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT fn_set_tenant_resources(fn_set_tenant_context(%s))", (tenant,))
            applied = conn.execute(
                "SELECT current_setting('work_mem'), current_setting('statement_timeout'),"
                " pg_size_bytes(current_setting('work_mem')) = pg_size_bytes(%s),"
                " current_setting('statement_timeout')::interval = %s::interval",
                (work_mem, timeout),
            ).fetchone()
        if not (applied[2] and applied[3]):
            findings.append(Finding(f"tier {tier}", f"tenant {tenant} gets work_mem {applied[0]}, statement_timeout "
                                    f"{applied[1]}; tier_limits says {work_mem}, {timeout}",
                                    "check fn_set_tenant_resources and tier_limits"))
    for setting in conn.execute(
        """SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
            WHERE r.rolname = %s""",
        (app_role,),
    ).fetchall():
        name = setting[0].split("=", 1)[0]
        if name in ("work_mem", "statement_timeout", "app.current_tenant"):
            findings.append(Finding(f"role {app_role}", f"has a role-level setting {setting[0]} that applies outside "
                                    "tenant sessions and differs by no tier",
                                    f"ALTER ROLE {app_role} RESET {name}"))
    if pgbouncer_ini is not None:
        findings += audit_pool_sizes(conn, pgbouncer_ini)
    return findings


_REGENERATE = ("run 'tenant-pipelines pgbouncer up' (or 'pgbouncer config' for your own PgBouncer) "
               "to regenerate it from tier_limits")


def audit_pool_sizes(conn: psycopg.Connection, pgbouncer_ini: Path | str) -> list[Finding]:
    """PgBouncer's tier pools match tier_limits.pool_size: every tier has its ``billing_<tier>``
    pool, of that size, and no such pool is for a tier tier_limits lacks. ``pgbouncer_ini`` is
    the file (a Path) or its text (a str). Other pools, such as plain ``billing``, are not checked."""
    if isinstance(pgbouncer_ini, Path):
        source, text = str(pgbouncer_ini), read_pgbouncer_ini(pgbouncer_ini)
    else:
        source, text = "the PgBouncer config", pgbouncer_ini
    configured = pgbouncer_tier_pool_sizes(text, source)
    findings = []
    reset = pgbouncer_session_reset(text, source)
    if reset is not None:
        findings.append(Finding(source, f"{reset}: what one client leaves in its session (SET without LOCAL, "
                                "temp tables, session advisory locks) reaches the next",
                                f"set server_reset_query = {SESSION_RESET_QUERY} (or {SERVER_RESET_QUERY}) and "
                                "server_reset_query_always = 1; "
                                + _REGENERATE))
    expected = tier_pool_sizes(conn)
    for tier, size in expected.items():
        try:
            alias = tier_alias(tier)
        except InvalidInput:
            findings.append(Finding(f"tier {tier!r}", "cannot have a PgBouncer pool: its name is not 1-40 lower-case "
                                    "letters, digits or '_'", "rename the tier in tier_limits"))
            continue
        if tier not in configured:
            findings.append(Finding(f"tier {tier}", f"has no pool {alias} in {source} "
                                    f"(tier_limits.pool_size is {size})", _REGENERATE))
        elif configured[tier] != size:
            findings.append(Finding(f"tier {tier}", f"pool {alias} has pool_size {configured[tier]} in {source}; "
                                    f"tier_limits.pool_size is {size}",
                                    f"{_REGENERATE}, or set tier_limits.pool_size of {tier} to {configured[tier]}"))
    for tier in sorted(set(configured) - set(expected)):
        findings.append(Finding(f"pool {tier_alias(tier)}", f"in {source} (pool_size {configured[tier]}) is for tier "
                                f"{tier}, which tier_limits does not have",
                                f"{_REGENERATE}, or add tier {tier} to tier_limits"))
    return findings
