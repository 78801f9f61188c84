"""Storage tiering in the UI (hot, warm, cold tablespaces: storage tiers, not tenant tiers):
tier_placement per tenant and pool_tier_placement for the shared partition, their checks, the
daily schedules."""

import time
from collections import defaultdict
from typing import Callable

import dagster as dg
import psycopg
from pydantic import Field

from tenant_pipelines.core.storage import misplaced, tier_pool, tier_tenant
from tenant_pipelines.core.tiering import (
    DEFAULT_BATCH_BLOCKS, DEFAULT_MAX_MB_PER_S, ONLINE, Pace, PlannedPartition, TieringOptions, TieringReport,
    check_method)
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import (
    TIERING_POOL,
    PaceConfig,
    details_md,
    for_each_tenant,
    owned_asset,
    pace_metadata,
    run_tenant_keys,
    table_metadata,
    tenant_asset,
    tenant_batches_schedule,
)
from tenant_pipelines.errors import TenantPipelinesError

# tenant_partition (tenants/): the storage whose month partitions these assets move.
TENANT_PARTITION = dg.AssetKey("tenant_partition")


class TierPlacementConfig(PaceConfig):
    """How partitions move. The defaults suit any hour: online, at the pace the writers allow."""

    method: str = Field(
        default=ONLINE,
        description="online: paced copy-and-swap, milliseconds under lock, no I/O burst (default). "
        "set-tablespace: ALTER TABLE ... SET TABLESPACE, a file copy at full disk speed that live "
        "writers' commits queue behind: for maintenance windows.",
    )
    batch_blocks: int | None = Field(
        default=None, description="online: 8 KiB blocks copied per transaction: the largest batch (adaptive; "
        "null: 1024), or the batch (fixed; null: " + str(DEFAULT_BATCH_BLOCKS) + ").")


