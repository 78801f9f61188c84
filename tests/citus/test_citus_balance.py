"""shard_balance and workers_balanced (issue 19): with every shared shard group piled on one
worker, the check fails and names the skew; materialising the asset runs Citus's rebalancer,
online, leaves an isolated tenant on the worker it was moved to, and the check passes; a second
run moves nothing. On a single-node database the asset fails in one line and the check passes
with a note."""

from __future__ import annotations

import dagster as dg
import psycopg

from tenant_pipelines.core.citus import (
    ANCHOR,
    isolate_tenant,
    move_tenant_to_node,
    rebalance_shards,
    tenant_placement_on_citus,
    worker_balance,
)
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.scale_out.assets import ShardBalanceConfig, shard_balance, workers_balanced
from tests.citus.conftest import CitusTarget
from tests.citus.test_citus_isolation import seed, snapshot


def run(dsn: str, *, check_only: bool = False, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [shard_balance, workers_balanced], instance=instance,
            resources={"billing_db": BillingDatabase(dsn=dsn)},
            run_config=None if check_only else dg.RunConfig(ops={"shard_balance": ShardBalanceConfig()}),
            selection=dg.AssetSelection.checks(workers_balanced) if check_only else None,
            raise_on_error=raise_on_error)


def pile_on(conn: psycopg.Connection, node_id: int) -> int:
    """Every shared shard group moved to ``node_id`` (blocking moves: a test's setup); the count."""
    moved = 0
    for shard, source in conn.execute(
            """SELECT s.shardid, n.nodeid FROM pg_dist_shard s JOIN pg_dist_placement p ON p.shardid = s.shardid
                 JOIN pg_dist_node n ON n.groupid = p.groupid
                WHERE s.logicalrelid = %s::regclass AND s.shardminvalue::bigint <> s.shardmaxvalue::bigint
                  AND n.nodeid <> %s""", (ANCHOR, node_id)).fetchall():
        conn.execute("SELECT citus_move_shard_placement(%s, %s, %s, transfer_mode => 'block_writes')",
                     (shard, source, node_id))
        moved += 1
    return moved


def test_the_rebalancer_evens_the_workers_and_leaves_isolated_tenants_in_place(
        citus: CitusTarget, citus_admin: psycopg.Connection) -> None:
    tenants = [seed(citus_admin, f"Balance {i}", "free") for i in range(6)]
    rows = snapshot(citus_admin, tenants)
    pinned = seed(citus_admin, "Pinned", "enterprise")
    workers = [w.node_id for w in worker_balance(citus_admin).workers]
    assert len(workers) == 2
    citus_admin.execute("SET statement_timeout = '180s'")
    move_tenant_to_node(citus_admin, pinned, workers[1])
    assert pile_on(citus_admin, workers[0]) > 0

    evaluation = run(citus.admin_dsn, check_only=True).get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["skew"].value > 1.5 and "fullest: node" in evaluation.description

    result = run(citus.admin_dsn)
    (materialization,) = result.get_asset_materialization_events()
    meta = materialization.step_materialization_data.materialization.metadata
    assert meta["shard_moves"].value > 0 and meta["pinned_shard_groups"].value >= 1
    assert meta["skew_before"].value > meta["skew_after"].value
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed, evaluation.description
    placed = tenant_placement_on_citus(citus_admin, pinned)
    assert (placed.kind, placed.node_id) == ("isolated", workers[1]), "the isolated tenant stayed where it was moved"
    assert snapshot(citus_admin, tenants) == rows
    assert citus_admin.execute(
        "SELECT count(*) FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid"
        " WHERE c.relrowsecurity AND NOT c.relforcerowsecurity").fetchone()[0] == 0, "FORCE is back"

    again = rebalance_shards(citus_admin)
    assert again.moves == [], "a balanced cluster: nothing moves"
    assert isolate_tenant(citus_admin, pinned).steps == {}


def test_on_a_single_node_database_the_asset_refuses_and_the_check_notes_it(admin_dsn: str) -> None:
    result = run(admin_dsn, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.error.message
    assert "shard_balance: this database is not a Citus coordinator" in message and "db up --citus" in message
    (evaluation,) = run(admin_dsn, check_only=True).get_asset_check_evaluations()
    assert evaluation.passed and "nothing to balance" in evaluation.metadata["note"].value
