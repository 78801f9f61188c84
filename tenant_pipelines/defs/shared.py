"""What every domain folder of the Dagster layer shares: owners, the ``tenants`` partitions,
batch sizes, Dagster pool names, run-queue tags and the one helper for table metadata.

Domains import these from here, never from one another. Nothing here reads the database
itself: the tiers come from tenant_pipelines.core.tenants.

Words that mean two things in this project, and how the UI tells them apart:

- *tenant tier* (free, starter, growth, enterprise: ``tenant_classifications.tier``) versus
  *storage tier* (hot, warm, cold: the tablespace a month partition lives in);
- *shared partition (pool)*: the DEFAULT partition of usage_events_mt that holds every pooled
  tenant's rows, versus a *PgBouncer pool* (billing_<tenant tier>, server connections), versus a
  *Dagster pool* (``PARTITION_DDL_POOL`` ...: how many steps of a kind run at once).
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import dagster as dg
import psycopg
from pydantic import Field

from tenant_pipelines.db.pacing import ADAPTIVE, DEFAULT_TARGET, FIXED, Pace, PaceReport
from tenant_pipelines.core.tenants import tier_of
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import TenantPipelinesError

T = TypeVar("T")

OWNERS = ["team:billing-platform"]

# One partition per organization, keyed by its UUID string (no ',' or '|' can occur).
tenants_partitions = dg.DynamicPartitionsDefinition(name="tenants")

# -- batch sizes ---------------------------------------------------------------------------------

# Runs of many tenants at once (backfills, the premake and tiering schedules) take this many per run.
TENANTS_PER_RUN = 500
# A backup backfill backs up this many tenants per run, one after the other.
BACKUP_TENANTS_PER_RUN = 50
# A placement backfill moves this many tenants per run, one after the other (each move copies
# every row of the tenant, paced).
PLACEMENT_TENANTS_PER_RUN = 20
# Rows shown in a table of an asset's metadata, and lines in a check's details.
ROWS_SHOWN = 200

# -- Dagster pools (not PgBouncer's pools, not the shared partition) -----------------------------
# Each limits how many steps of its kind run at once: dagster.yaml's `concurrency.pools`
# default, or `dagster instance concurrency set <pool> N`.

PARTITION_DDL_POOL = "partition_ddl"  # steps that create or attach tenant partitions
TIERING_POOL = "tiering"  # steps that move month partitions between storage tiers
BACKUP_POOL = "backups"  # steps that hold a snapshot and stream a tenant out
PLACEMENT_POOL = "placement_moves"  # steps that move tenants between placements (pooled, partition, schema)

# -- run-queue tags ------------------------------------------------------------------------------
# dagster_home/dagster.yaml limits runs per tag (``concurrency.runs.tag_concurrency_limits``):
# one run at a time per ``tenant``, few at a time per lower ``tier`` (tenant tier), and
# backfills together to part of the slots. ``dagster/priority`` puts a queued enterprise run
# ahead of a free-tier backlog.

TENANT_TAG = "tenant"
TIER_TAG = "tier"  # the tenant tier, never a storage tier
PRIORITY_TAG = "dagster/priority"  # higher runs first; Dagster's default is 0
# tier_limits.priority of the seed's tenant tiers (1 is the most important), used when no connection is at hand.
SEED_TIER_PRIORITY = {"enterprise": 1, "growth": 3, "starter": 5, "free": 9}
UNCLASSIFIED_TIER = "free"  # fn_set_tenant_resources treats a tenant without a classification so

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def tenant_run_tags(tiers: psycopg.Connection | Mapping[str, str], tenant: object) -> dict[str, str]:
    """``{"tenant": <uuid>, "tier": <tenant tier>, "dagster/priority": <10 - tier priority>}`` for
    a run that works on one tenant. ``tiers`` is an admin connection (the tier and its priority
    are read from tenant_classifications and tier_limits) or a mapping tenant id -> tenant tier
    already read (priorities are then the seed's). An unclassified tenant is free tier."""
    tenant_id = str(parse_tenant_id(tenant))
    if isinstance(tiers, psycopg.Connection):
        tier, priority = tier_of(tiers, tenant_id, UNCLASSIFIED_TIER) or (
            UNCLASSIFIED_TIER, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])
    else:
        tier = tiers.get(tenant_id, UNCLASSIFIED_TIER)
        priority = SEED_TIER_PRIORITY.get(tier, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])
    return {TENANT_TAG: tenant_id, TIER_TAG: tier, PRIORITY_TAG: str(10 - priority)}


