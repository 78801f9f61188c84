"""Tenant partitions in the UI: the asset that creates a tenant's storage, its checks, the
onboarding sensor that finds new tenants, and the daily premake schedule."""

import time
from datetime import datetime, timezone

import dagster as dg

from tenant_pipelines.core.partitions import (
    audit_tenant_partitions,
    ensure_tenant_partition,
    interrupted_promotions,
    organization_ids,
    pool_tenants,
    storage_status,
    stranded_in_pool,
)
from tenant_pipelines.core.tenants import tenant_tiers
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import (
    PARTITION_DDL_POOL,
    details_md,
    for_each_tenant,
    record_per_tenant,
    run_tenant_keys,
    table_metadata,
    tenant_asset,
    tenant_batches_schedule,
    tenant_keys,
    tenant_run_tags,
    tenants_partitions,
)
from tenant_pipelines.errors import TenantPipelinesError


@tenant_asset(
    group_name="tenants",
    pool=PARTITION_DDL_POOL,
    description="The tenant's storage in usage_events_mt. Most tenants are pooled: their rows "
    "live in the shared partition (pool), the DEFAULT partition split by month, whose months this "
    "keeps premade. A tenant whose tenant tier asks for it, flagged dedicated_resources, or past the "
    "split threshold gets a partition of its own within partition_config.leaf_budget: created "
    "standalone, then ATTACHed with its rows moved out of the shared partition in the same "
    "transaction (other tenants' writers never wait). On a Citus coordinator no tenant needs DDL: it "
    "premakes usage_events_mt's months (create_time_partitions). Runs in the Dagster pool partition_ddl. "
    "Idempotent: re-run one tenant, or backfill any set.",
)
def tenant_partition(context: dg.AssetExecutionContext, billing_db: BillingDatabase) -> dg.MaterializeResult:
    started = time.monotonic()
    with billing_db.connection() as conn:
        reports = for_each_tenant(context, lambda key: ensure_tenant_partition(conn, key))
        status = storage_status(conn)
    for report in reports:
        context.log.info(
            f"tenant {report.tenant}: {report.layout}, {len(report.tables_created)} tables created, "
            f"{report.rows_moved} rows moved out of the shared partition (pool), attached now: {report.attached_now}"
            + (f"; {report.note}" if report.note else "")
        )
    return dg.MaterializeResult(
        metadata={
            "tenants": len(reports),
            "pooled": sum(r.layout == "pooled" for r in reports),
            "dedicated": sum(r.layout not in ("pooled", "citus") for r in reports),
            "on_citus": sum(r.layout == "citus" for r in reports),
            "over_leaf_budget": sum("leaf budget" in r.note for r in reports),
            "leaves": status["leaves"],
            "leaf_budget": status["leaf_budget"],
            "dedicated_tenants_in_all": status["dedicated_tenants"],
            "tables_created": sum(len(r.tables_created) for r in reports),
            "rows_moved": sum(r.rows_moved for r in reports),
            "rows_split_into_months": sum(r.rows_split_into_months for r in reports),
            "attached_now": sum(r.attached_now for r in reports),
            "lock_retries": sum(r.lock_retries for r in reports),
            "duration_s": round(time.monotonic() - started, 3),
            "partitions": table_metadata(
                (
                    {"tenant": r.tenant, "partition": r.partition, "layout": r.layout,
                     "tables_created": len(r.tables_created), "rows_moved": r.rows_moved,
                     "attached_now": r.attached_now, "duration_ms": round(r.duration_s * 1000, 1),
                     "note": r.note}
                    for r in reports
                ),
                [("tenant", "string"), ("partition", "string"), ("layout", "string", "pooled (in the shared partition) or dedicated"),
                 ("tables_created", "int"), ("rows_moved", "int", "rows moved out of the shared partition (pool)"),
                 ("attached_now", "bool"), ("duration_ms", "float"), ("note", "string")],
            ),
        }
    )


