"""Audits of the live catalog (and of PgBouncer's configuration) for ways tenant isolation, or
the tier limits, could have been weakened. Each finding names the object and the fix."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

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
from tenant_pipelines.core.placement import SCHEMA_TABLES, TENANT_TABLES
from tenant_pipelines.errors import InvalidInput
from tenant_pipelines.db.citus import citus_loaded
from tenant_pipelines.db.names import APP_ROLE, OWNER_ROLE

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
    schemas, schema_findings = _tenant_schemas(conn)
    findings += _tenant_tables(conn, app_role, schemas)
    findings += _policies(conn, schemas)
    findings += _partitions(conn, app_role, schemas)
    findings += schema_findings
    for schema in sorted(schemas):
        findings += _tenant_schema(conn, app_role, schema, schemas[schema])
    findings += _definer_functions(conn)
    findings += _foreign_keys(conn)
    findings += _definer_views(conn, app_role)
    findings += _large_objects(conn, app_role)
    from tenant_pipelines.core.citus import audit_citus  # on a Citus coordinator: the shards and the workers

    findings += audit_citus(conn)
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
    findings += _role_settings(conn, app_role)
    return findings


# The role-level settings the migrations give the application role (sql/0013).
EXPECTED_ROLE_SETTINGS = frozenset({"plan_cache_mode=force_custom_plan"})


def role_level_settings(conn: psycopg.Connection, app_role: str) -> list[tuple[str, str | None, str]]:
    """The role-level settings of ``app_role`` and of the login roles that are members of it, in
    any database: (role, database or None for every database, 'name=value'), ``app_role``'s first."""
    return conn.execute(
        """SELECT r.rolname, d.datname, cfg
             FROM pg_db_role_setting s
             JOIN pg_roles r ON r.oid = s.setrole
             LEFT JOIN pg_database d ON d.oid = s.setdatabase
             CROSS JOIN LATERAL unnest(s.setconfig) cfg
            WHERE r.rolname = %s OR (r.rolcanlogin AND NOT r.rolsuper AND pg_has_role(r.oid, %s, 'MEMBER'))
            ORDER BY r.rolname = %s DESC, 1, 2 NULLS FIRST, 3""",
        (app_role, app_role, app_role),
    ).fetchall()