def run_tags_for_tenants(
    tenants: list[str], tiers: Mapping[str, str], priorities: Mapping[str, int] | None = None
) -> dict[str, str]:
    """The run-queue tags of a run over ``tenants`` (tenant id -> tenant tier in ``tiers``; a
    tenant missing there is free tier; ``priorities`` from tier_limits, else the seed's).

    One tenant: ``tenant_run_tags``. Several (a backfill's batch, the premake schedule's): no
    ``tenant`` (a run tag names one value), and the tier and priority of the least important
    tier among them, so a batch holding one free-tier tenant waits behind the free tier's limit
    like that tenant's own run would; a batch cannot jump the queue by mixing tiers."""
    priorities = priorities or SEED_TIER_PRIORITY
    fallback = priorities.get(UNCLASSIFIED_TIER, SEED_TIER_PRIORITY[UNCLASSIFIED_TIER])

    def priority(tier: str) -> int:
        return priorities.get(tier, fallback)

    ids = [str(parse_tenant_id(t)) for t in tenants]
    tier = max((tiers.get(t, UNCLASSIFIED_TIER) for t in ids), key=priority)
    tags = {TIER_TAG: tier, PRIORITY_TAG: str(10 - priority(tier))}
    return {TENANT_TAG: ids[0], **tags} if len(ids) == 1 else tags


# -- assets ---------------------------------------------------------------------------------------


def owned_asset(*, group_name: str, kinds: Iterable[str] = ("postgres",), **kwargs: object) -> Callable:
    """``@dg.asset`` in ``group_name``, of ``kinds``, owned by OWNERS, like every asset here."""
    return dg.asset(group_name=group_name, kinds=set(kinds), owners=OWNERS, **kwargs)


def tenant_asset(*, pool: str, tenants_per_run: int = TENANTS_PER_RUN, **kwargs: object) -> Callable:
    """``owned_asset`` with one partition per tenant (``tenants``), run in the Dagster pool
    ``pool``; a backfill takes ``tenants_per_run`` tenants a run."""
    return owned_asset(
        partitions_def=tenants_partitions, pool=pool,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=tenants_per_run), **kwargs)


# -- runs over many tenants: one run per batch of partition keys ----------------------------------


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


def tenant_keys(instance: dg.DagsterInstance) -> list[str]:
    """Every tenant Dagster knows: the keys of the ``tenants`` partitions, in the order they were added."""
    return instance.get_dynamic_partitions(tenants_partitions.name)


def tenant_batches_schedule(*, name: str, job: object, cron_schedule: str, run_key_prefix: str,
                            does: str) -> dg.ScheduleDefinition:
    """A daily schedule (UTC, running by default) of ``job`` (a ``define_asset_job``) over every
    tenant, in runs of TENANTS_PER_RUN tenants (``batched_range_requests``), never one run per
    tenant. Run keys ``<run_key_prefix>:<day>:<batch index>``; no tenants yet: skipped. Its
    description is ``does`` and how it batches."""
    description = (f"{does}, in runs of up to {TENANTS_PER_RUN} tenants "
                   f"(10,000 tenants: {10_000 // TENANTS_PER_RUN} runs), never one run per tenant.")

    @dg.schedule(name=name, job=job, cron_schedule=cron_schedule, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING, description=description)
    def schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        keys = tenant_keys(context.instance)
        if not keys:
            return dg.SkipReason("no tenants yet")
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        return batched_range_requests(keys, TENANTS_PER_RUN, f"{run_key_prefix}:{day}")

    return schedule


