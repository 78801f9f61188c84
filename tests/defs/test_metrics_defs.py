"""tenant_metrics in Dagster: the rollup's metadata, its quota checks, and the drift check."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pyarrow.parquet as pq

from tenant_pipelines.defs.metrics.assets import (
    monthly_events_quota,
    storage_quota,
    tenant_metrics,
    tier_limits_in_force,
)
from tenant_pipelines.core.pooling import pooler_config, render_pgbouncer_ini
from tenant_pipelines.defs.resources import BillingDatabase
from tests.conftest import make_tenant


def test_rollup_metadata_and_quota_checks(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TENANT_PIPELINES_METRICS_ROOT", str(tmp_path))
    # No PgBouncer config in force (not the developer's own PgBouncer's): pool sizes are not checked.
    monkeypatch.setenv("TENANT_PIPELINES_HOME", str(tmp_path))
    monkeypatch.delenv("TENANT_PIPELINES_PGBOUNCER_INI", raising=False)
    busy, near, calm = (make_tenant(admin_conn, name=n, tier="starter") for n in ("Busy", "Near", "Calm"))
    for tenant, limit, n in ((busy, 10, 12), (near, 10, 8), (calm, 100, 1)):
        admin_conn.execute("UPDATE tenant_classifications SET monthly_events_limit = %s WHERE organization_id = %s",
                           (limit, tenant))
        with admin_conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
            for i in range(n):
                copy.write_row((tenant, "api_calls", Decimal(1), datetime.now(timezone.utc) - timedelta(seconds=i)))
    result = dg.materialize(
        [tenant_metrics, monthly_events_quota, storage_quota, tier_limits_in_force],
        resources={"billing_db": BillingDatabase(dsn=admin_dsn)},
        raise_on_error=False,
    )
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["tenants"].value == 3 and meta["events_last_24h"].value == 21
    assert meta["top_by_events"].value.records[0].data["name"] == "Busy"
    assert pq.read_table(meta["parquet"].value).num_rows == 3
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    events = checks["monthly_events_quota"]
    assert not events.passed and events.severity == dg.AssetCheckSeverity.ERROR
    details = events.metadata["details"].value
    assert "over: Busy" in details and "12 of 10" in details and "at 80%+: Near" in details and "Calm" not in details
    assert checks["storage_quota"].passed
    assert checks["tier_limits_in_force"].passed
    assert checks["tier_limits_in_force"].metadata["pgbouncer_config"].value == (
        "no PgBouncer configuration found; set TENANT_PIPELINES_PGBOUNCER_INI to check pool sizes")


def _tier_limits_check(admin_dsn: str) -> dg.AssetCheckEvaluation:
    result = dg.materialize([tenant_metrics, tier_limits_in_force],
                            resources={"billing_db": BillingDatabase(dsn=admin_dsn)}, raise_on_error=False)
    return result.get_asset_check_evaluations()[0]


def test_tier_limits_check_compares_pgbouncer_pool_sizes(admin_conn: psycopg.Connection, admin_dsn: str,
                                                         tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TENANT_PIPELINES_METRICS_ROOT", str(tmp_path))
    make_tenant(admin_conn, tier="growth")
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(render_pgbouncer_ini(pooler_config(admin_conn, admin_dsn, listen_port=6432,
                                                      auth_file="/tmp/userlist.txt")))
    monkeypatch.setenv("TENANT_PIPELINES_PGBOUNCER_INI", str(ini))
    matching = _tier_limits_check(admin_dsn)
    assert matching.passed
    assert matching.metadata["pgbouncer_config"].value == str(ini)
    assert matching.metadata["findings"].value == 0

    ini.write_text(ini.read_text().replace("pool_size=25", "pool_size=40"))  # billing_growth, by hand
    drifted = _tier_limits_check(admin_dsn)
    assert not drifted.passed and drifted.metadata["findings"].value == 1
    details = drifted.metadata["details"].value
    assert "tier growth: pool billing_growth has pool_size 40" in details and "tier_limits.pool_size is 25" in details
    assert drifted.metadata["pgbouncer_config"].value == str(ini)


def test_tier_limits_check_fails_on_a_pgbouncer_config_it_cannot_read(admin_conn: psycopg.Connection, admin_dsn: str,
                                                                    tmp_path: Path, monkeypatch) -> None:
    """A named config that is gone, or is not a pgbouncer.ini, fails the check with the one-line
    reason and its fix; the run does not error, and the tier limits are still checked."""
    monkeypatch.setenv("TENANT_PIPELINES_METRICS_ROOT", str(tmp_path))
    make_tenant(admin_conn, tier="growth")
    monkeypatch.setenv("TENANT_PIPELINES_PGBOUNCER_INI", str(tmp_path / "gone.ini"))
    missing = _tier_limits_check(admin_dsn)
    assert not missing.passed and missing.metadata["findings"].value == 1
    assert f"names {tmp_path / 'gone.ini'}, which is not a file" in missing.metadata["details"].value
    assert missing.metadata["pgbouncer_config"].value.startswith("pool sizes not checked: ")

    broken = tmp_path / "pgbouncer.ini"
    broken.write_text("[databases]\nbilling_growth = this is not a connection string\n")
    monkeypatch.setenv("TENANT_PIPELINES_PGBOUNCER_INI", str(broken))
    malformed = _tier_limits_check(admin_dsn)
    assert not malformed.passed and malformed.metadata["findings"].value == 1
    assert "billing_growth" in malformed.metadata["details"].value and "\n" not in malformed.metadata["details"].value
