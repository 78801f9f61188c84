"""Per-tier resource limits through PgBouncer: the same statement is cancelled at the free
tier's statement_timeout and completes for an enterprise tenant, each through its tier's pool;
and the limit ends with its transaction, on a server connection the next client reuses."""

from __future__ import annotations


import psycopg
import pytest

from tenant_pipelines.core.pooling import connect_pooled, tier_alias
from tests.conftest import make_tenant

SLOW = "SELECT pg_sleep(0.5)"


@pytest.fixture
def pools(admin_conn: psycopg.Connection, start_pooler):
    # Fast limits for the test: free 200 ms, enterprise 5 s (the seed's are 10 s and 60 s).
    admin_conn.execute("UPDATE tier_limits SET statement_timeout = '200ms' WHERE tier = 'free'")
    admin_conn.execute("UPDATE tier_limits SET statement_timeout = '5s' WHERE tier = 'enterprise'")
    # One server connection per tier pool: every transaction of a tier runs on the same one.
    return start_pooler(pool_overrides={"free": 1, "enterprise": 1})


def _in_context(conn: psycopg.Connection, tenant) -> str:
    return conn.execute("SELECT fn_set_tenant_resources(fn_set_tenant_context(%s))", (tenant,)).fetchone()[0]


def test_free_tier_statement_is_cancelled_where_enterprise_completes(admin_conn, pools) -> None:
    free = make_tenant(admin_conn, "Free", tier="free")
    enterprise = make_tenant(admin_conn, "Enterprise", tier="enterprise")

    # The server says why it stopped the statement: the tier's statement_timeout, not the clock here.
    with connect_pooled(pools.dsn(tier_alias("free")), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            with conn.transaction():
                assert _in_context(conn, free) == "free"
                assert conn.execute("SHOW statement_timeout").fetchone()[0] == "200ms"
                conn.execute(SLOW)

    with connect_pooled(pools.dsn(tier_alias("enterprise")), autocommit=True) as conn:
        with conn.transaction():
            assert _in_context(conn, enterprise) == "enterprise"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"
            conn.execute(SLOW)  # completes


def test_the_limit_ends_with_its_transaction_on_the_pooled_server_connection(admin_conn, pools) -> None:
    free = make_tenant(admin_conn, "Free", tier="free")
    dsn = pools.dsn(tier_alias("free"))
    with connect_pooled(dsn, autocommit=True) as first, connect_pooled(dsn, autocommit=True) as second:
        with pytest.raises(psycopg.errors.QueryCanceled):
            with first.transaction():
                backend = first.execute("SELECT pg_backend_pid()").fetchone()[0]
                _in_context(first, free)
                first.execute(SLOW)
        # Another client, on the same (only) server connection of the free pool, sets nothing.
        with second.transaction():
            assert second.execute("SELECT pg_backend_pid()").fetchone()[0] == backend
            row = second.execute("SELECT fn_current_tenant_id(), current_setting('statement_timeout')").fetchone()
            assert row == (None, "0")
            second.execute(SLOW)  # no timeout carried over
