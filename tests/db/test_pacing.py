"""The adaptive pace (db/pacing.py): its decisions on a fake clock, then the probe thread
against a real server: nobody active means full speed and no probes; an active client gets a
baseline and probe commits; a probe commit held over the line halves the rate, with its
reason; a second mover adopts the first one's baseline; tiering and placement moves report
their pace."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterator

import psycopg
import pytest

from tenant_pipelines.core import moves
from tenant_pipelines.db.pacing import (
    BASELINE_PROBES, BATCH_S, BLOCK, WRITERS_BATCH_CAP, CUT_AT, CUT_GAP_S, FIXED, GROW_AT_MOST, LINE_FALLS_AT_MOST, LINE_RISES_AT_MOST, SEVERE,
    FLOOR_RATE, MAX_BATCH_BLOCKS, MOVER_APP, PROBE_APP, REFERENCE_EVERY_S, REFERENCE_S, SLOW_START_CLEAN, START_RATE,
    STEADY_CLEAN, Controller, MiB, Pace, Pacer, PaceReport, Sample)
from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.tiering import tier_tenant
from tenant_pipelines.errors import InvalidInput
from tests.conftest import make_tenant
from tests.waiting import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def active_controller(pace: Pace = Pace(), baseline_s: float = 0.002) -> tuple[Controller, FakeClock]:
    clock = FakeClock()
    c = Controller(pace, clock)
    c.set_baseline(baseline_s)
    c.set_writers(True)
    return c, clock


def test_pace_refuses_bad_values_in_one_line():
    for bad in (dict(method="fast"), dict(max_mb_per_s=0), dict(batch_blocks=0), dict(target_p99_ratio=1.0)):
        with pytest.raises(InvalidInput) as err:
            Pace(**bad)
        assert "\n" not in str(err.value)


def test_without_writers_the_mover_runs_at_its_ceiling_in_the_largest_batches():
    c = Controller(Pace())
    assert c.rate is None and c.batch_bytes() == MAX_BATCH_BLOCKS * BLOCK
    capped = Controller(Pace(max_mb_per_s=64))
    assert capped.rate == 64 * MiB and capped.batch_bytes() == 2 * MiB  # 1/32 s of 64 MB/s


def test_writers_start_it_at_the_fixed_pace_and_clean_probes_double_it_then_crossings_halve_it():
    c, clock = active_controller()
    assert c.rate == START_RATE and c.batch_bytes() == int(START_RATE * BATCH_S)
    assert "other clients are active" in c.slowdowns[-1].reason
    for _ in range(SLOW_START_CLEAN):
        assert not c.probe(0.001)
    assert c.rate == 2 * START_RATE
    # The rate doubles, the batch does not: more commits of at most 32 KiB (bench/pace_cost.py).
    assert c.batch_bytes() == WRITERS_BATCH_CAP == int(START_RATE * BATCH_S)
    for _ in range(SLOW_START_CLEAN):
        c.probe(0.001)
    assert c.rate == 4 * START_RATE
    for _ in range(GROW_AT_MOST):  # a few crossings are noise: it still grows
        assert c.probe(0.003)  # over 1.2 x 2 ms
    assert c.rate == 4 * START_RATE
    for _ in range(SLOW_START_CLEAN - GROW_AT_MOST):
        c.probe(0.001)
    assert c.rate == 8 * START_RATE
    for _ in range(CUT_AT - GROW_AT_MOST - 1):
        c.probe(0.003)
    assert c.rate == 8 * START_RATE  # more than it grows at, fewer than it cuts at: it holds
    assert c.probe(0.003)  # the CUT_AT-th in the window: the mover's doing
    assert c.rate == 4 * START_RATE
    assert "took 3.0 ms, over the line of 2.4 ms" in c.slowdowns[-1].reason
    assert f"{CUT_AT} of the last" in c.slowdowns[-1].reason
    assert c.slowdowns[-1].from_mb_s == 8 and c.slowdowns[-1].to_mb_s == 4
    for _ in range(SLOW_START_CLEAN):  # after a cut, growth is by a quarter, every STEADY_CLEAN
        c.probe(0.001)
    assert c.rate == 4 * START_RATE
    for _ in range(STEADY_CLEAN - SLOW_START_CLEAN):
        c.probe(0.001)
    assert c.rate == 4 * START_RATE * 1.25


def test_a_stall_cuts_at_once_but_one_burst_is_one_cut():
    c, clock = active_controller()
    c.probe(0.002 * 1.2 * SEVERE + 0.001)
    assert c.rate == START_RATE / 2
    c.probe(1.0)
    c.probe(1.0)
    assert c.rate == START_RATE / 2  # within CUT_GAP_S of the last cut
    clock.now += CUT_GAP_S
    c.probe(1.0)
    assert c.rate == START_RATE / 4


def test_crossings_in_most_windows_keep_it_from_growing():
    c, clock = active_controller()
    for i in range(10 * SLOW_START_CLEAN):
        c.probe(0.003 if i % 25 == 0 else 0.001)  # 8 in every 200: twice the cut
        clock.now += 0.025
    assert c.rate <= START_RATE


def test_the_rate_stays_between_the_floor_and_the_ceiling():
    c, clock = active_controller(Pace(max_mb_per_s=3))
    for _ in range(10 * SLOW_START_CLEAN):
        c.probe(0.001)
    assert c.rate == 3 * MiB
    for _ in range(20):
        clock.now += CUT_GAP_S
        c.probe(1.0)
    assert c.rate == FLOOR_RATE and c.batch_bytes() >= BLOCK
    c.set_writers(False)
    assert c.rate == 3 * MiB


def test_the_line_follows_the_probes_taken_with_the_mover_held_within_bounds():
    c, clock = active_controller()
    c.set_baseline(0.002, [0.001] * BASELINE_PROBES)
    assert c.line_s == pytest.approx(0.0024)
    for _ in range(BASELINE_PROBES):  # the machine got slower, mover or not
        c.reference_probe(0.0024)
    assert c.baseline_s == pytest.approx(0.0024) and c.line_s == pytest.approx(0.00288)
    assert not c.probe(0.0027)  # over the first line, under this one
    for _ in range(2 * BASELINE_PROBES):  # but it rises at most LINE_RISES_AT_MOST over the first
        c.reference_probe(0.050)
    assert c.baseline_s == pytest.approx(0.002 * LINE_RISES_AT_MOST)
    for _ in range(2 * BASELINE_PROBES):  # and falls at most LINE_FALLS_AT_MOST under it
        c.reference_probe(0.0001)
    assert c.baseline_s == pytest.approx(0.002 / LINE_FALLS_AT_MOST)


def test_crossings_the_held_probes_show_too_are_not_the_movers_doing():
    # Reference probes cross the (capped) line 5 times in 100; so do the moving probes: noise,
    # it grows. Three times as many crossings while moving: the mover's doing, it cuts.
    c, clock = active_controller()
    c.set_baseline(0.002, [0.001] * BASELINE_PROBES)
    for i in range(2 * BASELINE_PROBES):
        c.reference_probe(0.010 if i % 20 == 0 else 0.001)
    assert c.line_s == pytest.approx(0.002 * LINE_RISES_AT_MOST * 1.2)
    for i in range(10 * SLOW_START_CLEAN):
        c.probe(0.010 if i % 20 == 0 else 0.001)
        clock.now += 0.025
    assert c.rate > START_RATE and not any("over the line" in s.reason for s in c.slowdowns)
    grown = c.rate
    for i in range(SLOW_START_CLEAN):
        c.probe(0.010 if i % 7 == 0 else 0.001)
        clock.now += 0.025
    assert c.rate < grown
    assert "expected from the probes with the mover held" in c.slowdowns[-1].reason


def test_the_timeline_is_merged_for_the_ui():
    report = PaceReport("adaptive", "adaptive")
    report.timeline = [Sample(float(i), 1.0 + i, 1.0, 32.0, i % 2 == 0, 40, 2.0 + i, i % 3 == 0) for i in range(90)]
    rows = report.timeline_rows(at_most=30)
    assert len(rows) == 30 and rows[0]["at_s"] == 0.0 and rows[1]["at_s"] == 3.0
    assert rows[0]["limit_mb_s"] == 1.0 and rows[0]["probe_p99_ms"] == 4.0 and rows[0]["crossings"] == 1


@contextlib.contextmanager
def active_client(dsn: str) -> Iterator[psycopg.Connection]:
    """Another client of the database, in a transaction: what the pacer protects."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # BEGIN ... idle in transaction
        yield conn
        conn.rollback()


