"""Tenant placements in the UI (issue 17): the asset that moves a tenant online to where its
policy says (pooled, a dedicated partition, or a schema of its own), the sensor that notices a
tenant whose policy changed, and the check that every tenant is where its policy says."""

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg
from pydantic import Field

from tenant_pipelines.core.citus import (
    PlacementChange,
    citus_placement_status,
    citus_policy,
    is_citus_coordinator,
    place_tenant_on_citus,
    record_citus_placement,
    tenant_placement_on_citus,
)
from tenant_pipelines.core.moves import (
    ADAPTIVE_BATCH_ROWS,
    DEFAULT_BATCH_ROWS,
    FIXED_MAX_MB_PER_S,
    MiB,
    MoveRefused,
    MoveReport,
    PlacementStatus,
    check_kind,
    move_tenant,
    placement_status,
    set_placement_override,
)
from tenant_pipelines.core.partitions import require_known_tenant
from tenant_pipelines.core.placement import registry_drift
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import (
    PLACEMENT_POOL,
    PLACEMENT_TENANTS_PER_RUN,
    UNCLASSIFIED_TIER,
    PaceConfig,
    details_md,
    for_each_tenant,
    pace_metadata,
    run_tenant_keys,
    table_metadata,
    tenant_asset,
    tenant_keys,
    tenant_run_tags,
)
from tenant_pipelines.errors import TenantPipelinesError

# tenant_partition (partitions_assets.py): the storage a tenant is first given; this moves it.
TENANT_PARTITION = dg.AssetKey("tenant_partition")
# A move in progress for longer than this is reported by placements_match_policy.
STALE_MOVE_HOURS = 6
# The sensor requests at most this many runs a tick; the rest follow on the next ticks.
MAX_RUNS_PER_TICK = 100


class TenantPlacementConfig(PaceConfig):
    """Where to, and how fast. Without ``to``, each tenant goes where its policy says."""

    to: str | None = Field(
        default=None,
        description="pooled, partition or schema: move the run's tenants there, and record it as their "
        "placement override (tenant_classifications.placement_override) so that the placement sensor "
        "keeps them there. Empty: where their policy says (override, else tenant tier). On a Citus "
        "coordinator: shared, isolated (a shard group of its own) or node (isolated, on worker node_id); "
        "empty: pooled policy -> shared, partition or schema -> isolated; nothing is recorded.",
    )
    node_id: int | None = Field(default=None, description="Citus only, with to: node: the worker "
                                "(pg_dist_node.nodeid; 'tenant-pipelines citus nodes' lists them).")
    batch_rows: int | None = Field(default=None, description="rows copied per transaction, at most "
                            "(adaptive: the pace picks fewer while writers are active; null: " f"{ADAPTIVE_BATCH_ROWS}. fixed: this many; null: "
                            f"{DEFAULT_BATCH_ROWS}); 1 to 1000000.")


@dataclass
class Placed:
    """What one tenant's step did: its move's report, or why it stayed."""

    tenant: str
    report: MoveReport | None  # None: no policy, left where it was
    override_recorded: bool = False
    note: str = ""
    seconds: float = 0.0


