"""tenant_placement on a Citus coordinator (issue 19): the same asset, with Citus doing the move.
Run config ``to: node`` isolates the tenant and moves it to the named worker; without ``to`` the
tenant's policy decides (pooled -> shared, partition or schema -> isolated); an isolated tenant
whose policy says pooled stays isolated, with a note; bad config fails in one line."""

from __future__ import annotations

import uuid

import dagster as dg
import psycopg

from tenant_pipelines.core.citus import tenant_placement_on_citus, worker_balance
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.placement_assets import (
    TenantPlacementConfig,
    placements_match_policy,
    tenant_placement,
    tenant_placement_sensor,
)
from tests.citus.conftest import CitusTarget
from tests.citus.test_citus_isolation import seed, snapshot


def materialise(dsn: str, tenant: uuid.UUID, **config: object) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [str(tenant)])
        return dg.materialize([tenant_placement], instance=instance, partition_key=str(tenant),
                              resources={"billing_db": BillingDatabase(dsn=dsn)},
                              run_config=dg.RunConfig(ops={"tenant_placement": TenantPlacementConfig(**config)}),
                              raise_on_error=False)


def sensor_runs(dsn: str, tenant: uuid.UUID) -> list[dg.RunRequest]:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [str(tenant)])
        with dg.build_sensor_context(instance=instance, resources={"billing_db": BillingDatabase(dsn=dsn)}) as context:
            result = tenant_placement_sensor(context)
    return [r for r in result.run_requests or [] if r.partition_key == str(tenant)]


def check(dsn: str, tenant: uuid.UUID) -> dg.AssetCheckEvaluation:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("tenants", [str(tenant)])
        result = dg.materialize([tenant_placement, placements_match_policy], instance=instance,
                                resources={"billing_db": BillingDatabase(dsn=dsn)},
                                selection=dg.AssetSelection.checks(placements_match_policy))
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    return event.step_materialization_data.materialization.metadata


def failure(result: dg.ExecuteInProcessResult) -> str:
    event = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return event.step_failure_data.error.message + str(event.step_failure_data.user_failure_data.metadata)


def test_tenant_placement_moves_a_tenant_to_a_worker_and_follows_the_policy(
        citus: CitusTarget, citus_admin: psycopg.Connection) -> None:
    tenant, other = seed(citus_admin, "Asset mover", "growth"), seed(citus_admin, "Asset policy", "growth")
    rows = snapshot(citus_admin, [tenant, other])
    before = tenant_placement_on_citus(citus_admin, tenant)
    target = next(w.node_id for w in worker_balance(citus_admin).workers if w.node_id != before.node_id)

    refused = materialise(citus.admin_dsn, tenant, to="node")
    assert not refused.success and "needs node_id" in failure(refused)
    refused = materialise(citus.admin_dsn, tenant, to="schema")
    assert not refused.success and "placement 'schema' on Citus: give one of shared, isolated, node" in failure(refused)

    result = materialise(citus.admin_dsn, tenant, to="node", node_id=target)
    assert result.success
    meta = metadata(result)
    assert meta["moved"].value == 1 and meta["on_citus"].value is True
    (row,) = meta["placements"].value.records
    assert (row.data["from"], row.data["to"], row.data["to_node"]) == ("shared", "isolated", target)
    assert row.data["isolate_s"] > 0 and row.data["move_s"] > 0
    assert tenant_placement_on_citus(citus_admin, tenant).node_id == target
    again = materialise(citus.admin_dsn, tenant, to="node", node_id=target)
    assert again.success and metadata(again)["moved"].value == 0

    # Without `to`, the policy: none for growth here (shared, stays); then an override.
    assert metadata(materialise(citus.admin_dsn, other))["moved"].value == 0
    assert tenant_placement_on_citus(citus_admin, other).kind == "shared"
    citus_admin.execute("UPDATE tenant_classifications SET placement_override = 'partition' WHERE organization_id = %s",
                        (other,))
    # The sensor asks for the move, once per change, and the check names the tenant until it is done.
    assert [r.run_key for r in sensor_runs(citus.admin_dsn, other)] == [f"placement:{other}:isolated:shared:citus"]
    evaluation = check(citus.admin_dsn, other)  # run on its own: every tenant of the database
    assert not evaluation.passed and str(other) in evaluation.metadata["details"].value
    assert metadata(materialise(citus.admin_dsn, other))["moved"].value == 1
    assert tenant_placement_on_citus(citus_admin, other).kind == "isolated"
    assert sensor_runs(citus.admin_dsn, other) == []
    assert str(other) not in check(citus.admin_dsn, other).metadata["details"].value
    citus_admin.execute("UPDATE tenant_classifications SET placement_override = 'pooled' WHERE organization_id = %s",
                        (other,))
    stays = materialise(citus.admin_dsn, other)
    assert stays.success and "cannot merge a shard group back" in metadata(stays)["placements"].value.records[0].data["note"]
    unchanged = {k: v for k, v in rows.items() if k[0] != "tenant_classifications"}  # the overrides set above
    assert {k: v for k, v in snapshot(citus_admin, [tenant, other]).items() if k[0] != "tenant_classifications"} == unchanged