def probe_pid(observer: psycopg.Connection) -> int | None:
    row = observer.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
                           (PROBE_APP,)).fetchone()
    return row[0] if row else None


def test_with_nobody_active_the_mover_is_not_slowed_and_nothing_is_probed(admin_conn):
    sleeps: list[float] = []
    with Pacer(admin_conn, Pace(), sleep=sleeps.append) as pacer:
        assert pacer.batch_bytes() == MAX_BATCH_BLOCKS * BLOCK
        assert admin_conn.execute("SELECT current_setting('application_name')").fetchone()[0] == MOVER_APP
        pacer.mark()
        pacer.done(8 * MiB)
    report = pacer.report()
    assert sleeps == [] and report.probes == 0 and report.baseline_p99_ms is None and report.bytes == 8 * MiB
    assert admin_conn.execute("SELECT current_setting('application_name')").fetchone()[0] != MOVER_APP
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.pace_probes").fetchone()[0] == 0


def test_a_query_a_moment_ago_is_not_a_writer_but_a_client_committing_steadily_is(admin_conn, admin_dsn):
    with psycopg.connect(admin_dsn, autocommit=True) as other:
        other.execute("CHECKPOINT")
        with Pacer(admin_conn, Pace()) as pacer:
            assert pacer.batch_bytes() == MAX_BATCH_BLOCKS * BLOCK  # after the first looks: nobody writes
            assert pacer.report().baseline_p99_ms is None
            stop = threading.Event()

            def commit_steadily() -> None:
                while not stop.wait(0.05):
                    other.execute("SELECT 1")

            writer = threading.Thread(target=commit_steadily)
            writer.start()
            try:
                wait_until(lambda: pacer.report().baseline_source == "measured", "the writer noticed")
                assert pacer.batch_bytes() < MAX_BATCH_BLOCKS * BLOCK
            finally:
                stop.set()
                writer.join()


