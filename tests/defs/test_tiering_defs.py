"""tier_placement in Dagster: a backfill over tenants moves their months and reports it; the
check lists what is out of place; the schedule makes a bounded number of runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import dagster as dg
import psycopg

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import TENANTS_PER_RUN
from tenant_pipelines.defs.tiering.assets import (
    TierPlacementConfig, pool_tier_placement, pool_tiering_schedule, pool_tiers_match_policy, tier_placement,
    tiering_schedule, tiers_match_policy)
from tests.conftest import make_tenant


def tenant_with_old_months(conn: psycopg.Connection) -> uuid.UUID:
    tenant = make_tenant(conn, tier="enterprise")
    now = datetime.now(timezone.utc)
    with conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for days in (5, 75, 150):
            copy.write_row((tenant, "api_calls", Decimal(1), now - timedelta(days=days)))
    ensure_tenant_partition(conn, tenant)
    return tenant


def test_backfill_moves_months_and_reports_per_tier(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenants = sorted(str(tenant_with_old_months(admin_conn)) for _ in range(2))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", tenants)
        resources = {"billing_db": BillingDatabase(dsn=admin_dsn)}
        tags = {"dagster/asset_partition_range_start": tenants[0], "dagster/asset_partition_range_end": tenants[-1]}
        before = dg.materialize([tiers_match_policy, tier_placement], instance=instance, resources=resources,
                                tags=tags, selection=dg.AssetSelection.checks(tiers_match_policy))
        assert not before.get_asset_check_evaluations()[0].passed
        result = dg.materialize([tier_placement, tiers_match_policy], instance=instance, resources=resources, tags=tags)
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["tenants"].value == 2 and meta["partitions_moved"].value >= 4
    assert meta["bytes_moved"].value > 0 and meta["cold/partitions"].value >= 2
    assert "lock_time_s" in meta and len(meta["moves"].value.records) == meta["partitions_moved"].value
    assert meta["method"].value == "online" and meta["moves_restarted_after_a_crash"].value == 0
    assert {r.data["rows_caught_up"] for r in meta["moves"].value.records} == {0}
    assert meta["pace"].value.startswith("adaptive: writers' p99 within 1.2x")
    assert "pace_over_time" in meta and "why_it_slowed" in meta and meta["pace_mb_per_s"].value >= 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata


def _run_config(**config: object) -> dg.RunConfig:
    return dg.RunConfig(ops={"tier_placement": TierPlacementConfig(**config)})


def test_method_is_run_config_and_a_bad_one_is_a_clear_failure(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenant = str(tenant_with_old_months(admin_conn))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [tenant])
        resources = {"billing_db": BillingDatabase(dsn=admin_dsn)}
        bad = dg.materialize([tier_placement], instance=instance, resources=resources, partition_key=tenant,
                             run_config=_run_config(method="fast"), raise_on_error=False)
        assert not bad.success
        (failure,) = [e for e in bad.all_events if e.is_step_failure]
        assert "method 'fast': use one of online, set-tablespace" in failure.step_failure_data.error.message
        result = dg.materialize([tier_placement], instance=instance, resources=resources, partition_key=tenant,
                                run_config=_run_config(method="set-tablespace"))
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["method"].value == "set-tablespace" and meta["partitions_moved"].value >= 2
    assert {r.data["rows_caught_up"] for r in meta["moves"].value.records} == {0}
    assert "pace" not in meta  # a file copy has no pace


def test_a_fixed_pace_is_run_config_and_a_bad_pace_is_a_clear_failure(admin_conn: psycopg.Connection,
                                                                      admin_dsn: str) -> None:
    tenant = str(tenant_with_old_months(admin_conn))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [tenant])
        resources = {"billing_db": BillingDatabase(dsn=admin_dsn)}
        bad = dg.materialize([tier_placement], instance=instance, resources=resources, partition_key=tenant,
                             run_config=_run_config(pace="fast"), raise_on_error=False)
        (failure,) = [e for e in bad.all_events if e.is_step_failure]
        assert "pace method 'fast': use one of adaptive, fixed" in failure.step_failure_data.error.message
        result = dg.materialize([tier_placement], instance=instance, resources=resources, partition_key=tenant,
                                run_config=_run_config(pace="fixed", max_mb_per_s=50))
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["pace"].value == "fixed: 50 MB/s, 32 KiB per batch" and meta["probe_commits"].value == 0


def test_tiering_schedule_batches_tenants(admin_conn: psycopg.Connection) -> None:
    keys = [str(uuid.UUID(int=i)) for i in range(TENANTS_PER_RUN + 1)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", keys)
        # A context left open keeps the instance's state storage as the current one after the
        # instance is gone; a later Definitions load in this process then fails on its weakref.
        with dg.build_schedule_context(instance=instance,
                                       scheduled_execution_time=datetime(2026, 12, 1, tzinfo=timezone.utc)) as context:
            requests = tiering_schedule(context)
    assert [r.run_key for r in requests] == ["tiering:2026-12-01:0", "tiering:2026-12-01:1"]


def test_pool_tier_placement_moves_the_pools_months_and_its_check_passes(
    admin_conn: psycopg.Connection, admin_dsn: str
) -> None:
    pooled = make_tenant(admin_conn, tier="free")
    now = datetime.now(timezone.utc)
    with admin_conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for days in (5, 75, 150):
            copy.write_row((pooled, "api_calls", Decimal(1), now - timedelta(days=days)))
    assert ensure_tenant_partition(admin_conn, pooled).layout == "pooled"
    with dg.instance_for_test() as instance:
        resources = {"billing_db": BillingDatabase(dsn=admin_dsn)}
        result = dg.materialize([pool_tier_placement, pool_tiers_match_policy], instance=instance,
                                resources=resources)
        with dg.build_schedule_context(instance=instance,
                                       scheduled_execution_time=datetime(2026, 12, 1, tzinfo=timezone.utc)) as context:
            request = pool_tiering_schedule(context)
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["partitions_moved"].value >= 2 and meta["cold/partitions"].value >= 1
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    assert request.run_key == "pool-tiering:2026-12-01"
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (pooled,)).fetchone()[0] == 3
