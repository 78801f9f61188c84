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
from tenant_pipelines.defs.tenants.partitions_assets import TENANTS_PER_RUN
from tenant_pipelines.defs.tiering.assets import tier_placement, tiering_schedule, tiers_match_policy
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
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata


def test_tiering_schedule_batches_tenants(admin_conn: psycopg.Connection) -> None:
    keys = [str(uuid.UUID(int=i)) for i in range(TENANTS_PER_RUN + 1)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", keys)
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=datetime(2026, 12, 1, tzinfo=timezone.utc))
        requests = tiering_schedule(context)
    assert [r.run_key for r in requests] == ["tiering:2026-12-01:0", "tiering:2026-12-01:1"]
