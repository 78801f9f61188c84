"""Runs over many tenants in a bounded number of runs: one run per batch of partition keys."""

from typing import Callable, TypeVar

import dagster as dg

from tenant_pipelines.errors import TenantPipelinesError

T = TypeVar("T")

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def batched_range_requests(keys: list[str], batch_size: int, run_key_prefix: str) -> list[dg.RunRequest]:
    """One RunRequest per ``batch_size`` consecutive keys, as a partition range: 10,000 tenants
    in batches of 500 make 20 runs. Run keys ``<prefix>:<batch index>`` are idempotent."""
    return [
        dg.RunRequest(
            run_key=f"{run_key_prefix}:{i}",
            tags={RANGE_START_TAG: batch[0], RANGE_END_TAG: batch[-1]},
        )
        for i, batch in enumerate(keys[j: j + batch_size] for j in range(0, len(keys), batch_size))
    ]


def run_tenant_keys(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The tenants of this run (one partition, or a range of them), or None for a run without
    partitions. A check selected on its own runs unpartitioned, so the range comes from the tags."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start and end:
        keys = context.instance.get_dynamic_partitions("tenants")
        if start in keys and end in keys:
            return keys[keys.index(start): keys.index(end) + 1]
    return None


def record_per_tenant(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, check_name: str,
                      passed: dict[str, bool], metadata: dict[str, object]) -> None:
    """A partitioned check in a run over a range of tenants: Dagster plans it for every tenant
    of the range but takes one result for the step, with no partition. Record each tenant's
    result under its partition, so that the asset's page and each partition show it (a planned
    result never recorded would count as not executed)."""
    if context.has_partition_key:
        return  # one tenant: the step's own result is that partition's
    for key, ok in passed.items():
        context.op_execution_context.log_event(dg.AssetCheckEvaluation(
            asset_key=asset_key, check_name=check_name, passed=ok, partition=key,
            metadata={**metadata, "run_tenants": len(passed)}))


def for_each_tenant(context: dg.AssetExecutionContext, work: Callable[[str], T]) -> list[T]:
    """Run ``work`` for every tenant of the run. A tenant that fails with a one-line error does
    not stop the others; the run then fails, listing them, and a re-run is safe."""
    results, failures = [], []
    for key in context.partition_keys:
        try:
            results.append(work(key))
        except TenantPipelinesError as exc:
            failures.append(f"{key}: {exc}")
            context.log.error(str(exc))
    if failures:
        raise dg.Failure(
            description=f"{len(failures)} of {len(context.partition_keys)} tenants failed; "
            "the others are done and a re-run is safe",
            metadata={"failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures))},
        )
    return results
