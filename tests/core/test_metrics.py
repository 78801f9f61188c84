"""vw_tenant_metrics and the rollup: no fan-out, exact storage, tenants without data, quotas,
history and the Parquet export."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pyarrow.dataset as ds
import pytest

from tenant_pipelines.core.metrics import GIB, QuotaUse, collect, export_parquet, quota_use, record_history
from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.placement import partition_name
from tests.conftest import make_tenant

NOW = datetime.now(timezone.utc)

# The seed's view, as written (with the partition name fixed so it runs at all).
SEED_VIEW = """
CREATE VIEW seed_tenant_metrics AS
SELECT o.id AS organization_id, COUNT(DISTINCT s.id) AS active_subscriptions, COUNT(ue.id) AS events_last_24h
  FROM organizations o
  LEFT JOIN subscriptions s ON o.id = s.organization_id AND s.status = 'active'
  LEFT JOIN usage_events ue ON o.id = ue.organization_id AND ue.timestamp > NOW() - INTERVAL '24 hours'
 GROUP BY o.id
"""


def events(conn: psycopg.Connection, tenant: uuid.UUID, ages: list[timedelta]) -> None:
    with conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for age in ages:
            copy.write_row((tenant, "api_calls", Decimal(1), NOW - age))


def subscriptions(conn: psycopg.Connection, tenant: uuid.UUID, active: int, canceled: int = 0) -> None:
    for status in ["active"] * active + ["canceled"] * canceled:
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'p', %s)", (tenant, status))


def by_tenant(conn: psycopg.Connection) -> dict[uuid.UUID, object]:
    return {m.organization_id: m for m in collect(conn)}


def test_no_fan_out_with_several_subscriptions(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="growth")
    subscriptions(admin_conn, tenant, active=3, canceled=2)
    events(admin_conn, tenant, [timedelta(hours=h) for h in range(1, 41)])  # 23 in the last 24h
    ensure_tenant_partition(admin_conn, tenant)
    m = by_tenant(admin_conn)[tenant]
    assert (m.active_subscriptions, m.events_last_24h) == (3, 23)
    admin_conn.execute(SEED_VIEW)
    seed = admin_conn.execute("SELECT active_subscriptions, events_last_24h FROM seed_tenant_metrics"
                              " WHERE organization_id = %s", (tenant,)).fetchone()
    assert seed == (3, 69), "the seed's view counts every event once per active subscription"


def test_storage_is_the_whole_partition_tree(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    events(admin_conn, tenant, [timedelta(days=d) for d in range(0, 90, 3)])
    ensure_tenant_partition(admin_conn, tenant)
    expected = admin_conn.execute(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::regclass)", (partition_name(tenant),)
    ).fetchone()[0]
    assert by_tenant(admin_conn)[tenant].storage_bytes == expected > 0


def test_enterprise_schema_counts_towards_storage(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    ensure_tenant_partition(admin_conn, tenant)
    before = by_tenant(admin_conn)[tenant].storage_bytes
    schema = f"tenant_{tenant.hex}"
    admin_conn.execute(f'CREATE SCHEMA "{schema}"')
    admin_conn.execute(f'CREATE TABLE "{schema}".notes AS SELECT repeat(\'x\', 1000) AS t FROM generate_series(1, 500)')
    admin_conn.execute("INSERT INTO tenant_schemas (organization_id, schema_name) VALUES (%s, %s)", (tenant, schema))
    extra = admin_conn.execute(f"SELECT pg_total_relation_size('\"{schema}\".notes')").fetchone()[0]
    assert by_tenant(admin_conn)[tenant].storage_bytes == before + extra


def test_tenant_without_data_or_partition(admin_conn: psycopg.Connection) -> None:
    empty = make_tenant(admin_conn)
    waiting = make_tenant(admin_conn)  # events in the pool, which has not been analysed yet
    events(admin_conn, waiting, [timedelta(minutes=5), timedelta(days=2)])
    metrics = by_tenant(admin_conn)
    e = metrics[empty]
    assert (e.active_subscriptions, e.events_last_24h, e.events_this_month, e.storage_bytes, e.last_activity) == (0, 0, 0, 0, None)
    w = metrics[waiting]
    assert w.events_last_24h == 1 and w.storage_bytes == 0
    assert abs((w.last_activity - (NOW - timedelta(minutes=5))).total_seconds()) < 1


def test_pooled_tenants_storage_is_their_share_of_the_pool(admin_conn: psycopg.Connection) -> None:
    big, small = make_tenant(admin_conn), make_tenant(admin_conn)
    events(admin_conn, big, [timedelta(hours=h) for h in range(300)])
    events(admin_conn, small, [timedelta(hours=h) for h in range(100)])
    for tenant in (big, small):
        assert ensure_tenant_partition(admin_conn, tenant).layout == "pooled"
    admin_conn.execute("ANALYZE usage_events_mt_default")
    metrics = by_tenant(admin_conn)
    pool = admin_conn.execute(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('usage_events_mt_default')").fetchone()[0]
    shares = metrics[big].storage_bytes, metrics[small].storage_bytes
    assert shares[0] == pytest.approx(3 * shares[1], rel=0.01)
    assert sum(shares) == pytest.approx(pool, rel=0.5), "an estimate from the catalog, of the right size"


def test_events_this_month_and_last_activity(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    month_start = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    # One event 40 days back, three in the first seconds of this month.
    events(admin_conn, tenant, [timedelta(days=40), *[NOW - (month_start + timedelta(seconds=i)) for i in range(3)]])
    ensure_tenant_partition(admin_conn, tenant)
    m = by_tenant(admin_conn)[tenant]
    assert m.events_this_month == 3
    assert m.last_activity == month_start + timedelta(seconds=2)


@pytest.mark.parametrize("used, level", [(79, "ok"), (80, "warn"), (99, "warn"), (100, "error"), (130, "error")])
def test_quota_thresholds(used: int, level: str) -> None:
    use = QuotaUse(uuid.uuid4(), "Acme", "monthly_events", used, 100)
    assert use.level == level
    assert "Acme" in str(use) and f"{used:,} of 100" in str(use)


def test_quota_use_reads_the_classification(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    admin_conn.execute("UPDATE tenant_classifications SET monthly_events_limit = 10, storage_quota_gb = 1"
                       " WHERE organization_id = %s", (tenant,))
    events(admin_conn, tenant, [timedelta(seconds=i) for i in range(9)])
    uses = {u.quota: u for u in quota_use(collect(admin_conn)) if u.organization_id == tenant}
    assert uses["monthly_events"].used == 9 and uses["monthly_events"].level == "warn"
    assert uses["storage"].limit == GIB and uses["storage"].level == "ok"


def test_history_is_upserted_and_exported_hive_style(admin_conn: psycopg.Connection, tmp_path) -> None:
    tenants = [make_tenant(admin_conn, tier=t) for t in ("free", "growth")]
    events(admin_conn, tenants[1], [timedelta(hours=1)])
    metrics = collect(admin_conn)
    day = date(2026, 11, 30)
    assert record_history(admin_conn, day, metrics) == 2
    assert record_history(admin_conn, day, metrics) == 2  # a re-run replaces the day
    assert admin_conn.execute("SELECT count(*) FROM tenant_metrics_history").fetchone()[0] == 2
    export_parquet(tmp_path, day, metrics)
    export_parquet(tmp_path, date(2026, 12, 1), metrics)
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4 and set(table.column("day").to_pylist()) == {"2026-11-30", "2026-12-01"}
    assert sorted(table.column("events_last_24h").to_pylist()) == [0, 0, 1, 1]


def test_billing_app_sees_only_its_own_history(admin_conn: psycopg.Connection, app_dsn: str) -> None:
    a, b = make_tenant(admin_conn), make_tenant(admin_conn)
    record_history(admin_conn, date(2026, 11, 30), collect(admin_conn))
    with psycopg.connect(app_dsn) as app:
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            assert app.execute("SELECT organization_id FROM tenant_metrics_history").fetchall() == [(a,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("UPDATE tenant_metrics_history SET tier = 'enterprise' WHERE organization_id = %s", (b,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM vw_tenant_metrics")


def test_collect_in_batches_gives_the_same_figures(admin_conn: psycopg.Connection) -> None:
    tenants = [make_tenant(admin_conn, tier=tier) for tier in ("free", "growth", "enterprise")]
    for n, tenant in enumerate(tenants):
        events(admin_conn, tenant, [timedelta(hours=h) for h in range(1, 3 + n)])
        ensure_tenant_partition(admin_conn, tenant)
    whole = collect(admin_conn, batch=100_000)
    assert collect(admin_conn, batch=1) == whole
    assert {t for t in tenants} <= {m.organization_id for m in whole}
    # one transaction per batch on an autocommit connection: nothing left open, no locks kept
    assert admin_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with pytest.raises(ValueError):
        collect(admin_conn, batch=0)
