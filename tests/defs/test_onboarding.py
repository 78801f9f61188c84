"""The onboarding sensor and the tenant_partition asset, against a real database and a real
Dagster instance."""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import dagster as dg
import psycopg
import pytest
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.event_log.base import PartitionKeyFilter

from tenant_pipelines.core import partitions
from tenant_pipelines.core.partitions import attached_tenant_partitions, stranded_in_pool
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import TENANTS_PER_RUN, tenants_partitions
from tenant_pipelines.defs.tenants import partitions_assets
from tenant_pipelines.defs.tenants.partitions_assets import (
    default_partition_drained,
    premake_schedule,
    tenant_onboarding_sensor,
    tenant_partition,
    tenant_partitions_complete,
)
from tests.conftest import make_tenant


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance: dg.DagsterInstance, dsn: str) -> dg.SensorResult:
    # Closed at once: an open context would outlive its instance as Dagster's current state storage.
    with dg.build_sensor_context(instance=instance, resources={"billing_db": BillingDatabase(dsn=dsn)}) as context:
        result = tenant_onboarding_sensor(context)
    # What the daemon does with the result: add the keys.
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def event(conn: psycopg.Connection, tenant: uuid.UUID, n: int = 1) -> None:
    for _ in range(n):
        conn.execute(
            'INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp") VALUES (%s, %s, %s, %s)',
            (tenant, "api_calls", Decimal("1.5"), datetime.now(timezone.utc)),
        )


def known_tenant(conn: psycopg.Connection, instance: dg.DagsterInstance, tier: str = "free",
                 events: int = 0) -> uuid.UUID:
    """A new tenant of ``tier`` with ``events`` usage events (in the pool), already a partition
    of ``tenants`` (the sensor has seen it)."""
    tenant = make_tenant(conn, tier=tier)
    event(conn, tenant, events)
    instance.add_dynamic_partitions("tenants", [str(tenant)])
    return tenant


def materialise(instance: dg.DagsterInstance, dsn: str, key: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [tenant_partition, default_partition_drained, tenant_partitions_complete],
        instance=instance,
        partition_key=key,
        resources={"billing_db": BillingDatabase(dsn=dsn)},
        raise_on_error=False,
    )