def _role_settings(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    """Any role may ALTER ROLE itself SET a parameter it may SET, and PostgreSQL 15 cannot
    forbid it. A setting of ``app_role`` (or of a login role that is a member of it) starts
    every new server connection, and a pooler's reset (RESET ALL, DISCARD ALL) restores it
    rather than clearing it: one client's ``ALTER ROLE billing_app SET row_security = off``,
    ``default_transaction_read_only = on``, ``search_path = ...`` or ``plan_cache_mode = auto``
    reaches every later client of every pool. Anything but the migrations' own is reported,
    for this database or for all."""
    rows = [(name, database, setting) for name, database, setting in role_level_settings(conn, app_role)
            if database is None or database == conn.info.dbname]
    findings = []
    present = {setting for name, database, setting in rows if name == app_role and database is None}
    for missing in sorted(EXPECTED_ROLE_SETTINGS - present):  # a client may RESET it as easily as SET it
        parameter, value = missing.split("=", 1)
        findings.append(Finding(
            f"role {app_role}", f"lacks its role-level setting {missing} (sql/0013): without it cached generic plans "
            "lock every partition of a tenant table",
            f"ALTER ROLE {app_role} SET {parameter} = {value}"))
    for name, database, setting in rows:
        if name == app_role and database is None and setting in EXPECTED_ROLE_SETTINGS:
            continue
        parameter = setting.split("=", 1)[0]
        where = f" in database {database}" if database else ""
        findings.append(Finding(
            f"role {name}", f"has the role-level setting {setting}{where}: every new server connection starts with it "
            "and a pooler's reset restores it, so it reaches every later client of the pool",
            f"ALTER ROLE {name}{where.replace(' in database', ' IN DATABASE')} RESET {parameter}"))
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


# Every table with an organization_id (and organizations), outside the schemas ``%(skip)s``
# (the tenant schemas, which _tenant_schema audits table by table, months included).
_TENANT_TABLES = sql.SQL("""
    SELECT c.oid, c.oid::regclass::text
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenant_pipelines')
       AND n.nspname NOT LIKE 'pg\\_temp%%' AND n.nspname NOT LIKE 'pg\\_toast%%'
       AND n.nspname <> ALL(%(skip)s::text[])
       AND (c.oid = 'public.organizations'::regclass OR EXISTS (
            SELECT 1 FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped))
""")


def _tenant_tables(conn: psycopg.Connection, app_role: str, schemas: dict[str, set]) -> list[Finding]:
    findings = []
    rows = conn.execute(
        sql.SQL("""SELECT t.name, c.relrowsecurity, c.relforcerowsecurity,
                          EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid AND p.polpermissive),
                          pg_has_role(%(app)s, c.relowner, 'USAGE')
                     FROM ({}) t(oid, name) JOIN pg_class c ON c.oid = t.oid ORDER BY 1""").format(_TENANT_TABLES),
        {"app": app_role, "skip": sorted(schemas)},
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


def _policies(conn: psycopg.Connection, schemas: dict[str, set]) -> list[Finding]:
    """A permissive policy on a tenant table that does not scope rows to the tenant in context
    opens the table: permissive policies are OR-ed together."""
    rows = conn.execute(
        sql.SQL("""SELECT t.name, p.polname, p.polcmd,
                          COALESCE(pg_get_expr(p.polqual, p.polrelid), ''),
                          COALESCE(pg_get_expr(p.polwithcheck, p.polrelid), '')
                     FROM ({}) t(oid, name) JOIN pg_policy p ON p.polrelid = t.oid
                    WHERE p.polpermissive ORDER BY 1, 2""").format(_TENANT_TABLES),
        {"skip": sorted(schemas)},
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


def _partitions(conn: psycopg.Connection, app_role: str, schemas: dict[str, set]) -> list[Finding]:
    rows = conn.execute(
        sql.SQL("""SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relispartition AND n.nspname <> ALL(%(skip)s::text[])
                      AND (has_table_privilege(%(app)s, c.oid, 'SELECT') OR has_table_privilege(%(app)s, c.oid, 'INSERT')
                        OR has_table_privilege(%(app)s, c.oid, 'UPDATE') OR has_table_privilege(%(app)s, c.oid, 'DELETE'))
                    ORDER BY 1"""),
        {"app": app_role, "skip": sorted(schemas)},
    ).fetchall()
    return [Finding(f"partition {p}", f"{app_role} can access it directly", f"REVOKE ALL ON {p} FROM {app_role}, PUBLIC")
            for (p,) in rows]


# --------------------------------------------------------------------------------------------
# Tenant schemas (schema-per-tenant, sql/functions/fn_create_tenant_schema.sql).
# --------------------------------------------------------------------------------------------

TENANT_SCHEMA_PATTERN = "^tenant_[0-9a-f]{32}$"
# The tables of a tenant schema billing_app reads and writes (through the routed search_path);
# every other relation in the schema (the months of usage_events, its DEFAULT partition) it
# may not touch at all.
TENANT_SCHEMA_TABLES = tuple(SCHEMA_TABLES.values())
APP_TABLE_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def _tenant_schemas(conn: psycopg.Connection) -> tuple[dict[str, set], list[Finding]]:
    """The tenant schemas to audit, each with the tenants the registries give it (tenant_schemas
    and tenant_placements of kind 'schema'): every existing schema a registry lists, and every
    schema named like one (tenant_<32 hex>). Findings: a schema tenant whose schema is missing,
    a tenant schema in no registry, a schema registered to more than one tenant."""
    listed = conn.execute(sql.SQL(
        """SELECT s.schema_name, s.organization_id, 'tenant_schemas' FROM public.tenant_schemas s
           UNION ALL
           SELECT p.location, p.organization_id, 'tenant_placements' FROM public.tenant_placements p
            WHERE p.kind = 'schema'
           ORDER BY 1, 2, 3""")).fetchall()
    existing = {name for (name,) in conn.execute(
        sql.SQL("SELECT nspname FROM pg_namespace WHERE nspname ~ %s OR nspname = ANY(%s::text[])"),
        (TENANT_SCHEMA_PATTERN, [row[0] for row in listed]))}
    schemas: dict[str, set] = {name: set() for name in existing}
    findings = []
    for schema, tenant, registry in listed:
        if schema in existing:
            schemas[schema].add(tenant)
        elif registry == "tenant_placements":
            findings.append(Finding(f"schema tenant {tenant}", f"is placed in schema {schema}, which does not exist: "
                                    "its transactions are routed to no table of its own",
                                    f"recreate it (SELECT fn_create_tenant_schema('{tenant}')) and restore the "
                                    "tenant's rows into it, or record where the tenant really lives"))
    for schema in sorted(schemas):
        tenants = schemas[schema]
        if not tenants:
            findings.append(Finding(f"schema {schema}", "is named like a tenant schema but no registry "
                                    "(tenant_schemas, tenant_placements) lists it: nothing routes to it and nobody "
                                    "audits its contents", f"DROP SCHEMA {schema} CASCADE once its rows are accounted "
                                    "for, or register it for its tenant"))
        elif len(tenants) > 1:
            findings.append(Finding(f"schema {schema}", "is registered to more than one tenant: "
                                    + ", ".join(sorted(map(str, tenants))),
                                    "keep one tenant per schema in tenant_schemas and tenant_placements"))
    return schemas, findings


def _tenant_schema(conn: psycopg.Connection, app_role: str, schema: str, tenants: set) -> list[Finding]:
    """One tenant schema: owned by billing_owner, ``app_role`` has USAGE and not CREATE, PUBLIC
    nothing; every table and month has RLS enabled and forced, the tenant_isolation policy of
    the shared tables and no other permissive policy, the CHECK tenant_only_check for its tenant,
    owner billing_owner; ``app_role`` has exactly SELECT, INSERT, UPDATE, DELETE on the four
    tables and nothing on anything else; no function or view sits in it."""
    findings = []
    name = sql.Identifier(schema).as_string(conn)
    owner, usage, create, public = conn.execute(sql.SQL(
        """SELECT n.nspowner::regrole::text, has_schema_privilege(%(app)s, n.oid, 'USAGE'),
                  has_schema_privilege(%(app)s, n.oid, 'CREATE'),
                  EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0)
             FROM pg_namespace n WHERE n.nspname = %(schema)s"""), {"app": app_role, "schema": schema}).fetchone()
    if owner != OWNER_ROLE:
        findings.append(Finding(f"schema {schema}", f"is owned by {owner}, not {OWNER_ROLE}",
                                f"ALTER SCHEMA {name} OWNER TO {OWNER_ROLE}"))
    if create:
        findings.append(Finding(f"schema {schema}", f"{app_role} can CREATE in it: a table or function it creates "
                                "there comes first in the tenant's routed search_path",
                                f"REVOKE CREATE ON SCHEMA {name} FROM {app_role}, PUBLIC"))
    if not usage and tenants:
        findings.append(Finding(f"schema {schema}", f"{app_role} has no USAGE on it: the tenant's routed "
                                "transactions cannot reach its tables", f"GRANT USAGE ON SCHEMA {name} TO {app_role}"))
    if public:
        findings.append(Finding(f"schema {schema}", "grants privileges to PUBLIC",
                                f"REVOKE ALL ON SCHEMA {name} FROM PUBLIC"))
    tenant = next(iter(tenants)) if len(tenants) == 1 else None
    reference = conn.execute(sql.SQL(
        """SELECT pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
             FROM pg_policy p WHERE p.polrelid = 'public.invoices'::regclass AND p.polname = 'tenant_isolation'""")
    ).fetchone()
    rows = conn.execute(sql.SQL(
        """SELECT c.oid::regclass::text, c.relname, c.relispartition, c.relowner::regrole::text,
                  c.relrowsecurity, c.relforcerowsecurity,
                  (SELECT ARRAY[p.polcmd::text, p.polpermissive::text, p.polroles::text,
                                pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)]
                     FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'),
                  ARRAY(SELECT p.polname::text FROM pg_policy p
                         WHERE p.polrelid = c.oid AND p.polpermissive AND p.polname <> 'tenant_isolation' ORDER BY 1),
                  (SELECT pg_get_constraintdef(k.oid) FROM pg_constraint k
                    WHERE k.conrelid = c.oid AND k.contype = 'c' AND k.conname = 'tenant_only_check'),
                  ARRAY(SELECT priv FROM unnest(%(privileges)s::text[]) priv
                         WHERE has_table_privilege(%(app)s, c.oid, priv)),
                  has_any_column_privilege(%(app)s, c.oid, 'SELECT, INSERT, UPDATE, REFERENCES'),
                  EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0)
                  OR EXISTS (SELECT 1 FROM pg_attribute att, aclexplode(att.attacl) a
                              WHERE att.attrelid = c.oid AND a.grantee = 0)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
            ORDER BY c.relispartition, c.relname"""),
        {"app": app_role, "schema": schema, "privileges": list(TABLE_PRIVILEGES)}).fetchall()
    for (table, relname, is_month, table_owner, enabled, forced, policy, others, check, privileges,
         column_privileges, public) in rows:
        what = f"{'month' if is_month else 'table'} {table}"
        if not enabled:
            findings.append(Finding(what, "has row-level security disabled",
                                    f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"))
        if not forced:
            findings.append(Finding(what, "does not force row-level security on its owner",
                                    f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"))
        if policy is None:
            findings.append(Finding(what, "has no tenant_isolation policy",
                                    f"SELECT fn_protect_tenant_table('{table}')"))
        elif (policy[0], policy[1], policy[2]) != ("*", "true", "{0}") or reference is None \
                or (policy[3], policy[4]) != tuple(reference):
            findings.append(Finding(what, f"has a tenant_isolation policy (command {policy[0]}, roles {policy[2]}, "
                                    f"USING ({policy[3]}), WITH CHECK ({policy[4]})) that is not the shared tables' "
                                    f"(FOR ALL TO PUBLIC, USING and WITH CHECK {reference[0] if reference else '?'})",
                                    f"DROP POLICY tenant_isolation ON {table}; SELECT fn_protect_tenant_table('{table}')"))
        for other in others:
            findings.append(Finding(f"policy {other} on {table}", "is a permissive policy besides tenant_isolation "
                                    "in a tenant schema: permissive policies are OR-ed, it can only widen access",
                                    f"DROP POLICY {sql.Identifier(other).as_string(conn)} ON {table}"))
        expected = f"CHECK ((organization_id = '{tenant}'::uuid))" if tenant else None
        if check is None:
            findings.append(Finding(what, "has no CHECK tenant_only_check: another tenant's rows can be written "
                                    "into it by its owner, a superuser or a misrouted write",
                                    f"ALTER TABLE {table} ADD CONSTRAINT tenant_only_check CHECK "
                                    f"(organization_id = '{tenant or '<tenant>'}'::uuid)"))
        elif check != expected and (expected or check.endswith(" NOT VALID")):
            findings.append(Finding(what, f"has tenant_only_check {check}, not {expected or 'a validated one'}",
                                    f"replace it with {expected or 'the CHECK of its tenant'}, validated"))
        if table_owner != OWNER_ROLE:
            findings.append(Finding(what, f"is owned by {table_owner}, not {OWNER_ROLE}",
                                    f"ALTER TABLE {table} OWNER TO {OWNER_ROLE}"))
        allowed = APP_TABLE_PRIVILEGES if not is_month and relname in TENANT_SCHEMA_TABLES else frozenset()
        granted = set(privileges)
        if granted != allowed:
            extra, missing = sorted(granted - allowed), sorted(allowed - granted)
            problem = "; ".join(part for part in (
                f"{app_role} has {', '.join(extra)} on it" if extra else "",
                f"{app_role} lacks {', '.join(missing)}" if missing else "") if part)
            fix = "; ".join(part for part in (
                f"REVOKE {', '.join(extra)} ON {table} FROM {app_role}, PUBLIC" if extra else "",
                f"GRANT {', '.join(missing)} ON {table} TO {app_role}" if missing else "") if part)
            findings.append(Finding(what, f"{problem} (it may have exactly "
                                    f"{', '.join(sorted(allowed)) or 'nothing'})", fix))
        elif not allowed and column_privileges:
            findings.append(Finding(what, f"{app_role} has column privileges on it",
                                    f"REVOKE ALL ON {table} FROM {app_role}, PUBLIC"))
        if public:
            findings.append(Finding(what, "grants privileges to PUBLIC", f"REVOKE ALL ON {table} FROM PUBLIC"))
    for kind, obj in conn.execute(sql.SQL(
        """SELECT 'function', p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
           UNION ALL
           SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'foreign table' END,
                  c.oid::regclass::text FROM pg_class c
            WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
              AND c.relkind IN ('v', 'm', 'f')
           ORDER BY 1, 2"""), {"schema": schema}):
        findings.append(Finding(f"{kind} {obj}", f"sits in tenant schema {schema}: a routed transaction finds "
                                "its name before the shared schema's", f"move it out of {schema}, or drop it"))
    return findings


# --------------------------------------------------------------------------------------------
# Tables that hold tenant rows and that backups and moves do not carry.
# --------------------------------------------------------------------------------------------

# Tables of public with an organization_id that are the platform's records about a tenant, not
# the tenant's data: rebuilt or kept by the platform, so no backup or move carries them.
PLATFORM_RECORD_TABLES = frozenset({"tenant_schemas", "tenant_placements", "tenant_metrics_history"})
# The RESTRICTIVE policies by which a shared table refuses the rows of a tenant placed in a
# schema (sql/migrations/0023 and 0025; not on a Citus coordinator, which has no schema tenants).
SCHEMA_TENANT_WRITE_POLICIES = ("schema_tenants_insert_into_their_schema", "schema_tenants_update_in_their_schema",
                                "schema_tenants_placed_in_a_schema_insert", "schema_tenants_placed_in_a_schema_update")


def audit_tables_carried(conn: psycopg.Connection) -> list[Finding]:
    """Tables that hold a tenant's rows but that no backup, restore or move knows: a migration
    that created a tenant table (in public, or by a `-- tenant tables` migration in every tenant
    schema) without adding it to ``core/placement.py`` TENANT_TABLES (backups and restores) and
    SCHEMA_TABLES (tenant schemas, their migrations and moves) and ``fn_create_tenant_schema``
    (sql/README.md, 'a new table'). Such rows are missing from every backup, and a move out of
    a schema holding them is refused. One finding per table of public
    (and per shared table of SCHEMA_TABLES without the policies that refuse a schema tenant's
    rows), and one per table name across the tenant schemas that have it."""
    carried = sorted({name for name, _ in TENANT_TABLES} | PLATFORM_RECORD_TABLES | NOT_TENANT_TABLES)
    fix = ("add it to core/placement.py TENANT_TABLES and SCHEMA_TABLES and "
           "sql/functions/fn_create_tenant_schema.sql (sql/README.md, 'a new table'), or drop it")
    findings = [Finding(f"table public.{name}", "holds tenants' rows (it has an organization_id) that no backup, "
                        "restore or move carries", fix)
                for (name,) in conn.execute(
                    """SELECT c.relname FROM pg_class c
                        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
                          AND NOT c.relispartition AND c.relname <> ALL(%s::text[])
                          AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                                         AND a.attname = 'organization_id' AND NOT a.attisdropped)
                        ORDER BY 1""", (carried,))]
    for table, missing in ([] if citus_loaded(conn) else conn.execute(
            """SELECT t.name, array_agg(w.policy ORDER BY w.policy)
                 FROM unnest(%s::text[]) t(name), unnest(%s::text[]) w(policy)
                WHERE to_regclass('public.' || quote_ident(t.name)) IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polname = w.policy
                                     AND p.polrelid = to_regclass('public.' || quote_ident(t.name)))
                GROUP BY t.name ORDER BY 1""", (sorted(SCHEMA_TABLES), list(SCHEMA_TENANT_WRITE_POLICIES)))):
        findings.append(Finding(f"table public.{table}", f"lacks the policies {', '.join(missing)}: a schema tenant's "
                                "write by the qualified name lands in the shared table, outside its backups and moves",
                                "create them as sql/migrations/0023 and 0025 do for the other tables"))
    for name, schemas in conn.execute(
            """SELECT c.relname, array_agg(n.nspname::text ORDER BY n.nspname)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE (n.nspname ~ %s OR n.nspname IN (SELECT schema_name FROM public.tenant_schemas))
                  AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> ALL(%s::text[])
                GROUP BY c.relname ORDER BY 1""", (TENANT_SCHEMA_PATTERN, list(TENANT_SCHEMA_TABLES))):
        shown = ", ".join(schemas[:3]) + (f" and {len(schemas) - 3} more" if len(schemas) > 3 else "")
        findings.append(Finding(f"table {name} of {len(schemas)} tenant schema{'s' if len(schemas) > 1 else ''} "
                                f"({shown})", "holds the tenant's rows that no backup, restore or move carries "
                                "(a move out of such a schema is refused)", fix))
    return findings


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
        sql.SQL("""SELECT con.conname, con.conrelid::regclass::text, con.confrelid::regclass::text
                     FROM pg_constraint con
                    WHERE con.contype = 'f'
                      AND con.conrelid IN (SELECT oid FROM ({tables}) t(oid, name))
                      AND con.confrelid IN (SELECT oid FROM ({tables}) t(oid, name))
                      AND con.confrelid <> 'public.organizations'::regclass
                      AND NOT EXISTS (SELECT 1 FROM unnest(con.conkey) k
                                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k
                                      WHERE a.attname = 'organization_id')
                    ORDER BY 2, 1""").format(tables=_TENANT_TABLES),
        {"skip": []},
    ).fetchall()
    return [Finding(f"foreign key {name} on {table}", f"references {ref} without organization_id, and key checks bypass RLS",
                    f"reference {ref} (organization_id, id) instead")
            for name, table, ref in rows]


LARGE_OBJECT_CREATORS = ("lo_create(oid)", "lo_creat(integer)", "lo_from_bytea(oid, bytea)")


def _large_objects(conn: psycopg.Connection, app_role: str) -> list[Finding]:
    """Large objects have no row-level security: one that ``app_role`` owns (or may read) is
    every tenant's to read through a pooled connection (sql/0026 takes their creation back)."""
    findings = []
    creators = [f for f in LARGE_OBJECT_CREATORS
                if conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (app_role, f"pg_catalog.{f}")
                                ).fetchone()[0]]
    if creators:
        findings.append(Finding(
            f"role {app_role}", f"can create large objects ({', '.join(creators)}), which no policy protects: "
            "one tenant's large object is every tenant's to read",
            f"REVOKE EXECUTE ON FUNCTION {', '.join(creators)} FROM PUBLIC (as a superuser; "
            "'tenant-pipelines db migrate' does it when run as one)"))
    readable = conn.execute(
        """SELECT count(*) FROM pg_largeobject_metadata m
            WHERE pg_has_role(%s, m.lomowner, 'USAGE')
               OR EXISTS (SELECT FROM aclexplode(m.lomacl) a
                           WHERE a.privilege_type = 'SELECT'
                             AND (a.grantee = 0 OR pg_has_role(%s, a.grantee, 'USAGE')))""",
        (app_role, app_role)).fetchone()[0]
    if readable:
        findings.append(Finding(f"large objects ({readable})", f"{app_role} can read them, whichever tenant wrote them",
                                "move their content into a tenant table and lo_unlink them"))
    return findings


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
    # One tenant of each tier: a join, not a correlated subquery (Citus refuses one over a
    # reference table, tier_limits there).
    tiers = conn.execute(
        """SELECT tl.tier, tl.work_mem, tl.statement_timeout, one.organization_id
             FROM tier_limits tl
             LEFT JOIN (SELECT DISTINCT ON (tc.tier) tc.tier, tc.organization_id
                          FROM tenant_classifications tc ORDER BY tc.tier, tc.organization_id) one ON one.tier = tl.tier
            ORDER BY tl.tier"""
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
    for role, _, setting in role_level_settings(conn, app_role):
        name = setting.split("=", 1)[0]
        if role == app_role and name in ("work_mem", "statement_timeout", "app.current_tenant"):
            findings.append(Finding(f"role {app_role}", f"has a role-level setting {setting} that applies outside "
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
