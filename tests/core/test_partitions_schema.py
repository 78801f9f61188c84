"""Partitions follow placement (issue 17): a schema tenant's months are premade by
ensure_tenant_partition (onboarding, the premake schedule), and tenant_partitions_complete's
audit reports a schema tenant missing its months, or its usage_events."""

from __future__ import annotations

import uuid

import psycopg

from tenant_pipelines.core import moves
from tenant_pipelines.core.partitions import audit_tenant_partitions, ensure_tenant_partition
from tenant_pipelines.core.placement import placement_of
from tests.conftest import make_tenant
from tests.core.test_partitions import add_events, months_ahead


def schema_tenant(conn: psycopg.Connection) -> tuple[uuid.UUID, str]:
    tenant = make_tenant(conn, tier="growth")
    add_events(conn, tenant, 30, days_back=20)
    moves.move_tenant(conn, tenant, "schema")
    return tenant, placement_of(conn, tenant).location


def drop_month(conn: psycopg.Connection, schema: str, month: str) -> None:
    conn.execute(f'DROP TABLE "{schema}".usage_events_p{month}')


def test_a_schema_tenants_months_are_premade_and_audited(admin_conn: psycopg.Connection) -> None:
    tenant, schema = schema_tenant(admin_conn)
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    assert audit_tenant_partitions(admin_conn) == [], "all tenants: the schema tenant included, complete"
    report = ensure_tenant_partition(admin_conn, tenant)
    assert (report.layout, report.partition, report.tables_created) == ("schema", None, [])

    # A month of the horizon gone: the audit names it; the premake makes it again.
    month = months_ahead(2)[2]
    drop_month(admin_conn, schema, month)
    for findings in (audit_tenant_partitions(admin_conn, [tenant]), audit_tenant_partitions(admin_conn)):
        assert [str(f) for f in findings if "missing months" in str(f)] == [
            f"partition {schema}.usage_events: is missing months {month}; fix: materialise tenant_partition for "
            f"{tenant} (or SELECT fn_create_tenant_schema('{tenant}'))"], findings
    report = ensure_tenant_partition(admin_conn, tenant)
    assert report.layout == "schema" and report.tables_created == [f"{schema}.usage_events_p{month}"]
    assert audit_tenant_partitions(admin_conn, [tenant]) == []

    # The horizon moves on: the month past it is due, and made.
    admin_conn.execute("UPDATE partition_config SET premake_months = premake_months + 1")
    horizon = admin_conn.execute(
        "SELECT to_char(now() AT TIME ZONE 'UTC' + make_interval(months => premake_months), 'YYYYMM')"
        " FROM partition_config").fetchone()[0]
    assert any(horizon in str(f) and "missing months" in str(f) for f in audit_tenant_partitions(admin_conn, [tenant]))
    created = ensure_tenant_partition(admin_conn, tenant).tables_created
    assert created == [f"usage_events_mt_pool_p{horizon}", f"{schema}.usage_events_p{horizon}"], "the pool's, and its own"
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    assert placement_of(admin_conn, tenant).kind == "schema"

    # --premake-months reaches a schema tenant as it reaches a dedicated one: two more months.
    further = admin_conn.execute(
        "SELECT premake_months + 2, to_char(now() AT TIME ZONE 'UTC' + make_interval(months => premake_months + 1), 'YYYYMM'),"
        " to_char(now() AT TIME ZONE 'UTC' + make_interval(months => premake_months + 2), 'YYYYMM') FROM partition_config"
    ).fetchone()
    created = ensure_tenant_partition(admin_conn, tenant, premake_months=further[0]).tables_created
    assert [t for t in created if t.startswith(schema)] == [f"{schema}.usage_events_p{further[1]}",
                                                            f"{schema}.usage_events_p{further[2]}"]


def test_every_month_gone_or_the_table_gone_is_reported(admin_conn: psycopg.Connection) -> None:
    tenant, schema = schema_tenant(admin_conn)
    months = [r[0] for r in admin_conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relname ~ '^usage_events_p[0-9]{6}$'",
        (schema,)).fetchall()]
    for name in months:  # every month gone: they are due from this month on all the same
        admin_conn.execute(f'DROP TABLE "{schema}".{name}')
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [tenant])]
    assert any("missing months " + months_ahead(0)[0] in f for f in findings), findings
    assert len(ensure_tenant_partition(admin_conn, tenant).tables_created) >= 3
    assert audit_tenant_partitions(admin_conn, [tenant]) == []

    admin_conn.execute(f'GRANT SELECT ON "{schema}".usage_events_p{months_ahead(1)[1]} TO billing_app')
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [tenant])]
    assert findings == [f"partition {schema}.usage_events_p{months_ahead(1)[1]}: billing_app can access it directly; "
                        f"fix: REVOKE ALL ON {schema}.usage_events_p{months_ahead(1)[1]} FROM billing_app, PUBLIC"], findings

    admin_conn.execute(f'DROP TABLE "{schema}".usage_events')
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [tenant])]
    assert any(f"lives in schema {schema}, which has no usage_events" in f for f in findings), findings
