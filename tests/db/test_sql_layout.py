"""sql/ in two parts (issue 16): numbered migrations, applied once, and one file per function or
view, applied after the migration it names and again whenever it changes.

A database migrated by main before the split (tests/fixtures/sql_legacy/) upgrades in place:
every row and object kept, every function and view as in sql/functions/."""

from __future__ import annotations

import re
import shutil
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.db.migrate import (
    BOOKKEEPING_SCHEMA, LEGACY_CHECKSUMS, SQL_DIR, applied_functions, applied_migrations, load_functions,
    load_migrations, migrate)
from tenant_pipelines.errors import MigrationError
from tests.db.legacy import LEGACY_DIR, legacy_sql_dir

_BOOKKEEPING = ("schema_migrations", "schema_functions")
_DEFINES = re.compile(r"^[ \t]*CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE|VIEW|MATERIALIZED\s+VIEW)\s+"
                      r"(?:public\.)?\"?(\w+)", re.IGNORECASE | re.MULTILINE)


# -- what the database holds -------------------------------------------------------------------

def fingerprints(conn: psycopg.Connection, columns: dict[str, list[str]] | None = None) -> dict[str, tuple[int, str]]:
    """Every table's row count and a hash of its rows (public and the work schema; partitions
    and parents alike), but the runner's bookkeeping. With ``columns`` (table -> names, from
    ``table_columns`` before an upgrade), only those columns are hashed: a column a migration
    adds is not a changed row."""
    tables = conn.execute(
        """SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ('public', %s) AND c.relkind IN ('r', 'p') AND NOT c.relname = ANY(%s)
            ORDER BY 1""", (BOOKKEEPING_SCHEMA, list(_BOOKKEEPING))).fetchall()
    result = {}
    for (table,) in tables:
        row = (sql.SQL("t") if columns is None or table not in columns else
               sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier("t", c) for c in columns[table])))
        result[table] = tuple(conn.execute(sql.SQL(
            "SELECT count(*), md5(COALESCE(string_agg(({})::text, ',' ORDER BY ({})::text), '')) FROM {} t")
            .format(row, row, sql.SQL(table))).fetchone())
    return result


def table_columns(conn: psycopg.Connection) -> dict[str, list[str]]:
    rows = conn.execute(
        """SELECT format('%I.%I', n.nspname, c.relname), array_agg(a.attname::text ORDER BY a.attnum)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE n.nspname IN ('public', 'tenant_pipelines') AND c.relkind IN ('r', 'p')
            GROUP BY 1""").fetchall()
    return dict(rows)


def objects(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Relations (kind, tablespace, bound, RLS, owner, ACL), constraints, indexes, policies,
    triggers: what must survive an upgrade as it was."""
    schemas = ("public", BOOKKEEPING_SCHEMA)
    return {
        "relations": conn.execute(
            """SELECT n.nspname, c.relname, c.relkind, c.reltablespace, COALESCE(pg_get_expr(c.relpartbound, c.oid), ''),
                      c.relrowsecurity, c.relforcerowsecurity, c.relowner::regrole::text, c.relacl::text,
                      c.reloptions::text
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = ANY(%s) AND c.relname NOT LIKE 'schema_functions%%' ORDER BY 1, 2""",
            (list(schemas),)).fetchall(),
        "constraints": conn.execute(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid), convalidated
                 FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                WHERE n.nspname = ANY(%s) AND conrelid::regclass::text NOT LIKE '%%schema_functions%%'
                ORDER BY 1, 2""", (list(schemas),)).fetchall(),
        "indexes": conn.execute(
            """SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
                WHERE schemaname = ANY(%s) AND tablename <> 'schema_functions' ORDER BY 1, 2, 3""",
            (list(schemas),)).fetchall(),
        "policies": conn.execute(
            "SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check"
            " FROM pg_policies ORDER BY 1, 2, 3").fetchall(),
        "triggers": conn.execute(
            "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE NOT tgisinternal ORDER BY 1, 2").fetchall(),
        "schemas": conn.execute(
            "SELECT nspname, nspowner::regrole::text, nspacl::text FROM pg_namespace"
            " WHERE nspname = ANY(%s) ORDER BY 1", (list(schemas),)).fetchall(),
    }


