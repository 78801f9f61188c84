"""tenant_placement in Dagster (issue 17): the asset moves a tenant where its policy (or run
config) says and reports the move; the sensor asks once per policy change; the check lists
tenants that are not where their policy says."""

from __future__ import annotations

import uuid

import dagster as dg
import psycopg
import pytest

from tenant_pipelines.core import placement
from tenant_pipelines.core.moves import move_tenant, placement_status
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.placement_assets import (
    TenantPlacementConfig,
    placements_match_policy,
    tenant_placement,
    tenant_placement_sensor,
)
from tests.conftest import make_tenant
from tests.core.test_moves import fill, snapshot


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def known(conn: psycopg.Connection, instance: dg.DagsterInstance, app_dsn: str | None = None, tier: str = "growth",
          events: int = 50) -> uuid.UUID:
    """A tenant with rows in every moved table (when ``app_dsn``), a partition of ``tenants``."""
    tenant = make_tenant(conn, "Mover", tier)
    if app_dsn:
        fill(conn, app_dsn, tenant, events=events)
    instance.add_dynamic_partitions("tenants", [str(tenant)])
    return tenant


def materialise(instance: dg.DagsterInstance, dsn: str, key: str, to: str | None = None,
                raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [tenant_placement, placements_match_policy], instance=instance, partition_key=key,
        resources={"billing_db": BillingDatabase(dsn=dsn)},
        run_config=dg.RunConfig(ops={"tenant_placement": TenantPlacementConfig(to=to,
                                                                               batch_rows=40)}),
        raise_on_error=raise_on_error)


def check_alone(instance: dg.DagsterInstance, dsn: str) -> dg.AssetCheckEvaluation:
    result = dg.materialize([tenant_placement, placements_match_policy], instance=instance,
                            resources={"billing_db": BillingDatabase(dsn=dsn)},
                            selection=dg.AssetSelection.checks(placements_match_policy))
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def tick(instance: dg.DagsterInstance, dsn: str, cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"billing_db": BillingDatabase(dsn=dsn)}) as context:
        return tenant_placement_sensor(context)


def override(conn: psycopg.Connection, tenant: uuid.UUID) -> str | None:
    return conn.execute("SELECT placement_override FROM tenant_classifications WHERE organization_id = %s",
                        (tenant,)).fetchone()[0]


def test_run_config_moves_a_tenant_to_a_schema_and_back_and_reports_the_move(
    admin_conn: psycopg.Connection, admin_dsn: str, app_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance, app_dsn)
    before = snapshot(app_dsn, tenant)

    there = materialise(instance, admin_dsn, str(tenant), to="schema")
    assert there.success
    assert placement.placement_of(admin_conn, tenant).kind == "schema" and override(admin_conn, tenant) == "schema"
    assert snapshot(app_dsn, tenant) == before
    meta = there.get_asset_materialization_events()[0].materialization.metadata
    assert meta["from"].value == "pooled" and meta["to"].value == "schema" and meta["moved"].value == 1
    assert meta["overrides_recorded"].value == 1
    assert meta["rows_copied"].value == 50 + 1 + 5 + 1 and meta["rows_copied/usage_events"].value == 50
    assert meta["hashes_compared"].value == 4 and len(meta["hashes"].value.records) == 4
    assert {r.data["table"]: r.data["rows"] for r in meta["hashes"].value.records} == {
        "subscriptions": 1, "invoices": 5, "payment_methods": 1, "usage_events": 50}
    steps = {r.data["step"] for r in meta["steps"].value.records}
    assert {"copy", "catch_up", "verify", "cutover", "cleanup"} <= steps
    assert meta["bytes_copied"].value > 0 and meta["mb_per_s"].value > 0
    assert meta["pace"].value.startswith("adaptive") and "pace_over_time" in meta and "why_it_slowed" in meta
    assert meta["cutover_ms"].value > 0 and "cutover_lock_wait_ms" in meta and "keys_caught_up" in meta
    (row,) = meta["placements"].value.records
    assert row.data["to_location"] == placement.schema_name(tenant) and row.data["moved"]
    (check,) = there.get_asset_check_evaluations()
    assert check.passed, check.metadata

    back = materialise(instance, admin_dsn, str(tenant), to="pooled")
    assert back.success
    assert placement.placement_of(admin_conn, tenant).kind == "pooled" and override(admin_conn, tenant) == "pooled"
    assert snapshot(app_dsn, tenant) == before
    meta = back.get_asset_materialization_events()[0].materialization.metadata
    assert meta["from"].value == "schema" and meta["to"].value == "pooled"

    again = materialise(instance, admin_dsn, str(tenant), to="pooled")
    meta = again.get_asset_materialization_events()[0].materialization.metadata
    assert meta["moved"].value == 0 and meta["already_there"].value == 1


