"""Tenant storage: most tenants pooled in the month-split DEFAULT partition; a dedicated
partition, within the leaf budget, for those whose tier, flag or size asks for it, created
standalone then attached with its rows moved out of the pool in the same transaction. Months
premade, idempotent, crash-safe, and dedicated tenants' writers never blocked."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

import psycopg
import pytest

from tenant_pipelines.core.partitions import (
    attached_tenant_partitions,
    audit_tenant_partitions,
    ensure_tenant_partition,
    pool_tenants,
    stranded_in_pool,
)
from tenant_pipelines.core.placement import partition_name
from tenant_pipelines.db.session import tenant_session
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError
from tests.conftest import app_dsn_for, make_tenant
from tests.waiting import lock_waiter, outwait_one_lock_timeout, wait_until

NOW = datetime.now(timezone.utc)


def add_events(conn: psycopg.Connection, tenant: uuid.UUID, n: int, days_back: int = 100) -> None:
    """n events spread over the last ``days_back`` days, as the admin (lands wherever routing says)."""
    with conn.cursor().copy(
        'COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN'
    ) as copy:
        for i in range(n):
            copy.write_row((tenant, "api_calls", Decimal(i), NOW - timedelta(days=days_back * i / max(n, 1))))


def tenant_rows(conn: psycopg.Connection, tenant: uuid.UUID) -> list[tuple]:
    return conn.execute(
        "SELECT id, quantity, \"timestamp\" FROM usage_events_mt WHERE organization_id = %s ORDER BY id", (tenant,)
    ).fetchall()


def leaf_of_each_row(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, int]:
    rows = conn.execute(
        "SELECT tableoid::regclass::text, count(*) FROM usage_events_mt WHERE organization_id = %s GROUP BY 1",
        (tenant,),
    ).fetchall()
    return dict(rows)


def pool_rows(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT organization_id, count(*) FROM usage_events_mt_default GROUP BY 1").fetchall()
    return {str(t): n for t, n in rows}


def flag_dedicated(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    conn.execute("UPDATE tenant_classifications SET dedicated_resources = true WHERE organization_id = %s", (tenant,))


def months_ahead(n: int) -> list[str]:
    y, m = NOW.year, NOW.month
    out = []
    for _ in range(n + 1):
        out.append(f"{y:04d}{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def test_small_tenant_stays_pooled_in_the_pools_months(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    add_events(admin_conn, tenant, 300)
    before = tenant_rows(admin_conn, tenant)
    in_rest = admin_conn.execute("SELECT count(*) FROM usage_events_mt_pool_before").fetchone()[0]
    assert in_rest > 0, "months before the pool's first landed in its _before"

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.layout == "pooled" and not report.attached_now and report.rows_moved == 0
    assert report.partition == "usage_events_mt_default"
    assert all(t.startswith("usage_events_mt_pool_p") for t in report.tables_created)
    assert report.rows_split_into_months == in_rest
    assert tenant_rows(admin_conn, tenant) == before
    relations = admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    newcomer = make_tenant(admin_conn, tier="free")
    add_events(admin_conn, newcomer, 30, days_back=20)
    assert ensure_tenant_partition(admin_conn, newcomer).tables_created == []
    assert admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == relations, "onboarding: no DDL"
    placement = leaf_of_each_row(admin_conn, tenant)
    assert all("_pool_p" in leaf for leaf in placement), placement
    assert str(tenant) not in attached_tenant_partitions(admin_conn)
    assert audit_tenant_partitions(admin_conn, [tenant]) == []


def test_flagged_tenant_gets_one_partition_and_its_rows_leave_the_pool(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    other = make_tenant(admin_conn, tier="free")
    flag_dedicated(admin_conn, tenant)
    add_events(admin_conn, tenant, 300)
    add_events(admin_conn, other, 50)
    before = tenant_rows(admin_conn, tenant)

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.layout == "single" and report.attached_now and report.rows_moved == 300
    mine = [t for t in report.tables_created if not t.startswith("usage_events_mt_pool_p")]
    assert mine == [partition_name(tenant), partition_name(tenant) + "_rest"]
    assert tenant_rows(admin_conn, tenant) == before, "nothing lost, nothing doubled"
    assert leaf_of_each_row(admin_conn, tenant) == {partition_name(tenant) + "_rest": 300}
    assert pool_rows(admin_conn) == {str(other): 50}
    assert str(tenant) in attached_tenant_partitions(admin_conn)
    assert stranded_in_pool(admin_conn, [str(tenant), str(other)]) == {}
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    exclusions = admin_conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'pool_excludes_%'")
    assert exclusions.fetchone()[0] == 0, "the promotion's CHECKs are dropped"


def test_the_leaf_budget_keeps_a_tenant_pooled_until_raised(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 20)
    admin_conn.execute("SELECT fn_premake_pool_months()")
    leaves = admin_conn.execute("SELECT fn_leaf_count()").fetchone()[0]
    admin_conn.execute("UPDATE partition_config SET leaf_budget = %s", (leaves,))

    report = ensure_tenant_partition(admin_conn, tenant)
    assert report.layout == "pooled" and "leaf budget full" in report.note and "leaf_budget" in report.note
    assert admin_conn.execute("SELECT fn_leaf_count()").fetchone()[0] == leaves

    admin_conn.execute("UPDATE partition_config SET leaf_budget = 300")
    report = ensure_tenant_partition(admin_conn, tenant)
    assert report.layout == "monthly" and report.rows_moved == 20 and report.note == ""


def test_the_pools_edges_give_up_months_without_losing_a_row(admin_conn: psycopg.Connection) -> None:
    """Rows past the premade months wait in _after (and older ones in _before); when the
    horizon moves, their months are split off the edge and the edge is attached again."""
    tenant = make_tenant(admin_conn)
    admin_conn.execute(
        "INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
        " SELECT %s, 'x', 1, date_trunc('month', now()) + make_interval(months => m) + interval '1 day'"
        " FROM generate_series(-7, 7) m", (tenant,))
    before = tenant_rows(admin_conn, tenant)
    edges = leaf_of_each_row(admin_conn, tenant)
    assert edges["usage_events_mt_pool_after"] > 0 and edges["usage_events_mt_pool_before"] > 0

    report = ensure_tenant_partition(admin_conn, tenant, premake_months=6)

    assert report.layout == "pooled" and report.rows_split_into_months == 7 + 3
    assert tenant_rows(admin_conn, tenant) == before
    placement = leaf_of_each_row(admin_conn, tenant)
    assert placement["usage_events_mt_pool_after"] == 1 and "usage_events_mt_pool_before" not in placement
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    assert ensure_tenant_partition(admin_conn, tenant, premake_months=6).tables_created == []


def test_a_pool_month_detached_by_hand_is_attached_again_with_its_rows(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn)
    add_events(admin_conn, tenant, 200, days_back=100)
    ensure_tenant_partition(admin_conn, tenant)
    before = tenant_rows(admin_conn, tenant)
    month = "usage_events_mt_pool_p" + months_ahead(0)[0]
    admin_conn.execute(f'ALTER TABLE usage_events_mt_default DETACH PARTITION "{month}"')
    assert any("missing months" in str(f) for f in audit_tenant_partitions(admin_conn, [tenant]))

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.tables_created == [] and tenant_rows(admin_conn, tenant) == before
    assert audit_tenant_partitions(admin_conn, [tenant]) == []


def test_pool_tenants_lists_who_has_recent_rows_in_the_pool(admin_conn: psycopg.Connection) -> None:
    a, b = make_tenant(admin_conn), make_tenant(admin_conn)
    old = make_tenant(admin_conn)
    add_events(admin_conn, a, 5, days_back=1)
    add_events(admin_conn, b, 5, days_back=1)
    admin_conn.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
                       " VALUES (%s, 'x', 1, now() - interval '200 days')", (old,))
    future = make_tenant(admin_conn)
    admin_conn.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
                       " VALUES (%s, 'x', 1, now() + interval '2 years')", (future,))
    assert pool_tenants(admin_conn) == sorted([str(a), str(b), str(future)]), "old rows are not looked at"


def test_second_run_changes_nothing(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 100)
    ensure_tenant_partition(admin_conn, tenant)
    relations = admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    again = ensure_tenant_partition(admin_conn, tenant)
    assert again.tables_created == [] and again.rows_moved == 0 and not again.attached_now
    assert admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == relations


def test_enterprise_tenant_is_split_by_month_back_to_its_oldest_event(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 500, days_back=100)
    before = tenant_rows(admin_conn, tenant)
    oldest = min(r[2] for r in before).astimezone(timezone.utc)

    report = ensure_tenant_partition(admin_conn, tenant)  # partition_config.premake_months = 3

    assert report.layout == "monthly"
    part = partition_name(tenant)
    months = sorted(t.rsplit("_p", 1)[1] for t in report.tables_created if "_p" in t)
    assert months[0] == f"{oldest.year:04d}{oldest.month:02d}"
    assert months[-4:] == months_ahead(3)
    assert tenant_rows(admin_conn, tenant) == before
    placement = leaf_of_each_row(admin_conn, tenant)
    assert part + "_rest" not in placement, "every row is in its month"
    for leaf, count in placement.items():
        month = leaf.rsplit("_p", 1)[1]
        in_month = [r for r in before if r[2].astimezone(timezone.utc).strftime("%Y%m") == month]
        assert count == len(in_month)
    assert audit_tenant_partitions(admin_conn, [tenant]) == []


def test_a_growing_pooled_tenant_is_promoted_and_keeps_every_row(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="starter")
    add_events(admin_conn, tenant, 400)
    assert ensure_tenant_partition(admin_conn, tenant).layout == "pooled"
    add_events(admin_conn, tenant, 400)
    admin_conn.execute("UPDATE partition_config SET split_threshold_rows = 500")
    before = tenant_rows(admin_conn, tenant)

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.layout == "monthly" and report.rows_moved == 800 and report.attached_now
    assert tenant_rows(admin_conn, tenant) == before
    assert partition_name(tenant) + "_rest" not in leaf_of_each_row(admin_conn, tenant)
    assert str(tenant) not in pool_rows(admin_conn)


def test_a_growing_dedicated_tenant_is_split_online_and_keeps_every_row(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="starter")
    flag_dedicated(admin_conn, tenant)
    add_events(admin_conn, tenant, 400)
    assert ensure_tenant_partition(admin_conn, tenant).layout == "single"
    add_events(admin_conn, tenant, 400)  # straight into its _rest now
    admin_conn.execute(f"ANALYZE {partition_name(tenant)}_rest")
    admin_conn.execute("UPDATE partition_config SET split_threshold_rows = 500")
    before = tenant_rows(admin_conn, tenant)

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.layout == "monthly" and report.rows_split_into_months == 800 and report.rows_moved == 0
    assert tenant_rows(admin_conn, tenant) == before
    assert partition_name(tenant) + "_rest" not in leaf_of_each_row(admin_conn, tenant)


def test_premake_adds_months_when_the_horizon_moves(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="growth")
    ensure_tenant_partition(admin_conn, tenant, premake_months=1)
    report = ensure_tenant_partition(admin_conn, tenant, premake_months=4)
    mine = [t for t in report.tables_created if t.startswith(partition_name(tenant))]
    assert sorted(t.rsplit("_p", 1)[1] for t in mine) == months_ahead(4)[2:]


def test_crash_between_create_and_attach_then_rerun(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 200)
    before = tenant_rows(admin_conn, tenant)
    # The first transaction commits, then the process dies before the second.
    admin_conn.execute("SELECT fn_prepare_tenant_partition(%s)", (tenant,))
    assert str(tenant) not in attached_tenant_partitions(admin_conn)
    assert pool_rows(admin_conn)[str(tenant)] == 200

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.tables_created == [] and report.attached_now and report.rows_moved == 200
    assert tenant_rows(admin_conn, tenant) == before
    assert audit_tenant_partitions(admin_conn, [tenant]) == []


def test_crash_after_the_pool_exclusion_then_rerun(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 200)
    before = tenant_rows(admin_conn, tenant)
    admin_conn.execute("SELECT fn_prepare_tenant_partition(%s)", (tenant,))
    admin_conn.execute("SELECT fn_pool_exclude_tenant(%s)", (tenant,))  # then the process dies
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [tenant])]
    assert any("interrupted promotion" in f and str(tenant) in f for f in findings), findings

    report = ensure_tenant_partition(admin_conn, tenant)

    assert report.attached_now and report.rows_moved == 200
    assert tenant_rows(admin_conn, tenant) == before
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    with psycopg.connect(app_dsn_for(admin_dsn)) as app, tenant_session(app, tenant, role=None) as tx:
        tx.execute("INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\") "
                   "VALUES (%s, 'x', 1, now())", (tenant,))


def test_killed_during_attach_leaves_everything_in_the_pool(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    flag_dedicated(admin_conn, tenant)
    add_events(admin_conn, tenant, 100)
    before = tenant_rows(admin_conn, tenant)
    admin_conn.execute("SELECT fn_prepare_tenant_partition(%s)", (tenant,))
    with psycopg.connect(admin_dsn) as victim:
        pid = victim.info.backend_pid
        victim.execute("SELECT fn_attach_tenant_partition(%s)", (tenant,))  # moved and attached, not committed
        admin_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            victim.commit()
    assert pool_rows(admin_conn)[str(tenant)] == 100
    assert str(tenant) not in attached_tenant_partitions(admin_conn)
    ensure_tenant_partition(admin_conn, tenant)
    assert tenant_rows(admin_conn, tenant) == before


def test_sql_function_for_dbas_does_the_same(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    add_events(admin_conn, tenant, 50)
    result = admin_conn.execute("SELECT fn_create_tenant_partition(%s)", (tenant,)).fetchone()[0]
    assert result["attached_now"] and result["rows_moved"] == 50 and result["layout"] == "monthly"
    again = admin_conn.execute("SELECT fn_create_tenant_partition(%s)", (tenant,)).fetchone()[0]
    assert again["tables_created"] == [] and not again["attached_now"]
    assert audit_tenant_partitions(admin_conn, [tenant]) == []
    small = make_tenant(admin_conn, tier="free")
    pooled = admin_conn.execute("SELECT fn_create_tenant_partition(%s)", (small,)).fetchone()[0]
    assert pooled["layout"] == "pooled" and not pooled["attached_now"]


def test_tenant_without_organization_is_pooled(admin_conn: psycopg.Connection) -> None:
    stranger = uuid.uuid4()
    add_events(admin_conn, stranger, 10)
    report = ensure_tenant_partition(admin_conn, stranger)
    assert report.layout == "pooled" and pool_rows(admin_conn) == {str(stranger): 10}


@pytest.mark.parametrize("bad", ["x", "", "'; DROP TABLE usage_events_mt; --", "usage_events_mt_default", "a" * 300])
def test_hostile_tenant_ids_get_a_clear_error_and_no_partition(admin_conn: psycopg.Connection, bad: str) -> None:
    relations = admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    with pytest.raises(InvalidInput) as info:
        ensure_tenant_partition(admin_conn, bad)
    assert "\n" not in str(info.value) and "not a valid UUID" in str(info.value)
    assert admin_conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] == relations


def test_names_fit_in_63_bytes(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    report = ensure_tenant_partition(admin_conn, tenant)
    names = admin_conn.execute(
        "SELECT c.relname FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON c.oid = t.relid",
        (partition_name(tenant),),
    ).fetchall()
    assert {n for (n,) in names} == set(report.tables_created)
    assert max(len(n.encode()) for (n,) in names) <= 58
    pool = admin_conn.execute("SELECT max(length(relid::text)) FROM pg_partition_tree('usage_events_mt_default')")
    assert pool.fetchone()[0] <= 58


def test_rls_holds_on_the_new_tables(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    a, b = make_tenant(admin_conn, tier="enterprise"), make_tenant(admin_conn, tier="free")
    add_events(admin_conn, a, 30)
    add_events(admin_conn, b, 20)
    ensure_tenant_partition(admin_conn, a)
    ensure_tenant_partition(admin_conn, b)
    with psycopg.connect(app_dsn_for(admin_dsn)) as app:
        for table in (partition_name(a), partition_name(a) + "_rest", "usage_events_mt_default",
                      "usage_events_mt_pool_before", "usage_events_mt_pool_after",
                      "usage_events_mt_pool_p" + NOW.strftime("%Y%m"),
                      partition_name(a) + "_p" + NOW.strftime("%Y%m")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(f'SELECT count(*) FROM "{table}"')
            app.rollback()
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            seen = app.execute("SELECT organization_id, count(*) FROM usage_events GROUP BY 1").fetchall()
            assert seen == [(a, 30)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with app.transaction():
                    app.execute(
                        "INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\") "
                        "VALUES (%s, 'x', 1, now())", (b,))


def test_concurrent_inserts_while_attaching_none_fail_none_lost(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    other = make_tenant(admin_conn, tier="free")
    ensure_tenant_partition(admin_conn, other)
    add_events(admin_conn, tenant, 2000)
    stop = threading.Event()
    inserted = {tenant: 2000, other: 0}
    errors: list[BaseException] = []

    def writer(who: uuid.UUID) -> None:
        """An application: billing_app, in the tenant's context, 10 rows a transaction."""
        try:
            with psycopg.connect(app_dsn_for(admin_dsn)) as conn:
                while not stop.is_set():
                    with tenant_session(conn, who, role=None) as tx:
                        tx.execute(
                            "INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\") "
                            "SELECT %s, 'api_calls', 1, now() FROM generate_series(1, 10)", (who,))
                    inserted[who] += 10
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def each_committed_since(counts: dict[uuid.UUID, int]) -> bool:
        return bool(errors) or all(inserted[who] > n for who, n in counts.items())

    threads = [threading.Thread(target=writer, args=(t,)) for t in (tenant, other)]
    for t in threads:
        t.start()
    try:
        # Both writers are writing (each has committed a transaction) before the promotion
        # starts, and both go on after it: each commits another one once it is over.
        wait_until(lambda: each_committed_since({tenant: 2000, other: 0}), "both writers to commit a transaction")
        report = ensure_tenant_partition(admin_conn, tenant)
        after = dict(inserted)
        wait_until(lambda: each_committed_since(after), "both writers to commit after the promotion")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert report.attached_now
    for who, count in inserted.items():
        assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                                  (who,)).fetchone()[0] == count
    assert str(tenant) not in pool_rows(admin_conn)