@tenant_asset(
    deps=[TENANT_PARTITION],
    group_name="tenants",
    pool=PLACEMENT_POOL,
    tenants_per_run=PLACEMENT_TENANTS_PER_RUN,
    description="Where the tenant's rows live: pooled (the shared tables, its usage events in the shared "
    "partition), a dedicated partition of usage_events_mt, or a schema of its own (tenant_<hex>). "
    "Materialising moves the tenant online to where its policy says (tenant_classifications."
    "placement_override, else its tenant tier's tier_limits.placement): its rows copied in batches, "
    "at the pace its writers allow (measured live), while it keeps writing, writes caught up, both sides compared by count and hash, then a "
    "cutover of milliseconds under the tenant's own lock (other tenants never wait); a crashed move "
    "resumes. No policy: the tenant stays where it is (the partition rule of tenant_partition decides "
    "between pooled and partition). Run config `to` names the placement and records it as the "
    "tenant's override. Runs in the Dagster pool placement_moves; a backfill moves "
    f"{PLACEMENT_TENANTS_PER_RUN} tenants a run, one after the other.",
)
def tenant_placement(
    context: dg.AssetExecutionContext, config: TenantPlacementConfig, billing_db: BillingDatabase
) -> dg.MaterializeResult:
    started = time.monotonic()
    with billing_db.connection() as conn:
        if is_citus_coordinator(conn):
            return _place_all_on_citus(context, conn, config, started)
        if config.to is not None:
            try:
                check_kind(config.to)
            except TenantPipelinesError as exc:
                raise dg.Failure(description=f"tenant_placement config: {exc}") from None
        placed = for_each_tenant(context, lambda key: _place(conn, key, config, context.log.info))
    for p in placed:
        if p.note:
            context.log.info(f"tenant {p.tenant}: {p.note}")
    return dg.MaterializeResult(metadata=_metadata(placed, config, started))


def _place(conn, key: str, config: TenantPlacementConfig, log) -> Placed:
    started = time.monotonic()
    tenant = require_known_tenant(conn, key)
    recorded = False
    (status,) = placement_status(conn, [tenant])
    if config.to is not None:
        if status.move_to is not None and status.move_to != config.to:
            raise MoveRefused(f"tenant {tenant}: a move to {status.move_to} is in progress (step {status.move_step}); "
                              f"finish it (to: {status.move_to}) or abandon it first")
        recorded = set_placement_override(conn, tenant, config.to)
        target, why = config.to, "run config" + ("" if recorded else " (no classification: override not recorded)")
    else:
        if status.policy is not None:
            target, why = status.policy, "its override" if status.override else f"its tenant tier ({status.tier})"
        elif status.move_to is not None:
            target, why = status.move_to, "no policy; finishing the move in progress"
        else:
            return Placed(str(tenant), None, note=f"no placement policy: left {status.kind} ({status.location}); "
                          "the partition rule of tenant_partition decides between pooled and partition",
                          seconds=time.monotonic() - started)
    report = move_tenant(conn, tenant, target, batch_rows=config.batch_rows, pace=config.to_pace(FIXED_MAX_MB_PER_S),
                         log=log)
    note = (f"{report.from_kind} -> {report.to_kind} ({why})" if report.moved
            else f"already {report.to_kind} ({report.to_location}), as {why} says")
    return Placed(str(tenant), report, recorded, note, time.monotonic() - started)


def _place_all_on_citus(context: dg.AssetExecutionContext, conn, config: TenantPlacementConfig,
                        started: float) -> dg.MaterializeResult:
    """On a Citus coordinator Citus moves the tenant (core/citus.py): isolate_tenant_to_new_shard
    and citus_move_shard_placement, online."""

    def place(key: str) -> tuple[PlacementChange, str]:
        tenant = require_known_tenant(conn, key)
        to, why = config.to, "run config"
        if to is None:
            to, why = citus_policy(conn, tenant), "its policy"
            if to is None:
                to, why = "shared", "no policy"
        if config.to is None and to == "shared":
            here = tenant_placement_on_citus(conn, tenant)
            if here.kind != "shared":
                record_citus_placement(conn, here)
                return (PlacementChange(tenant, here, here, {}),
                        f"stays isolated on node {here.node_id}: Citus cannot merge a shard group back ({why})")
        change = place_tenant_on_citus(conn, tenant, to, config.node_id)
        note = (f"{change.before.kind} on node {change.before.node_id} -> {change.after.kind} on node "
                f"{change.after.node_id} ({why})" if change.steps else f"already {change.after.kind} on node "
                f"{change.after.node_id}, as {why} says")
        context.log.info(f"tenant {tenant}: {note}")
        return change, note

    placed = for_each_tenant(context, place)
    return dg.MaterializeResult(metadata={
        "tenants": len(placed),
        "moved": sum(bool(change.steps) for change, _ in placed),
        "requested_to": config.to or "policy",
        "on_citus": True,
        "duration_s": round(time.monotonic() - started, 3),
        "placements": table_metadata(
            ({"tenant": str(change.tenant), "from": change.before.kind, "from_node": change.before.node_id,
              "to": change.after.kind, "to_node": change.after.node_id, "shard": change.after.shard_id,
              **{f"{step}_s": round(change.steps.get(step, 0.0), 3) for step in ("isolate", "move")}, "note": note}
             for change, note in placed),
            [("tenant", "string"), ("from", "string", "shared or isolated"), ("from_node", "int", "pg_dist_node.nodeid"),
             ("to", "string"), ("to_node", "int"), ("shard", "int", "its shard of organizations"),
             ("isolate_s", "float", "isolate_tenant_to_new_shard, online"),
             ("move_s", "float", "citus_move_shard_placement, online"), ("note", "string")]),
    })


