"""Upgrading a database with the first layout (one partition per onboarded tenant, a plain
DEFAULT partition) to the pooled one (sql/migrations/0016): nothing lost, partitions kept, the
waiting rows in the pool's months. The database before is migrated with the numbered files as
main had them then (tests/fixtures/sql_legacy/, up to 0015), functions and all."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import psycopg

from tenant_pipelines.core.partitions import (
    attached_tenant_partitions, audit_tenant_partitions, ensure_tenant_partition)
from tenant_pipelines.db.migrate import migrate

from tests.db.legacy import legacy_sql_dir

POOL = "0016_pool_small_tenants_in_month_partitions.sql"


def rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        'SELECT organization_id, id, quantity, "timestamp" FROM usage_events_mt ORDER BY 1, 2').fetchall()


def test_upgrade_keeps_every_row_and_every_partition(empty_dsn: str, tmp_path: Path) -> None:
    before_pool = legacy_sql_dir(tmp_path / "sql", before=POOL)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, before_pool)
        onboarded, waiting = uuid.uuid4(), uuid.uuid4()
        for tenant, tier in ((onboarded, "free"), (waiting, "enterprise")):
            conn.execute("INSERT INTO organizations (id, name) VALUES (%s, 'T')", (tenant,))
            conn.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, %s)", (tenant, tier))
            conn.execute(
                'INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")'
                " SELECT %s, 'api_calls', %s, now() - make_interval(days => d) FROM generate_series(0, 99) d",
                (tenant, Decimal("1.5")))
        conn.execute("SELECT fn_create_tenant_partition(%s)", (onboarded,))  # the old layout: its own partition
        before = rows(conn)

        migrate(conn)

        assert rows(conn) == before, "nothing lost, nothing doubled"
        assert attached_tenant_partitions(conn) == {str(onboarded)}, "an existing partition stays"
        leaves = {leaf for (leaf,) in conn.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM usage_events_mt WHERE organization_id = %s", (waiting,))}
        assert leaves and all(leaf.startswith("usage_events_mt_pool_p") for leaf in leaves), leaves
        assert audit_tenant_partitions(conn) == []
        assert conn.execute("SELECT to_regclass('usage_events_mt_default_before_0016')").fetchone()[0] is None
        # The waiting enterprise tenant is promoted by its first run, online.
        report = ensure_tenant_partition(conn, waiting)
        assert report.layout == "monthly" and report.rows_moved == 100
        assert rows(conn) == before