def test_attach_does_not_wait_for_dedicated_tenants_writers(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    busy = make_tenant(admin_conn, tier="growth")
    ensure_tenant_partition(admin_conn, busy)
    newcomer = make_tenant(admin_conn, tier="enterprise")
    admin_conn.execute("UPDATE partition_config SET lock_timeout = '500ms'")
    with psycopg.connect(admin_dsn) as writer:
        # An open transaction that wrote to another tenant (and to usage_events_mt).
        writer.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") "
                       "VALUES (%s, 'api_calls', 1, now())", (busy,))
        report = ensure_tenant_partition(admin_conn, newcomer, attempts=1)
        assert report.attached_now
        writer.commit()


def promote_in_background(conn: psycopg.Connection, tenant: uuid.UUID, **kwargs) -> tuple[threading.Thread, list, list]:
    """ensure_tenant_partition(conn, tenant) started in a thread: the thread, its report (once
    done) and what it raised."""
    done: list = []
    failed: list[BaseException] = []

    def promote() -> None:
        try:
            done.append(ensure_tenant_partition(conn, tenant, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)

    thread = threading.Thread(target=promote)
    thread.start()
    return thread, done, failed


def promote_past_one_lock_timeout(conn: psycopg.Connection, observer: psycopg.Connection, tenant: uuid.UUID,
                                  release: Callable[[], None], **kwargs) -> None:
    """Promote ``tenant`` in the background while something holds the pool; ``release`` that only
    once the promotion has queued for the pool and given up (pg_locks, via ``observer``). The
    promotion then gets through on a retry: attached, lock_retries >= 1."""
    promoter_pid = conn.info.backend_pid
    promoter, done, failed = promote_in_background(conn, tenant, **kwargs)
    try:
        assert lock_waiter(observer, "usage_events_mt_default") == promoter_pid
        outwait_one_lock_timeout(observer, promoter_pid)
    finally:
        release()
        promoter.join()
    assert not failed, failed
    (report,) = done
    assert report.attached_now and report.lock_retries >= 1


def test_a_pooled_writers_open_transaction_delays_a_promotion_by_100_ms_at_a_time(
    admin_conn: psycopg.Connection, admin_dsn: str
) -> None:
    """Promotion takes brief ACCESS EXCLUSIVE locks on the pool; while one waits, pooled
    writers queue behind it. It waits 100 ms at most, however long lock_timeout is (here none
    at all: it would wait forever), then retries, and gets through once the open transaction
    ends. The writer commits only after the promotion has provably queued for the pool and
    given up (pg_locks), whatever the machine's speed."""
    pooled = make_tenant(admin_conn, tier="free")
    newcomer = make_tenant(admin_conn, tier="enterprise")
    admin_conn.execute("UPDATE partition_config SET lock_timeout = '0'")
    with psycopg.connect(admin_dsn) as writer, psycopg.connect(admin_dsn, autocommit=True) as observer:
        writer.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") "
                       "VALUES (%s, 'api_calls', 1, now())", (pooled,))
        # Only the writer holds what it waits for, and lock_timeout would never end the wait.
        promote_past_one_lock_timeout(admin_conn, observer, newcomer, release=writer.commit)


