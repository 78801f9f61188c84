"""Onboarding and the premake on a Citus coordinator (issue 19): the onboarding sensor finds a
new organization, and a tenant whose events arrived before its organization row (a skip scan on
every shard), tenant_partition for it creates no DDL of its own but keeps usage_events_mt's
months premade (Citus's create_time_partitions), and both checks hold; a month dropped is found
by tenant_partitions_complete and made again; a row outside the months is reported by
default_partition_drained."""

from __future__ import annotations

import uuid

import dagster as dg
import psycopg

from tenant_pipelines.core.citus import audit_citus_months, citus_months, recent_event_tenants
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.partitions_assets import (
    default_partition_drained,
    tenant_onboarding_sensor,
    tenant_partition,
    tenant_partitions_complete,
)
from tests.citus.conftest import CitusTarget, make_citus_tenant


def materialise(instance: dg.DagsterInstance, dsn: str, key: str) -> dg.ExecuteInProcessResult:
    return dg.materialize([tenant_partition, default_partition_drained, tenant_partitions_complete],
                          instance=instance, partition_key=key, resources={"billing_db": BillingDatabase(dsn=dsn)},
                          raise_on_error=False)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_onboarding_and_premake_on_a_coordinator(citus: CitusTarget, citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin, "Onboarded on Citus", "growth")
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance,
                                     resources={"billing_db": BillingDatabase(dsn=citus.admin_dsn)}) as context:
            result = tenant_onboarding_sensor(context)
        assert str(tenant) in {r.partition_key for r in result.run_requests}
        instance.add_dynamic_partitions("tenants", [str(tenant)])

        first = materialise(instance, citus.admin_dsn, str(tenant))
        assert first.success
        (event,) = first.get_asset_materialization_events()
        meta = event.step_materialization_data.materialization.metadata
        assert meta["on_citus"].value == 1 and meta["dedicated"].value == 0
        assert all(e.passed for e in checks(first).values()), checks(first)
        assert audit_citus_months(citus_admin) == []

        # The last premade month gone: the check names it, the next run makes it again.
        last = citus_admin.execute(
            """SELECT partition::text FROM time_partitions WHERE parent_table = 'usage_events_mt'::regclass
                 AND from_value::timestamptz <= now() + make_interval(months => (SELECT premake_months FROM partition_config))
                 AND to_value::timestamptz > now() + make_interval(months => (SELECT premake_months FROM partition_config))"""
        ).fetchone()[0]  # the month at the horizon (other tests may have made later ones)
        citus_admin.execute(f'DROP TABLE "{last}"')
        missing = [str(f) for f in audit_citus_months(citus_admin)]
        assert len(missing) == 1 and "is missing months" in missing[0] and "fn_citus_premake_months" in missing[0]
        again = materialise(instance, citus.admin_dsn, str(tenant))
        assert again.success and last in citus_months(citus_admin)
        assert checks(again)["tenant_partitions_complete"].passed

        # A row beyond the premade months lands in the DEFAULT partition: reported for its tenant.
        citus_admin.execute(
            "INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") "
            "VALUES (%s, 'far', 1, now() + interval '5 years')", (tenant,))
        late = materialise(instance, citus.admin_dsn, str(tenant))
        drained = checks(late)["default_partition_drained"]
        assert not drained.passed and f"{tenant}: 1 rows" in drained.metadata["details"].value
        citus_admin.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND metric_name = 'far'", (tenant,))
    assert uuid.UUID(str(tenant))


def test_the_sensor_finds_events_of_a_tenant_with_no_organization_row(citus: CitusTarget,
                                                                      citus_admin: psycopg.Connection) -> None:
    """Usage events have no foreign key to organizations: a tenant's first events may come
    before its row. The skip scan runs on every shard of usage_events_mt (from the start of last
    month on); a tenant whose events are all older is not new."""
    recent, old = uuid.uuid4(), uuid.uuid4()
    try:
        _find_them(citus, citus_admin, recent, old)
    finally:  # the session is shared: a row left outside the months would stop a later premake of its month
        citus_admin.execute("DELETE FROM usage_events_mt WHERE organization_id = ANY(%s)", ([recent, old],))


def _find_them(citus: CitusTarget, citus_admin: psycopg.Connection, recent: uuid.UUID, old: uuid.UUID) -> None:
    citus_admin.execute(
        "INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
        " VALUES (%s, 'early', 1, now()), (%s, 'early', 2, now() - interval '1 day'),"
        " (%s, 'early', 1, date_trunc('month', now()) - interval '3 months')", (recent, recent, old))
    found = recent_event_tenants(citus_admin)
    assert str(recent) in found and str(old) not in found
    known = {str(t) for (t,) in citus_admin.execute("SELECT DISTINCT organization_id FROM usage_events_mt"
                                                     " WHERE \"timestamp\" >= (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')"
                                                     " AT TIME ZONE 'UTC'")}
    assert set(found) == known, "every tenant with recent events, and only those"
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance,
                                     resources={"billing_db": BillingDatabase(dsn=citus.admin_dsn)}) as context:
            result = tenant_onboarding_sensor(context)
        assert str(recent) in {r.partition_key for r in result.run_requests}
        assert str(old) not in {r.partition_key for r in result.run_requests}