def test_new_organizations_and_unknown_tenants_show_up_in_one_tick(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    orgs = [make_tenant(admin_conn, tier=t) for t in ("free", "enterprise")]
    stranger = uuid.uuid4()  # events, but no organization row
    event(admin_conn, stranger, 3)
    event(admin_conn, orgs[0], 2)

    result = tick(instance, admin_dsn)

    expected = sorted(str(t) for t in [*orgs, stranger])
    assert sorted(instance.get_dynamic_partitions("tenants")) == expected
    assert sorted(r.partition_key for r in result.run_requests) == expected
    assert all(r.run_key == f"onboard:{r.partition_key}" for r in result.run_requests)

    # Re-tick before the runs happened: no new keys, and only run keys already requested,
    # which the daemon drops.
    again = tick(instance, admin_dsn)
    assert not again.dynamic_partitions_requests
    assert {r.run_key for r in again.run_requests} <= {r.run_key for r in result.run_requests}

    for key in expected:
        run = materialise(instance, admin_dsn, key)
        assert run.success, key
        assert all(c.passed for c in run.get_asset_check_evaluations())
    assert attached_tenant_partitions(admin_conn) == {str(orgs[1])}, "only the enterprise tenant is dedicated"
    assert stranded_in_pool(admin_conn, expected) == {}
    event(admin_conn, stranger)  # pooled tenants keep writing to the pool: nothing new
    done = tick(instance, admin_dsn)
    assert done.skip_reason and "no new ones" in str(done.skip_reason)

    # A later organization: only it is new.
    late = make_tenant(admin_conn)
    result = tick(instance, admin_dsn)
    assert [r.partition_key for r in result.run_requests] == [str(late)]


def test_known_tenant_in_the_pool_is_not_asked_again(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    """A pooled tenant's rows belong in the pool: its events do not make runs. (A tenant due
    for promotion whose run failed is retried by the daily premake schedule.)"""
    known_tenant(admin_conn, instance, events=1)
    result = tick(instance, admin_dsn)
    assert not result.run_requests and not result.dynamic_partitions_requests


def test_materialisation_metadata_says_what_was_done(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known_tenant(admin_conn, instance, tier="enterprise", events=5)
    first = materialise(instance, admin_dsn, str(tenant))
    (mat,) = first.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["rows_moved"].value == 5 and meta["tables_created"].value >= 6 and meta["attached_now"].value == 1
    assert "duration_s" in meta and len(meta["partitions"].value.records) == 1
    assert meta["dedicated"].value == 1 and meta["pooled"].value == 0
    assert 0 < meta["leaves"].value <= meta["leaf_budget"].value == 200 and meta["dedicated_tenants_in_all"].value == 1
    second = materialise(instance, admin_dsn, str(tenant))
    (mat,) = second.get_asset_materialization_events()
    assert mat.materialization.metadata["tables_created"].value == 0


def test_a_hostile_partition_key_fails_the_run_with_a_clear_error(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    relations = admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    instance.add_dynamic_partitions("tenants", ["x'); DROP TABLE usage_events_mt; --"])
    run = materialise(instance, admin_dsn, "x'); DROP TABLE usage_events_mt; --")
    assert not run.success
    failure = run.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "not a valid UUID" in failure.metadata["failures"].value
    assert admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == relations


def test_backfill_of_several_tenants_runs_in_one_run(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenants = sorted(str(make_tenant(admin_conn)) for _ in range(3))
    instance.add_dynamic_partitions("tenants", tenants)
    run = dg.materialize(
        [tenant_partition], instance=instance, resources={"billing_db": BillingDatabase(dsn=admin_dsn)},
        tags={"dagster/asset_partition_range_start": tenants[0], "dagster/asset_partition_range_end": tenants[-1]},
    )
    assert run.success
    mats = run.get_asset_materialization_events()
    assert len(mats) == 3 and mats[0].materialization.metadata["pooled"].value == 3, "free tenants stay in the pool"
    assert attached_tenant_partitions(admin_conn) == set()


def test_premake_schedule_makes_a_bounded_number_of_runs(instance: dg.DagsterInstance) -> None:
    keys = [str(uuid.UUID(int=i)) for i in range(TENANTS_PER_RUN * 2 + 1)]
    instance.add_dynamic_partitions("tenants", keys)
    with dg.build_schedule_context(instance=instance,
                                   scheduled_execution_time=datetime(2026, 11, 30, tzinfo=timezone.utc)) as context:
        requests = premake_schedule(context)
    assert len(requests) == 3
    assert requests[0].tags["dagster/asset_partition_range_start"] == keys[0]
    assert requests[-1].tags["dagster/asset_partition_range_end"] == keys[-1]
    assert len({r.run_key for r in requests}) == 3 and requests[0].run_key == "premake:2026-11-30:0"


def test_an_interrupted_promotion_is_resumed_by_the_next_tick(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known_tenant(admin_conn, instance, tier="enterprise", events=3)
    # The run died after its first promotion step: the pool now refuses the tenant's rows.
    admin_conn.execute("SELECT fn_prepare_tenant_partition(%s)", (tenant,))
    admin_conn.execute("SELECT fn_pool_exclude_tenant(%s)", (tenant,))
    with pytest.raises(psycopg.errors.CheckViolation):
        event(admin_conn, tenant)

    (request,) = tick(instance, admin_dsn).run_requests
    assert request.partition_key == str(tenant) and request.run_key.startswith(f"resume:{tenant}:")
    assert materialise(instance, admin_dsn, str(tenant)).success
    event(admin_conn, tenant)
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] == 4
    assert not tick(instance, admin_dsn).run_requests


def test_a_promotion_in_progress_is_not_resumed(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known_tenant(admin_conn, instance, tier="enterprise")
    admin_conn.execute("SELECT fn_pool_exclude_tenant(%s)", (tenant,))
    with psycopg.connect(admin_dsn, autocommit=True) as promoter:
        promoter.execute("SELECT pg_advisory_lock(fn_tenant_lock_key(%s))", (tenant,))
        assert not tick(instance, admin_dsn).run_requests


def test_lock_retries_is_the_number_of_retries(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 for a pooled tenant, a promoted one and one already attached; 1 for a promotion that
    waited out exactly one lock timeout on the pool (held by a writer's open transaction): the
    core's PartitionReport.lock_retries, and the asset's metadata, which reports it."""
    pooled, dedicated, contended = (make_tenant(admin_conn, tier=t) for t in ("free", "enterprise", "enterprise"))
    event(admin_conn, dedicated, 3)
    instance.add_dynamic_partitions("tenants", [str(pooled), str(dedicated), str(contended)])
    reports: list[partitions.PartitionReport] = []

    def ensure_and_keep(conn: psycopg.Connection, key: str) -> partitions.PartitionReport:
        reports.append(partitions.ensure_tenant_partition(conn, key))
        return reports[-1]

    monkeypatch.setattr(partitions_assets, "ensure_tenant_partition", ensure_and_keep)

    def lock_retries(tenant: uuid.UUID) -> tuple[int, int]:
        """The run's lock_retries metadata, and the core report's."""
        result = materialise(instance, admin_dsn, str(tenant))
        assert result.success
        (mat,) = result.get_asset_materialization_events()
        return mat.materialization.metadata["lock_retries"].value, reports[-1].lock_retries

    assert lock_retries(pooled) == (0, 0)
    assert lock_retries(dedicated) == (0, 0)
    assert lock_retries(dedicated) == (0, 0), "already attached: no promotion steps"

    # The retry helper's pause before a retry waits for the writer to be gone, not for a clock:
    # one lock timeout while the writer holds the pool, then one retry that gets its locks.
    gave_up, released = threading.Event(), threading.Event()
    given_up: list[BaseException | None] = []

    def until_released(seconds: float) -> None:
        given_up.append(sys.exc_info()[1])  # called in run_with_lock_retry's except clause
        gave_up.set()
        assert released.wait(timeout=60), "the writer never let go"

    retry = partitions.run_with_lock_retry
    monkeypatch.setattr(partitions, "run_with_lock_retry", lambda *a, **kw: retry(*a, **kw, sleep=until_released))
    admin_conn.execute("UPDATE partition_config SET lock_timeout = '100ms'")
    counted: list[tuple[int, int]] = []
    with psycopg.connect(admin_dsn) as writer:
        writer.execute("LOCK TABLE usage_events_mt_default IN EXCLUSIVE MODE")
        promoter = threading.Thread(target=lambda: counted.append(lock_retries(contended)))
        promoter.start()
        try:
            assert gave_up.wait(timeout=60), "the promotion never gave up a lock wait"
        finally:
            writer.rollback()
            released.set()
            promoter.join()
    (error,) = given_up
    assert isinstance(error, psycopg.errors.LockNotAvailable), error
    assert "fn_pool_exclude_tenant" in (error.diag.context or ""), "it waited to exclude the tenant from the pool"
    assert counted == [(1, 1)]
    assert reports[-1].attached_now


def latest_on_the_asset_page(instance: dg.DagsterInstance, check_key: dg.AssetCheckKey) -> str | None:
    """What the asset's page shows for a check (GraphQL AssetCheck.executionForLatestMaterialization):
    its latest execution, if that targets the latest materialization; else "Not Evaluated" (None)."""
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([check_key]).get(check_key)
    if record is None:
        return None
    context = LoadingContextForTest(instance)
    if not asyncio.run(record.targets_latest_materialization(context)):
        return None
    return asyncio.run(record.resolve_status(context)).value


def test_the_checks_latest_results_show_on_the_asset_page(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    """Tenant runs run side by side, so another tenant's materialization often lands after a
    run's checks. Each check's latest result must still show (it said Not Evaluated), and so
    must every tenant's after a run over a range of tenants."""
    tenants = sorted(str(make_tenant(admin_conn, tier=t)) for t in ("free", "enterprise", "free", "growth"))
    instance.add_dynamic_partitions("tenants", tenants)
    checks = [default_partition_drained.check_key, tenant_partitions_complete.check_key]

    assert materialise(instance, admin_dsn, tenants[0]).success
    # another tenant's run materialises after the first run's checks, and its own checks come later
    assert dg.materialize([tenant_partition], instance=instance, partition_key=tenants[1],
                          resources={"billing_db": BillingDatabase(dsn=admin_dsn)}).success
    assert [latest_on_the_asset_page(instance, key) for key in checks] == ["SUCCEEDED", "SUCCEEDED"]

    run = dg.materialize(
        [tenant_partition, default_partition_drained, tenant_partitions_complete], instance=instance,
        resources={"billing_db": BillingDatabase(dsn=admin_dsn)},
        tags={"dagster/asset_partition_range_start": tenants[0], "dagster/asset_partition_range_end": tenants[-1]},
    )
    assert run.success
    assert [latest_on_the_asset_page(instance, key) for key in checks] == ["SUCCEEDED", "SUCCEEDED"]
    for key in checks:  # each tenant of the range has its result, none is left planned
        for tenant in tenants:
            (record,) = instance.event_log_storage.get_asset_check_execution_history(
                key, limit=1, partition_filter=PartitionKeyFilter(key=tenant))
            assert (record.run_id, record.status.value) == (run.run_id, "SUCCEEDED"), (key.name, tenant)
