"""db migrate on a Citus coordinator (issue 19): the single-node migrations, then sql/citus/.

Tenant tables distributed on the tenant column and colocated, configuration as reference
tables, usage events partitioned by month with Citus's time partitions, the foreign keys kept,
row-level security and its policy on every shard, the context functions on every node. Re-runs
change nothing; an edited Citus migration is refused."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.db.citus import load_citus_functions, load_citus_migrations
from tenant_pipelines.db.migrate import SQL_DIR, load_functions, migrate
from tenant_pipelines.errors import MigrationError
from tests.citus.conftest import SHARD_COUNT, CitusTarget

TENANT_TABLES = {  # table -> its tenant column
    "organizations": "id", "subscriptions": "organization_id", "invoices": "organization_id",
    "payment_methods": "organization_id", "usage_events_mt": "organization_id",
    "tenant_classifications": "organization_id", "tenant_schemas": "organization_id",
    "tenant_backup_config": "organization_id", "tenant_metrics_history": "organization_id",
    "tenant_placements": "organization_id",
}
REFERENCE_TABLES = {"tier_limits", "tiering_policy", "storage_tiers", "partition_config", "tenant_tables_version"}
# Every foreign key of the single-node schema (sql/migrations/), by name, kept on Citus.
FOREIGN_KEYS = {
    ("subscriptions", "subscriptions_organization_id_fkey"), ("invoices", "invoices_organization_id_fkey"),
    ("invoices", "invoices_organization_subscription_fkey"), ("payment_methods", "payment_methods_organization_id_fkey"),
    ("tenant_classifications", "tenant_classifications_organization_id_fkey"),
    ("tenant_classifications", "tenant_classifications_tier_fkey"),
    ("tenant_schemas", "tenant_schemas_organization_id_fkey"),
    ("tenant_backup_config", "tenant_backup_config_organization_id_fkey"),
    ("tenant_metrics_history", "tenant_metrics_history_organization_id_fkey"),
    ("tiering_policy", "tiering_policy_tenant_tier_fkey"),
}


def test_tenant_tables_are_distributed_and_colocated_config_tables_are_reference_tables(
        citus_admin: psycopg.Connection) -> None:
    rows = citus_admin.execute(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id, shard_count FROM citus_tables"
        " WHERE table_name::text !~ '^usage_events_mt_(p[0-9]{4}_|outside$)'").fetchall()
    distributed = {name: (column, colocation, shards) for name, kind, column, colocation, shards in rows
                   if kind == "distributed"}
    assert {name: column for name, (column, _, _) in distributed.items()} == TENANT_TABLES
    assert len({colocation for _, colocation, _ in distributed.values()}) == 1, "one colocation group"
    assert len({shards for _, _, shards in distributed.values()}) == 1  # SHARD_COUNT, more once a tenant is isolated
    assert {name for name, kind, *_ in rows if kind == "reference"} == REFERENCE_TABLES
    assert {name for name, kind, *_ in rows if kind not in ("distributed", "reference")} == set()


def test_usage_events_are_partitioned_by_month_with_citus_time_partitions(citus_admin: psycopg.Connection) -> None:
    strategy = citus_admin.execute(
        "SELECT p.partstrat, a.attname FROM pg_partitioned_table p JOIN pg_attribute a"
        " ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
        " WHERE p.partrelid = 'usage_events_mt'::regclass").fetchone()
    assert strategy == ("r", "timestamp")
    months = citus_admin.execute(
        "SELECT partition::text, from_value::timestamptz, to_value::timestamptz FROM time_partitions"
        " WHERE parent_table = 'usage_events_mt'::regclass AND from_value IS NOT NULL"
        " ORDER BY from_value::timestamptz").fetchall()
    premake = citus_admin.execute("SELECT premake_months FROM partition_config").fetchone()[0]
    now = datetime.now(timezone.utc)
    this_month = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    assert months[0][1] <= this_month and len([m for m in months if m[1] > this_month]) >= premake
    for name, start, end in months:
        assert re.fullmatch(r"usage_events_mt_p\d{4}_\d{2}", name)
        assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1
    # Rows outside the months are kept, in the DEFAULT partition (sql/citus/migrations/0002).
    assert citus_admin.execute(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_events_mt'::regclass AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"
    ).fetchall() == [("usage_events_mt_outside",)]
    # Each month, and the DEFAULT, is reached through the parent only, like every partition on a single node.
    secured = citus_admin.execute(
        "SELECT c.relname::text, c.relowner::regrole::text, c.relrowsecurity, c.relforcerowsecurity,"
        "       has_table_privilege('billing_app', c.oid, 'SELECT, INSERT, UPDATE, DELETE')"
        "  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_events_mt'::regclass").fetchall()
    assert secured and all(row[1:] == ("billing_owner", True, True, False) for row in secured), secured


def test_foreign_keys_of_the_single_node_schema_are_kept(citus_admin: psycopg.Connection) -> None:
    keys = set(citus_admin.execute(
        "SELECT conrelid::regclass::text, conname::text FROM pg_constraint"
        " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        "   AND conrelid IN (SELECT logicalrelid FROM pg_dist_partition)"  # not the coordinator's reference shards
        "   AND NOT conrelid::regclass::text ~ '^usage_events_mt_p'").fetchall())
    assert keys == FOREIGN_KEYS
    # Unique keys of distributed tables hold the tenant column.
    pkeys = dict(citus_admin.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype = 'p' AND conrelid = ANY(%s::regclass[])",
        (["subscriptions", "invoices", "payment_methods"],)).fetchall())
    assert set(pkeys.values()) == {"PRIMARY KEY (organization_id, id)"}


@pytest.mark.parametrize("table", sorted(TENANT_TABLES), ids=str)
def test_every_shard_has_rls_forced_and_the_tenant_policy(citus_admin: psycopg.Connection, table: str) -> None:
    results = citus_admin.execute(
        "SELECT shardid, success, result FROM run_command_on_shards(%s, $cmd$"
        " SELECT c.relrowsecurity AND c.relforcerowsecurity AND (SELECT count(*) FROM pg_policy p"
        "   WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'"
        "     AND strpos(pg_get_expr(p.polqual, p.polrelid), 'fn_current_tenant_id()') > 0"
        "     AND strpos(pg_get_expr(p.polwithcheck, p.polrelid), 'fn_current_tenant_id()') > 0) = 1"
        "   FROM pg_class c WHERE c.oid = '%%s'::regclass $cmd$)", (table,)).fetchall()
    assert len(results) == citus_admin.execute("SELECT shard_count FROM citus_tables WHERE table_name = %s::regclass",
                                               (table,)).fetchone()[0] >= SHARD_COUNT
    assert all(success and result == "t" for _, success, result in results), results


def test_every_node_has_the_citus_context_functions(citus_admin: psycopg.Connection) -> None:
    for function in ("fn_current_tenant_id", "fn_set_tenant_context"):
        here = citus_admin.execute("SELECT md5(pg_get_functiondef(%s::regproc))", (function,)).fetchone()[0]
        assert "pg_dist_local_group" in citus_admin.execute(
            "SELECT pg_get_functiondef('fn_current_tenant_id'::regproc)").fetchone()[0]
        on_workers = citus_admin.execute(
            "SELECT success, result FROM run_command_on_workers(%s)",
            (f"SELECT md5(pg_get_functiondef('{function}'::regproc))",)).fetchall()
        assert on_workers == [(True, here)] * 2


def test_migrate_again_changes_nothing(citus: CitusTarget) -> None:
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        report = migrate(conn)
    assert (report.applied, report.functions_applied) == ([], [])
    assert report.citus is not None
    assert (report.citus.applied, report.citus.functions_applied) == ([], [])
    assert report.citus.already_applied == [m.filename for m in load_citus_migrations(SQL_DIR)]


def test_an_edited_citus_migration_is_refused(citus: CitusTarget, tmp_path: Path) -> None:
    copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, copy)
    path = next((copy / "citus" / "migrations").glob("0001_*.sql"))
    path.write_text(path.read_text() + "\n-- edited\n")
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        with pytest.raises(MigrationError, match=r"sql/citus/migrations/0001_distribute_tenant_tables\.sql was "
                                                 r"edited after it was applied .* in a new migration of sql/citus/"):
            migrate(conn, copy)


def test_citus_function_files_are_one_function_each() -> None:
    functions = load_citus_functions(SQL_DIR)
    main = {f.name for f in load_functions()}
    assert {f.name for f in functions} == {"fn_current_tenant_id", "fn_set_tenant_context", "fn_citus_premake_months",
                                           "fn_tenant_routed_to_schema", "fn_tenant_usage_stats",
                                           "fn_usage_events_view_insert"}
    # The Citus versions of single-node functions keep their grants.
    grants = {f.name: f.grants for f in functions}
    assert grants["fn_current_tenant_id"] == ((("EXECUTE",), "PUBLIC"),)
    assert grants["fn_set_tenant_context"] == ((("EXECUTE",), "billing_app"),)
    assert grants["fn_citus_premake_months"] == ()
    assert grants["fn_tenant_routed_to_schema"] == ((("EXECUTE",), "PUBLIC"),)
    assert grants["fn_usage_events_view_insert"] == ()  # a trigger's: nobody calls it
    assert {"fn_current_tenant_id", "fn_set_tenant_context", "fn_tenant_routed_to_schema"} <= main


def test_a_single_node_database_gets_nothing_of_citus(admin_conn: psycopg.Connection) -> None:
    assert admin_conn.execute("SELECT to_regclass('tenant_pipelines.citus_migrations')").fetchone()[0] is None
    assert "pg_dist_local_group" not in admin_conn.execute(
        "SELECT pg_get_functiondef('fn_current_tenant_id'::regproc)").fetchone()[0]
    assert migrate(admin_conn).citus is None


def test_premake_adds_secured_months_and_is_idempotent(citus_admin: psycopg.Connection) -> None:
    """fn_citus_premake_months: months up to partition_config.premake_months ahead, each
    distributed with its parent and secured; a second call changes nothing."""
    def months() -> list[str]:
        return [name for (name,) in citus_admin.execute(
            "SELECT partition::text FROM time_partitions WHERE parent_table = 'usage_events_mt'::regclass"
            " AND from_value IS NOT NULL ORDER BY from_value::timestamptz")]

    before = months()
    premake = citus_admin.execute("SELECT premake_months FROM partition_config").fetchone()[0]
    try:
        citus_admin.execute("UPDATE partition_config SET premake_months = %s", (premake + 2,))
        total = citus_admin.execute("SELECT fn_citus_premake_months()").fetchone()[0]
        after = months()
        assert after[:len(before)] == before and len(after) == len(before) + 2
        assert total == len(after) + 1  # and the DEFAULT partition
        assert citus_admin.execute("SELECT fn_citus_premake_months()").fetchone()[0] == total
        assert months() == after
        new = after[len(before):]
        rows = citus_admin.execute(
            "SELECT c.relname::text, c.relowner::regrole::text, c.relforcerowsecurity,"
            "       has_table_privilege('billing_app', c.oid, 'SELECT'),"
            "       EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = c.oid)"
            "  FROM pg_class c WHERE c.relname = ANY(%s) ORDER BY 1", (new,)).fetchall()
        assert rows == [(name, "billing_owner", True, False, True) for name in new]
    finally:
        citus_admin.execute("UPDATE partition_config SET premake_months = %s", (premake,))


def test_migrate_status_lists_the_citus_migrations(citus: CitusTarget, admin_conn: psycopg.Connection) -> None:
    from tenant_pipelines.db.migrate import migration_status

    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        lines = migration_status(conn).lines()
    names = [m.filename for m in load_citus_migrations(SQL_DIR)]
    at = lines.index(f"citus migrations (a Citus coordinator): {len(names)} applied, 0 pending")
    assert lines[at + 1:at + 1 + len(names)] == [f"  applied  citus/{name}" for name in names]
    assert not any(line.startswith("citus migrations") for line in migration_status(admin_conn).lines())
