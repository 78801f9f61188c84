"""Scale-out on Citus in the UI (issue 19, docs/scale-out.md): shard_balance runs Citus's
rebalancer over the tenants' shard groups, and workers_balanced checks how evenly the workers
hold the tenants' data. On a single-node database the asset fails in one line (there is nothing
to balance) and the check passes with a note."""

from typing import Literal

import dagster as dg
from pydantic import Field

from tenant_pipelines.core.citus import SKEW_LIMIT, Balance, NotCitus, rebalance_shards, worker_balance
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.shared import OWNERS, table_metadata
from tenant_pipelines.errors import TenantPipelinesError


class ShardBalanceConfig(dg.Config):
    strategy: Literal["by_disk_size", "by_shard_count"] = Field(
        default="by_disk_size",
        description="Citus's rebalance strategy: by_disk_size weighs shard groups by their bytes, "
        "by_shard_count by their number")


def _workers_table(balance: Balance) -> dg.TableMetadataValue:
    return table_metadata(
        ({"node_id": w.node_id, "node": w.node, "shard_groups": w.shard_groups, "bytes": w.bytes,
          "tenants": w.tenants} for w in balance.workers),
        [("node_id", "int", "pg_dist_node.nodeid"), ("node", "string"),
         ("shard_groups", "int", "of the tenants' colocation group"),
         ("bytes", "int", "every colocated shard there, usage event months included"), ("tenants", "int")],
    )


@dg.asset(
    group_name="scale_out",
    kinds={"postgres", "citus"},
    owners=OWNERS,
    description="How the tenants' shard groups are spread over the Citus workers. Materialising runs Citus's "
    "rebalancer (rebalance_table_shards over organizations and every colocated table, online with logical "
    "replication: tenants keep writing), leaving isolated tenants' shard groups where 'tenant-pipelines citus "
    "move' put them. A balanced cluster has an empty plan: nothing moves. Metadata: the shard moves, and each "
    "worker's shard groups, bytes and tenants before and after. Needs a Citus coordinator.",
)
def shard_balance(config: ShardBalanceConfig, billing_db: BillingDatabase) -> dg.MaterializeResult:
    with billing_db.connection() as conn:
        try:
            report = rebalance_shards(conn, config.strategy)
        except TenantPipelinesError as exc:
            raise dg.Failure(description=f"shard_balance: {exc}") from None
    return dg.MaterializeResult(metadata={
        "strategy": report.strategy,
        "shard_moves": len(report.moves),
        "bytes_moved": sum(m.bytes for m in report.moves),
        "pinned_shard_groups": len(report.pinned),
        "skew_before": round(report.before.skew, 3),
        "skew_after": round(report.after.skew, 3),
        "duration_s": round(report.seconds, 3),
        "moves": table_metadata(
            ({"shard": m.shard_id, "table": m.table, "bytes": m.bytes, "from": m.source, "to": m.target}
             for m in report.moves),
            [("shard", "int"), ("table", "string"), ("bytes", "int"), ("from", "string"), ("to", "string")]),
        "workers_before": _workers_table(report.before),
        "workers_after": _workers_table(report.after),
    })


@dg.asset_check(
    asset=shard_balance,
    description=f"The tenants' data is spread evenly enough over the Citus workers: the fullest worker holds at "
    f"most {SKEW_LIMIT}x the mean (bytes of every colocated shard). A worker that fills first stops every tenant "
    "on it. Fix: materialise shard_balance. Passes with a note on a single-node database.",
)
def workers_balanced(billing_db: BillingDatabase) -> dg.AssetCheckResult:
    with billing_db.connection() as conn:
        try:
            balance = worker_balance(conn)
        except NotCitus as exc:
            return dg.AssetCheckResult(passed=True, metadata={"note": f"nothing to balance: {exc}"})
    fullest = max(balance.workers, key=lambda w: w.bytes, default=None)
    return dg.AssetCheckResult(
        passed=balance.skew <= SKEW_LIMIT,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"skew {balance.skew:.2f}x (limit {SKEW_LIMIT}x)"
                     + (f"; fullest: node {fullest.node_id} ({fullest.node}), {fullest.bytes} bytes" if fullest else "")),
        metadata={"skew": round(balance.skew, 3), "limit": SKEW_LIMIT, "workers": _workers_table(balance)},
    )


balance_shards_job = dg.define_asset_job(
    "balance_shards",
    selection=[shard_balance],
    description="Citus's rebalancer over the tenants' shard groups, and the workers' skew check.",
)

# Stopped by default: the embedded database is a single node. Turn it on in the UI on a coordinator.
shard_balance_schedule = dg.ScheduleDefinition(
    name="shard_balance_schedule",
    job=balance_shards_job,
    cron_schedule="0 3 * * 6",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Saturdays 03:00 UTC: rebalance the tenants' shard groups over the Citus workers (turn it on "
    "when the billing database is a Citus coordinator).",
)