def test_an_active_client_gets_a_baseline_then_probes_and_a_slow_commit_halves_the_rate(admin_conn, admin_dsn):
    with active_client(admin_dsn), psycopg.connect(admin_dsn, autocommit=True) as observer:
        with Pacer(admin_conn, Pace()) as pacer:
            assert pacer.batch_bytes() == int(START_RATE * BATCH_S)  # waits for the baseline
            report = pacer.report()
            assert report.baseline_source == "measured" and report.baseline_p99_ms > 0
            assert observer.execute("SELECT baseline_p99_ms FROM tenant_pipelines.pace_probes WHERE pid = %s",
                                    (probe_pid(observer),)).fetchone()[0] == pytest.approx(report.baseline_p99_ms)
            wait_until(lambda: pacer.report().probes > 0, "a probe commit")
            # Hold the probe's row: its next commit waits until the server says it has waited
            # 500 ms, far over 1.2x any baseline p99 of a one-row commit.
            pid = probe_pid(observer)
            with psycopg.connect(admin_dsn) as blocker:
                blocker.execute("SELECT 1 FROM tenant_pipelines.pace_probes WHERE pid = %s FOR UPDATE", (pid,))
                wait_until(lambda: observer.execute(
                    "SELECT wait_event_type = 'Lock' AND clock_timestamp() - query_start > interval '500 ms'"
                    " FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0], "the probe waiting 500 ms")
                blocker.rollback()
            wait_until(lambda: any("over the line" in s.reason for s in pacer.report().slowdowns), "a slowdown")
            cut = next(s for s in pacer.report().slowdowns if "over the line" in s.reason)
            assert cut.to_mb_s == pytest.approx(cut.from_mb_s / 2) or cut.to_mb_s == FLOOR_RATE / MiB
        assert pacer.report().crossings >= 1 and pacer.report().probe_p99_ms >= 500
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.pace_probes").fetchone()[0] == 0


def test_reference_windows_hold_the_mover_at_a_batch_boundary_and_release_it(admin_conn, admin_dsn):
    wall = [REFERENCE_S + 1.0]  # outside a reference window until the test says
    stop = threading.Event()
    with active_client(admin_dsn), Pacer(admin_conn, Pace(), wall=lambda: wall[0]) as pacer:
        pacer.batch_bytes()  # the first baseline
        first = pacer.report().baseline_p99_ms

        def move() -> None:
            while not stop.is_set():
                pacer.mark()
                pacer.done(1024)

        mover = threading.Thread(target=move)
        mover.start()
        try:
            wait_until(lambda: pacer.report().batches > 0, "batches")
            wall[0] = REFERENCE_EVERY_S * 7  # a reference window starts
            wait_until(lambda: pacer.report().reference_probes >= 3, "probes with the mover held")
            held_at = pacer.report().batches
            wait_until(lambda: pacer.report().reference_probes >= 8, "more probes with the mover held")
            assert pacer.report().batches == held_at  # held at its batch boundary all along
            wall[0] = REFERENCE_EVERY_S * 7 + REFERENCE_S  # the window ends
            wait_until(lambda: pacer.report().batches > held_at, "the mover released")
        finally:
            stop.set()
            wall[0] = REFERENCE_S + 1.0
            mover.join(timeout=30)
        report = pacer.report()
        assert report.paused_s > 0 and report.first_baseline_p99_ms == first
        assert report.summary()["reference_probes"] == report.reference_probes


def test_a_second_mover_adopts_the_baseline_the_first_one_measured(admin_conn, admin_dsn):
    outside_reference_windows = lambda: REFERENCE_S + 1.0  # noqa: E731  (a hold would count as a pause)
    with active_client(admin_dsn), psycopg.connect(admin_dsn, autocommit=True) as other:
        with Pacer(admin_conn, Pace(), wall=outside_reference_windows) as first:
            first.batch_bytes()
            with Pacer(other, Pace(), wall=outside_reference_windows) as second:
                second.batch_bytes()
                assert second.report().baseline_source == "shared by another pacer"
                assert second.report().baseline_p99_ms == pytest.approx(first.report().baseline_p99_ms)
                assert second.report().paused_s == 0


def test_the_fixed_pace_sleeps_to_its_rate_and_probes_nothing(admin_conn, admin_dsn):
    sleeps: list[float] = []
    with active_client(admin_dsn), Pacer(admin_conn, Pace.fixed(1.0, 4), sleep=sleeps.append) as pacer:
        assert pacer.batch_bytes() == 4 * BLOCK and pacer.batch_rows(100, 5000) == 5000
        pacer.mark()
        pacer.done(MiB)
    assert len(sleeps) == 1 and 0.5 < sleeps[0] <= 1.0 and pacer.report().probes == 0
    assert pacer.report().method == FIXED


def test_a_batch_counts_the_larger_of_the_rows_it_moved_and_the_wal_it_wrote(admin_conn, admin_dsn):
    """A batch that wrote 2 MiB of WAL for 64 KiB of rows (index entries at random places, whole
    pages after a checkpoint) is paced like 2 MiB: every writer's commit waits behind that WAL."""
    sleeps: list[float] = []
    with active_client(admin_dsn), Pacer(admin_conn, Pace.fixed(1.0, 4), sleep=sleeps.append) as pacer:
        pacer.mark()
        pacer.done(64 * 1024, 2 * MiB)
        pacer.mark()
        pacer.done(MiB, 64 * 1024)
    assert len(sleeps) == 2 and 1.5 < sleeps[0] <= 2.0 and 0.5 < sleeps[1] <= 1.0
    assert pacer.report().bytes == 64 * 1024 + MiB and pacer.report().wal_bytes == 2 * MiB + 64 * 1024


NOW = datetime.now(timezone.utc)
THIS_MONTH = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def test_tiering_and_placement_moves_report_their_pace_while_a_client_is_active(admin_conn, admin_dsn):
    tenant = make_tenant(admin_conn, tier="enterprise")
    old = THIS_MONTH - timedelta(days=80)
    with admin_conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for i in range(3000):
            copy.write_row((tenant, "api_calls", Decimal(i), old + timedelta(minutes=i)))
    ensure_tenant_partition(admin_conn, tenant)
    with active_client(admin_dsn):
        report = tier_tenant(admin_conn, tenant, as_of=THIS_MONTH + timedelta(days=10))
        assert report.moves and report.pace is not None and report.pace.baseline_source == "measured"
        assert report.pace.bytes >= sum(m.copy_bytes for m in report.moves)
        assert {m.copy for m in report.moves} == {"rows"}  # somebody writes: no file copy
        move = moves.move_tenant(admin_conn, tenant, "schema", batch_rows=500)
        assert move.moved and move.pace is not None and move.pace.bytes > 0 and move.pace.baseline_p99_ms > 0
        assert move.pace.batches > 3000 / 500  # the copy's batches, of at most 500 rows
        assert move.pace.wal_bytes > 0, "the WAL of its copy and cleanup, measured"
    assert admin_conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] == 0  # the shared tables hold nothing of it now


def test_a_statement_stepping_aside_is_cancelled_when_a_client_waits_for_its_lock(admin_conn, admin_dsn):
    admin_conn.execute("CREATE TABLE guarded (id int)")
    errors: list[BaseException] = []
    with Pacer(admin_conn, Pace()) as pacer:
        assert pacer.nobody_writes()
        pid = admin_conn.info.backend_pid

        def hold_the_table() -> None:  # the file copy's stand-in: a lock held by a long statement
            try:
                with admin_conn.transaction():
                    admin_conn.execute("LOCK TABLE guarded; SELECT pg_sleep(60)")
            except psycopg.errors.QueryCanceled as exc:
                errors.append(exc)

        with pacer.stepping_aside(pid, "LOCK TABLE guarded") as stepped_aside:
            holder = threading.Thread(target=hold_the_table)
            holder.start()
            with psycopg.connect(admin_dsn, autocommit=True) as client:
                wait_until(lambda: client.execute("SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = %s",
                                                  (pid,)).fetchone()[0], "the lock held")
                assert client.execute("SELECT count(*) FROM guarded").fetchone()[0] == 0  # waits, then gets it
            holder.join()
            assert errors and "backend" in stepped_aside() and "waited for a lock the file copy held" in stepped_aside()