def definitions(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """Every function and view in public as the catalog prints it, with owner and ACL."""
    return {
        "functions": conn.execute(
            """SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proowner::regrole::text, p.proacl::text
                 FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""").fetchall(),
        "views": conn.execute(
            """SELECT c.relname, pg_get_viewdef(c.oid), c.relowner::regrole::text, c.relacl::text, c.reloptions::text
                 FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
                ORDER BY 1""").fetchall(),
    }


def bookkeeping(conn: psycopg.Connection) -> tuple[dict, dict]:
    return applied_migrations(conn), applied_functions(conn)


# -- a database with rows everywhere ----------------------------------------------------------

def fill(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    """Tenants of each kind with rows in every tenant table: pooled ones, an enterprise tenant
    promoted to a dedicated partition split by month, one with a schema of its own, metrics
    history, backup config, and a tiering policy of its own."""
    tenants = {tier: uuid.uuid4() for tier in ("free", "starter", "growth", "enterprise")}
    for tier, tenant in tenants.items():
        with conn.transaction():
            conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, f"{tier} org"))
            conn.execute("INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit)"
                         " VALUES (%s, %s, %s)", (tenant, tier, 1000))
            subscription = conn.execute(
                "INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, %s, 'active') RETURNING id",
                (tenant, tier)).fetchone()[0]
            conn.execute("INSERT INTO invoices (organization_id, subscription_id, amount, status)"
                         " VALUES (%s, %s, %s, 'paid')", (tenant, subscription, Decimal("12.345678")))
            conn.execute("INSERT INTO payment_methods (organization_id, kind, last4, is_default)"
                         " VALUES (%s, 'card', '4242', true)", (tenant,))
            conn.execute("INSERT INTO tenant_backup_config (organization_id, last_backup_at)"
                         " VALUES (%s, now() - interval '2 days')", (tenant,))
            conn.execute("INSERT INTO tenant_metrics_history (day, organization_id, tier, active_subscriptions,"
                         " events_last_24h, events_this_month, storage_bytes)"
                         " VALUES (current_date - 1, %s, %s, 1, 5, 50, 8192)", (tenant, tier))
            conn.execute(
                'INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)'
                " SELECT %s, 'api_calls', d * 1.5, now() - make_interval(days => d), jsonb_build_object('d', d)"
                " FROM generate_series(0, 119) d", (tenant,))
    conn.execute("CREATE SCHEMA tenant_enterprise_space")
    conn.execute("INSERT INTO tenant_schemas (organization_id, schema_name) VALUES (%s, 'tenant_enterprise_space')",
                 (tenants["enterprise"],))
    conn.execute("INSERT INTO tiering_policy (tenant_tier, warm_after, cold_after) VALUES ('enterprise', '60 days', '1 year')")
    conn.execute("UPDATE partition_config SET premake_months = 2")
    report = ensure_tenant_partition(conn, tenants["enterprise"])  # the old functions do it
    assert report.layout == "monthly" and report.rows_moved == 120
    ensure_tenant_partition(conn, tenants["free"])  # pooled: nothing to do
    attached = conn.execute(  # the catalog: a legacy database has no placement registry
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'public.usage_events_mt'::regclass AND c.relname <> 'usage_events_mt_default'").fetchall()
    assert attached == [("usage_events_mt_t_" + tenants["enterprise"].hex,)]
    return tenants


# Created by migrations after the split (not in the legacy fixture): new, so not compared.
# What migrations after the legacy layout add: relations, and constraints on older tables.
NEW_TABLES = ("tenant_placements", "tenant_tables_version", "tenant_moves", "tenant_move_log", "tenant_schemas_name_check",
              "tenant_schemas_migrated_to_check", "tier_limits_placement_check",
              "tenant_classifications_placement_override_check", "pace_probes",
              "schema_tenants_insert_into_their_schema", "schema_tenants_update_in_their_schema",
              "schema_tenants_placed_in_a_schema_insert", "schema_tenants_placed_in_a_schema_update")


def without_new(found: dict) -> dict:
    return {kind: [row for row in rows if not any(t in str(row) for t in NEW_TABLES)] if isinstance(rows, list) else rows
            for kind, rows in found.items()}


# -- the upgrade --------------------------------------------------------------------------------

def test_database_migrated_before_the_split_upgrades_in_place(empty_dsn: str, admin_dsn: str, tmp_path: Path) -> None:
    legacy = legacy_sql_dir(tmp_path / "legacy")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, legacy)
        tenants = fill(conn)
        rows_before, objects_before, columns_before = fingerprints(conn), objects(conn), table_columns(conn)
        assert rows_before["public.usage_events_mt"][0] == 4 * 120
        assert all(count > 0 for table, (count, _) in rows_before.items()
                   if table.startswith("public.") and "_pool_" not in table and "_p2" not in table
                   and not table.endswith("_rest")), rows_before

        messages: list[str] = []
        report = migrate(conn, log=messages.append)

        legacy_versions = {path.name[:4] for path in LEGACY_DIR.glob("[0-9]*.sql.legacy")}
        new = [m.filename for m in load_migrations() if m.version not in legacy_versions]
        assert new[:3] == ["0018_create_tenant_placements.sql", "0019_pool_exclusion_one_function.sql",
                           "0020_schema_per_tenant.sql"]
        assert new[3:] == [m.filename for m in load_migrations() if m.version > "0020"]  # later ones, in order
        assert report.applied == new and len(report.already_applied) == len(legacy_versions)
        assert sorted(report.rebaselined) == sorted(
            m.filename for m in load_migrations() if m.version in LEGACY_CHECKSUMS)
        assert [m for m in messages if "re-baselined" in m and "split layout" in m] == [messages[0]]
        assert sum("re-baselined" in m for m in messages) == 1
        assert sorted(report.functions_applied) == sorted(f.filename for f in load_functions())
        after = fingerprints(conn, columns_before)
        assert {t: after[t] for t in rows_before} == rows_before, "no row lost, changed or doubled"

        assert without_new(objects(conn)) == objects_before, "every relation, constraint, index, policy and trigger kept"
        # The placement registry starts from the catalog: the promoted tenant's partition, the pool for the rest.
        assert dict(conn.execute("SELECT organization_id, kind FROM tenant_placements").fetchall()) == {
            t: ("partition" if tier == "enterprise" else "pooled") for tier, t in tenants.items()}
        upgraded = definitions(conn), bookkeeping(conn)

        # It still works: the promoted tenant's rows are where they were, a pooled one is promoted.
        assert ensure_tenant_partition(conn, tenants["enterprise"]).attached_now is False
        conn.execute("UPDATE tenant_classifications SET tier = 'growth' WHERE organization_id = %s", (tenants["starter"],))
        assert ensure_tenant_partition(conn, tenants["starter"]).rows_moved == 120

        again: list[str] = []
        second = migrate(conn, log=again.append)
        assert second.applied == [] and second.functions_applied == [] and second.rebaselined == []
        assert not any("re-baselined" in m for m in again)

    with psycopg.connect(admin_dsn, autocommit=True) as fresh:  # migrated with today's sql/ alone
        assert upgraded == (definitions(fresh), bookkeeping(fresh)), \
            "functions, views and bookkeeping as a fresh database migrated with sql/ has them"
        assert without_new(objects(fresh))["policies"] == objects_before["policies"]


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    """A copy of this checkout's sql/ to edit."""
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    return tmp_path / "sql"