def _copy_seconds(report: MoveReport) -> float:
    return sum(s for step, s in report.steps.items() if step.split()[-1] in ("copy", "promote"))


def _metadata(placed: list[Placed], config: TenantPlacementConfig, started: float) -> dict:
    reports = [p.report for p in placed if p.report is not None]
    moved = [r for r in reports if r.moved]
    copy_s = sum(_copy_seconds(r) for r in moved)
    bytes_copied = sum(r.bytes_copied for r in moved)
    rows: dict[str, int] = {}
    for r in moved:
        for table, n in r.rows_copied.items():
            rows[table] = rows.get(table, 0) + n

    def one(values: set[str]) -> str:
        return ", ".join(sorted(values)) or "-"

    return {
        "tenants": len(placed),
        "moved": len(moved),
        "already_there": sum(not r.moved for r in reports),
        "no_policy": sum(p.report is None for p in placed),
        "from": one({r.from_kind for r in moved}),
        "to": one({r.to_kind for r in reports}),
        "requested_to": config.to or "policy",
        "overrides_recorded": sum(p.override_recorded for p in placed),
        "rows_copied": sum(rows.values()),
        **{f"rows_copied/{table}": n for table, n in sorted(rows.items())},
        "keys_caught_up": sum(r.keys_caught_up + r.cutover_keys for r in moved),
        "hashes_compared": sum(len(r.hashes) for r in moved),
        "cutover_lock_wait_ms": round(max((r.cutover_lock_wait_ms for r in moved), default=0.0), 1),
        "cutover_ms": round(max((r.cutover_ms for r in moved), default=0.0), 1),
        "lock_retries": sum(r.lock_retries for r in moved),
        "bytes_copied": bytes_copied,
        "mb_per_s": round(bytes_copied / MiB / copy_s, 4) if copy_s > 0 else None,
        "max_mb_per_s": config.max_mb_per_s,
        **pace_metadata([r.pace for r in moved if r.pace is not None]),
        "duration_s": round(time.monotonic() - started, 3),
        "placements": table_metadata(
            ({"tenant": p.tenant,
              "from": p.report.from_kind if p.report else "-", "to": p.report.to_kind if p.report else "-",
              "to_location": p.report.to_location if p.report else "-",
              "moved": bool(p.report and p.report.moved),
              "resumed_from": (p.report.resumed_from if p.report else None) or "-",
              "rows_copied": sum(p.report.rows_copied.values()) if p.report else 0,
              "bytes_copied": p.report.bytes_copied if p.report else 0,
              "cutover_lock_wait_ms": round(p.report.cutover_lock_wait_ms, 1) if p.report else 0.0,
              "cutover_ms": round(p.report.cutover_ms, 1) if p.report else 0.0,
              "seconds": round(p.seconds, 2), "note": p.note}
             for p in placed),
            [("tenant", "string"), ("from", "string", "pooled, partition or schema"), ("to", "string"),
             ("to_location", "string", "its partition, the shared partition (pool) or its schema"),
             ("moved", "bool"), ("resumed_from", "string", "the step a crashed move resumed at"),
             ("rows_copied", "int"), ("bytes_copied", "int"),
             ("cutover_lock_wait_ms", "float", "waited for the tenant's own lock (its writers only)"),
             ("cutover_ms", "float", "held the tenant's lock"), ("seconds", "float"), ("note", "string")],
        ),
        "steps": table_metadata(
            ({"tenant": p.tenant, "step": step, "seconds": round(seconds, 3)}
             for p in placed if p.report for step, seconds in p.report.steps.items()),
            [("tenant", "string"), ("step", "string", "begin, prepare, copy, catch_up, verify, cutover, cleanup "
                                    "(1/2: the hops of partition -> pooled; promote: pooled -> partition)"),
             ("seconds", "float")],
        ),
        "hashes": table_metadata(
            ({"tenant": p.tenant, "table": table, "rows": count, "hash": str(digest)}
             for p in placed if p.report for table, (count, digest) in p.report.hashes.items()),
            [("tenant", "string"), ("table", "string"), ("rows", "int", "equal on both sides"),
             ("hash", "string", "sum of the rows' 64-bit hashes, equal on both sides")],
        ),
    }


