"""Backups in the UI: tenant_backup per tenant, the restore drill and freshness checks, the
job, and the sensor that runs backups when tenant_backup_config says they are due."""

import time
from datetime import datetime, timezone

import dagster as dg

from tenant_pipelines.core.backups import backup_frequencies, backup_tenant, list_backups, restore_drill, tenants_due
from tenant_pipelines.core.tenants import tenant_tiers
from tenant_pipelines.defs.resources import BackupStorage, BillingDatabase
from tenant_pipelines.defs.shared import (
    BACKUP_POOL,
    BACKUP_TENANTS_PER_RUN,
    details_md,
    for_each_tenant,
    run_tenant_keys,
    table_metadata,
    tenant_asset,
    tenant_keys,
    tenant_run_tags,
)
from tenant_pipelines.errors import TenantPipelinesError

# The sensor asks for at most this many runs per tick; the rest are due at the next tick.
MAX_RUNS_PER_TICK = 100
_FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@tenant_asset(
    group_name="backups",
    kinds=("postgres", "parquet"),
    pool=BACKUP_POOL,
    tenants_per_run=BACKUP_TENANTS_PER_RUN,
    description="A backup of the tenant as Parquet: organizations, subscriptions, invoices, payment "
    "methods, every usage_events_mt partition, its classification and backup configuration, all from "
    "one snapshot, with a manifest (row counts, sha256 of every file, schemas, snapshot time and LSN). "
    "Encrypted (Parquet modular encryption) when tenant_backup_config.encryption_enabled. Written to a "
    "temporary folder, fsynced and renamed; last_backup_at is set after that; then backups older than "
    "retention_days are removed, never the newest verified one. Run by tenant_backup_sensor when due, "
    "in the Dagster pool backups.",
)
def tenant_backup(
    context: dg.AssetExecutionContext, billing_db: BillingDatabase, backup_storage: BackupStorage
) -> dg.MaterializeResult:
    started = time.monotonic()
    root = backup_storage.resolved_root()
    key = backup_storage.master_key()
    with billing_db.connection() as conn:

        def back_up(tenant: str):
            report = backup_tenant(conn, tenant, root, master_key=key, log=context.log.debug)
            context.log.info(
                f"tenant {tenant}: {report.total_rows} rows, {report.bytes} bytes in {report.seconds:.2f}s "
                f"({report.rows_per_second:,.0f} rows/s) -> {report.path}"
                + (f"; retention removed {len(report.removed_by_retention)}" if report.removed_by_retention else "")
            )
            return report

        reports = for_each_tenant(context, back_up)
    seconds = time.monotonic() - started
    rows = sum(r.total_rows for r in reports)
    metadata: dict = {
        "tenants": len(reports),
        "rows": rows,
        "bytes": sum(r.bytes for r in reports),
        "rows_per_second": round(rows / seconds) if seconds else 0,
        "duration_s": round(seconds, 3),
        "encrypted": all(r.encrypted for r in reports),
        "removed_by_retention": sum(len(r.removed_by_retention) for r in reports),
        "backup_root": dg.MetadataValue.path(str(root)),
    }
    if len(reports) == 1:
        (report,) = reports
        metadata["manifest"] = dg.MetadataValue.path(str(report.path / "manifest.json"))
        metadata["snapshot_lsn"] = report.manifest["snapshot"]["lsn"]
        metadata.update({f"rows/{table}": n for table, n in report.rows.items()})
    metadata["backups"] = table_metadata(
        ({"tenant": r.tenant, "backup_id": r.backup_id, "rows": r.total_rows, "bytes": r.bytes,
          "seconds": round(r.seconds, 3), "manifest": str(r.path / "manifest.json")} for r in reports),
        [("tenant", "string"), ("backup_id", "string"), ("rows", "int"), ("bytes", "int"),
         ("seconds", "float"), ("manifest", "string")],
    )
    return dg.MaterializeResult(metadata=metadata)


def _check_tenants(context: dg.AssetCheckExecutionContext) -> list[str]:
    tenants = run_tenant_keys(context)
    return tenants if tenants is not None else tenant_keys(context.instance)


