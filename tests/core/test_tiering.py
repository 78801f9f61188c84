"""Storage tiering: month partitions land in hot, warm and cold by age; re-runs move nothing;
live inserts into the current month never fail; a killed move is re-run; parents never move."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
from psycopg import sql
import pytest

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.placement import partition_name
from tenant_pipelines.core.security import audit_isolation
from tenant_pipelines.core.tiering import (
    MissingTablespace, Pace, configure_tablespaces, misplaced, plan, tier_pool, tier_tenant)
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError
from tests.conftest import make_tenant
from tests.waiting import DEADLINE_S, outwait_one_lock_timeout, wait_until

NOW = datetime.now(timezone.utc)
THIS_MONTH = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
# Ten days into this month, the months ending 10, ~40, ~70 and ~100 days earlier are hot, warm,
# warm and cold, whatever today's date: a month's age is that of the newest row it can hold.
AS_OF = THIS_MONTH + timedelta(days=10)
# The online copy of rows whoever is writing (with nobody writing, the default pace copies a
# month's files instead: test_nobody_writing_copies_files_and_a_waiter_makes_it_step_aside).
ROWS = Pace.fixed(None)


def month(offset: int) -> datetime:
    """The first instant of the month ``offset`` months from this one (UTC)."""
    index = THIS_MONTH.year * 12 + THIS_MONTH.month - 1 + offset
    return THIS_MONTH.replace(year=index // 12, month=index % 12 + 1)


def leaf(tenant: uuid.UUID, offset: int) -> str:
    return f"{partition_name(tenant)}_p{month(offset):%Y%m}"


def tablespace_of(conn: psycopg.Connection, relation: str) -> str:
    return conn.execute(
        "SELECT COALESCE(t.spcname, 'pg_default') FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace"
        " WHERE c.oid = %s::regclass", (relation,)).fetchone()[0]


def index_tablespaces(conn: psycopg.Connection, relation: str) -> set[str]:
    rows = conn.execute(
        "SELECT COALESCE(t.spcname, 'pg_default') FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE x.indrelid = %s::regclass", (relation,))
    return {r[0] for r in rows}


@pytest.fixture
def tenant(admin_conn: psycopg.Connection) -> uuid.UUID:
    """An enterprise tenant split by month, with events in this month and 1 to 5 months back."""
    tenant = make_tenant(admin_conn, tier="enterprise")
    with admin_conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for offset in range(-5, 1):
            for i in range(200):
                copy.write_row((tenant, "api_calls", Decimal(i), month(offset) + timedelta(hours=i)))
    ensure_tenant_partition(admin_conn, tenant)
    return tenant


def test_months_land_in_hot_warm_and_cold_by_age(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF)

    expected = {0: "hot_storage", -1: "hot_storage", -2: "warm_storage", -3: "warm_storage",
                -4: "cold_storage", -5: "cold_storage", 1: "hot_storage"}
    for offset, tablespace in expected.items():
        assert tablespace_of(admin_conn, leaf(tenant, offset)) == tablespace, offset
        assert index_tablespaces(admin_conn, leaf(tenant, offset)) == {tablespace}, offset
    assert {m.partition for m in report.moves} == {leaf(tenant, o) for o in (-2, -3, -4, -5)}
    assert report.bytes_moved > 0 and report.misplaced_left == 0
    assert report.placement["cold"]["partitions"] == 2 and report.placement["warm"]["partitions"] == 2
    assert all(m.frozen == (m.to_tablespace == "cold_storage") for m in report.moves)
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] == 1200


def test_parents_and_rest_never_move(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    before = {r: tablespace_of(admin_conn, r) for r in
              ("usage_events_mt", partition_name(tenant), partition_name(tenant) + "_rest", "usage_events_mt_default")}
    tier_tenant(admin_conn, tenant, as_of=AS_OF + timedelta(days=3650))
    assert {r: tablespace_of(admin_conn, r) for r in before} == before
    assert all(p.partition_name.rsplit("_p", 1)[1].isdigit() for p in plan(admin_conn, tenant))


def test_a_second_run_moves_nothing(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    tier_tenant(admin_conn, tenant, as_of=AS_OF)
    again = tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert again.moves == [] and misplaced(admin_conn, [str(tenant)], as_of=AS_OF) == []


def test_current_and_future_months_never_move_even_when_misplaced(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    admin_conn.execute(f'ALTER TABLE "{leaf(tenant, 0)}" SET TABLESPACE cold_storage')
    report = tier_tenant(admin_conn, tenant, as_of=NOW)
    assert leaf(tenant, 0) not in {m.partition for m in report.moves}
    assert tablespace_of(admin_conn, leaf(tenant, 0)) == "cold_storage"


def test_policy_per_tenant_tier(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    admin_conn.execute("INSERT INTO tiering_policy (tenant_tier, warm_after, cold_after) VALUES ('enterprise', '200 days', '400 days')")
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert report.moves == [] and report.placement["hot"]["partitions"] >= 6


def test_cold_partitions_are_frozen_and_keep_autovacuum(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    tier_tenant(admin_conn, tenant, as_of=AS_OF)
    frozen_age, options = admin_conn.execute(
        "SELECT age(relfrozenxid), reloptions FROM pg_class WHERE oid = %s::regclass", (leaf(tenant, -5),)).fetchone()
    current_xid_age = admin_conn.execute("SELECT age(datfrozenxid) FROM pg_database WHERE datname = current_database()").fetchone()[0]
    assert frozen_age < current_xid_age
    assert not options or "autovacuum_enabled=false" not in options


def test_inserts_into_the_current_month_during_moves_never_fail(
    admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID
) -> None:
    stop, errors, inserted = threading.Event(), [], [0]

    def writer() -> None:
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")'
                                 " SELECT %s, 'api_calls', 1, now() FROM generate_series(1, 10)", (tenant,))
                    inserted[0] += 10
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writes_meanwhile(_: float) -> None:
        """Between two batches of each copy: the writer has inserted more since (it runs during the moves)."""
        seen = inserted[0]
        wait_until(lambda: inserted[0] > seen or errors, "the writer to insert during the move")
        pauses[0] += 1

    pauses = [0]
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: inserted[0] or errors, "the writer's first insert")
        report = tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1),
                             sleep=writes_meanwhile)
        after_moves = inserted[0]
        wait_until(lambda: inserted[0] > after_moves or errors, "the writer to insert after the moves")
    finally:
        stop.set()
        thread.join()
    assert not errors and len(report.moves) == 4 and pauses[0] >= 4
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] == 1200 + inserted[0]


def test_a_killed_move_is_rolled_back_and_rerun(admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID) -> None:
    victim_leaf = leaf(tenant, -5)
    with psycopg.connect(admin_dsn) as victim:
        victim.execute("SELECT fn_move_partition(%s, 'cold_storage')", (victim_leaf,))
        admin_conn.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            victim.commit()
    assert tablespace_of(admin_conn, victim_leaf) == "hot_storage"
    tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert tablespace_of(admin_conn, victim_leaf) == "cold_storage"
    assert admin_conn.execute(f'SELECT count(*) FROM "{victim_leaf}"').fetchone()[0] == 200


def test_lock_timeout_then_retry(admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID) -> None:
    """A reader holds the month; the move waits for it, gives up at lock_timeout, and its retry
    gets through once the reader is gone. The reader lets go only after the mover has provably
    waited and given up (pg_locks), whatever the machine's speed."""
    admin_conn.execute("UPDATE partition_config SET lock_timeout = '100ms'")
    mover_pid, done, failed = admin_conn.info.backend_pid, [], []

    def move() -> None:
        try:
            done.append(tier_tenant(admin_conn, tenant, as_of=AS_OF, attempts=10))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    with psycopg.connect(admin_dsn) as reader, psycopg.connect(admin_dsn, autocommit=True) as observer:
        reader.execute(f'SELECT count(*) FROM "{leaf(tenant, -3)}"')  # holds ACCESS SHARE until rollback
        mover = threading.Thread(target=move)
        mover.start()
        try:
            outwait_one_lock_timeout(observer, mover_pid, leaf(tenant, -3))
        finally:
            reader.rollback()
            mover.join()
    assert not failed, failed
    (report,) = done
    assert max(m.attempts for m in report.moves if m.partition == leaf(tenant, -3)) > 1
    assert misplaced(admin_conn, [str(tenant)], as_of=AS_OF) == []