@dg.asset_check(
    asset=tenant_placement,
    description="Every tenant (of this run, or all when run on its own) is where its placement policy "
    "says (override, else tenant tier; no policy: anywhere), no move has been in progress for more "
    f"than {STALE_MOVE_HOURS} hours, and the placement registry agrees with the catalog (no partition "
    "attached for a tenant placed elsewhere, none registered and missing).",
)
def placements_match_policy(context: dg.AssetCheckExecutionContext, billing_db: BillingDatabase) -> dg.AssetCheckResult:
    tenants = run_tenant_keys(context)
    with billing_db.connection() as conn:
        if is_citus_coordinator(conn):
            return _citus_placements_match_policy(citus_placement_status(conn, tenants))
        statuses = placement_status(conn, tenants)
        drift = registry_drift(conn)
    scope = None if tenants is None else {s.tenant for s in statuses}
    moving = {s.tenant for s in statuses if s.move_step is not None}
    drift = [d for d in drift if (scope is None or d[0] in scope) and d[0] not in moving]
    wrong = [s for s in statuses if s.misplaced]
    stale_before = datetime.now(timezone.utc) - timedelta(hours=STALE_MOVE_HOURS)
    stale = [s for s in statuses if s.move_started_at is not None and s.move_started_at < stale_before]
    lines = [f"{s.tenant}: {s.kind} ({s.location}), policy says {s.policy}" for s in wrong]
    lines += [f"{s.tenant}: move to {s.move_to} at step {s.move_step} since {s.move_started_at:%Y-%m-%d %H:%M} UTC "
              f"(over {STALE_MOVE_HOURS} h): re-run tenant_placement to finish it, or abandon it" for s in stale]
    lines += [f"{t}: registry says {said}, catalog says {found}" for t, said, found in drift]
    return dg.AssetCheckResult(
        passed=not lines,
        severity=dg.AssetCheckSeverity.ERROR if stale or drift else dg.AssetCheckSeverity.WARN,
        metadata={
            "tenants_checked": len(statuses),
            "not_where_policy_says": len(wrong),
            "moves_in_progress": len(moving),
            "stale_moves": len(stale),
            "registry_drift": len(drift),
            "details": details_md(lines),
        },
    )


def _citus_placements_match_policy(statuses) -> dg.AssetCheckResult:
    wrong = [s for s in statuses if s.misplaced]
    drift = [s for s in statuses if s.registry_drift]
    lines = [f"{s.tenant}: in a shared shard group on node {s.node_id}, policy says isolated: "
             "materialise tenant_placement for it" for s in wrong]
    lines += [f"{s.tenant}: registry says {s.recorded}, Citus says {s.kind} (node {s.node_id}): materialise "
              "tenant_placement for it, which records where Citus has it" for s in drift]
    return dg.AssetCheckResult(
        passed=not lines,
        severity=dg.AssetCheckSeverity.ERROR if drift else dg.AssetCheckSeverity.WARN,
        metadata={
            "tenants_checked": len(statuses),
            "not_where_policy_says": len(wrong),
            "registry_drift": len(drift),
            "on_citus": True,
            "details": details_md(lines),
        },
    )