def edit_function_file(sql_dir: Path, name: str, *replacements: tuple[str, str]) -> None:
    """Edit sql_dir/functions/<name>: each (old, new) replaced in turn."""
    path = sql_dir / "functions" / name
    text = path.read_text()
    for old, new in replacements:
        text = text.replace(old, new)
    path.write_text(text)


def test_legacy_migration_edited_after_the_split_is_still_refused(empty_dsn: str, tmp_path: Path, sql_dir: Path) -> None:
    edited = next((sql_dir / "migrations").glob("0016_*.sql"))
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, legacy_sql_dir(tmp_path / "legacy"))
        before = bookkeeping(conn)
        with pytest.raises(MigrationError) as info:
            migrate(conn, sql_dir)
        assert bookkeeping(conn) == before, "nothing re-baselined, nothing applied"
    message = str(info.value)
    assert "sql/migrations/0016_" in message and "edited after it was applied" in message and "\n" not in message


def test_legacy_checksums_are_the_fixture_and_the_files() -> None:
    """The pairs the runner accepts: the fixture's text before, sql/migrations/' text after."""
    import hashlib
    digest = lambda path: hashlib.sha256(path.read_text().encode()).hexdigest()  # noqa: E731
    before = {p.name[:4]: digest(p) for p in LEGACY_DIR.glob("*.sql.legacy")}
    after = {m.version: m.checksum for m in load_migrations()}
    assert set(before) <= set(after), "every legacy migration is still in sql/migrations/"
    assert all(v > max(before) for v in set(after) - set(before)), "new migrations come after the legacy ones"
    assert LEGACY_CHECKSUMS == {v: (before[v], after[v]) for v in before if before[v] != after[v]}


# -- one home per function ----------------------------------------------------------------------

