"""A tenant isolated to a shard group of its own, then moved online to another worker, while it
writes (issue 19, core/citus.py): every write succeeds, every row is where the tenant reads it,
the new shards carry the policy, no other tenant's rows move or show, and re-runs change nothing."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import psycopg
import pytest

from tenant_pipelines.core.citus import isolate_tenant, move_tenant_to_node, tenant_placement_on_citus
from tenant_pipelines.core.ingest import ingest_usage_events
from tenant_pipelines.errors import InvalidInput, UnknownTenant
from tests.citus.conftest import CitusTarget, make_citus_tenant
from tests.citus.test_citus_isolation import seed, snapshot
from tests.waiting import wait_until


class Writer(threading.Thread):
    """billing_app's ingest for one tenant, one small batch a transaction, until stopped; counts
    batches written and keeps every error."""

    def __init__(self, dsn: str, tenant: uuid.UUID) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tenant = dsn, tenant
        self.batches = 0
        self.rows = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    now = datetime.now(timezone.utc)
                    self.rows += ingest_usage_events(conn, self.tenant, [("writes", Decimal(1), now, "{}")] * 5)
                    self.batches += 1
                except Exception as exc:  # noqa: BLE001  (the test reports every failed write)
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def test_isolate_then_move_to_another_worker_while_the_tenant_writes(citus: CitusTarget,
                                                                     citus_admin: psycopg.Connection) -> None:
    mover, neighbour = seed(citus_admin, "Mover", "enterprise"), seed(citus_admin, "Neighbour", "free")
    neighbour_rows = snapshot(citus_admin, [neighbour])
    before = tenant_placement_on_citus(citus_admin, mover)
    assert before.kind == "shared"
    target = citus_admin.execute("SELECT nodeid FROM pg_dist_node WHERE groupid > 0 AND nodeid <> %s"
                                 " ORDER BY nodeid LIMIT 1", (before.node_id,)).fetchone()[0]

    citus_admin.execute("SET statement_timeout = '180s'")  # a stuck move fails the test instead of hanging it
    writer = Writer(citus.app_dsn, mover)
    writer.start()
    try:
        wait_until(lambda: writer.batches >= 3 or writer.errors, "the writer's first batches")
        isolated = isolate_tenant(citus_admin, mover)
        assert isolated.after.kind == "isolated" and isolated.after.tenants_in_shard == 1
        at_isolation = writer.batches
        change = move_tenant_to_node(citus_admin, mover, target)
        wait_until(lambda: writer.batches >= change_batches(at_isolation) or writer.errors,
                   "batches written after the move")
    finally:
        writer.stop.set()
        writer.join()
    assert writer.errors == [], writer.errors[:3]
    assert change.after.kind == "isolated" and change.after.node_id == target and "move" in change.steps
    assert writer.batches > at_isolation, "the writer wrote while the tenant was split and moved"

    # Every row written is where the tenant reads it; the neighbour's rows did not move or change.
    with psycopg.connect(citus.app_dsn, autocommit=True) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (mover,))
        assert app.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s AND metric_name = 'writes'",
                           (mover,)).fetchone()[0] == writer.rows
        assert app.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                           (neighbour,)).fetchone()[0] == 0
    assert snapshot(citus_admin, [neighbour]) == neighbour_rows
    assert tenant_placement_on_citus(citus_admin, neighbour).kind == "shared"

    # The tenant's new shards, of every table, carry RLS forced and the policy.
    for table in ("organizations", "subscriptions", "invoices", "usage_events_mt"):
        shard = citus_admin.execute("SELECT get_shard_id_for_distribution_column(%s, %s)", (table, mover)).fetchone()[0]
        result = citus_admin.execute(
            "SELECT success, result FROM run_command_on_shards(%s, $cmd$ SELECT c.relforcerowsecurity AND EXISTS"
            " (SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation')"
            " FROM pg_class c WHERE c.oid = '%%s'::regclass $cmd$) WHERE shardid = %s", (table, shard)).fetchall()
        assert result == [(True, "t")], (table, result)

    # FORCE ROW LEVEL SECURITY is back on every table of the group (lifted during the split and move).
    assert citus_admin.execute(
        "SELECT count(*) FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid"
        " WHERE c.relrowsecurity AND NOT c.relforcerowsecurity").fetchone()[0] == 0

    # Re-runs change nothing.
    assert isolate_tenant(citus_admin, mover).steps == {}
    assert move_tenant_to_node(citus_admin, mover, target).steps == {}


def change_batches(at_isolation: int) -> int:
    return at_isolation + 3


def test_placement_refusals_are_one_line(citus_admin: psycopg.Connection) -> None:
    with pytest.raises(UnknownTenant, match="unknown tenant"):
        tenant_placement_on_citus(citus_admin, uuid.uuid4())
    with pytest.raises(InvalidInput, match="not a valid UUID"):
        isolate_tenant(citus_admin, "nope")
    tenant = seed(citus_admin, "Somewhere", "free")
    with pytest.raises(InvalidInput, match=r"node 999: not an active worker that holds shards; pick one of: \d"):
        move_tenant_to_node(citus_admin, tenant, 999)
    coordinator = citus_admin.execute("SELECT nodeid FROM pg_dist_node WHERE groupid = 0").fetchone()[0]
    with pytest.raises(InvalidInput, match=f"node {coordinator}: not an active worker"):
        move_tenant_to_node(citus_admin, tenant, coordinator)


def test_placement_functions_refuse_a_single_node_database(admin_conn: psycopg.Connection) -> None:
    from tenant_pipelines.core.citus import NotCitus

    with pytest.raises(NotCitus, match="not a Citus coordinator .* db up --citus"):
        tenant_placement_on_citus(admin_conn, uuid.uuid4())


def test_the_registry_follows_citus(citus_admin: psycopg.Connection) -> None:
    """tenant_placements on a coordinator says shared or isolated, as Citus has the tenant: written
    at onboarding and after each change; a row left behind (a crash between Citus's split and the
    record) is reported, and a re-run of the change rewrites it. The single-node kinds are refused."""
    from tenant_pipelines.core.citus import citus_placement_status
    from tenant_pipelines.core.partitions import ensure_tenant_partition
    from tenant_pipelines.defs.tenants.placement_assets import _citus_placements_match_policy

    tenant, neighbour = make_citus_tenant(citus_admin, "Registered"), make_citus_tenant(citus_admin, "Beside")

    def row(t: uuid.UUID) -> tuple | None:
        return citus_admin.execute("SELECT kind, location, state, since FROM tenant_placements WHERE organization_id = %s",
                                   (t,)).fetchone()

    assert row(tenant) is None
    ensure_tenant_partition(citus_admin, tenant)
    ensure_tenant_partition(citus_admin, neighbour)
    onboarded = row(tenant)
    assert onboarded[:3] == ("shared", "usage_events_mt", "placed")
    ensure_tenant_partition(citus_admin, tenant)
    assert row(tenant) == onboarded, "a re-run changes nothing, 'since' included"

    isolate_tenant(citus_admin, tenant)
    isolated = row(tenant)
    assert isolated[:2] == ("isolated", "usage_events_mt") and isolated[3] > onboarded[3]
    assert row(neighbour)[0] == "shared"

    # Killed after Citus split the shard group and before the record: the check names the tenant.
    citus_admin.execute("UPDATE tenant_placements SET kind = 'shared' WHERE organization_id = %s", (tenant,))
    [status] = citus_placement_status(citus_admin, [str(tenant)])
    assert status.registry_drift and status.recorded == "shared" and status.kind == "isolated"
    result = _citus_placements_match_policy([status])
    assert not result.passed and result.severity.value == "ERROR"
    assert f"{tenant}: registry says shared, Citus says isolated" in result.metadata["details"].value
    assert isolate_tenant(citus_admin, tenant).steps == {}, "the re-run moves nothing"
    assert row(tenant)[0] == "isolated"
    assert not citus_placement_status(citus_admin, [str(tenant)])[0].registry_drift

    with pytest.raises(psycopg.errors.CheckViolation):
        citus_admin.execute("UPDATE tenant_placements SET kind = 'pooled' WHERE organization_id = %s", (neighbour,))