def test_missing_tablespace_is_a_clear_error(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    admin_conn.execute("UPDATE storage_tiers SET tablespace = 'archive_disk' WHERE storage_tier = 'cold'")
    with pytest.raises(MissingTablespace) as info:
        tier_tenant(admin_conn, tenant, as_of=AS_OF)
    message = str(info.value)
    assert "archive_disk" in message and "CREATE TABLESPACE archive_disk" in message and "\n" not in message
    with pytest.raises(MissingTablespace, match="'nowhere'"):
        configure_tablespaces(admin_conn, {"warm": "nowhere"})


def test_sql_function_for_dbas_applies_the_same_policy(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    moved = admin_conn.execute("SELECT partition_name, to_tablespace FROM fn_tier_usage_data(%s, %s)",
                               (tenant, AS_OF)).fetchall()
    assert dict(moved) == {leaf(tenant, -2): "warm_storage", leaf(tenant, -3): "warm_storage",
                           leaf(tenant, -4): "cold_storage", leaf(tenant, -5): "cold_storage"}
    assert admin_conn.execute("SELECT count(*) FROM fn_tier_usage_data(%s, %s)", (tenant, AS_OF)).fetchone()[0] == 0
    assert tier_tenant(admin_conn, tenant, as_of=AS_OF).moves == []


# -- the online mover (copy-and-swap) ------------------------------------------------------------


def rows_of(conn: psycopg.Connection, relation: str) -> list[tuple]:
    return conn.execute(f'SELECT id, "timestamp", quantity, metric_name, properties FROM "{relation}" ORDER BY id').fetchall()


def moves_in_progress(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM tenant_pipelines.partition_moves").fetchone()[0] + conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_pipelines'"
        " AND (tablename LIKE 'tiering_move_%' OR tablename LIKE 'tiering_old_%')"
    ).fetchone()[0] + conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tiering_move_%'").fetchone()[0]


def test_online_move_keeps_rows_names_bounds_and_security(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    old = leaf(tenant, -5)

    def shape(relation: str) -> tuple:
        indexes = admin_conn.execute(
            "SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE x.indrelid = %s::regclass", (relation,)).fetchone()[0]
        bound, rls, forced, parent = admin_conn.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid), c.relrowsecurity, c.relforcerowsecurity, i.inhparent::regclass::text"
            " FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.oid = %s::regclass", (relation,)).fetchone()
        owner = admin_conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
                                   (relation,)).fetchone()[0]
        app = admin_conn.execute("SELECT has_table_privilege('billing_app', %s, 'SELECT')", (relation,)).fetchone()[0]
        return indexes, bound, rls, forced, parent, owner, app

    before_rows, before_shape = rows_of(admin_conn, old), shape(old)
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace(batch_blocks=1))
    assert {m.method for m in report.moves} == {"online"} and len(report.moves) == 4
    assert rows_of(admin_conn, old) == before_rows and len(before_rows) == 200
    assert shape(old) == before_shape
    assert before_shape[2:] == (True, True, partition_name(tenant), "billing_owner", False)
    assert tablespace_of(admin_conn, old) == "cold_storage" and index_tablespaces(admin_conn, old) == {"cold_storage"}
    assert moves_in_progress(admin_conn) == 0
    # every index of the moved partition still belongs to the parent's partitioned index
    assert admin_conn.execute(
        "SELECT count(*) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid"
        " WHERE x.indrelid = %s::regclass", (old,)).fetchone()[0] == len(before_shape[0])