def test_no_function_or_view_is_defined_in_more_than_one_file() -> None:
    homes: dict[str, list[str]] = {}
    for path in sorted(SQL_DIR.rglob("*.sql")):
        if path.is_relative_to(SQL_DIR / "citus"):
            continue  # Citus's own versions: tests/citus/test_citus_layout.py
        for name in _DEFINES.findall(path.read_text()):
            homes.setdefault(name.lower(), []).append(str(path.relative_to(SQL_DIR)))
    assert {n: h for n, h in homes.items() if len(h) > 1} == {}
    assert {n: h for n, h in homes.items() if h != [f"functions/{n}.sql"]} == {}, \
        "every function and view is in sql/functions/<its name>.sql, and no migration creates one"
    assert sorted(homes) == sorted(f.name for f in load_functions())


def test_every_function_and_view_of_the_database_has_its_file(admin_conn: psycopg.Connection) -> None:
    functions = {f.name: f.kind for f in load_functions()}
    in_db = admin_conn.execute(
        """SELECT proname, 'function' FROM pg_proc WHERE pronamespace = 'public'::regnamespace
           UNION ALL SELECT relname, 'view' FROM pg_class
            WHERE relnamespace = 'public'::regnamespace AND relkind IN ('v', 'm')""").fetchall()
    assert dict(in_db) == functions
    assert len(in_db) == len(functions), "one function per name: no overloads hiding in a file"


# -- function files applied as they change --------------------------------------------------------

def test_edited_function_file_is_reapplied(empty_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        edit_function_file(sql_dir, "fn_leaf_count.sql", ("WHERE isleaf $$", "WHERE isleaf /* edited */ $$"))
        messages: list[str] = []
        report = migrate(conn, sql_dir, log=messages.append)
        assert report.applied == [] and report.functions_applied == ["fn_leaf_count.sql"]
        assert messages[0] == "re-applying sql/functions/fn_leaf_count.sql: it changed since it was applied"
        assert "/* edited */" in conn.execute("SELECT pg_get_functiondef('fn_leaf_count'::regproc)").fetchone()[0]
        assert conn.execute("SELECT proowner::regrole::text, proacl::text FROM pg_proc WHERE proname = 'fn_leaf_count'"
                            ).fetchone() == ("billing_owner", "{billing_owner=X/billing_owner}")
        assert applied_functions(conn)["fn_leaf_count"] == next(
            f.checksum for f in load_functions(sql_dir) if f.name == "fn_leaf_count")
        assert migrate(conn, sql_dir).functions_applied == []


def test_privileges_are_what_the_header_grants(empty_dsn: str, sql_dir: Path) -> None:
    """The runner owns privileges: a grant made by hand, or one a header stops naming, is gone
    once the file is applied."""
    def acl(conn: psycopg.Connection) -> str:
        return conn.execute("SELECT proacl::text FROM pg_proc WHERE proname = 'fn_leaf_count'").fetchone()[0]

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        conn.execute("GRANT EXECUTE ON FUNCTION fn_leaf_count() TO billing_app")
        edit_function_file(sql_dir, "fn_leaf_count.sql", ("-- after: 0001\n", "-- after: 0001\n-- grant: EXECUTE TO PUBLIC\n"))
        migrate(conn, sql_dir)
        assert acl(conn) == "{billing_owner=X/billing_owner,=X/billing_owner}"
        edit_function_file(sql_dir, "fn_leaf_count.sql", ("-- grant: EXECUTE TO PUBLIC\n", ""))
        migrate(conn, sql_dir)
        assert acl(conn) == "{billing_owner=X/billing_owner}"
        assert not conn.execute("SELECT has_function_privilege('billing_app', 'fn_leaf_count()', 'EXECUTE')").fetchone()[0]


def test_interrupted_run_leaves_each_file_applied_and_recorded_or_neither(
        empty_dsn: str, admin_dsn: str, sql_dir: Path) -> None:
    broken = sql_dir / "functions" / "vw_tenant_metrics.sql"
    good = broken.read_text()
    broken.write_text(good + "SELECT 1/0;\n")
    after = next(f.after for f in load_functions() if f.name == "vw_tenant_metrics")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(MigrationError) as info:
            migrate(conn, sql_dir)
        assert str(info.value) == "sql/functions/vw_tenant_metrics.sql failed: division by zero"
        migrations, functions = bookkeeping(conn)
        assert sorted(migrations) == [m.version for m in load_migrations() if m.version <= after]
        existing = {name for (name,) in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            " UNION ALL SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'v'")}
        assert set(functions) == existing, "a function or view exists exactly when its file is recorded"
        assert "vw_tenant_metrics" not in existing
        assert conn.execute("SELECT to_regclass('tenant_metrics_history') IS NULL").fetchone()[0], \
            "no migration after it ran"

        broken.write_text(good)
        report = migrate(conn, sql_dir)
        assert report.functions_applied[0] == "vw_tenant_metrics.sql"
        finished = definitions(conn), bookkeeping(conn)
    with psycopg.connect(admin_dsn, autocommit=True) as fresh:
        assert finished == (definitions(fresh), bookkeeping(fresh))


