"""The code location's tenant sessions go through PgBouncer when billing_app's pooled DSN is
configured (BillingDatabase.app_dsn or BILLING_APP_DATABASE_URL); admin connections never do."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from tenant_pipelines.settings import APP_DATABASE_URL_ENV
from tenant_pipelines.defs.resources import BillingDatabase
from tests.conftest import make_tenant
from tests.waiting import wait_until


def test_tenant_sessions_go_through_pgbouncer_admin_work_does_not(
    admin_conn: psycopg.Connection, admin_dsn: str, start_pooler, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = make_tenant(admin_conn, "Pooled", tier="growth")
    pooler = start_pooler(default_pool_size=1)

    for db in (BillingDatabase(dsn=admin_dsn, app_dsn=pooler.dsn()), None):
        if db is None:  # the same through the environment, as `tenant-pipelines dev` sets it
            monkeypatch.setenv(APP_DATABASE_URL_ENV, pooler.dsn())
            db = BillingDatabase(dsn=admin_dsn)
        with db.tenant_session(tenant) as tx:
            assert tx.info.port == pooler.port
            row = tx.execute("SELECT session_user, fn_current_tenant_id(), current_setting('work_mem')").fetchone()
            assert row == ("billing_app", tenant, "128MB"), "logged in as billing_app, not SET ROLE on an admin login"
        with db.connection() as conn:
            assert conn.info.port != pooler.port
            assert conn.execute("SELECT session_user").fetchone()[0] != "billing_app"


def test_without_a_pooled_dsn_tenant_sessions_use_the_admin_connection(
    admin_conn: psycopg.Connection, admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(APP_DATABASE_URL_ENV, raising=False)
    tenant = make_tenant(admin_conn, "Direct", tier="free")
    with BillingDatabase(dsn=admin_dsn).tenant_session(tenant) as tx:
        assert tx.execute("SELECT session_user <> current_user, current_user").fetchone() == (True, "billing_app")


def test_ingest_through_pgbouncer_keeps_each_batch_with_its_tenant(admin_conn: psycopg.Connection, start_pooler) -> None:
    """ingest_usage_events leaves nothing in the session (no staging table: billing_app cannot
    create temp tables): two clients of two tenants alternate on one pooled server connection
    and every batch lands with its own tenant."""
    from datetime import datetime, timezone
    from decimal import Decimal

    from tenant_pipelines.core.ingest import ingest_usage_events
    from tenant_pipelines.core.pooling import connect_pooled

    tenants = [make_tenant(admin_conn, f"Ingest {n}") for n in range(2)]
    pooler = start_pooler(default_pool_size=1)  # one server connection: both clients share it
    now = datetime.now(timezone.utc)
    with connect_pooled(pooler.dsn(), autocommit=True) as first, connect_pooled(pooler.dsn(), autocommit=True) as second:
        for _ in range(2):
            for conn, tenant, n in ((first, tenants[0], 3), (second, tenants[1], 5)):
                events = [("api_calls", Decimal(1), now, "{}")] * n
                assert ingest_usage_events(conn, tenant, events) == n
    counts = dict(admin_conn.execute("SELECT organization_id, count(*) FROM usage_events_mt GROUP BY 1").fetchall())
    assert counts == {tenants[0]: 6, tenants[1]: 10}


# -- the pools live as long as the run (or the sensor tick) ---------------------------------------


def pool_backends(conn: psycopg.Connection) -> int:
    """Backends of this database opened by BillingDatabase's pools (their application_name)."""
    from tenant_pipelines.defs.resources import APPLICATION_NAME

    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
        (APPLICATION_NAME,),
    ).fetchone()[0]


@pytest.fixture
def opened_pools(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every psycopg_pool ConnectionPool the resource opens, to see that each was closed."""
    from psycopg_pool import ConnectionPool

    from tenant_pipelines.defs import resources

    opened: list[ConnectionPool] = []

    class Recorded(ConnectionPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(resources, "ConnectionPool", Recorded)
    return opened


def test_a_run_closes_its_pools_and_leaves_no_connection_behind(
    admin_conn: psycopg.Connection, admin_dsn: str, start_pooler, monkeypatch: pytest.MonkeyPatch, opened_pools: list
) -> None:
    tenant = make_tenant(admin_conn, "Run", tier="growth")
    pooler = start_pooler(default_pool_size=1)
    monkeypatch.setenv(APP_DATABASE_URL_ENV, pooler.dsn())

    @dg.asset
    def pool_probe(billing_db: BillingDatabase) -> dg.MaterializeResult:
        with billing_db.tenant_session(tenant) as tx:
            through_pgbouncer = tx.info.port == pooler.port
            session_user = tx.execute("SELECT session_user").fetchone()[0]
        with billing_db.connection() as conn:
            backends = pool_backends(conn)
        return dg.MaterializeResult(metadata={"through_pgbouncer": through_pgbouncer, "session_user": session_user,
                                              "pool_backends": backends})

    result = dg.materialize([pool_probe], resources={"billing_db": BillingDatabase(dsn=admin_dsn)})

    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["through_pgbouncer"].value and metadata["session_user"].value == "billing_app"
    assert metadata["pool_backends"].value >= 1, "during the run, the admin pool's connections are open"
    assert len(opened_pools) == 2 and all(pool.closed for pool in opened_pools), "both pools closed at the run's end"
    wait_until(lambda: pool_backends(admin_conn) == 0, "the run's pool connections to end", timeout_s=10)


def test_a_sensor_tick_closes_its_pool(admin_conn: psycopg.Connection, admin_dsn: str, opened_pools: list,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Sensors build their resources per tick, in the evaluation context: closing the context
    (as Dagster's code server does after each tick) tears the resource down."""
    from tenant_pipelines.defs.tenants.partitions_assets import tenant_onboarding_sensor
    monkeypatch.delenv(APP_DATABASE_URL_ENV, raising=False)
    make_tenant(admin_conn, "Tick", tier="free")
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"billing_db": BillingDatabase(dsn=admin_dsn)}) as context:
            result = tenant_onboarding_sensor(context)
            assert len(result.run_requests) == 1
            assert len(opened_pools) == 1 and not opened_pools[0].closed, "the tick's pool is open during the tick"
        assert opened_pools[0].closed, "and closed with the tick"
    wait_until(lambda: pool_backends(admin_conn) == 0, "the tick's pool connections to end", timeout_s=10)