@dg.asset_check(
    asset=tenant_backup,
    description="Restore drill: the newest backup of each tenant of the run (or of every tenant) is "
    "verified (sha256 of every file), restored into a scratch schema, and its row counts and content "
    "hashes compared with the manifest. On success the backup gets verified.json, which retention "
    "honours; the scratch schema is dropped either way.",
)
def backup_restorable(
    context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase, backup_storage: BackupStorage
) -> dg.AssetCheckResult:
    root = backup_storage.resolved_root()
    key = backup_storage.master_key()
    results: list[tuple[str, str, str]] = []
    with billing_db.connection() as conn:
        for tenant in _check_tenants(context):
            backups = list_backups(root, tenant)
            if not backups:
                results.append((tenant, "", "no backup"))
                continue
            try:
                drill = restore_drill(conn, backups[-1].path, master_key=key, log=context.log.debug)
            except TenantPipelinesError as exc:
                results.append((tenant, backups[-1].backup_id, str(exc)))
                continue
            results.append((tenant, drill.backup_id, "verified" if drill.passed else "; ".join(drill.mismatches)))
    failed = [r for r in results if r[2] != "verified"]
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            "tenants_checked": len(results),
            "verified": len(results) - len(failed),
            "failed": len(failed),
            "details": details_md(f"{t} {b}: {outcome}" for t, b, outcome in (failed or results)),
        },
    )


@dg.asset_check(
    asset=tenant_backup,
    description="Warns when a tenant's newest backup is older than its backup_frequency (or it has none).",
)
def tenant_backups_fresh(
    context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase, backup_storage: BackupStorage
) -> dg.AssetCheckResult:
    root = backup_storage.resolved_root()
    tenants = _check_tenants(context)
    with billing_db.connection() as conn:
        frequencies = backup_frequencies(conn, tenants)
    now = datetime.now(timezone.utc)
    stale = []
    for tenant in tenants:
        if tenant not in frequencies:
            continue  # not an organization (yet): nothing to back up
        backups = list_backups(root, tenant)
        if not backups:
            stale.append(f"{tenant}: no backup")
        elif now - backups[-1].taken_at > frequencies[tenant]:
            stale.append(f"{tenant}: newest backup {backups[-1].taken_at.isoformat()} is older than "
                         f"its frequency {frequencies[tenant]}")
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"tenants_checked": len(frequencies), "stale": len(stale),
                  "details": details_md(stale)},
    )


backup_job = dg.define_asset_job(
    "back_up_tenants",
    selection=[tenant_backup],
    description="Backs tenants up and runs the restore drill. tenant_backup_sensor runs it when a backup is due.",
)


def _backs_up(run: dg.DagsterRun) -> bool:
    return run.job_name == backup_job.name or tenant_backup.key in (run.asset_selection or set())


@dg.sensor(
    job=backup_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a tenant_backup run for each tenant whose tenant_backup_config.next_backup_at "
    f"has passed (never backed up: due at once), at most {MAX_RUNS_PER_TICK} per tick. Run keys "
    "backup:<tenant>:<due time> make a tick idempotent; runs are tagged with the tenant tier for the run queue; a tenant still due after its run finished is "
    "asked again at most once an hour.",
)
def tenant_backup_sensor(context: dg.SensorEvaluationContext, billing_db: BillingDatabase) -> dg.SensorResult:
    known = set(tenant_keys(context.instance))
    with billing_db.connection() as conn:
        due = tenants_due(conn)
        tiers = tenant_tiers(conn)
    hour = datetime.now(timezone.utc).strftime("%Y%m%d%H")
    runs, waiting = [], 0
    for tenant, due_at in due:
        if tenant not in known:
            waiting += 1  # the onboarding sensor adds its key first
            continue
        if len(runs) >= MAX_RUNS_PER_TICK:
            break
        stamp = due_at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ") if due_at else "first"
        run_key = f"backup:{tenant}:{stamp}"
        finished = context.instance.get_run_records(
            dg.RunsFilter(tags={"dagster/partition": tenant}, statuses=_FINISHED, created_after=due_at), limit=20,
        )
        if any(_backs_up(r.dagster_run) for r in finished):  # it ran since it fell due, and it is still due: it failed
            run_key = f"{run_key}:retry-{hour}"
        runs.append(dg.RunRequest(partition_key=tenant, run_key=run_key, tags=tenant_run_tags(tiers, tenant)))
    if not runs:
        return dg.SensorResult(skip_reason=f"no backup due; {waiting} due tenants wait for the onboarding sensor "
                               "to add their `tenants` key" if waiting else "no backup due")
    return dg.SensorResult(run_requests=runs)
