"""The main job against a Citus coordinator (issue 19): tenant_registry and tenant_metrics with
their checks pass on the session's coordinator and workers; vw_tenant_metrics counts each
tenant's rows in its shard group, and the metrics carry Citus's per-tenant figures (shard
group, worker, size, citus_stat_tenants)."""

from __future__ import annotations

import dagster as dg
import psycopg

from tenant_pipelines.defs.metrics.assets import monthly_events_quota, storage_quota, tenant_metrics, tier_limits_in_force
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.assets import tenant_isolation_holds, tenant_registry, tenant_tables_carried
from tenant_pipelines.core.citus import citus_tenant_stats, worker_balance
from tenant_pipelines.core.metrics import collect
from tests.citus.conftest import CitusTarget
from tests.citus.test_citus_isolation import seed


def test_the_main_job_runs_on_a_coordinator_with_citus_figures_beside_the_metrics(citus: CitusTarget, citus_admin: psycopg.Connection, tmp_path,
                                            monkeypatch) -> None:
    monkeypatch.setenv("TENANT_PIPELINES_HOME", str(tmp_path))
    tenants = [seed(citus_admin, f"Main job {i}", "growth") for i in range(3)]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tenant_registry, tenant_isolation_holds, tenant_tables_carried, tenant_metrics, monthly_events_quota,
             storage_quota, tier_limits_in_force],
            instance=instance, resources={"billing_db": BillingDatabase(dsn=citus.admin_dsn)}, raise_on_error=False)
    failures = [e.step_failure_data.error.to_string() for e in result.all_events
                if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures == []
    assert all(e.passed for e in result.get_asset_check_evaluations()), [
        (e.check_name, e.description) for e in result.get_asset_check_evaluations() if not e.passed]
    meta = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["tenant_registry"]["tenants"].value >= 3

    # vw_tenant_metrics on Citus: each tenant's figures from its shard group (seed: one active
    # subscription, events this month), and Citus's own figures beside them.
    rows = {r.organization_id: r for r in collect(citus_admin)}
    for tenant in tenants:
        figures = rows[tenant]
        assert figures.active_subscriptions == 1
        assert figures.events_this_month == citus_admin.execute(
            "SELECT count(*) FROM usage_events_mt WHERE organization_id = %s AND \"timestamp\" >= date_trunc('month', now())",
            (tenant,)).fetchone()[0]
        assert figures.storage_bytes > 0
    metrics = meta["tenant_metrics"]
    assert metrics["citus_note"].value.startswith("citus_stat_tenants")
    assert metrics["citus_tenants"].value.records, "the table is shown (its first 200 rows)"
    stats, _ = citus_tenant_stats(citus_admin)  # what the table shows, for every tenant of the session
    citus_rows = {s.tenant: s for s in stats}
    for tenant in tenants:
        assert citus_rows[str(tenant)].kind == "shared" and citus_rows[str(tenant)].shard_group_bytes > 0
        assert citus_rows[str(tenant)].node_id in {w.node_id for w in worker_balance(citus_admin).workers}
    history = citus_admin.execute("SELECT count(*) FROM tenant_metrics_history WHERE organization_id = ANY(%s)",
                                  (tenants,)).fetchone()[0]
    assert history == len(tenants)
