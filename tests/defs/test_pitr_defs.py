"""cluster_backup and its checks against a real cluster that archives into a real pgBackRest
repository (the module cluster of tests/core/test_pitr.py), in a real Dagster instance."""

from __future__ import annotations

import dagster as dg
import psycopg

from tenant_pipelines.defs.backups.cluster import (
    cluster_backup,
    cluster_backup_job,
    cluster_diff_backup_schedule,
    cluster_full_backup_schedule,
    pitr_windows_kept,
    wal_archive_healthy,
)
from tenant_pipelines.defs.resources import BillingDatabase, ClusterBackups
from tests.core.test_backups import seed_tenant
from tests.core.test_pitr import Archived, archive_unwritable, archived, enable_pitr  # noqa: F401 (fixture)

_ENGINES: dict[str, object] = {}


class FixtureBackups(ClusterBackups):
    """The module cluster's pgBackRest, whatever the environment says."""

    def engine(self, dsn: str):
        return _ENGINES["engine"]


def run(archived: Archived, backup_type: str) -> dg.ExecuteInProcessResult:
    _ENGINES["engine"] = archived.engine
    return dg.materialize(
        [cluster_backup, wal_archive_healthy, pitr_windows_kept],
        resources={"billing_db": BillingDatabase(dsn=archived.dsn), "cluster_backups": FixtureBackups()},
        run_config={"ops": {"cluster_backup": {"config": {"type": backup_type}}}},
        raise_on_error=False,
    )


def test_cluster_backup_reports_the_backup_and_the_checks(archived: Archived) -> None:  # noqa: F811
    with psycopg.connect(archived.dsn, autocommit=True) as conn:
        tenant = seed_tenant(conn)
        enable_pitr(conn, tenant, days=30)
    full = run(archived, "full")
    assert full.success
    meta = full.get_asset_materialization_events()[0].materialization.metadata
    assert meta["type"].value == "full" and meta["label"].value.endswith("F")
    assert meta["size_bytes"].value > 0 and meta["wal_start"].value and meta["retention_full_days"].value == 30
    rows = {r.data["tenant"]: r.data for r in meta["pitr_windows"].value.records}
    assert rows[str(tenant)]["promised_days"] == 30 and rows[str(tenant)]["promise_met"] is False
    checks = {e.check_name: e for e in full.get_asset_check_evaluations()}
    assert checks["wal_archive_healthy"].passed, checks["wal_archive_healthy"].metadata["problems"]
    assert not checks["pitr_windows_kept"].passed  # a 30-day promise, a repository minutes old
    assert checks["pitr_windows_kept"].severity == dg.AssetCheckSeverity.WARN

    diff = run(archived, "diff")
    meta = diff.get_asset_materialization_events()[0].materialization.metadata
    assert meta["type"].value == "diff" and meta["label"].value.endswith("D")

    with archive_unwritable(archived):
        broken = dg.materialize(
            [cluster_backup, wal_archive_healthy], selection=dg.AssetSelection.checks(wal_archive_healthy),
            resources={"billing_db": BillingDatabase(dsn=archived.dsn), "cluster_backups": FixtureBackups(archive_wait_s=3)},
            raise_on_error=False)
    (evaluation,) = broken.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "archiving does not work" in evaluation.metadata["problems"].value


def test_schedules_take_full_on_sundays_and_diff_otherwise() -> None:
    assert cluster_full_backup_schedule.job_name == cluster_backup_job.name == cluster_diff_backup_schedule.job_name
    assert cluster_full_backup_schedule.cron_schedule == "30 0 * * 0"
    assert cluster_diff_backup_schedule.cron_schedule == "30 0 * * 1-6"
    full = cluster_full_backup_schedule.evaluate_tick(dg.build_schedule_context())
    assert full.run_requests[0].run_config["ops"]["cluster_backup"]["config"]["type"] == "full"