def test_without_config_the_policy_decides_and_no_policy_leaves_the_tenant(
    admin_conn: psycopg.Connection, admin_dsn: str, app_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance, app_dsn, tier="growth")
    admin_conn.execute("UPDATE tier_limits SET placement = 'schema' WHERE tier = 'growth'")
    result = materialise(instance, admin_dsn, str(tenant))
    assert result.success and placement.placement_of(admin_conn, tenant).kind == "schema"
    assert override(admin_conn, tenant) is None, "following its tier records no override"

    loose = known(admin_conn, instance, tier="free")
    admin_conn.execute("UPDATE tier_limits SET placement = NULL WHERE tier = 'free'")
    left = materialise(instance, admin_dsn, str(loose))
    meta = left.get_asset_materialization_events()[0].materialization.metadata
    assert meta["no_policy"].value == 1 and meta["moved"].value == 0
    assert "no placement policy: left pooled" in meta["placements"].value.records[0].data["note"]


def test_a_bad_target_fails_the_run_with_a_clear_error(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance)
    bad = materialise(instance, admin_dsn, str(tenant), to="elsewhere", raise_on_error=False)
    assert not bad.success
    (failure,) = [e for e in bad.all_events if e.is_step_failure]
    assert "placement 'elsewhere': use one of pooled, partition, schema" in failure.step_failure_data.error.message
    assert override(admin_conn, tenant) is None


def test_sensor_asks_once_per_tenant_whose_policy_changed(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    changed, same = known(admin_conn, instance, tier="enterprise"), known(admin_conn, instance, tier="free")
    make_tenant(admin_conn, "Not yet in Dagster")  # onboarding adds its key first
    admin_conn.execute("UPDATE tier_limits SET placement = NULL")
    assert not tick(instance, admin_dsn).run_requests

    admin_conn.execute("UPDATE tenant_classifications SET placement_override = 'schema' WHERE organization_id = %s",
                       (changed,))
    first = tick(instance, admin_dsn)
    (request,) = first.run_requests
    assert request.partition_key == str(changed)
    assert request.tags["tenant"] == str(changed) and request.tags["tier"] == "enterprise"
    assert request.run_key.startswith(f"placement:{changed}:schema:pooled:")
    second = tick(instance, admin_dsn, first.cursor)
    assert not second.run_requests and second.skip_reason

    # The move is done: nothing to ask. The policy changes back: one new run, a new key.
    move_tenant(admin_conn, changed, "schema")
    third = tick(instance, admin_dsn, second.cursor)
    assert not third.run_requests
    admin_conn.execute("UPDATE tenant_classifications SET placement_override = 'pooled' WHERE organization_id = %s",
                       (changed,))
    fourth = tick(instance, admin_dsn, third.cursor)
    (again,) = fourth.run_requests
    assert again.partition_key == str(changed) and again.run_key != request.run_key
    assert not tick(instance, admin_dsn, fourth.cursor).run_requests
    assert str(same) not in {r.partition_key for r in first.run_requests + fourth.run_requests}


def test_sensor_leaves_a_tenant_with_a_move_in_progress(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance)
    admin_conn.execute("UPDATE tenant_classifications SET placement_override = 'schema' WHERE organization_id = %s",
                       (tenant,))
    move_tenant(admin_conn, tenant, "schema", stop_after="copy")
    assert not tick(instance, admin_dsn).run_requests
    (status,) = placement_status(admin_conn, [tenant])
    assert status.move_to == "schema" and status.move_step == "copying" and not status.misplaced


def test_check_fails_for_a_misplaced_tenant_and_passes_after_materialising(
    admin_conn: psycopg.Connection, admin_dsn: str, app_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance, app_dsn, events=10)
    admin_conn.execute("UPDATE tenant_classifications SET placement_override = 'schema' WHERE organization_id = %s",
                       (tenant,))
    before = check_alone(instance, admin_dsn)
    assert not before.passed
    assert before.metadata["not_where_policy_says"].value == 1
    assert f"{tenant}: pooled (usage_events_mt_default), policy says schema" in before.metadata["details"].value

    run = materialise(instance, admin_dsn, str(tenant))
    assert run.success
    (check,) = run.get_asset_check_evaluations()
    assert check.passed, check.metadata
    after = check_alone(instance, admin_dsn)
    assert after.passed, after.metadata


def test_check_reports_a_stale_move_and_registry_drift(
    admin_conn: psycopg.Connection, admin_dsn: str, instance: dg.DagsterInstance
) -> None:
    tenant = known(admin_conn, instance)
    admin_conn.execute("UPDATE tier_limits SET placement = NULL")
    move_tenant(admin_conn, tenant, "schema", stop_after="copy")
    assert check_alone(instance, admin_dsn).passed, "a fresh move in progress is fine"
    admin_conn.execute("UPDATE tenant_pipelines.tenant_moves SET started_at = now() - interval '7 hours'")
    drifted = known(admin_conn, instance)
    admin_conn.execute("INSERT INTO tenant_placements (organization_id, kind, location) VALUES (%s, 'partition', %s)"
                       " ON CONFLICT (organization_id) DO UPDATE SET kind = EXCLUDED.kind, location = EXCLUDED.location",
                       (drifted, placement.partition_name(drifted)))
    found = check_alone(instance, admin_dsn)
    assert not found.passed and found.severity == dg.AssetCheckSeverity.ERROR
    assert found.metadata["stale_moves"].value == 1 and found.metadata["registry_drift"].value == 1
    details = found.metadata["details"].value
    assert f"{tenant}: move to schema at step copying" in details and "re-run tenant_placement" in details
    assert f"{drifted}: registry says partition {placement.partition_name(drifted)}, catalog says not attached" in details