def test_a_move_leaves_the_callers_session_settings_as_they_were(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """The copy commits asynchronously and hands its writes to the disk early, its VACUUM has
    a cost delay, and both run in autocommit: none of it may stay on the caller's connection,
    and values the caller set itself come back (not the server's defaults)."""
    names = ("synchronous_commit", "backend_flush_after", "vacuum_cost_delay", "vacuum_cost_limit")
    for name, value in (("synchronous_commit", "local"), ("backend_flush_after", "64kB"), ("vacuum_cost_limit", "321")):
        admin_conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    admin_conn.commit()

    def settings() -> dict[str, str]:
        return {n: admin_conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone()[0] for n in names}

    before, autocommit = settings(), admin_conn.autocommit
    assert before["synchronous_commit"] == "local" and before["vacuum_cost_limit"] == "321"
    # a rate: the VACUUM gets a cost delay and limit of its own
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace(max_mb_per_s=1000, batch_blocks=1))
    assert len(report.moves) == 4 and any(m.frozen for m in report.moves)
    assert settings() == before and admin_conn.autocommit == autocommit


def test_writes_to_the_moving_partition_during_the_copy_are_kept(
    admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID
) -> None:
    """billing_app inserts, updates and deletes rows of the month being moved while it is
    copied (from the mover's pauses, so it happens mid-copy every time): the moved month has
    exactly the rows the old one had at the swap."""
    old = leaf(tenant, -5)
    calls = [0]

    def write_between_batches(_: float) -> None:
        moving = admin_conn.execute("SELECT count(*) FROM tenant_pipelines.partition_moves WHERE partition_name = %s",
                                    (old,)).fetchone()[0]
        calls[0] += moving
        if not moving or calls[0] not in (1, 3):
            return
        with psycopg.connect(admin_dsn) as app, app.transaction():
            app.execute("SET LOCAL ROLE billing_app")
            app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            app.execute('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")'
                        " SELECT %s, 'late', 7, %s::timestamptz + g * interval '1 minute' FROM generate_series(1, 5) g",
                        (tenant, month(-5) + timedelta(days=20)))
            app.execute("UPDATE usage_events_mt SET quantity = quantity + 1000 WHERE organization_id = %s"
                        ' AND "timestamp" < %s', (tenant, month(-5) + timedelta(hours=10)))
            app.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND metric_name = 'api_calls'"
                        ' AND "timestamp" >= %s AND "timestamp" < %s',
                        (tenant, month(-5) + timedelta(hours=100), month(-5) + timedelta(hours=103)))

    tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1),
                sleep=write_between_batches)
    assert calls[0] >= 3
    after = rows_of(admin_conn, old)
    assert len(after) == 200 + 2 * 5 - 3  # two rounds of 5 inserts; 3 deleted (by the first round)
    expected = sorted([Decimal(i + 2000) for i in range(10)]  # updated by both rounds
                      + [Decimal(i) for i in range(10, 200) if i not in (100, 101, 102)] + [Decimal(7)] * 10)
    assert sorted(r[2] for r in after) == expected
    assert tablespace_of(admin_conn, old) == "cold_storage" and moves_in_progress(admin_conn) == 0


