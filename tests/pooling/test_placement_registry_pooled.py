"""tenant_placements (sql/migrations/0018) holds organization_id: through a real PgBouncer, as
billing_app, a tenant sees its own placement row and no other, a client without a context sees
none, and nothing of one client's context reaches the next client of the same server connection."""

from __future__ import annotations

import psycopg
import pytest

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.pooling import connect_pooled
from tests.conftest import make_tenant


def test_billing_app_sees_only_its_own_placement_through_pgbouncer(admin_conn: psycopg.Connection, start_pooler) -> None:
    a, b = make_tenant(admin_conn, "A", tier="free"), make_tenant(admin_conn, "B", tier="enterprise")
    for tenant in (a, b):
        ensure_tenant_partition(admin_conn, tenant)
    assert admin_conn.execute("SELECT count(*) FROM tenant_placements").fetchone()[0] == 2
    pooler = start_pooler(default_pool_size=1)  # one server connection: every client below shares it
    backends = set()
    for tenant, kind in ((a, "pooled"), (b, "partition"), (None, None)):
        with connect_pooled(pooler.dsn(), autocommit=True) as conn, conn.transaction():
            backends.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            if tenant is not None:
                conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            rows = conn.execute("SELECT organization_id, kind FROM tenant_placements").fetchall()
            assert rows == ([(tenant, kind)] if tenant else [])
    assert len(backends) == 1
    with connect_pooled(pooler.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("SELECT fn_set_tenant_context(%s)", (a,))
                conn.execute("INSERT INTO tenant_placements (organization_id, kind, location)"
                             " VALUES (%s, 'pooled', 'usage_events_mt_default')", (b,))


@pytest.mark.parametrize("table", ["tenant_pipelines.tenant_moves", "tenant_pipelines.tenant_move_log"])
def test_billing_app_cannot_read_or_write_the_move_records_through_pgbouncer(
        admin_conn: psycopg.Connection, start_pooler, table: str) -> None:
    """tenant_moves and tenant_move_log (sql/migrations/0020) hold organization_id: while a move
    is in progress (rows in both), billing_app reaches neither, in a tenant's context or
    without one; only the capture trigger (SECURITY DEFINER) writes the log."""
    from tenant_pipelines.core import moves

    a = make_tenant(admin_conn, "A")
    admin_conn.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (a,))
    moves.move_tenant(admin_conn, a, "schema", stop_after="copy")
    admin_conn.execute("UPDATE invoices SET status = 'paid' WHERE organization_id = %s", (a,))  # logged
    assert admin_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= 1
    pooler = start_pooler(default_pool_size=1)
    for tenant in (a, None):
        with connect_pooled(pooler.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with conn.transaction():
                    if tenant is not None:
                        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
                    conn.execute(f"SELECT * FROM {table}")
