"""tenant_backup, its checks and tenant_backup_sensor, against a real database and a real
Dagster instance."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from tenant_pipelines.core.backups import list_backups
from tenant_pipelines.defs.backups.assets import (
    backup_job,
    backup_restorable,
    tenant_backup,
    tenant_backup_sensor,
    tenant_backups_fresh,
)
from tenant_pipelines.defs.resources import BackupStorage, BillingDatabase
from tenant_pipelines.settings import BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV
from tests.conftest import make_tenant

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(autouse=True)
def backup_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKUP_KEY_ENV, KEY)
    monkeypatch.delenv(BACKUP_KEY_FILE_ENV, raising=False)


def resources(dsn: str, root: Path) -> dict:
    return {"billing_db": BillingDatabase(dsn=dsn), "backup_storage": BackupStorage(root=str(root), dev_key=False)}


def event(conn: psycopg.Connection, tenant: uuid.UUID, n: int) -> None:
    conn.execute(
        'INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp") '
        "SELECT %s, 'api_calls', g / 3.0, now() - g * interval '1 hour' FROM generate_series(1, %s) g",
        (tenant, n),
    )


def test_backfill_over_several_tenants_backs_each_up_and_verifies_it(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    tenants = sorted(str(make_tenant(admin_conn)) for _ in range(3))
    for i, tenant in enumerate(tenants):
        event(admin_conn, uuid.UUID(tenant), 10 * (i + 1))
    instance.add_dynamic_partitions("tenants", tenants)

    run = dg.materialize(
        [tenant_backup, backup_restorable, tenant_backups_fresh], instance=instance, resources=resources(admin_dsn, tmp_path),
        tags={"dagster/asset_partition_range_start": tenants[0], "dagster/asset_partition_range_end": tenants[-1]},
    )

    assert run.success
    mats = run.get_asset_materialization_events()
    assert sorted(m.partition for m in mats) == tenants
    meta = mats[0].materialization.metadata
    assert meta["tenants"].value == 3 and meta["rows"].value == 60 + 3 + 3 and meta["encrypted"].value
    assert len(meta["backups"].value.records) == 3
    checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
    assert checks["backup_restorable"].passed and checks["backup_restorable"].metadata["verified"].value == 3
    assert checks["tenant_backups_fresh"].passed
    for tenant in tenants:
        (backup,) = list_backups(tmp_path, tenant)
        assert backup.verified
    last = admin_conn.execute("SELECT count(*) FROM tenant_backup_config WHERE last_backup_at IS NOT NULL").fetchone()[0]
    assert last == 3


def test_one_tenant_run_carries_the_manifest_path_and_row_counts(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    tenant = str(make_tenant(admin_conn))
    event(admin_conn, uuid.UUID(tenant), 7)
    instance.add_dynamic_partitions("tenants", [tenant])
    run = dg.materialize([tenant_backup], instance=instance, partition_key=tenant, resources=resources(admin_dsn, tmp_path))
    (mat,) = run.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["rows/usage_events_mt"].value == 7 and meta["rows/organizations"].value == 1
    assert meta["manifest"].value.endswith("manifest.json") and Path(meta["manifest"].value).is_file()
    assert meta["rows_per_second"].value > 0 and meta["bytes"].value > 0


def test_no_key_fails_the_run_with_the_tenant_and_the_fix(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BACKUP_KEY_ENV)
    tenant = str(make_tenant(admin_conn))
    instance.add_dynamic_partitions("tenants", [tenant])
    run = dg.materialize([tenant_backup], instance=instance, partition_key=tenant,
                         resources=resources(admin_dsn, tmp_path), raise_on_error=False)
    assert not run.success
    failure = run.get_step_failure_events()[0].step_failure_data.user_failure_data
    text = failure.metadata["failures"].value
    assert tenant in text and BACKUP_KEY_ENV in text
    assert not list(tmp_path.rglob("*.parquet"))


def test_freshness_warns_about_a_tenant_without_a_recent_backup(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    tenant, never = str(make_tenant(admin_conn)), str(make_tenant(admin_conn))
    admin_conn.execute("INSERT INTO tenant_backup_config (organization_id, backup_frequency) VALUES (%s, '1 microsecond')",
                       (tenant,))
    instance.add_dynamic_partitions("tenants", [tenant, never])
    run = dg.materialize([tenant_backup, tenant_backups_fresh], instance=instance, partition_key=tenant,
                         resources=resources(admin_dsn, tmp_path))
    (check,) = run.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "older than its frequency" in check.metadata["details"].value
    # Run on its own, the check looks at every tenant: one never backed up.
    alone = dg.materialize([tenant_backup, tenant_backups_fresh], instance=instance, resources=resources(admin_dsn, tmp_path),
                           selection=dg.AssetSelection.checks(tenant_backups_fresh))
    (check,) = alone.get_asset_check_evaluations()
    assert f"{never}: no backup" in check.metadata["details"].value


def tick(instance: dg.DagsterInstance, dsn: str) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"billing_db": BillingDatabase(dsn=dsn)}) as context:
        return tenant_backup_sensor(context)


def test_sensor_requests_due_tenants_with_idempotent_run_keys(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    never, due, fresh = (str(make_tenant(admin_conn)) for _ in range(3))
    unknown = str(make_tenant(admin_conn))  # no `tenants` key yet: the onboarding sensor adds it first
    instance.add_dynamic_partitions("tenants", [never, due, fresh])
    admin_conn.execute(
        "INSERT INTO tenant_backup_config (organization_id, backup_frequency, last_backup_at) VALUES "
        "(%s, '1 hour', now() - interval '2 hours'), (%s, '1 day', now())", (due, fresh))
    due_at = admin_conn.execute("SELECT next_backup_at FROM tenant_backup_config WHERE organization_id = %s", (due,)).fetchone()[0]

    result = tick(instance, admin_dsn)

    keys = {r.partition_key: r.run_key for r in result.run_requests}
    assert set(keys) == {never, due}
    assert keys[never] == f"backup:{never}:first"
    assert keys[due] == f"backup:{due}:{due_at.strftime('%Y%m%dT%H%M%SZ')}"
    assert all(r.job_name in (None, backup_job.name) for r in result.run_requests)
    assert {r.run_key for r in tick(instance, admin_dsn).run_requests} == set(keys.values()), "same keys: the daemon drops them"

    # The backup of `never` fails (no database): still due, so it is asked again under a new key.
    job = dg.Definitions(assets=[tenant_backup], jobs=[backup_job],
                         resources=resources("postgresql://nobody@127.0.0.1:1/none", tmp_path)).resolve_job_def(backup_job.name)
    failed = job.execute_in_process(instance=instance, partition_key=never, raise_on_error=False)
    assert not failed.success
    retry = {r.partition_key: r.run_key for r in tick(instance, admin_dsn).run_requests}
    assert retry[never].startswith(f"backup:{never}:first:retry-")

    # Both backed up: nothing is due until their frequency has passed.
    for tenant in (never, due):
        assert dg.materialize([tenant_backup], instance=instance, partition_key=tenant,
                              resources=resources(admin_dsn, tmp_path)).success
    done = tick(instance, admin_dsn)
    assert not done.run_requests and "no backup due" in str(done.skip_reason)
    assert unknown not in str(done.skip_reason)