def run_tenant_keys(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The tenants of this run (one partition, or a range of them), or None for a run without
    partitions. A check selected on its own runs unpartitioned, so the range comes from the tags."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start and end:
        keys = tenant_keys(context.instance)
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


# -- metadata ------------------------------------------------------------------------------------

Column = tuple[str, str] | tuple[str, str, str]


def table_metadata(rows: Iterable[Mapping[str, object]], columns: Sequence[Column],
                   limit: int = ROWS_SHOWN) -> dg.TableMetadataValue:
    """A table for an asset's metadata: the first ``limit`` of ``rows`` under ``columns``, each
    ``(name, type)`` or ``(name, type, description)`` (the description shows in the UI's schema:
    say "tenant tier" or "storage tier" there when a column could be read either way)."""
    records = []
    for row in rows:
        if len(records) >= limit:
            break
        records.append(dg.TableRecord(dict(row)))
    return dg.MetadataValue.table(
        records=records,
        schema=dg.TableSchema(columns=[dg.TableColumn(*column) for column in columns]),
    )



def details_md(lines: Iterable[str], limit: int = ROWS_SHOWN) -> dg.MarkdownMetadataValue:
    """A check's ``details``: the first ``limit`` of ``lines`` as a markdown list, or "none"."""
    return dg.MetadataValue.md("\n".join(f"- {line}" for line in islice(lines, limit)) or "none")


class PaceConfig(dg.Config):
    """How a mover paces its copy (db/pacing.py): the run config fields of every asset that
    copies rows online (tier_placement, pool_tier_placement, tenant_placement)."""

    pace: str = Field(
        default=ADAPTIVE,
        description="adaptive (default): as fast as the writers allow, measured live (probe commits against "
        "their baseline); at max_mb_per_s, if set, when no other client is active. fixed: max_mb_per_s "
        "all the time.",
    )
    max_mb_per_s: float | None = Field(
        default=None,
        description="adaptive: a ceiling (null: none). fixed: the rate (null: the fixed default).")
    target_p99_ratio: float = Field(
        default=DEFAULT_TARGET,
        description="adaptive: keep the writers' p99 commit within this many times their baseline.")

    def to_pace(self, fixed_mb_per_s: float, batch_blocks: int | None = None) -> Pace:
        """The core's Pace; a bad value fails the run with a one-line message."""
        try:
            if self.pace == FIXED:
                return Pace(self.max_mb_per_s or fixed_mb_per_s, batch_blocks, FIXED, self.target_p99_ratio)
            return Pace(self.max_mb_per_s, batch_blocks, self.pace, self.target_p99_ratio)
        except TenantPipelinesError as exc:
            raise dg.Failure(description=f"run config: {exc}") from None


def pace_metadata(paces: Sequence[PaceReport]) -> dict:
    """How the run's movers paced themselves: their figures, the pace over time (the longest
    one's, as a table) and every slowdown with its reason."""
    if not paces:
        return {}
    longest = max(paces, key=lambda p: p.seconds)
    figures = longest.summary() if len(paces) == 1 else {
        **longest.summary(),
        "pace_mb_per_s": round(sum(p.bytes for p in paces) / 1048576 / max(1e-9, sum(p.seconds for p in paces)), 2),
        "pace_wal_mb": round(sum(p.wal_bytes for p in paces) / 1048576, 1),
        "probe_commits": sum(p.probes for p in paces),
        "probes_over_line": sum(p.crossings for p in paces),
        "slowdowns": sum(len(p.slowdowns) for p in paces),
    }
    return {
        **{k: v for k, v in figures.items() if v is not None},
        "pace_over_time": table_metadata(
            longest.timeline_rows(),
            [("at_s", "float", "seconds since the mover started"),
             ("limit_mb_s", "float", "the rate the pacer allowed (empty: no limit)"),
             ("mb_s", "float", "what was copied"), ("batch_kib", "float"),
             ("writers", "bool", "other clients were active"),
             ("probe_p99_ms", "float", "p99 of the probe commits in the interval"),
             ("crossings", "int", "probe commits over the line")]),
        "why_it_slowed": dg.MetadataValue.md("\n\n".join(
            (f"**{i + 1}.** " if len(paces) > 1 else "") + p.slowdowns_md() for i, p in enumerate(paces))),
    }
