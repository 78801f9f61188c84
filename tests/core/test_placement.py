"""The placement registry (sql/migrations/0018, core/placement.py): where each tenant lives is
recorded by the transaction that puts it there, read from one place, and audited against the
catalog."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tenant_pipelines.core.partitions import audit_tenant_partitions, ensure_tenant_partition
from tenant_pipelines.core.placement import (
    PARTITION,
    POOLED,
    SHARED_PARTITION,
    partition_name,
    placement_of,
    placements,
    registry_drift,
)
from tests.conftest import app_dsn_for, make_tenant


def test_onboarding_records_where_each_tenant_lives(admin_conn: psycopg.Connection) -> None:
    free = make_tenant(admin_conn, "Free", tier="free")
    enterprise = make_tenant(admin_conn, "Enterprise", tier="enterprise")
    for tenant in (free, enterprise):
        ensure_tenant_partition(admin_conn, tenant)

    pooled = placement_of(admin_conn, free)
    assert (pooled.kind, pooled.location, pooled.state, pooled.dedicated) == (POOLED, SHARED_PARTITION, "placed", False)
    assert pooled.since is not None
    dedicated = placement_of(admin_conn, enterprise)
    assert (dedicated.kind, dedicated.location, dedicated.dedicated) == (PARTITION, partition_name(enterprise), True)
    assert set(placements(admin_conn)) == {free, enterprise}
    assert registry_drift(admin_conn) == []

    since = dedicated.since
    ensure_tenant_partition(admin_conn, enterprise)  # idempotent: nothing moved, nothing re-recorded
    assert placement_of(admin_conn, enterprise).since == since


def test_a_tenant_the_registry_has_not_seen_is_pooled(admin_conn: psycopg.Connection) -> None:
    stranger = uuid.uuid4()
    where = placement_of(admin_conn, stranger)
    assert (where.kind, where.location, where.since) == (POOLED, SHARED_PARTITION, None)


def test_the_python_name_of_a_partition_is_the_sql_one(admin_conn: psycopg.Connection) -> None:
    for _ in range(20):
        tenant = uuid.uuid4()
        assert admin_conn.execute("SELECT fn_tenant_partition_name(%s)", (tenant,)).fetchone()[0] == partition_name(tenant)


def test_the_audit_reports_a_registry_that_disagrees_with_the_catalog(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, "Enterprise", tier="enterprise")
    ensure_tenant_partition(admin_conn, tenant)
    assert audit_tenant_partitions(admin_conn) == []

    admin_conn.execute("UPDATE tenant_placements SET kind = 'pooled', location = %s WHERE organization_id = %s",
                       (SHARED_PARTITION, tenant))
    assert registry_drift(admin_conn) == [(tenant, f"pooled {SHARED_PARTITION}", f"partition {partition_name(tenant)}")]
    found = [str(f) for f in audit_tenant_partitions(admin_conn)]
    assert any(f.startswith(f"tenant {tenant}: the placement registry says pooled") for f in found), found

    ensure_tenant_partition(admin_conn, tenant)  # the fix the finding names
    assert registry_drift(admin_conn) == [] and audit_tenant_partitions(admin_conn) == []


def test_billing_app_sees_only_its_own_placement_and_writes_none(admin_conn: psycopg.Connection,
                                                                  admin_dsn: str) -> None:
    a, b = make_tenant(admin_conn, "A", tier="free"), make_tenant(admin_conn, "B", tier="enterprise")
    for tenant in (a, b):
        ensure_tenant_partition(admin_conn, tenant)
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        with app.transaction():
            assert app.execute("SELECT count(*) FROM tenant_placements").fetchone()[0] == 0
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            assert app.execute("SELECT organization_id, kind FROM tenant_placements").fetchall() == [(a, POOLED)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with app.transaction():
                app.execute("SELECT fn_set_tenant_context(%s)", (a,))
                app.execute("UPDATE tenant_placements SET kind = 'partition' WHERE organization_id = %s", (a,))