# Both checks are partitioned like the asset: each run records them for its own tenants, and the
# asset's page shows the latest result against that tenant's latest materialization. Unpartitioned,
# a check's latest result was compared with the asset's latest materialization of any tenant, and
# with tenant runs in parallel it was often another run's: the page said "Not Evaluated".
@dg.asset_check(
    asset=tenant_partition,
    partitions_def=tenants_partitions,
    blocking=True,
    description="The shared partition (pool: the DEFAULT partition of usage_events_mt) holds no "
    "rows of a tenant with a partition of its own, among this run's tenants (or, run on its own, "
    "all tenants): nothing was left behind by a promotion. Pooled tenants' rows belong there. On a Citus "
    "coordinator: none of their rows sit in usage_events_mt's DEFAULT partition, outside the premade months.",
)
def default_partition_drained(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    if tenants is None:
        tenants = tenant_keys(context.instance)
    with billing_db.connection() as conn:
        left = stranded_in_pool(conn, tenants)
    record_per_tenant(context, tenant_partition.key, "default_partition_drained",
                      {t: t not in left for t in tenants}, {})
    return dg.AssetCheckResult(
        passed=not left,
        metadata={
            "tenants_checked": len(tenants),
            "dedicated_tenants_with_rows_in_pool": len(left),
            "details": dg.MetadataValue.md("\n".join(f"- {t}: {n} rows" for t, n in sorted(left.items())) or "none"),
        },
    )


@dg.asset_check(
    asset=tenant_partition,
    partitions_def=tenants_partitions,
    description="The shared partition (pool) and every dedicated tenant partition are complete: a "
    "_rest partition, every month up to the premade horizon, all three indexes on every partition, "
    "RLS forced, owned by billing_owner, no direct privilege for billing_app, and no exclusion CHECK "
    "left on the shared partition by an interrupted promotion. On a Citus coordinator: usage_events_mt's "
    "months from this one to the premake horizon and its DEFAULT partition, each secured.",
)
def tenant_partitions_complete(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    with billing_db.connection() as conn:
        findings = audit_tenant_partitions(conn, tenants)
    if tenants:  # the audit covers the run's tenants together: each gets the run's result
        record_per_tenant(context, tenant_partition.key, "tenant_partitions_complete",
                          {t: not findings for t in tenants}, {"findings_in_run": len(findings)})
    return dg.AssetCheckResult(
        passed=not findings,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "findings": len(findings),
            "details": details_md(str(f) for f in findings),
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
    description="Finds new tenants: organizations with no `tenants` partition key, and tenants "
    "never seen before whose events sit in the shared partition (pool: the DEFAULT partition). Adds "
    "their keys and requests a tenant_partition run for each, tagged with its tenant tier for the run "
    "queue, in one tick (idempotent run keys). Also resumes a promotion that a killed run left half "
    "done (the shared partition would refuse that tenant's rows).",
)
def tenant_onboarding_sensor(context: dg.SensorEvaluationContext, billing_db: BillingDatabase) -> dg.SensorResult:
    known = set(tenant_keys(context.instance))
    with billing_db.connection() as conn:
        organizations = organization_ids(conn)
        in_pool = pool_tenants(conn)
        stuck = interrupted_promotions(conn)
        tiers = tenant_tiers(conn)
    new_keys, rejected = [], []
    for key in sorted(set(organizations) | set(in_pool)):
        if key in known:
            continue
        try:
            new_keys.append(str(parse_tenant_id(key)))
        except TenantPipelinesError as exc:  # cannot happen for uuid columns; never add a bad key
            rejected.append(str(exc))
    for message in rejected:
        context.log.warning(message)
    runs = [dg.RunRequest(partition_key=k, run_key=f"onboard:{k}", tags=tenant_run_tags(tiers, k)) for k in new_keys]
    # A new run key every 10 minutes at most, while the promotion stays interrupted.
    window = datetime.now(timezone.utc).strftime("%Y%m%d%H%M")[:-1]
    for k in stuck:
        context.log.warning(f"tenant {k}: a promotion was interrupted; the shared partition (pool) refuses its rows until it is resumed")
        if k in known or k in new_keys:
            runs.append(dg.RunRequest(partition_key=k, run_key=f"resume:{k}:{window}", tags=tenant_run_tags(tiers, k)))
    if not runs:
        return dg.SensorResult(skip_reason=f"{len(known)} tenants known; no new ones")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[tenants_partitions.build_add_request(new_keys)] if new_keys else [],
    )


premake_schedule = tenant_batches_schedule(
    name="premake_schedule",
    job=tenant_partition_job,
    cron_schedule="15 0 * * *",
    run_key_prefix="premake",
    does="Daily premake: keeps future months in place for every tenant",
)
