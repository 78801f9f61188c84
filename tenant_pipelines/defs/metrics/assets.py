"""Per-tenant metrics in the UI: the daily rollup, its quota checks, the tier-limit drift check."""

import os
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from tenant_pipelines.settings import PGBOUNCER_INI_ENV, state_dir
from tenant_pipelines.core.citus import citus_tenant_stats, is_citus_coordinator
from tenant_pipelines.core.security import audit_tier_limits
from tenant_pipelines.core.metrics import collect, export_parquet, quota_use, record_history
from tenant_pipelines.defs.resources import BillingDatabase, pgbouncer_ini_in_force
from tenant_pipelines.defs.shared import owned_asset, table_metadata
from tenant_pipelines.errors import TenantPipelinesError

# tenant_registry (tenants/): upstream of the rollup; its blocking isolation check gates it.
TENANT_REGISTRY = dg.AssetKey("tenant_registry")

METRICS_ROOT_ENV = "TENANT_PIPELINES_METRICS_ROOT"
_TOP = 20


def metrics_root() -> Path:
    """Where the daily Parquet exports go: $TENANT_PIPELINES_METRICS_ROOT, else .tenant-pipelines/metrics."""
    value = os.environ.get(METRICS_ROOT_ENV, "").strip()
    return Path(value) if value else state_dir() / "metrics"


@owned_asset(
    deps=[TENANT_REGISTRY],
    group_name="metrics",
    kinds=("postgres", "parquet"),
    description="Daily per-tenant metrics from vw_tenant_metrics (active subscriptions, events in the "
    "last 24 hours and this month, storage, last activity), kept in tenant_metrics_history and "
    "exported as Parquet under day=YYYY-MM-DD/, with totals per tenant tier. Downstream of tenant_registry, whose isolation "
    "check blocks it.",
)
def tenant_metrics(context: dg.AssetExecutionContext, billing_db: BillingDatabase) -> dg.MaterializeResult:
    started = time.monotonic()
    day = datetime.now(timezone.utc).date()
    with billing_db.connection() as conn:
        metrics = collect(conn)
        record_history(conn, day, metrics)
        on_citus = citus_metadata(conn) if is_citus_coordinator(conn) else {}
    path = export_parquet(metrics_root(), day, metrics)
    per_tier: dict[str, dict[str, int]] = defaultdict(lambda: {"tenants": 0, "events_last_24h": 0, "storage_bytes": 0})
    for m in metrics:
        per_tier[m.tier]["tenants"] += 1
        per_tier[m.tier]["events_last_24h"] += m.events_last_24h
        per_tier[m.tier]["storage_bytes"] += m.storage_bytes
    columns = [("organization_id", "string"), ("name", "string"), ("tier", "string", "tenant tier"),
               ("events_last_24h", "int"), ("events_this_month", "int"), ("storage_bytes", "int")]

    def row(m):
        return {"organization_id": str(m.organization_id), "name": m.organization_name, "tier": m.tier,
                "events_last_24h": m.events_last_24h, "events_this_month": m.events_this_month,
                "storage_bytes": m.storage_bytes}

    return dg.MaterializeResult(
        metadata={
            "day": day.isoformat(),
            "tenants": len(metrics),
            "events_last_24h": sum(m.events_last_24h for m in metrics),
            "storage_bytes": sum(m.storage_bytes for m in metrics),
            "parquet": dg.MetadataValue.path(str(path)),
            "duration_s": round(time.monotonic() - started, 3),
            "top_by_events": table_metadata([row(m) for m in sorted(metrics, key=lambda m: -m.events_last_24h)[:_TOP]], columns),
            "top_by_storage": table_metadata([row(m) for m in sorted(metrics, key=lambda m: -m.storage_bytes)[:_TOP]], columns),
            **on_citus,
            "per_tier": table_metadata(
                [{"tier": t, **v} for t, v in sorted(per_tier.items())],
                [("tier", "string", "tenant tier"), ("tenants", "int"), ("events_last_24h", "int"), ("storage_bytes", "int")],
            ),
        }
    )


