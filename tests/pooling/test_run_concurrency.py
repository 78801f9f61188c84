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

import logging
import uuid
from typing import Iterator

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster_graphql.test.utils import execute_dagster_graphql

from tenant_pipelines.settings import DATABASE_URL_ENV, PROJECT_DIR
from tenant_pipelines.defs.run_coordinator import TenantRunCoordinator
from tenant_pipelines.defs.shared import PRIORITY_TAG, TENANT_TAG, TIER_TAG, tenant_run_tags
from tests.conftest import make_tenant

QUEUED, STARTED = dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED
BACKFILL_TAG = "dagster/backfill"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    project = yaml.safe_load((PROJECT_DIR / "dagster_home" / "dagster.yaml").read_text())
    overrides = {"concurrency": project["concurrency"], "run_coordinator": project["run_coordinator"]}
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
    assert isinstance(instance.run_coordinator, TenantRunCoordinator), "every run is tagged before it is queued"
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


# -- runs launched without the sensors' tags: a backfill from the UI, the launchpad ---------------

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""


@pytest.fixture
def workspace(instance: dg.DagsterInstance, admin_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkspaceProcessContext]:
    """The code location loaded as the webserver and the daemon load it; the billing database
    is the test's, for the code location and the run coordinator alike."""
    monkeypatch.setenv(DATABASE_URL_ENV, admin_dsn)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="tenant_pipelines.definitions", attribute="defs",
                             working_directory=str(PROJECT_DIR)),
        location_name="tenant_pipelines",
    )
    with WorkspaceProcessContext(instance, InProcessTestWorkspaceLoadTarget(origin)) as context:
        yield context


def backfill_from_the_ui(workspace: WorkspaceProcessContext, asset: str, keys: list[str]) -> list[dg.DagsterRun]:
    """What the UI's "Materialize selected partitions" does (GraphQL launchPartitionBackfill),
    then one tick of the backfill daemon, which creates the backfill's runs and submits them."""
    result = execute_dagster_graphql(workspace.create_request_context(), LAUNCH_BACKFILL,
                                     {"params": {"partitionNames": keys, "assetSelection": [{"path": [asset]}]}})
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    list(execute_backfill_iteration(workspace, logging.getLogger("test_backfill_daemon")))
    runs = workspace.instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: launched["backfillId"]}))
    assert runs, "the backfill daemon submitted its runs"
    return runs


LAUNCH_RUN = """
mutation ($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""


def launch_from_the_launchpad(workspace: WorkspaceProcessContext, job: str, tags: dict[str, str]) -> dg.DagsterRun:
    """What the launchpad's "Launch run" does (GraphQL launchRun)."""
    params = {
        "selector": {"repositoryLocationName": "tenant_pipelines", "repositoryName": "__repository__", "jobName": job},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    result = execute_dagster_graphql(workspace.create_request_context(), LAUNCH_RUN, {"executionParams": params})
    launched = result.data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return workspace.instance.get_run_by_id(launched["run"]["runId"])


def test_ui_backfills_get_the_tenant_tier_and_priority_and_the_limits_hold(
    admin_conn: psycopg.Connection, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext
) -> None:
    big = str(make_tenant(admin_conn, "Big", tier="enterprise"))
    small = [str(make_tenant(admin_conn, f"Small {i}", tier="free")) for i in range(3)]
    instance.add_dynamic_partitions("tenants", [big, *small])

    free_runs = [r for key in small for r in backfill_from_the_ui(workspace, "tenant_backup", [key])]
    assert [r.tags[TENANT_TAG] for r in free_runs] == small
    assert {(r.tags[TIER_TAG], r.tags[PRIORITY_TAG]) for r in free_runs} == {("free", "1")}
    assert all(r.status == QUEUED for r in free_runs)
    # the same tenant again, through another asset, while its backup waits in the queue
    (again,) = backfill_from_the_ui(workspace, "tier_placement", [small[0]])
    (enterprise,) = backfill_from_the_ui(workspace, "tenant_backup", [big])  # queued last
    assert enterprise.tags[TENANT_TAG] == big and enterprise.tags[TIER_TAG] == "enterprise"
    assert enterprise.tags[PRIORITY_TAG] == "9"

    chosen = [r.run_id for r in dequeued(instance)]
    assert chosen == [enterprise.run_id, free_runs[0].run_id], (
        "the enterprise run first, then one free-tier run; the other free tenants wait for the free tier's "
        "slot, and the second run of small[0] for its tenant's")
    assert again.run_id not in chosen


def test_a_backfill_batch_over_several_tenants_takes_the_least_important_tier(
    admin_conn: psycopg.Connection, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext
) -> None:
    keys = [str(make_tenant(admin_conn, tier=t)) for t in ("enterprise", "growth", "starter")]
    instance.add_dynamic_partitions("tenants", keys)
    add(instance, "tenant_backup", tags_for("starter"), status=STARTED)  # the starter tier's one slot is taken

    (batch,) = backfill_from_the_ui(workspace, "tenant_partition", keys)  # one run of up to 500 tenants

    assert TENANT_TAG not in batch.tags
    assert (batch.tags[TIER_TAG], batch.tags[PRIORITY_TAG]) == ("starter", "5")
    assert [r.run_id for r in dequeued(instance)] == [], "it waits for the starter tier's slot"


def test_a_launchpad_run_gets_its_tags_from_the_database_not_from_the_launcher(
    admin_conn: psycopg.Connection, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext
) -> None:
    """A run submitted with a partition key and a made-up tier (the launchpad lets anyone type
    tags): the coordinator replaces the tier and priority with the database's."""
    tenant = str(make_tenant(admin_conn, tier="free"))
    run = launch_from_the_launchpad(workspace, "create_tenant_partitions",
                                    {"dagster/partition": tenant, TIER_TAG: "enterprise", PRIORITY_TAG: "99"})
    assert run.status == QUEUED
    assert {k: run.tags[k] for k in (TENANT_TAG, TIER_TAG, PRIORITY_TAG)} == {
        TENANT_TAG: tenant, TIER_TAG: "free", PRIORITY_TAG: "1"}


def test_an_unreachable_billing_database_queues_the_run_as_free_tier(
    instance: dg.DagsterInstance, workspace: WorkspaceProcessContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://nobody@127.0.0.1:1/billing")
    tenant = str(uuid.uuid4())
    run = launch_from_the_launchpad(workspace, "create_tenant_partitions", {"dagster/partition": tenant})
    run_id = run.run_id
    assert run.status == QUEUED and (run.tags[TENANT_TAG], run.tags[TIER_TAG]) == (tenant, "free")
    messages = [e.message for e in instance.all_logs(run_id)]
    assert any("could not be read" in m and "127.0.0.1" in m and "\n" not in m for m in messages)
