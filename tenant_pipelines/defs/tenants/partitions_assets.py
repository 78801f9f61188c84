"""Tenant partitions in the UI: the asset that creates a tenant's storage, its checks, the
onboarding sensor that finds new tenants, and the daily premake schedule."""

import time
from datetime import datetime, timezone

import dagster as dg

from tenant_pipelines.core.partitions import (
    audit_tenant_partitions,
    default_partition_tenants,
    ensure_tenant_partition,
    organization_ids,
)
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.defs.batching import batched_range_requests, for_each_tenant, run_tenant_keys
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tags import tenant_run_tags, tenant_tiers
from tenant_pipelines.defs.tenants.assets import OWNERS
from tenant_pipelines.defs.tenants.partitions import tenants_partitions
from tenant_pipelines.errors import TenantPipelinesError

# Runs of many tenants at once (backfills, the premake schedule) take this many per run.
TENANTS_PER_RUN = 500
PARTITION_DDL_POOL = "partition_ddl"
_FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dg.asset(
    partitions_def=tenants_partitions,
    group_name="tenants",
    kinds={"postgres"},
    owners=OWNERS,
    pool=PARTITION_DDL_POOL,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=TENANTS_PER_RUN),
    description="The tenant's partition of usage_events_mt: created standalone, then ATTACHed "
    "(other tenants' writers never wait), with its rows moved out of the DEFAULT partition in "
    "the same transaction, and month partitions premade when the tenant is split by month. "
    "Idempotent: re-run one tenant, or backfill any set.",
)
def tenant_partition(context: dg.AssetExecutionContext, billing_db: BillingDatabase) -> dg.MaterializeResult:
    started = time.monotonic()
    with billing_db.connection() as conn:
        reports = for_each_tenant(context, lambda key: ensure_tenant_partition(conn, key))
    for report in reports:
        context.log.info(
            f"tenant {report.tenant}: {report.layout}, {len(report.tables_created)} tables created, "
            f"{report.rows_moved} rows moved out of DEFAULT, attached now: {report.attached_now}"
        )
    return dg.MaterializeResult(
        metadata={
            "tenants": len(reports),
            "tables_created": sum(len(r.tables_created) for r in reports),
            "rows_moved": sum(r.rows_moved for r in reports),
            "rows_split_into_months": sum(r.rows_split_into_months for r in reports),
            "attached_now": sum(r.attached_now for r in reports),
            "lock_retries": sum(r.attempts - 2 for r in reports),
            "duration_s": round(time.monotonic() - started, 3),
            "partitions": dg.MetadataValue.table(
                records=[
                    dg.TableRecord({
                        "tenant": r.tenant, "partition": r.partition, "layout": r.layout,
                        "tables_created": len(r.tables_created), "rows_moved": r.rows_moved,
                        "attached_now": r.attached_now, "duration_ms": round(r.duration_s * 1000, 1),
                    })
                    for r in reports[:200]
                ],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("tenant", "string"), dg.TableColumn("partition", "string"),
                    dg.TableColumn("layout", "string"), dg.TableColumn("tables_created", "int"),
                    dg.TableColumn("rows_moved", "int"), dg.TableColumn("attached_now", "bool"),
                    dg.TableColumn("duration_ms", "float"),
                ]),
            ),
        }
    )


@dg.asset_check(
    asset=tenant_partition,
    blocking=True,
    description="The DEFAULT partition holds no rows of a tenant this run onboarded (or, run on "
    "its own, of any tenant with a partition key): nothing was left behind by the move.",
)
def default_partition_drained(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    if tenants is None:
        tenants = context.instance.get_dynamic_partitions(tenants_partitions.name)
    with billing_db.connection() as conn:
        in_default = default_partition_tenants(conn)
    left = {t: n for t, n in in_default.items() if t in set(tenants)}
    return dg.AssetCheckResult(
        passed=not left,
        metadata={
            "tenants_checked": len(tenants),
            "tenants_with_rows_in_default": len(left),
            "rows_in_default_total": sum(in_default.values()),
            "details": dg.MetadataValue.md("\n".join(f"- {t}: {n} rows" for t, n in sorted(left.items())) or "none"),
        },
    )


@dg.asset_check(
    asset=tenant_partition,
    description="Every tenant partition is complete: attached, with its _rest partition, every "
    "month up to the premade horizon, all three indexes on every partition, RLS forced, owned by "
    "billing_owner, and no direct privilege for billing_app.",
)
def tenant_partitions_complete(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    with billing_db.connection() as conn:
        findings = audit_tenant_partitions(conn, tenants)
    return dg.AssetCheckResult(
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "findings": len(findings),
            "details": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings[:200]) or "none"),
        },
    )


tenant_partition_job = dg.define_asset_job(
    "create_tenant_partitions",
    selection=[tenant_partition],
    description="Creates or completes tenant partitions. The onboarding sensor and the premake schedule run it.",
)


@dg.sensor(
    job=tenant_partition_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Finds tenants without a partition: organizations with no `tenants` partition key, "
    "and tenants whose events sit in the DEFAULT partition. Adds their keys and requests a "
    "tenant_partition run for each, in one tick.",
)
def tenant_onboarding_sensor(context: dg.SensorEvaluationContext, billing_db: BillingDatabase) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(tenants_partitions.name))
    with billing_db.connection() as conn:
        organizations = organization_ids(conn)
        in_default = default_partition_tenants(conn)
        tiers = tenant_tiers(conn)
    new_keys, rejected = [], []
    for key in sorted(set(organizations) | set(in_default)):
        if key in known:
            continue
        try:
            new_keys.append(str(parse_tenant_id(key)))
        except TenantPipelinesError as exc:  # cannot happen for uuid columns; never add a bad key
            rejected.append(str(exc))
    # A known tenant with rows in DEFAULT has no attached partition yet. While its first run
    # is pending, the same run key again (the daemon drops duplicates); once a run for it has
    # finished without draining it, a new run at most once an hour.
    hour = datetime.now(timezone.utc).strftime("%Y%m%d%H")
    runs = [dg.RunRequest(partition_key=k, run_key=f"onboard:{k}", tags=tenant_run_tags(tiers, k)) for k in new_keys]
    for k in sorted(k for k in in_default if k in known):
        finished = context.instance.get_run_records(
            dg.RunsFilter(tags={"dagster/partition": k}, statuses=_FINISHED), limit=1
        )
        runs.append(dg.RunRequest(partition_key=k, run_key=f"drain:{k}:{hour}" if finished else f"onboard:{k}",
                                  tags=tenant_run_tags(tiers, k)))
    for message in rejected:
        context.log.warning(message)
    if not runs:
        return dg.SensorResult(skip_reason=f"{len(known)} tenants known; none without a partition")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[tenants_partitions.build_add_request(new_keys)] if new_keys else [],
    )


@dg.schedule(
    job=tenant_partition_job,
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Daily premake: keeps future months in place for every tenant, in runs of up to "
    f"{TENANTS_PER_RUN} tenants (10,000 tenants: 20 runs), not one run per tenant.",
)
def premake_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    keys = context.instance.get_dynamic_partitions(tenants_partitions.name)
    if not keys:
        return dg.SkipReason("no tenants yet")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return batched_range_requests(keys, TENANTS_PER_RUN, f"premake:{day}")
