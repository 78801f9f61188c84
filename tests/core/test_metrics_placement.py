"""Metrics follow placement (issue 17): a schema tenant's events are counted in its schema, its
storage is its schema's relations, its active subscriptions are its schema's, and the quota
checks read those figures."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from tenant_pipelines.core import moves
from tenant_pipelines.core.metrics import GIB, collect, quota_use
from tenant_pipelines.core.placement import placement_of
from tenant_pipelines.core.tenants import list_tenants
from tests.conftest import make_tenant
from tests.core.test_metrics import NOW, by_tenant, events, subscriptions


def schema_bytes(conn: psycopg.Connection, schema: str) -> int:
    return conn.execute(
        "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'm')", (schema,)).fetchone()[0]


def test_a_schema_tenants_figures_come_from_its_schema(admin_conn: psycopg.Connection) -> None:
    tenant, neighbour = make_tenant(admin_conn, tier="growth"), make_tenant(admin_conn)
    month_start = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    subscriptions(admin_conn, tenant, active=2, canceled=1)
    # 23 in the last 24h, 40 in all; and three in the first seconds of this month.
    events(admin_conn, tenant, [timedelta(hours=h) for h in range(1, 41)]
           + [NOW - (month_start + timedelta(seconds=i)) for i in range(3)])
    events(admin_conn, neighbour, [timedelta(hours=h) for h in range(1, 6)])
    pooled = by_tenant(admin_conn)[tenant]

    moves.move_tenant(admin_conn, tenant, "schema")
    schema = placement_of(admin_conn, tenant).location
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s", (tenant,)).fetchone()[0] == 0
    admin_conn.execute(f'INSERT INTO "{schema}".subscriptions (organization_id, plan, status) VALUES (%s, %s, %s)',
                       (tenant, "p", "active"))
    m = by_tenant(admin_conn)[tenant]

    assert (m.events_last_24h, m.events_this_month, m.last_activity) == (
        pooled.events_last_24h, pooled.events_this_month, pooled.last_activity)
    assert m.events_last_24h == 23
    assert m.active_subscriptions == 3, "its schema's subscriptions"
    assert m.storage_bytes == schema_bytes(admin_conn, schema) > 0, "the size of its schema's relations"
    assert by_tenant(admin_conn)[neighbour].events_last_24h == 5, "the pool's other tenant as before"
    assert {t.organization_id: t.active_subscriptions for t in list_tenants(admin_conn)}[tenant] == 3


def test_quota_checks_follow_a_schema_tenant(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="growth")
    events(admin_conn, tenant, [timedelta(minutes=m) for m in range(1, 11)])
    moves.move_tenant(admin_conn, tenant, "schema")
    schema = placement_of(admin_conn, tenant).location
    admin_conn.execute("UPDATE tenant_classifications SET monthly_events_limit = 10, storage_quota_gb = 1"
                       " WHERE organization_id = %s", (tenant,))
    uses = {u.quota: u for u in quota_use(collect(admin_conn)) if u.organization_id == tenant}
    assert uses["monthly_events"].used == 10 and uses["monthly_events"].level == "error"
    assert uses["storage"].used == schema_bytes(admin_conn, schema) and uses["storage"].limit == GIB
    assert uses["storage"].level == "ok"
