"""The run queue tags every tenant run, however it was launched.

The run limits of dagster_home/dagster.yaml key on the run tags ``tenant``, ``tier`` and
``dagster/priority`` (``tier`` is the tenant tier). The sensors set them, but a backfill from the UI, a launchpad run, a
re-execution or a schedule's run of a partition range carries only Dagster's own partition tags
(``dagster/partition``, or ``dagster/asset_partition_range_start``/``_end``). Every run of every
kind passes through the run coordinator's ``submit_run`` before it is queued, so that is where
the tags are set: from the run's tenants (its partition key, or the keys of its range of the
``tenants`` partitions), with the tiers read from the billing database at that moment. Tags
already on the run are overwritten: the database decides a tenant's tier, not whoever launched
the run.

dagster_home/dagster.yaml selects it::

    run_coordinator:
      module: tenant_pipelines.defs.run_coordinator
      class: TenantRunCoordinator

It is Dagster's QueuedRunCoordinator otherwise (the ``concurrency`` section still holds the limits).
"""

from __future__ import annotations

from typing import Mapping

import psycopg
from dagster._core.run_coordinator.base import SubmitRunContext
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from tenant_pipelines.core.tenants import tenant_tiers, tier_priorities
from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.defs.resources import default_admin_dsn
from tenant_pipelines.defs.shared import run_tags_for_tenants, tenants_partitions
from tenant_pipelines.errors import TenantPipelinesError


def _is_tenant_key(key: str | None) -> bool:
    try:
        return key is not None and str(parse_tenant_id(key)) == key
    except TenantPipelinesError:
        return False


def run_tenants(tags: Mapping[str, str], tenant_keys) -> list[str]:
    """The tenants a run works on, from its partition tags: its partition key, or every key of
    its range (``tenant_keys()``: the ``tenants`` partitions, in order). [] for any other run."""
    key = tags.get(PARTITION_NAME_TAG)
    if key is not None:
        return [key] if _is_tenant_key(key) else []
    start, end = tags.get(ASSET_PARTITION_RANGE_START_TAG), tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if not (_is_tenant_key(start) and _is_tenant_key(end)):
        return []
    if start == end:
        return [start]
    keys = list(tenant_keys())
    if start not in keys or end not in keys:
        return [start, end]  # keys removed meanwhile: at least the two ends
    return keys[keys.index(start): keys.index(end) + 1]


def _tiers(tenants: list[str], dsn: str) -> tuple[dict[str, str], dict[str, int]]:
    """The tenant tiers of ``tenants`` and every tier's priority, on a connection of its own."""
    with connect(dsn, autocommit=True) as conn:
        return tenant_tiers(conn, tenants), tier_priorities(conn)


class TenantRunCoordinator(QueuedRunCoordinator):
    """Dagster's QueuedRunCoordinator, which first tags a tenant run with its tenant, tier and
    priority (see the module's docstring). If the billing database cannot be reached, the run is
    still tagged, as free tier (the most limited), and its event log says why."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        if run.status == DagsterRunStatus.NOT_STARTED:
            tags = self._tenant_tags(run)
            if tags and any(run.tags.get(k) != v for k, v in tags.items()):
                self._instance.add_run_tags(run.run_id, tags)
                run = self._instance.get_run_by_id(run.run_id) or run
                context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)

    def _tenant_tags(self, run: DagsterRun) -> dict[str, str]:
        tenants = run_tenants(run.tags, lambda: self._instance.get_dynamic_partitions(tenants_partitions.name))
        if not tenants:
            return {}
        try:
            tiers, priorities = _tiers(tenants, default_admin_dsn())
        except (TenantPipelinesError, psycopg.Error) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._instance.report_engine_event(
                f"run queue: the tenants' tiers could not be read ({message}); queued as free tier, the most limited",
                run, cls=type(self))
            tiers, priorities = {}, None
        return run_tags_for_tenants(tenants, tiers, priorities)