def test_lock_timeout_is_retried_then_reported_in_one_line(admin_conn: psycopg.Connection, admin_dsn: str) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    flag_dedicated(admin_conn, tenant)
    add_events(admin_conn, tenant, 5)
    admin_conn.execute("UPDATE partition_config SET lock_timeout = '100ms'")
    with psycopg.connect(admin_dsn) as holder, psycopg.connect(admin_dsn, autocommit=True) as observer:
        holder.execute("LOCK TABLE usage_events_mt_default IN EXCLUSIVE MODE")
        with pytest.raises(TenantPipelinesError) as info:
            ensure_tenant_partition(admin_conn, tenant, attempts=2)
        assert str(tenant) in str(info.value) and "pg_stat_activity" in str(info.value)
        assert "\n" not in str(info.value)
        # Released while it retries: the holder lets go only once the promotion has queued for
        # the pool and given up (pg_locks), so the try that gets through is a retry.
        promote_past_one_lock_timeout(admin_conn, observer, tenant, release=holder.rollback, attempts=8)


def test_audit_finds_a_missing_month_and_a_stray_grant(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="enterprise")
    ensure_tenant_partition(admin_conn, tenant)
    part = partition_name(tenant)
    month = part + "_p" + months_ahead(1)[1]
    admin_conn.execute(f'ALTER TABLE "{part}" DETACH PARTITION "{month}"')
    admin_conn.execute(f'GRANT SELECT ON "{part}_rest" TO billing_app')
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [tenant])]
    assert any(months_ahead(1)[1] in f and "missing months" in f for f in findings)
    assert any(f"{part}_rest" in f and "billing_app can access it directly" in f for f in findings)
    admin_conn.execute('ALTER TABLE usage_events_mt_default DETACH PARTITION "usage_events_mt_pool_p%s"'
                       % months_ahead(2)[2])
    findings = [str(f) for f in audit_tenant_partitions(admin_conn, [])]
    assert any("usage_events_mt_default" in f and months_ahead(2)[2] in f for f in findings), findings