def test_a_crashed_online_move_is_started_again(admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID) -> None:
    old = leaf(tenant, -5)
    before = rows_of(admin_conn, old)
    with psycopg.connect(admin_dsn, autocommit=True) as crashed:  # began, copied a little, then died
        shadow = crashed.execute("SELECT shadow_name FROM fn_move_begin(%s, 'cold_storage')", (old,)).fetchone()[0]
        crashed.execute(f'INSERT INTO tenant_pipelines."{shadow}" SELECT * FROM "{old}" LIMIT 10')
    assert moves_in_progress(admin_conn) == 5  # the move's row, shadow, log and two triggers
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert report.restarted == [old]
    assert rows_of(admin_conn, old) == before and tablespace_of(admin_conn, old) == "cold_storage"
    assert moves_in_progress(admin_conn) == 0


def test_a_crash_after_the_swap_leaves_only_the_old_table_to_drop(
    admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID
) -> None:
    old = leaf(tenant, -5)
    before = rows_of(admin_conn, old)
    with psycopg.connect(admin_dsn, autocommit=True) as crashed:  # swapped, died before dropping the old table
        shadow = crashed.execute("SELECT shadow_name FROM fn_move_begin(%s, 'cold_storage')", (old,)).fetchone()[0]
        crashed.execute(f'INSERT INTO tenant_pipelines."{shadow}" SELECT * FROM "{old}"')
        crashed.execute("SELECT fn_move_finish(%s)", (old,))
    assert tablespace_of(admin_conn, old) == "cold_storage" and rows_of(admin_conn, old) == before
    assert moves_in_progress(admin_conn) == 2  # the move's row and the parked old table
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert report.restarted == [] and old not in [m.partition for m in report.moves]
    assert moves_in_progress(admin_conn) == 0 and rows_of(admin_conn, old) == before


def test_a_failed_online_move_leaves_the_partition_whole(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """A TRUNCATE of the month mid-copy cannot be caught up with: the move stops with a clear
    error and drops its shadow; the partition is as the TRUNCATE left it; a re-run moves it."""
    old = leaf(tenant, -5)

    def truncate(_: float) -> None:
        with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password, autocommit=True) as other:
            other.execute(f'TRUNCATE "{old}"')

    with pytest.raises(TenantPipelinesError, match="truncated while it was being moved") as info:
        tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1), sleep=truncate)
    assert str(tenant) in str(info.value) and "re-run" in str(info.value) and "\n" not in str(info.value)
    assert moves_in_progress(admin_conn) == 0
    assert admin_conn.execute(f'SELECT count(*) FROM "{old}"').fetchone()[0] == 0
    tier_tenant(admin_conn, tenant, as_of=AS_OF)
    assert tablespace_of(admin_conn, old) == "cold_storage"