def citus_metadata(conn) -> dict:
    """On a Citus coordinator, next to vw_tenant_metrics: each tenant's shard group, worker and
    group size, and its queries, reads and CPU from citus_stat_tenants."""
    stats, note = citus_tenant_stats(conn)
    return {
        "citus_note": note,
        "citus_isolated_tenants": sum(s.kind == "isolated" for s in stats),
        "citus_tenants": table_metadata(
            ({"organization_id": s.tenant, "placement": s.kind, "shard": s.shard_id, "node_id": s.node_id,
              "shard_group_bytes": s.shard_group_bytes, "queries": s.queries, "reads": s.reads,
              "cpu_s": None if s.cpu_s is None else round(s.cpu_s, 3)}
             for s in sorted(stats, key=lambda s: -(s.queries or 0))),
            [("organization_id", "string"), ("placement", "string", "shared or isolated shard group"),
             ("shard", "int", "its shard of organizations"), ("node_id", "int", "the worker holding it"),
             ("shard_group_bytes", "int", "every colocated shard of its group, shared with its neighbours unless isolated"),
             ("queries", "int", "citus_stat_tenants, this period and the last"), ("reads", "int"),
             ("cpu_s", "float")]),
    }


def _quota_check(quota: str, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    with billing_db.connection() as conn:
        uses = [u for u in quota_use(collect(conn)) if u.quota == quota]
    over = sorted((u for u in uses if u.level == "error"), key=lambda u: -u.ratio)
    near = sorted((u for u in uses if u.level == "warn"), key=lambda u: -u.ratio)
    lines = [f"- over: {u}" for u in over] + [f"- at 80%+: {u}" for u in near]
    return dg.AssetCheckResult(
        passed=not (over or near),
        severity=dg.AssetCheckSeverity.ERROR if over else dg.AssetCheckSeverity.WARN,
        metadata={
            "tenants_with_quota": len(uses),
            "over_quota": len(over),
            "at_80_percent": len(near),
            "details": dg.MetadataValue.md("\n".join(lines[:200]) or "none"),
        },
    )


@dg.asset_check(asset=tenant_metrics, description="Events this month against tenant_classifications."
                "monthly_events_limit: WARN at 80%, ERROR at 100%. Names the tenants and their figures.")
def monthly_events_quota(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    return _quota_check("monthly_events", billing_db)


@dg.asset_check(asset=tenant_metrics, description="Storage against tenant_classifications.storage_quota_gb: "
                "WARN at 80%, ERROR at 100%. Names the tenants and their figures.")
def storage_quota(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    return _quota_check("storage", billing_db)


@dg.asset_check(asset=tenant_metrics, description="The limits in force match the tenant tiers: what a "
                "tenant session applies (work_mem, statement_timeout) equals tier_limits for one tenant of "
                "each tenant tier, no role-level setting of billing_app overrides them, and the PgBouncer "
                f"pool sizes (billing_<tenant tier>) equal tier_limits.pool_size (the pgbouncer.ini in ${PGBOUNCER_INI_ENV}, else "
                "the project's own PgBouncer's; without either, pool sizes are not checked).")
def tier_limits_in_force(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    # A PgBouncer config that is named but missing, unreadable or malformed is a finding of
    # this check (with its one-line fix), not an error of the run: the other limits still get checked.
    unreadable = None
    try:
        ini = pgbouncer_ini_in_force()
    except TenantPipelinesError as exc:
        ini, unreadable = None, str(exc)
    with billing_db.connection() as conn:
        try:
            findings = [str(f) for f in audit_tier_limits(conn, pgbouncer_ini=ini)]
        except TenantPipelinesError as exc:
            if ini is None:
                raise
            findings, unreadable = [str(f) for f in audit_tier_limits(conn)], str(exc)
    if unreadable:
        findings.append(unreadable)
        config_meta = dg.MetadataValue.text(f"pool sizes not checked: {unreadable}")
    elif ini:
        config_meta = dg.MetadataValue.path(str(ini))
    else:
        config_meta = dg.MetadataValue.text(f"no PgBouncer configuration found; set {PGBOUNCER_INI_ENV} to check pool sizes")
    return dg.AssetCheckResult(
        passed=not findings,
        metadata={"findings": len(findings), "pgbouncer_config": config_meta,
                  "details": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings) or "none")},
    )


metrics_job = dg.define_asset_job(
    "rollup_tenant_metrics",
    selection=dg.AssetSelection.assets(TENANT_REGISTRY, tenant_metrics),
    description="Refreshes the registry (and its blocking isolation check), then the metrics rollup.",
)

metrics_schedule = dg.ScheduleDefinition(
    name="metrics_schedule",
    job=metrics_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily metrics rollup, after midnight UTC.",
)
