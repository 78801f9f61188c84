"""The isolation audit on a Citus coordinator (core/citus.audit_citus, part of
core/security.audit_isolation and so of the tenant_isolation_holds check): tenant tables
distributed and colocated, RLS forced and the policy on every shard on the workers, the context
functions the same on every node. Each weakening is found, named (shard, table, node), with its
fix; applying the fix clears it."""

from __future__ import annotations

import psycopg
import pytest

from tenant_pipelines.core.citus import audit_citus
from tenant_pipelines.core.security import audit_isolation


def shard_of(conn: psycopg.Connection, table: str) -> tuple[int, str]:
    """One shard of ``table`` and its node (host:port), for the probes."""
    return conn.execute(
        "SELECT shardid, nodename || ':' || nodeport FROM citus_shards WHERE table_name = %s::regclass"
        " ORDER BY shardid LIMIT 1", (table,)).fetchone()


def on_one_shard(conn: psycopg.Connection, table: str, shard: int, command: str) -> None:
    """Run ``command`` (%s: the shard's name) on that one shard, on its worker, behind Citus's back."""
    host, port, name = conn.execute(
        "SELECT nodename, nodeport, shard_name(%s::regclass, %s) FROM citus_shards"
        " WHERE table_name = %s::regclass AND shardid = %s", (table, shard, table, shard)).fetchone()
    text = "SET citus.enable_manual_changes_to_shards = on; " + command.replace("%s", name)
    result = conn.execute("SELECT success, result FROM master_run_on_worker(ARRAY[%s], ARRAY[%s::int], ARRAY[%s], false)",
                          (host, port, text)).fetchall()
    assert result and result[0][0], result


def test_a_clean_coordinator_has_no_finding(citus_admin: psycopg.Connection) -> None:
    assert audit_citus(citus_admin) == []
    assert audit_isolation(citus_admin) == []


def test_a_shard_without_its_policy_or_force_is_found_and_the_fix_clears_it(citus_admin: psycopg.Connection) -> None:
    shard, node = shard_of(citus_admin, "invoices")
    on_one_shard(citus_admin, "invoices", shard, "DROP POLICY tenant_isolation ON %s")
    on_one_shard(citus_admin, "invoices", shard, "ALTER TABLE %s NO FORCE ROW LEVEL SECURITY")
    findings = audit_isolation(citus_admin)
    assert [str(f) for f in findings] == [
        f"shard {shard} of invoices on {node}: does not have row-level security enabled and forced; fix: ALTER "
        "TABLE invoices ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY on the coordinator (Citus propagates it "
        "to every shard)",
        f"shard {shard} of invoices on {node}: lacks the tenant_isolation policy of its table; fix: on the "
        "coordinator: SELECT * FROM run_command_on_placements('invoices', 'CREATE POLICY tenant_isolation ON %s USING "
        "((organization_id = fn_current_tenant_id())) WITH CHECK ((organization_id = fn_current_tenant_id()))') (the "
        "shards that have it refuse it, harmlessly)",
    ]
    # The fixes, as written.
    citus_admin.execute("ALTER TABLE invoices ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    created = citus_admin.execute(
        "SELECT shardid, success FROM run_command_on_placements('invoices', 'CREATE POLICY tenant_isolation ON %s"
        " USING ((organization_id = fn_current_tenant_id())) WITH CHECK ((organization_id = fn_current_tenant_id()))')"
    ).fetchall()
    assert [s for s, ok in created if ok] == [shard]
    assert audit_isolation(citus_admin) == []


def test_a_tenant_table_left_on_the_coordinator_is_found(citus_admin: psycopg.Connection) -> None:
    try:
        citus_admin.execute("CREATE TABLE audit_probe (organization_id uuid PRIMARY KEY)")
        citus_admin.execute("SELECT fn_protect_tenant_table('audit_probe')")
        findings = [str(f) for f in audit_citus(citus_admin)]
        assert findings == ["table audit_probe: is a tenant table kept on the coordinator, not distributed; fix: "
                            "SELECT create_distributed_table('audit_probe', 'organization_id', colocate_with => "
                            "'organizations') (or 'tenant-pipelines db migrate')"]
        citus_admin.execute("SELECT create_distributed_table('audit_probe', 'organization_id', colocate_with => 'none')")
        assert [f.problem for f in audit_citus(citus_admin)] == [
            "is not hash-distributed in the colocation group of organizations: its rows and a tenant's other rows "
            "may be on different nodes"]
    finally:
        citus_admin.execute("DROP TABLE IF EXISTS audit_probe")
    assert audit_citus(citus_admin) == []


def test_a_worker_with_another_context_function_is_found(citus_admin: psycopg.Connection) -> None:
    original = citus_admin.execute("SELECT pg_get_functiondef('fn_current_tenant_id'::regproc)").fetchone()[0]
    node = citus_admin.execute("SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE groupid > 0"
                               " ORDER BY nodeid LIMIT 1").fetchone()[0]
    unbound = ("CREATE OR REPLACE FUNCTION public.fn_current_tenant_id() RETURNS uuid LANGUAGE sql STABLE AS "
               "$f$ SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid $f$")
    host, port = node.rsplit(":", 1)
    try:
        citus_admin.execute("SELECT * FROM master_run_on_worker(ARRAY[%s], ARRAY[%s::int], ARRAY[%s], false)",
                            (host, port, "SET citus.enable_ddl_propagation = off; " + unbound))
        findings = audit_citus(citus_admin)
        assert [(f.obj, f.fix.split(",")[0]) for f in findings] == [
            (f"function fn_current_tenant_id on {node}",
             "on the coordinator: DELETE FROM tenant_pipelines.citus_functions WHERE name = 'fn_current_tenant_id'")]
    finally:
        citus_admin.execute("SELECT * FROM master_run_on_worker(ARRAY[%s], ARRAY[%s::int], ARRAY[%s], false)",
                            (host, port, "SET citus.enable_ddl_propagation = off; " + original))
    assert audit_citus(citus_admin) == []


def test_rows_left_on_the_coordinator_by_distributing_a_table_are_found(citus_admin: psycopg.Connection) -> None:
    """create_distributed_table copies a table's rows into the shards and keeps them in the
    coordinator's own table: a second copy of tenants' rows no query reads and no deletion reaches."""
    try:
        citus_admin.execute("CREATE TABLE audit_copy (organization_id uuid PRIMARY KEY)")
        citus_admin.execute("INSERT INTO audit_copy SELECT gen_random_uuid() FROM generate_series(1, 10)")
        citus_admin.execute("SELECT create_distributed_table('audit_copy', 'organization_id', colocate_with => 'organizations')")
        findings = [f for f in audit_citus(citus_admin) if f.obj == "table audit_copy"]
        assert len(findings) == 1 and "bytes of rows on the coordinator from before it was distributed" in findings[0].problem
        citus_admin.execute(findings[0].fix.split(" (")[0])
        assert [f for f in audit_citus(citus_admin) if f.obj == "table audit_copy"] == []
        assert citus_admin.execute("SELECT count(*) FROM audit_copy").fetchone()[0] == 10, "the shards keep every row"
    finally:
        citus_admin.execute("DROP TABLE IF EXISTS audit_copy")
