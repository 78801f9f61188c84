"""The cluster's pgBackRest backups in the UI (docs/pitr.md): cluster_backup (full on Sundays,
differential the other days), the WAL archive's health, and each point-in-time-recovery tenant's
restorable window. The restore itself is a command (`tenant-pipelines restore --to-time`)."""

from datetime import datetime, timezone
from typing import Literal

import dagster as dg
from pydantic import Field

from tenant_pipelines.core.pitr import archiver_state, pitr_windows, take_cluster_backup, wal_archive_health
from tenant_pipelines.defs.resources import BillingDatabase, ClusterBackups
from tenant_pipelines.defs.shared import OWNERS, details_md, table_metadata


class ClusterBackupConfig(dg.Config):
    type: Literal["full", "diff"] = Field(
        default="diff", description="full, or diff (differential against the newest full; the first backup is always full)")


def _windows_table(windows, now: datetime) -> dg.TableMetadataValue:
    return table_metadata(
        ({"tenant": w.tenant, "name": w.name, "promised_days": w.promised_days,
          "restorable_from": w.restorable_from.isoformat() if w.restorable_from else "",
          "restorable_until": w.restorable_until.isoformat() if w.restorable_until else "",
          "promise_met": w.met(now)} for w in windows),
        [("tenant", "string"), ("name", "string"), ("promised_days", "int", "tenant_backup_config.retention_days"),
         ("restorable_from", "string", "the oldest cluster backup's end"),
         ("restorable_until", "string", "the newest archived WAL"), ("promise_met", "bool")],
    )


@dg.asset(
    group_name="backups",
    kinds={"postgres", "pgbackrest"},
    owners=OWNERS,
    description="A pgBackRest backup of the whole cluster into its encrypted repository (full or differential), "
    "the base that point-in-time restores of one tenant replay WAL from ('tenant-pipelines restore --to-time'). "
    "Full backups are kept for the longest window a tenant with point_in_time_recovery is promised "
    "(tenant_backup_config.retention_days), at least 14 days, with the WAL after them. Metadata from "
    "'pgbackrest info': label, type, sizes, WAL range, duration, and each PITR tenant's restorable window.",
)
def cluster_backup(config: ClusterBackupConfig, billing_db: BillingDatabase,
                   cluster_backups: ClusterBackups) -> dg.MaterializeResult:
    engine = cluster_backups.engine(billing_db.resolved_dsn())
    with billing_db.connection() as conn:
        backup, days = take_cluster_backup(conn, engine, config.type)
        info = engine.info()
        now = datetime.now(timezone.utc)
        windows = pitr_windows(conn, info, archiver_state(conn).last_archived_time)
    return dg.MaterializeResult(metadata={
        "label": backup.label,
        "type": backup.type,
        "size_bytes": backup.size,
        "repository_bytes": backup.repo_size,
        "copied_bytes": backup.delta,
        "wal_start": backup.wal_start or "",
        "wal_stop": backup.wal_stop or "",
        "lsn_start": backup.lsn_start,
        "lsn_stop": backup.lsn_stop,
        "duration_s": backup.seconds,
        "retention_full_days": days,
        "backups_in_repository": len(info.backups),
        "oldest_backup": info.oldest.label if info.oldest else "",
        "wal_archived": f"{info.wal_min or ''} .. {info.wal_max or ''}",
        "pitr_windows": _windows_table(windows, now),
    })


@dg.asset_check(
    asset=cluster_backup,
    description="The WAL archive works: a forced WAL switch is archived within a minute, the newest archived "
    "WAL is within archive_timeout + 60 s, and no segment is missing from the repository since the oldest "
    "backup's first one. Metadata: each point_in_time_recovery tenant's restorable window.",
)
def wal_archive_healthy(billing_db: BillingDatabase, cluster_backups: ClusterBackups) -> dg.AssetCheckResult:
    engine = cluster_backups.engine(billing_db.resolved_dsn())
    info = engine.info()
    segments = engine.archive_segments(info)
    with billing_db.connection() as conn:
        health = wal_archive_health(conn, info, segments, wait_s=cluster_backups.archive_wait_s)
        now = datetime.now(timezone.utc)
        windows = pitr_windows(conn, info, health.newest_archived_at if health.passed else None)
    return dg.AssetCheckResult(
        passed=health.passed,
        metadata={
            "newest_archived_wal": health.newest_archived_wal or "",
            "newest_archived_at": health.newest_archived_at.isoformat() if health.newest_archived_at else "",
            "archive_timeout_s": health.archive_timeout_s,
            "failed_count": health.failed_count,
            "missing_segments": len(health.gaps),
            "problems": details_md(health.problems),
            "pitr_windows": _windows_table(windows, now),
        },
    )


@dg.asset_check(
    asset=cluster_backup,
    description="Warns when a tenant with point_in_time_recovery cannot yet be restored as far back as it is "
    "promised (tenant_backup_config.retention_days): the oldest cluster backup is newer than that. Retention "
    "never removes what a promise needs, so this passes once the repository is that old.",
)
def pitr_windows_kept(billing_db: BillingDatabase, cluster_backups: ClusterBackups) -> dg.AssetCheckResult:
    engine = cluster_backups.engine(billing_db.resolved_dsn())
    info = engine.info()
    now = datetime.now(timezone.utc)
    with billing_db.connection() as conn:
        windows = pitr_windows(conn, info, now)
    short = [w for w in windows if not w.met(now)]
    return dg.AssetCheckResult(
        passed=not short,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "pitr_tenants": len(windows),
            "short": len(short),
            "details": details_md(
                f"{w.tenant} ({w.name}): promised {w.promised_days} days, restorable from "
                f"{w.restorable_from.isoformat() if w.restorable_from else 'never (no backup)'}" for w in short),
        },
    )


cluster_backup_job = dg.define_asset_job(
    "back_up_cluster",
    selection=[cluster_backup],
    description="A pgBackRest backup of the cluster and its WAL archive checks.",
)

cluster_full_backup_schedule = dg.ScheduleDefinition(
    name="cluster_full_backup_schedule",
    job=cluster_backup_job,
    cron_schedule="30 0 * * 0",
    execution_timezone="UTC",
    run_config={"ops": {"cluster_backup": {"config": {"type": "full"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="A full cluster backup every Sunday at 00:30 UTC.",
)

cluster_diff_backup_schedule = dg.ScheduleDefinition(
    name="cluster_diff_backup_schedule",
    job=cluster_backup_job,
    cron_schedule="30 0 * * 1-6",
    execution_timezone="UTC",
    run_config={"ops": {"cluster_backup": {"config": {"type": "diff"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="A differential cluster backup every other day at 00:30 UTC.",
)