def test_fresh_database_gets_each_function_file_after_its_migration(empty_dsn: str) -> None:
    messages: list[str] = []
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        report = migrate(conn, log=messages.append)
    applied = [m.split(" ", 1)[1] for m in messages if m.startswith("applying ")]
    files = {f"sql/functions/{f.filename}": f.after for f in load_functions()}
    versions = {f"sql/migrations/{m.filename}": m.version for m in load_migrations()}
    reached = "0000"
    for label in applied:
        if label in versions:
            reached = versions[label]
        else:
            assert files[label] <= reached, f"{label} before its migration"
            nxt = [v for v in versions.values() if v > reached]
            assert not nxt or files[label] < nxt[0], f"{label} later than right after its migration"
    assert len(report.functions_applied) == len(files) and report.rebaselined == []


# -- refusals -----------------------------------------------------------------------------------

def _layout(tmp_path: Path, functions: dict[str, str]) -> Path:
    sql_dir = tmp_path / "sql"
    (sql_dir / "migrations").mkdir(parents=True)
    (sql_dir / "functions").mkdir()
    (sql_dir / "migrations" / "0001_create_roles.sql").write_text("SELECT 1;")
    for name, text in functions.items():
        (sql_dir / "functions" / name).write_text(text)
    return sql_dir


@pytest.mark.parametrize("name, text, expected", [
    ("fn_a.sql", "CREATE OR REPLACE FUNCTION fn_a() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
     "its first line must be `-- after: NNNN`"),
    ("fn_a.sql", "-- after: 0002\nCREATE OR REPLACE FUNCTION fn_a() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
     "`-- after: 0002` names no migration"),
    ("fn_a.sql", "-- after: 0001\nCREATE FUNCTION fn_a() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;",
     "write CREATE OR REPLACE FUNCTION"),
    ("fn_a.sql", "-- after: 0001\nCREATE OR REPLACE FUNCTION fn_a() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
                 "CREATE OR REPLACE VIEW v_b AS SELECT 1;", "creates v_b as well as fn_a"),
    ("fn_a.sql", "-- after: 0001\nSELECT 1;", "creates no function or view"),
    ("fn_a.sql", "-- after: 0001\n-- grant: ALL TO billing_app\nCREATE OR REPLACE FUNCTION fn_a() RETURNS int "
                 "LANGUAGE sql AS $$ SELECT 1 $$;", "is not a grant this runner makes"),
    ("v_a.sql", "-- after: 0001\n-- grant: EXECUTE TO billing_app\nCREATE OR REPLACE VIEW v_a AS SELECT 1;",
     "`-- grant: DELETE, INSERT, SELECT, UPDATE TO <role>`"),
    ("fn_a.sql", "-- after: 0001\n-- grant: EXECUTE TO \"Billing App\"\nCREATE OR REPLACE FUNCTION fn_a() "
                 "RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;", "is not a grant this runner makes"),
    ("Fn-A.sql", "-- after: 0001\n", "rename it"),
])
def test_malformed_function_file_is_refused(tmp_path: Path, name: str, text: str, expected: str) -> None:
    sql_dir = _layout(tmp_path, {name: text})
    with pytest.raises(MigrationError) as info:
        load_functions(sql_dir, {"0001"})
    assert expected in str(info.value) and f"sql/functions/{name}" in str(info.value)
    assert "\n" not in str(info.value)


def test_migration_outside_migrations_folder_is_refused(tmp_path: Path) -> None:
    sql_dir = _layout(tmp_path, {})
    (sql_dir / "0002_create_more.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"sql/0002_create_more.sql: migrations go in sql/migrations/"):
        load_migrations(sql_dir)


def test_changed_result_type_says_what_to_do(empty_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        edit_function_file(sql_dir, "fn_leaf_count.sql", ("RETURNS integer", "RETURNS bigint"), ("::int", "::bigint"))
        with pytest.raises(MigrationError) as info:
            migrate(conn, sql_dir)
    assert str(info.value).startswith("sql/functions/fn_leaf_count.sql failed: cannot change return type")
    assert "drop it in a new migration" in str(info.value)
