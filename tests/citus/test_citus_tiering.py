"""Tiering on a Citus coordinator (issue 19): pool_tier_placement makes every month older than
the global cold_after Citus columnar, once (a second run changes nothing), keeps it secured and
readable by its tenants only; pool_tiers_match_policy lists cold months still heap until then.
What columnar costs: its rows can be neither updated nor deleted, so a per-tenant restore that
would replace them is refused in one line, with nothing changed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from tenant_pipelines.core.backups import backup_tenant, restore_tenant
from tenant_pipelines.core.citus import audit_citus_months, misplaced_on_citus
from tenant_pipelines.core.ingest import ingest_usage_events
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tiering.assets import TierPlacementConfig, pool_tier_placement, pool_tiers_match_policy
from tenant_pipelines.errors import TenantPipelinesError
from tests.citus.conftest import CitusTarget, make_citus_tenant
from tests.citus.test_citus_isolation import snapshot

KEY = bytes(range(32))


def run(dsn: str) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize([pool_tier_placement, pool_tiers_match_policy], instance=instance,
                              resources={"billing_db": BillingDatabase(dsn=dsn)},
                              run_config=dg.RunConfig(ops={"pool_tier_placement": TierPlacementConfig()}))


def test_cold_months_become_columnar_and_a_restore_that_would_rewrite_them_is_refused(
        citus: CitusTarget, citus_admin: psycopg.Connection, tmp_path: Path) -> None:
    tenant, other = make_citus_tenant(citus_admin, "Cold", "growth"), make_citus_tenant(citus_admin, "Warm", "free")
    old = datetime.now(timezone.utc).replace(day=2) - timedelta(days=190)
    citus_admin.execute("SELECT fn_citus_premake_months(%s)", (old,))
    for who in (tenant, other):
        ingest_usage_events(citus_admin, who, [("api", Decimal("1.5"), old + timedelta(hours=i), "{}") for i in range(20)])
        ingest_usage_events(citus_admin, who, [("api", Decimal(1), datetime.now(timezone.utc), "{}")])
    before = snapshot(citus_admin, [tenant, other])
    cold = misplaced_on_citus(citus_admin)
    assert cold, "the month 190 days ago is past cold_after (90 days) and still heap"

    result = run(citus.admin_dsn)
    (event,) = result.get_asset_materialization_events()
    meta = event.step_materialization_data.materialization.metadata
    assert meta["partitions_moved"].value == len(cold)
    assert {r.data["to"] for r in meta["moves"].value.records} == {"columnar"}
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed
    assert misplaced_on_citus(citus_admin) == [] and audit_citus_months(citus_admin) == []
    assert snapshot(citus_admin, [tenant, other]) == before, "every row kept"
    again = run(citus.admin_dsn)
    (event,) = again.get_asset_materialization_events()
    assert event.step_materialization_data.materialization.metadata["partitions_moved"].value == 0

    # billing_app in the tenant's context reads its cold rows, and only its own.
    with psycopg.connect(citus.app_dsn, autocommit=True) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        assert app.execute("SELECT count(*), count(DISTINCT organization_id) FROM usage_events_mt"
                           " WHERE organization_id = %s AND \"timestamp\" < now() - interval '100 days'",
                           (tenant,)).fetchone() == (20, 1)
        assert app.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s", (other,)).fetchone()[0] == 0

    # A restore would delete the tenant's cold rows, which columnar cannot: refused, nothing changed.
    report = backup_tenant(citus_admin, tenant, tmp_path, master_key=KEY)
    before = snapshot(citus_admin, [tenant, other])  # the backup records itself in tenant_backup_config
    with pytest.raises(TenantPipelinesError) as info:
        restore_tenant(citus_admin, tenant, report.path, master_key=KEY)
    message = str(info.value)
    assert "Citus columnar" in message and "alter_table_set_access_method" in message and "\n" not in message
    assert snapshot(citus_admin, [tenant, other]) == before