def test_a_rewrite_during_an_online_move_is_caught(admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID) -> None:
    """VACUUM FULL gives the partition new line pointers mid-copy: the move must not swap in a
    copy made by the old ones."""
    old = leaf(tenant, -5)
    before = rows_of(admin_conn, old)

    def vacuum_full(_: float) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as other:
            if other.execute("SELECT count(*) FROM tenant_pipelines.partition_moves WHERE partition_name = %s",
                             (old,)).fetchone()[0]:
                other.execute(f'VACUUM FULL "{old}"')

    with pytest.raises(TenantPipelinesError, match="rewritten .VACUUM FULL, CLUSTER or TRUNCATE. while it was being moved"):
        tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1), sleep=vacuum_full)
    assert moves_in_progress(admin_conn) == 0 and rows_of(admin_conn, old) == before


def test_no_isolation_findings_while_a_move_is_in_progress(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    admin_conn.execute("SELECT fn_move_begin(%s, 'cold_storage')", (leaf(tenant, -5),))
    try:
        assert audit_isolation(admin_conn) == []
    finally:
        admin_conn.execute("SELECT fn_move_abandon(%s)", (leaf(tenant, -5),))


def test_two_runs_on_one_tenant_do_not_undo_each_other(admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as other:
        seen: list[str] = []

        def second_run_meanwhile(_: float) -> None:
            if not seen:
                with pytest.raises(TenantPipelinesError, match="another tiering run .or a placement move of the tenant. is moving") as info:
                    tier_tenant(other, tenant, as_of=AS_OF)
                seen.append(str(info.value))

        report = tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1),
                             sleep=second_run_meanwhile)
        assert seen and str(tenant) in seen[0] and len(report.moves) == 4
        assert tier_tenant(other, tenant, as_of=AS_OF).moves == []  # the lock is released afterwards
    assert moves_in_progress(admin_conn) == 0


def test_billing_app_cannot_read_a_move_in_progress(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """The shadow copy holds a tenant's rows (organization_id and all) outside the partition
    tree, and the change log their keys: billing_app reaches neither, in any tenant context."""
    shadow = admin_conn.execute("SELECT shadow_name FROM fn_move_begin(%s, 'cold_storage')",
                                (leaf(tenant, -5),)).fetchone()[0]
    admin_conn.execute(f'INSERT INTO tenant_pipelines."{shadow}" SELECT * FROM "{leaf(tenant, -5)}"')
    try:
        for table in (shadow, f"{shadow}_log"):
            with admin_conn.transaction(force_rollback=True):
                admin_conn.execute("SET LOCAL ROLE billing_app")
                admin_conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    admin_conn.execute(f'SELECT count(*) FROM tenant_pipelines."{table}"')
    finally:
        admin_conn.execute("SELECT fn_move_abandon(%s)", (leaf(tenant, -5),))


def test_set_tablespace_method_and_bad_options(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF, method="set-tablespace")
    assert {m.method for m in report.moves} == {"set-tablespace"} and len(report.moves) == 4
    with pytest.raises(InvalidInput, match="tiering method 'fast'"):
        tier_tenant(admin_conn, tenant, as_of=AS_OF, method="fast")
    with pytest.raises(InvalidInput, match="positive rate"):
        Pace(max_mb_per_s=0)


def test_the_shadow_is_left_alone_by_autovacuum_and_the_partition_keeps_its_storage_parameters(
    admin_conn: psycopg.Connection, tenant: uuid.UUID
) -> None:
    """Autovacuum on the shadow would hold the swap (and the tenant's writers behind it) until the
    deadlock check cancels it; a DBA's storage parameters must survive the move."""
    old = leaf(tenant, -5)
    admin_conn.execute(f'ALTER TABLE "{old}" SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,'
                       ' toast.autovacuum_vacuum_scale_factor = 0.05)')
    seen: list[list[str] | None] = []

    def look_at_the_shadow(_: float) -> None:
        if not seen:
            seen.append(admin_conn.execute(
                "SELECT c.reloptions || t.reloptions FROM tenant_pipelines.partition_moves m"
                " JOIN pg_class c ON c.oid = format('tenant_pipelines.%%I', m.shadow_name)::regclass"
                " JOIN pg_class t ON t.oid = c.reltoastrelid WHERE m.partition_name = %s", (old,)).fetchone()[0])

    tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1), sleep=look_at_the_shadow)
    assert seen == [["autovacuum_enabled=off", "autovacuum_enabled=off"]]
    table, toast = admin_conn.execute(
        "SELECT c.reloptions, t.reloptions FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid"
        " WHERE c.oid = %s::regclass", (old,)).fetchone()
    assert tablespace_of(admin_conn, old) == "cold_storage"
    assert sorted(table) == ["autovacuum_vacuum_scale_factor=0.02", "fillfactor=90"]
    assert toast == ["autovacuum_vacuum_scale_factor=0.05"]


