"""A query in a tenant context touches only that tenant's partitions (for a pooled tenant: the
pool's): pruned at plan time with an explicit predicate, at executor start-up with RLS alone
(the policy calls the STABLE context function directly, not through a sub-select)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.placement import partition_name
from tests.conftest import app_dsn_for, make_tenant
from tests.core.test_partitions import add_events


@pytest.fixture
def tenants(admin_conn: psycopg.Connection) -> list[uuid.UUID]:
    made = [make_tenant(admin_conn, tier=t) for t in ("free", "enterprise", "starter", "growth", "free")]
    for tenant in made:
        add_events(admin_conn, tenant, 50)
        ensure_tenant_partition(admin_conn, tenant)
    admin_conn.execute("ANALYZE usage_events_mt")
    return made


def explain(app: psycopg.Connection, tenant: uuid.UUID, query: str, params: tuple = ()) -> str:
    with app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        rows = app.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


def scanned_tables(plan: str) -> set[str]:
    return {line.split(" on ", 1)[1].split()[0] for line in plan.splitlines() if " on usage_events_mt" in line}


def test_rls_alone_prunes_at_executor_startup(tenants: list[uuid.UUID], admin_dsn: str) -> None:
    target = tenants[1]  # enterprise: several month partitions
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        plan = explain(app, target, "SELECT count(*) FROM usage_events")
    assert "Subplans Removed" in plan, plan
    assert all(t.startswith(partition_name(target)) for t in scanned_tables(plan)), plan
    others = [partition_name(t) for t in tenants if t != target]
    assert not any(o in plan for o in others) and "usage_events_mt_default" not in plan


def test_rls_alone_prunes_a_pooled_tenant_to_the_pool(tenants: list[uuid.UUID], admin_dsn: str) -> None:
    target = tenants[0]  # free: pooled
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        plan = explain(app, target, "SELECT count(*) FROM usage_events")
    assert "Subplans Removed" in plan, plan
    assert scanned_tables(plan) and all(t.startswith("usage_events_mt_pool_") for t in scanned_tables(plan)), plan
    assert not any(partition_name(t) in plan for t in tenants)


@pytest.mark.parametrize("which, prefix", [(1, None), (0, "usage_events_mt_pool_")], ids=["dedicated", "pooled"])
def test_explicit_predicate_prunes_at_plan_time(
    tenants: list[uuid.UUID], admin_dsn: str, which: int, prefix: str | None
) -> None:
    target = tenants[which]
    prefix = prefix or partition_name(target)
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        plan = explain(app, target, "SELECT count(*) FROM usage_events WHERE organization_id = %s", (target,))
    assert "Subplans Removed" not in plan, "nothing left for the executor to prune: the planner did it"
    assert scanned_tables(plan) and all(t.startswith(prefix) for t in scanned_tables(plan)), plan


def test_explicit_predicate_for_another_tenant_returns_nothing(tenants: list[uuid.UUID], admin_dsn: str) -> None:
    with psycopg.connect(app_dsn_for(admin_dsn)) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenants[0],))
        count = app.execute("SELECT count(*) FROM usage_events WHERE organization_id = %s", (tenants[1],)).fetchone()[0]
    assert count == 0


def test_time_range_in_a_monthly_tenant_touches_one_month(tenants: list[uuid.UUID], admin_dsn: str) -> None:
    target = tenants[1]
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        plan = explain(
            app, target,
            "SELECT count(*) FROM usage_events WHERE organization_id = %s "
            "AND \"timestamp\" >= date_trunc('month', now()) AND \"timestamp\" < date_trunc('month', now()) + interval '1 month'",
            (target,),
        )
    tables = scanned_tables(plan)
    assert len({t.rsplit("_p", 1)[-1] for t in tables if "_p" in t}) == 1, plan


def test_prepared_statements_keep_plan_time_pruning(tenants: list[uuid.UUID], admin_dsn: str) -> None:
    """billing_app gets custom plans (plan_cache_mode = force_custom_plan): a prepared statement
    run many times still prunes at plan time, never falling back to a generic plan that locks
    every tenant's partitions."""
    target = tenants[3]  # growth: dedicated
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        assert app.execute("SHOW plan_cache_mode").fetchone()[0] == "force_custom_plan"
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (target,))
            app.execute("PREPARE q(uuid) AS SELECT count(*) FROM usage_events WHERE organization_id = $1")
            execute = sql.SQL("EXECUTE q({})").format(sql.Literal(str(target)))
            for _ in range(7):
                app.execute(execute)
            plan = "\n".join(r[0] for r in app.execute(
                sql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) ") + execute))
    assert "Subplans Removed" not in plan, plan
    assert scanned_tables(plan) and all(t.startswith(partition_name(target)) for t in scanned_tables(plan)), plan
