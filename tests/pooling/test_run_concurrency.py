"""Noisy neighbours in Dagster's run queue: the tag concurrency limits of
dagster_home/dagster.yaml, applied by Dagster's own dequeue logic to runs tagged with
``tenant_run_tags``.

What this proves, and what it does not: each scenario puts runs in a real (temporary) Dagster
instance configured with the ``concurrency`` section of the project's dagster.yaml and a
QueuedRunCoordinator, then asks the queued-run daemon's decision function
(``QueuedRunCoordinatorDaemon._get_runs_to_dequeue``, private to Dagster) which runs it would
launch now. It does not run the daemon loop or launch any run, so it holds for the Dagster
version pinned here and for runs that carry the tags.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from tenant_pipelines.config import PROJECT_DIR
from tenant_pipelines.defs.tags import PRIORITY_TAG, TENANT_TAG, TIER_TAG, tenant_run_tags
from tests.conftest import make_tenant

QUEUED, STARTED = dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED
BACKFILL_TAG = "dagster/backfill"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    project = yaml.safe_load((PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text())
    overrides = {
        "concurrency": project["concurrency"],
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
    }
    with dg.instance_for_test(overrides=overrides) as inst:
        yield inst


def tags_for(tier: str, tenant: uuid.UUID | None = None) -> dict[str, str]:
    tenant = tenant or uuid.uuid4()
    return tenant_run_tags({str(tenant): tier}, tenant)


def add(instance: dg.DagsterInstance, job: str, tags: dict[str, str], status=QUEUED) -> str:
    # A queued run names the code location it comes from; the location is never loaded here.
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("tenant_pipelines"), "__repository__"), job
    )
    return create_run_for_test(instance, job_name=job, status=status, tags=tags, remote_job_origin=origin).run_id


def dequeued(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    return daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), fixed_iteration_time=None)


def test_the_project_config_sets_the_limits(instance: dg.DagsterInstance) -> None:
    queue = instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 4
    limits = {(l["key"], str(l.get("value"))): l["limit"] for l in queue.tag_concurrency_limits}
    assert limits == {
        ("tenant", "{'applyLimitPerUniqueValue': True}"): 1,
        ("tier", "free"): 1, ("tier", "starter"): 1, ("tier", "growth"): 1,
        ("dagster/backfill", "None"): 2,
    }


def test_a_free_tier_backfill_leaves_the_enterprise_backup_its_slot(instance: dg.DagsterInstance) -> None:
    free_backfill = [add(instance, "tenant_partition", {**tags_for("free"), BACKFILL_TAG: "b1"}) for _ in range(20)]
    backup = add(instance, "tenant_backup", tags_for("enterprise"))  # queued last

    chosen = [r.run_id for r in dequeued(instance)]
    assert chosen[0] == backup, "the enterprise run goes first, ahead of twenty older free-tier runs"
    assert len(chosen) == 2 and chosen[1] == free_backfill[0], "one free-tier run at a time"


def test_with_every_lower_tier_at_its_limit_the_last_slot_is_enterprise(instance: dg.DagsterInstance) -> None:
    for tier in ("free", "starter", "growth"):
        add(instance, "tenant_partition", tags_for(tier), status=STARTED)
    for _ in range(10):
        add(instance, "tenant_partition", tags_for("free"))
        add(instance, "tenant_partition", tags_for("growth"))
    backup = add(instance, "tenant_backup", tags_for("enterprise"))

    assert [r.run_id for r in dequeued(instance)] == [backup]


def test_backfills_together_hold_at_most_two_slots_even_untagged(instance: dg.DagsterInstance) -> None:
    """A backfill of tenant_partition launches runs of up to 500 tenants each: they carry no
    tenant or tier, only dagster/backfill, which caps them at two of the four slots."""
    batches = [add(instance, "create_tenant_partitions", {BACKFILL_TAG: "all-free"}) for _ in range(10)]
    backup = add(instance, "tenant_backup", tags_for("enterprise"))

    chosen = [r.run_id for r in dequeued(instance)]
    assert chosen == [backup, batches[0], batches[1]]


def test_one_run_at_a_time_per_tenant(instance: dg.DagsterInstance) -> None:
    tenant = uuid.uuid4()
    backup = add(instance, "tenant_backup", tags_for("enterprise", tenant))
    add(instance, "tier_storage", tags_for("enterprise", tenant))
    other = add(instance, "tenant_backup", tags_for("enterprise"))

    assert [r.run_id for r in dequeued(instance)] == [backup, other]


def test_tenant_run_tags_read_the_tier_from_the_database(admin_conn: psycopg.Connection) -> None:
    enterprise = make_tenant(admin_conn, "Big", tier="enterprise")
    free = make_tenant(admin_conn, "Small", tier="free")
    admin_conn.execute("INSERT INTO organizations (id, name) VALUES (%s, 'Unclassified')", (unclassified := uuid.uuid4(),))

    assert tenant_run_tags(admin_conn, enterprise) == {TENANT_TAG: str(enterprise), TIER_TAG: "enterprise", PRIORITY_TAG: "9"}
    assert tenant_run_tags(admin_conn, str(free)) == {TENANT_TAG: str(free), TIER_TAG: "free", PRIORITY_TAG: "1"}
    assert tenant_run_tags(admin_conn, unclassified)[TIER_TAG] == "free"
    admin_conn.execute("UPDATE tier_limits SET priority = 2 WHERE tier = 'growth'")
    growth = make_tenant(admin_conn, "Mid", tier="growth")
    assert tenant_run_tags(admin_conn, growth)[PRIORITY_TAG] == "8", "priority comes from tier_limits"