def test_the_swap_does_not_wait_for_a_lock_on_another_month(
    admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID
) -> None:
    """Autovacuum holds SHARE UPDATE EXCLUSIVE on the month it vacuums. The swap locks the
    tenant's parent ONLY, so a vacuum of another month (here: the current one, as the inserts
    of the day would have it) does not hold it, or the tenant's writers queued behind it, up."""
    with psycopg.connect(admin_dsn) as vacuum_like:
        vacuum_like.execute(f'LOCK TABLE "{leaf(tenant, 0)}" IN SHARE UPDATE EXCLUSIVE MODE')
        report = tier_tenant(admin_conn, tenant, as_of=AS_OF)
        vacuum_like.rollback()
    assert len(report.moves) == 4 and report.misplaced_left == 0
    assert all(m.attempts == 1 for m in report.moves)


@pytest.mark.parametrize("configured", ["2s", "0"])
def test_the_swap_gives_up_a_lock_wait_soon_and_retries(
    admin_conn: psycopg.Connection, admin_dsn: str, tenant: uuid.UUID, configured: str
) -> None:
    """The tenant's writers queue behind a swap that waits for its lock: it waits 100 ms at
    most (also when partition_config.lock_timeout is 0, no timeout), then tries again."""
    admin_conn.execute("UPDATE partition_config SET lock_timeout = %s", (configured,))
    holder = psycopg.connect(admin_dsn)
    observer = psycopg.connect(admin_dsn, autocommit=True)
    released = threading.Event()
    mover_pid = admin_conn.info.backend_pid

    def release_once_the_swap_gave_up_a_wait() -> None:
        try:
            outwait_one_lock_timeout(observer, mover_pid, partition_name(tenant))
        finally:
            holder.rollback()
            released.set()

    def hold_the_parent_while_copying(_: float) -> None:
        if not released.is_set() and not holder.info.transaction_status:
            holder.execute(f'LOCK TABLE ONLY "{partition_name(tenant)}" IN ACCESS SHARE MODE')
            threading.Thread(target=release_once_the_swap_gave_up_a_wait).start()

    try:
        report = tier_tenant(admin_conn, tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1),
                             sleep=hold_the_parent_while_copying)
    finally:
        released.wait(DEADLINE_S * 2)
        holder.close()
        observer.close()
        admin_conn.execute("UPDATE partition_config SET lock_timeout = '2s'")
    assert report.misplaced_left == 0 and max(m.attempts for m in report.moves) > 1


def pool_leaf(offset: int) -> str:
    return f"usage_events_mt_pool_p{month(offset):%Y%m}"