tenant_placement_job = dg.define_asset_job(
    "move_tenant_placements",
    selection=[tenant_placement],
    description="Moves tenants online to where their placement policy says (pooled, partition, schema). "
    "The placement sensor runs it for each tenant whose policy changed.",
)


def placement_run_key(status: PlacementStatus) -> str:
    """The same tenant, target and registry row give the same key; a policy change (a new target)
    or a move since (a new ``since``) give a new one."""
    since = status.since.isoformat() if status.since is not None else "unregistered"
    return f"placement:{status.tenant}:{status.policy}:{status.kind}:{since}"


def _digest(run_key: str) -> str:
    return hashlib.sha1(run_key.encode()).hexdigest()[:16]


@dg.sensor(
    job=tenant_placement_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Finds tenants that are not where their placement policy says (tenant_classifications."
    "placement_override, else tier_limits.placement; no policy: never moved) and have no move in "
    "progress, and requests one tenant_placement run for each, tagged with its tenant and tenant tier "
    f"for the run queue; at most {MAX_RUNS_PER_TICK} a tick. Run keys name the tenant, the target and "
    "the registry row (its kind and since), so a tenant is asked once per change; the cursor remembers "
    "the keys already asked while they are pending.",
)
def tenant_placement_sensor(context: dg.SensorEvaluationContext, billing_db: BillingDatabase) -> dg.SensorResult:
    known = set(tenant_keys(context.instance))
    with billing_db.connection() as conn:
        if is_citus_coordinator(conn):
            return _citus_sensor(context, known, citus_placement_status(conn))
        statuses = placement_status(conn)
    asked = set(json.loads(context.cursor)) if context.cursor else set()
    pending: set[str] = set()
    runs = []
    for status in statuses:
        key = str(status.tenant)
        if not status.misplaced or key not in known:  # unknown to Dagster: onboarding adds it first
            continue
        run_key = placement_run_key(status)
        digest = _digest(run_key)
        if digest not in asked:
            if len(runs) >= MAX_RUNS_PER_TICK:
                continue
            context.log.info(f"tenant {key}: {status.kind}, policy says {status.policy}: requesting a move")
            runs.append(dg.RunRequest(partition_key=key, run_key=run_key,
                                      tags=tenant_run_tags({key: status.tier or UNCLASSIFIED_TIER}, key)))
        pending.add(digest)
    cursor = json.dumps(sorted(pending))
    if not runs:
        return dg.SensorResult(skip_reason=f"{len(statuses)} tenants; none newly away from its placement policy "
                               f"({len(pending)} moves already requested)", cursor=cursor)
    return dg.SensorResult(run_requests=runs, cursor=cursor)



def _citus_sensor(context: dg.SensorEvaluationContext, known: set[str], statuses) -> dg.SensorResult:
    """On Citus: a run for each known tenant whose policy asks for isolation it does not have.
    The run key names the tenant, the target and where it is, so it is asked once per change."""
    runs = []
    for status in statuses:
        if not status.misplaced or status.tenant not in known or len(runs) >= MAX_RUNS_PER_TICK:
            continue
        context.log.info(f"tenant {status.tenant}: {status.kind} on node {status.node_id}, policy says "
                         f"{status.policy}: requesting a move")
        runs.append(dg.RunRequest(partition_key=status.tenant,
                                  run_key=f"placement:{status.tenant}:{status.policy}:{status.kind}:citus",
                                  tags=tenant_run_tags({status.tenant: status.tier or UNCLASSIFIED_TIER}, status.tenant)))
    if not runs:
        return dg.SensorResult(skip_reason=f"{len(statuses)} tenants on Citus; none away from its placement policy")
    return dg.SensorResult(run_requests=runs)
