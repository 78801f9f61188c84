"""The code location's tenant sessions go through PgBouncer when billing_app's pooled DSN is
configured (BillingDatabase.app_dsn or BILLING_APP_DATABASE_URL); admin connections never do."""

from __future__ import annotations

import psycopg
import pytest

from tenant_pipelines.settings import APP_DATABASE_URL_ENV
from tenant_pipelines.defs.resources import BillingDatabase
from tests.conftest import make_tenant


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