@pytest.fixture
def pooled(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> list[uuid.UUID]:
    """Two free tenants, pooled, with events in this month and 1 to 5 months back (and the
    enterprise ``tenant``, dedicated, so that the pool's partition constraint is not empty)."""
    made = [make_tenant(admin_conn, tier="free") for _ in range(2)]
    with admin_conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for who in made:
            for offset in range(-5, 1):
                for i in range(100):
                    copy.write_row((who, "api_calls", Decimal(i), month(offset) + timedelta(hours=i)))
    for who in made:
        assert ensure_tenant_partition(admin_conn, who).layout == "pooled"
    return made


def test_the_pools_months_move_by_the_global_policy(
    admin_conn: psycopg.Connection, tenant: uuid.UUID, pooled: list[uuid.UUID]
) -> None:
    admin_conn.execute("INSERT INTO tiering_policy (tenant_tier, warm_after, cold_after) VALUES ('free', '1 day', '2 days')")
    assert tier_tenant(admin_conn, pooled[0], as_of=AS_OF).moves == [], "a pooled tenant has no months of its own"

    report = tier_pool(admin_conn, as_of=AS_OF, pace=ROWS)

    expected = {-2: "warm_storage", -3: "warm_storage", -4: "cold_storage", -5: "cold_storage"}
    for offset, tablespace in expected.items():
        assert tablespace_of(admin_conn, pool_leaf(offset)) == tablespace, offset
        assert index_tablespaces(admin_conn, pool_leaf(offset)) == {tablespace}, offset
    assert tablespace_of(admin_conn, pool_leaf(0)) != "warm_storage", "the current month stays"
    assert report.tenant == "pool" and report.misplaced_left == 0
    assert {m.partition for m in report.moves} >= {pool_leaf(o) for o in expected}
    for who in pooled:
        assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                                  (who,)).fetchone()[0] == 600
    # The swap proved the pool's partition constraint from a CHECK, not by scanning the month.
    check = admin_conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND conname = 'pool_partition_check'", (pool_leaf(-4),)).fetchone()
    assert check and str(tenant) in check[0]
    assert tier_pool(admin_conn, as_of=AS_OF).moves == [], "a second run moves nothing"
    assert [p for p in misplaced(admin_conn, as_of=AS_OF) if p.tenant is None] == []
    assert audit_isolation(admin_conn) == []


def test_a_pool_month_moved_twice_gets_the_constraint_of_its_time(
    admin_conn: psycopg.Connection, tenant: uuid.UUID, pooled: list[uuid.UUID]
) -> None:
    tier_pool(admin_conn, as_of=AS_OF, pace=ROWS)
    newcomer = make_tenant(admin_conn, tier="enterprise")
    ensure_tenant_partition(admin_conn, newcomer)  # the pool's constraint now names two tenants
    tier_pool(admin_conn, as_of=AS_OF + timedelta(days=120), pace=ROWS)  # warm months turn cold
    (definition,) = admin_conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND conname = 'pool_partition_check'", (pool_leaf(-2),)).fetchone()
    assert str(newcomer) in definition and str(tenant) in definition
    assert tablespace_of(admin_conn, pool_leaf(-2)) == "cold_storage"


def test_a_pool_months_swap_does_not_scan_it(
    admin_conn: psycopg.Connection, tenant: uuid.UUID, pooled: list[uuid.UUID]
) -> None:
    """The shadow carries the pool's partition constraint, so ATTACH proves it from the
    catalog (PostgreSQL says so at DEBUG1) instead of scanning the month under the pool's lock."""
    notices: list[str] = []
    admin_conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    admin_conn.execute("SET client_min_messages = debug1")
    report = tier_pool(admin_conn, as_of=AS_OF, pace=ROWS)
    admin_conn.execute("RESET client_min_messages")
    assert report.moves and all(m.method == "online" for m in report.moves)
    implied = [n for n in notices if "tiering_move_" in n and "is implied by existing constraints" in n]
    assert len(implied) == len(report.moves), notices


def test_with_nobody_writing_a_months_files_are_copied(admin_conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """Nobody writes: the months move as file copies at disk speed (a client that waits for
    one makes it step aside: tests/db/test_pacing.py)."""
    lines: list[str] = []
    report = tier_tenant(admin_conn, tenant, as_of=AS_OF, log=lines.append)
    assert {m.partition: m.copy for m in report.moves} == {leaf(tenant, o): "files" for o in (-2, -3, -4, -5)}
    assert all(m.method == "online" and m.rows_caught_up == 0 for m in report.moves) and report.misplaced_left == 0
    assert any("nobody was writing: its files copied at disk speed" in line for line in lines)
    assert report.pace.bytes == sum(m.bytes for m in report.moves) and report.pace.probes == 0
    for offset, tablespace in {-2: "warm_storage", -4: "cold_storage"}.items():
        assert tablespace_of(admin_conn, leaf(tenant, offset)) == tablespace
        assert index_tablespaces(admin_conn, leaf(tenant, offset)) == {tablespace}
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] == 1200
    assert tier_tenant(admin_conn, tenant, as_of=AS_OF).moves == []
    assert audit_isolation(admin_conn) == []