@tenant_asset(
    deps=[TENANT_PARTITION],
    group_name="storage",
    pool=TIERING_POOL,
    description="Where the tenant's month partitions live: the hot, warm or cold storage tier "
    "(a tablespace each), by age (storage_tiers, tiering_policy); not the tenant tier. Materialising "
    "moves each month whose age puts it in another storage tier: by default online (a copy into the target tablespace at the pace the tenant's writers allow, "
    "measured live, then a swap of milliseconds under lock; metadata: the pace over time and why it slowed), every step with lock_timeout and retries; never the current or a future month, "
    "never a parent. Cold months are frozen. A crashed move is started again on the next run. Runs "
    "in the Dagster pool tiering.",
)
def tier_placement(
    context: dg.AssetExecutionContext, config: TierPlacementConfig, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    return _run_tiering(context, config, billing_db,
                        lambda conn, options: for_each_tenant(context, lambda key: tier_tenant(conn, key, **options)))


@owned_asset(
    deps=[TENANT_PARTITION],
    group_name="storage",
    pool=TIERING_POOL,
    description="Where the month partitions of the shared partition (pool: the DEFAULT partition of "
    "usage_events_mt, holding every pooled tenant's rows) live: the hot, warm or cold storage tier, by "
    "age, under the global tiering_policy row. Moves like tier_placement: online by default, never "
    "the current or a future month; cold months are frozen. Runs in the Dagster pool tiering.",
)
def pool_tier_placement(
    context: dg.AssetExecutionContext, config: TierPlacementConfig, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    return _run_tiering(context, config, billing_db, lambda conn, options: [tier_pool(conn, **options)])


def _run_tiering(
    context: dg.AssetExecutionContext, config: TierPlacementConfig, billing_db: BillingDatabase,
    tier: Callable[[psycopg.Connection, TieringOptions], list[TieringReport]],
) -> dg.MaterializeResult:
    """Check the config, then ``tier`` over one connection with its method and pace (logging to
    the run); a one-line error fails the step with its message. The reports' figures, timed from
    here, are the materialization's metadata."""
    started = time.monotonic()
    options = TieringOptions(method=config.method, pace=_pace(config), log=context.log.info)
    with billing_db.connection() as conn:
        try:
            reports = tier(conn, options)
        except TenantPipelinesError as exc:
            raise dg.Failure(description=str(exc)) from None
    return dg.MaterializeResult(metadata=_metadata(reports, config, started))


def _pace(config: TierPlacementConfig) -> Pace:
    try:
        check_method(config.method)
    except TenantPipelinesError as exc:
        raise dg.Failure(description=f"tier_placement config: {exc}") from None
    return config.to_pace(DEFAULT_MAX_MB_PER_S, config.batch_blocks)


def _metadata(reports: list[TieringReport], config: TierPlacementConfig, started: float) -> dict:
    per_tier: dict[str, dict[str, int]] = defaultdict(lambda: {"partitions": 0, "bytes": 0})
    for report in reports:
        for tier, figures in report.placement.items():
            per_tier[tier]["partitions"] += figures["partitions"]
            per_tier[tier]["bytes"] += figures["bytes"]
    moves = [m for r in reports for m in r.moves]
    restarted = [name for r in reports for name in r.restarted]
    metadata: dict = {
        "tenants": len(reports),
        "method": config.method,
        "max_mb_per_s": config.max_mb_per_s if config.method == ONLINE else None,
        **(pace_metadata([r.pace for r in reports if r.pace is not None]) if config.method == ONLINE else {}),
        "moves_restarted_after_a_crash": len(restarted),
        "partitions_moved": len(moves),
        "bytes_moved": sum(m.bytes for m in moves),
        "lock_time_s": round(sum(m.lock_held_s for m in moves), 3),
        "max_lock_time_ms": round(max((m.lock_held_s for m in moves), default=0) * 1000, 1),
        "duration_s": round(time.monotonic() - started, 3),
        "moves": table_metadata(
            (
                {"partition": m.partition, "from": m.from_tablespace, "to": m.to_tablespace,
                 "bytes": m.bytes, "seconds": round(m.seconds, 2),
                 "lock_ms": round(m.lock_held_s * 1000, 1), "rows_caught_up": m.rows_caught_up,
                 "frozen": m.frozen}
                for m in moves
            ),
            [("partition", "string"), ("from", "string", "tablespace of the storage tier it left"),
             ("to", "string", "tablespace of the storage tier it moved to"), ("bytes", "int"),
             ("seconds", "float"), ("lock_ms", "float"), ("rows_caught_up", "int"), ("frozen", "bool")],
        ),
    }
    for tier in ("hot", "warm", "cold"):  # storage tiers
        metadata[f"{tier}/partitions"] = per_tier.get(tier, {}).get("partitions", 0)
        metadata[f"{tier}/bytes"] = per_tier.get(tier, {}).get("bytes", 0)
    return metadata


@dg.asset_check(
    asset=tier_placement,
    description="Every month partition (of this run's tenants, or of all and the shared partition's) "
    "is in the storage tier (tablespace) its policy says. Lists the ones that are not.",
)
def tiers_match_policy(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    with billing_db.connection() as conn:
        wrong = misplaced(conn, tenants)
    return _misplaced_result(wrong)


@dg.asset_check(
    asset=pool_tier_placement,
    description="Every month partition of the shared partition (pool) is in the storage tier "
    "(tablespace) the global policy says.",
)
def pool_tiers_match_policy(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    with billing_db.connection() as conn:
        wrong = [p for p in misplaced(conn) if p.tenant is None]
    return _misplaced_result(wrong)


def _misplaced_result(wrong: list[PlannedPartition]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not wrong,
        metadata={
            "misplaced": len(wrong),
            "details": details_md(f"{p.qualified_name}: in {p.current_tablespace}, policy says "
                                  f"{p.target_tablespace} ({p.target_tier})" for p in wrong),
        },
    )


tiering_job = dg.define_asset_job(
    "tier_storage",
    selection=[tier_placement],
    description="Moves ageing month partitions between the hot, warm and cold storage tiers (tablespaces).",
)

pool_tiering_job = dg.define_asset_job(
    "tier_pool_storage",
    selection=[pool_tier_placement],
    description="Moves the ageing month partitions of the shared partition (pool: pooled tenants' rows) "
    "between the hot, warm and cold storage tiers (tablespaces).",
)


@dg.schedule(
    job=pool_tiering_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily storage tiering of the shared partition's (pool's) months, one run.",
)
def pool_tiering_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"pool-tiering:{context.scheduled_execution_time.strftime('%Y-%m-%d')}")


tiering_schedule = tenant_batches_schedule(
    name="tiering_schedule",
    job=tiering_job,
    cron_schedule="30 2 * * *",
    run_key_prefix="tiering",
    does="Daily storage tiering for every tenant",
)
