"""The pace of every online copy: tiering's months (a tenant's and the pool's) and placement moves.

A mover copies in batches, one short transaction each. A tenant's writer whose commit meets a
batch waits behind that batch's WAL and pages (docs/tiering.md), so how fast a mover may go
depends on what the writers pay, which only the server can tell. Two methods:

- ``fixed``: at most ``max_mb_per_s``, ``batch_blocks`` per transaction: the pace before
  issue 20 (1 MB/s in 32 KiB batches kept writers' p99 within 1.14x, at 1 MB/s).
- ``adaptive`` (the default): the pacer measures what a writer's commit costs, live, and
  follows it. A thread of its own, on a connection of its own, watches ``pg_stat_activity``
  for other clients of the database:

  * none active: nobody to protect, so the mover runs at ``max_mb_per_s`` (None: no limit)
    in the largest batches;
  * some active: it first measures their baseline (``BASELINE_PROBES`` probe commits while
    the mover waits, or the baseline another pacer running at the same time measured), then
    commits a probe every ``PROBE_INTERVAL_S`` and steers like TCP's congestion control, on the share of probes over the
    line (``target_p99_ratio`` x the baseline p99). ``CUT_AT`` crossings among the last
    ``WINDOW`` probes (2%: a baseline crosses its own 1.2x p99 now and then, and a probe
    commit is more sensitive to the mover than a writer's whole transaction), or one stall
    ``SEVERE`` times the line, halve the rate (at most once per ``CUT_GAP_S``) and are
    recorded as a slowdown, with the reason. Every ``SLOW_START_CLEAN`` probes with at most
    ``GROW_AT_MOST`` crossings in the window (1%) double it until the first cut; every
    ``STEADY_CLEAN`` raise it by a quarter after.

  A probe is the smallest transaction an application of this platform runs: BEGIN, a
  transaction-local setting (its tenant context), a one-row upsert (into
  ``tenant_pipelines.pace_probes``), COMMIT with ``synchronous_commit`` on. A mover adds about
  the same wait to every commit; a bare commit as the probe (the first design) is a fraction
  of a writer's transaction, so the same wait was a larger share of it: bench/pacing.py
  measured probes at 1.49x their baseline p99 while the writer was at 1.18x, and the pacer
  slowed the mover for a wait the writers hardly felt.

  The baseline is not one moment's: the machine's own latency drifts (bench/pace_cost.py
  measured baseline windows of 1.1-3.7 ms p99 with no mover), and a line drawn from one quiet
  moment is crossed by that drift at the rate the cut rule reacts to, which held the mover
  near its floor. So the pacer keeps measuring it: for ``REFERENCE_S`` of every
  ``REFERENCE_EVERY_S`` (aligned on the wall clock, so that every pacer on the server pauses
  at the same moments) it holds the mover at its next batch boundary, waits ``SETTLE_S``, and
  its probes then are *reference* probes. The line is ``target_p99_ratio`` x the p99 of the
  last ``REFERENCE_POOL`` of them (at most ``LINE_RISES_AT_MOST`` x the first baseline, at
  least 1 / ``LINE_FALLS_AT_MOST`` of it: a hold measures the mover's after-effects too, dirty
  pages written back and another mover's batches, and those must not raise its own line far:
  bench/pacing.py measured writers at 1.38x, and two movers at 3.3x, with the line free to
  double), and the cut
  and growth rules count the moving probes' crossings over what the reference probes' own
  crossing rate predicts: noise that the writers see with the mover paused too is not the
  mover's doing.

  The batch follows the rate: ``BATCH_S`` of it (32 KiB at 1 MB/s), from one block to
  ``batch_blocks`` (default 1,024: 8 MiB).

A mover asks ``batch_bytes()`` before each batch and calls ``done(n, wal)`` after it; ``done``
sleeps as long as the rate says for the larger of the bytes moved and the WAL the batch wrote
(and while the pacer measures a baseline). The WAL is what every writer's commit waits behind:
bench/placement.py measured a placement move's copy writing 1.3 to 1.9 GB of WAL for 270 MB of
rows (index entries at random places, whole pages after each checkpoint), its writers at 15x
to 20x their p99 during the copy and at 1x during the verification and cleanup at the same
rate of rows. ``report()`` is
what it did: the pace over time, the probes' latency, every slowdown and why.

If the probe connection cannot be opened, the adaptive pacer says so in one log line and
falls back to the fixed pace: a move never goes faster for lack of a measurement.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psycopg
from psycopg import sql

from tenant_pipelines.errors import InvalidInput

ADAPTIVE, FIXED = "adaptive", "fixed"
METHODS = (ADAPTIVE, FIXED)
BLOCK = 8192
KiB, MiB = 1024, 1024 * 1024
FIXED_MB_PER_S = 1.0  # the fixed method's default rate
FIXED_BATCH_BLOCKS = 4  # and batch: 32 KiB of a partition per copy transaction
MAX_BATCH_BLOCKS = 1024  # the adaptive method's largest batch by default: 8 MiB
DEFAULT_TARGET = 1.2  # writers' p99 within 1.2x of their baseline
BATCH_S = 1 / 32  # a batch is this many seconds of the current rate
# ... and at most this while writers are active: bench/pace_cost.py measured the same rate in
# larger batches cost writers more (4 MB/s, two runs: 32 KiB 1.16x and 1.13x their p99, 256 KiB 1.86x and 1.61x).
WRITERS_BATCH_CAP = 32 * 1024
START_RATE = 1 * MiB  # where the adaptive rate starts when writers are active: the fixed pace
FLOOR_RATE = 128 * KiB  # it never goes below this (a move must end)
PROBE_INTERVAL_S = 0.025
BASELINE_PROBES = 200  # 5 s: the p99 of 120 was the second-slowest probe, a line too tight
ACTIVITY_EVERY_S = 0.5
FIRST_LOOKS_EVERY_S = 0.2  # before the first batch: a writer committing 5 times a second or more is seen
LOOKS, ACTIVE_LOOKS = 4, 2  # a client busy in 2 of the last 4 looks at pg_stat_activity is writing
SLOW_START_CLEAN = 40  # probes between raises until the first cut
STEADY_CLEAN = 100  # and after it
# Cut at 4 crossings of the last 200 probes (2%), raise at 2 or fewer (1%). A probe commit is
# far more sensitive to the mover than a writer's transaction, of which the commit is a part:
# bench/pacing.py measured writers at 0.85x-1.06x their baseline p99 while probes crossed
# 1.2x theirs 2-5 times in 200 (the first rule, 2 in 200, held every move at the floor).
WINDOW, CUT_AT, GROW_AT_MOST = 200, 4, 2
SEVERE = 4.0  # a probe this many times the line cuts at once
CUT, SLOW_START_GROWTH, STEADY_GROWTH = 0.5, 2.0, 1.25
CUT_GAP_S = 0.25
SAMPLE_EVERY_S = 1.0
PROBE_APP = "tenant-pipelines pace probe"
MOVER_APP = "tenant-pipelines mover"
SHARED_BASELINE_WITHIN_S = 5
# The longest a baseline waits for the mover to reach a batch boundary. Before its first batch a
# mover prepares (DDL, capture triggers): a baseline measured meanwhile is the writers' latency
# under that work, and a line drawn from it lets the copy slow them as much (bench/placement.py
# measured a 13 ms baseline, 9x the quiet one, and writers at 2.8x their p99 for it).
HOLD_WAIT_S = 60
UNLIMITED_RATE = 1024 * MiB  # what no limit counts as while writers are active (a cut halves it)
# Reference windows: the mover holds for REFERENCE_S of every REFERENCE_EVERY_S (wall clock) while
# writers are active; the first SETTLE_S of each hold is not measured (the last batch's commit).
REFERENCE_EVERY_S, REFERENCE_S, SETTLE_S = 10.0, 1.25, 0.25
REFERENCE_POOL = 400  # reference probes the line is drawn from: the first baseline, then ~100 s of holds
LINE_RISES_AT_MOST = 1.25  # the rolling baseline stays within these factors of the first one
LINE_FALLS_AT_MOST = 2.0


@dataclass(frozen=True)
class Pace:
    """How a mover paces itself. ``method``: ``adaptive`` (default) or ``fixed``.
    ``max_mb_per_s``: the fixed rate, or the adaptive method's ceiling (None: no limit).
    ``batch_blocks``: the fixed batch (None: 4), or the adaptive method's largest (None:
    1,024). ``target_p99_ratio``: the adaptive method's bound on writers' p99 against their
    baseline."""

    max_mb_per_s: float | None = None
    batch_blocks: int | None = None
    method: str = ADAPTIVE
    target_p99_ratio: float = DEFAULT_TARGET

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(f"pace method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.max_mb_per_s is not None and not self.max_mb_per_s > 0:
            raise InvalidInput(f"max MB/s {self.max_mb_per_s}: give a positive rate, or none for no limit")
        if self.batch_blocks is not None and not 1 <= self.batch_blocks <= 131072:
            raise InvalidInput(f"batch of {self.batch_blocks} blocks: give 1 to 131072")
        if not 1.0 < self.target_p99_ratio <= 100:
            raise InvalidInput(f"target p99 ratio {self.target_p99_ratio}: give more than 1 (e.g. 1.2)")

    @classmethod
    def fixed(cls, max_mb_per_s: float | None = FIXED_MB_PER_S, batch_blocks: int = FIXED_BATCH_BLOCKS) -> Pace:
        return cls(max_mb_per_s, batch_blocks, FIXED)

    @property
    def bytes_per_s(self) -> float | None:
        return None if self.max_mb_per_s is None else self.max_mb_per_s * MiB

    @property
    def largest_batch(self) -> int:
        """Bytes: the fixed batch, or the adaptive method's largest."""
        default = FIXED_BATCH_BLOCKS if self.method == FIXED else MAX_BATCH_BLOCKS
        return (self.batch_blocks or default) * BLOCK

    def describe(self) -> str:
        cap = "no limit" if self.max_mb_per_s is None else f"{self.max_mb_per_s:g} MB/s"
        if self.method == FIXED:
            return f"fixed: {cap}, {self.largest_batch // KiB} KiB per batch"
        return (f"adaptive: writers' p99 within {self.target_p99_ratio:g}x of their baseline, at most {cap}, "
                f"batches up to {self.largest_batch // KiB} KiB")


@dataclass
class Slowdown:
    at_s: float  # seconds since the pacer started
    reason: str
    from_mb_s: float | None
    to_mb_s: float | None


@dataclass
class Sample:
    at_s: float
    limit_mb_s: float | None  # the rate the pacer allowed (None: no limit)
    achieved_mb_s: float  # what the mover copied in the interval
    batch_kib: float
    writers: bool  # other clients were active
    probes: int  # probe commits in the interval
    probe_p99_ms: float | None
    crossings: int  # probes over the line in the interval


@dataclass
class PaceReport:
    method: str
    describe: str
    seconds: float = 0.0
    bytes: int = 0
    wal_bytes: int = 0  # WAL the batches wrote, where the mover measured it (placement moves)
    batches: int = 0
    slept_s: float = 0.0
    paused_s: float = 0.0  # waiting while a baseline was measured
    baseline_p99_ms: float | None = None
    baseline_source: str | None = None  # "measured" or "shared by another pacer"
    first_baseline_p99_ms: float | None = None  # baseline_p99_ms is the rolling one, at the end
    reference_probes: int = 0  # probes while the mover was held (reference windows)
    line_ms: float | None = None
    probes: int = 0
    probe_p99_ms: float | None = None
    crossings: int = 0
    fallback: str | None = None  # why the adaptive pacer ran at the fixed pace
    slowdowns: list[Slowdown] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0

    def timeline_rows(self, at_most: int = 30) -> list[dict]:
        """The timeline, merged into at most ``at_most`` rows (for the UI)."""
        samples = self.timeline
        if not samples:
            return []
        step = max(1, math.ceil(len(samples) / at_most))
        rows = []
        for i in range(0, len(samples), step):
            chunk = samples[i:i + step]
            limits = [s.limit_mb_s for s in chunk]
            p99s = [s.probe_p99_ms for s in chunk if s.probe_p99_ms is not None]
            rows.append({
                "at_s": round(chunk[0].at_s, 1),
                "limit_mb_s": None if None in limits else round(min(limits), 2),
                "mb_s": round(sum(s.achieved_mb_s for s in chunk) / len(chunk), 2),
                "batch_kib": round(sum(s.batch_kib for s in chunk) / len(chunk), 1),
                "writers": any(s.writers for s in chunk),
                "probe_p99_ms": round(max(p99s), 2) if p99s else None,
                "crossings": sum(s.crossings for s in chunk),
            })
        return rows

    def summary(self) -> dict:
        """Plain figures for metadata and logs."""
        return {
            "pace": self.describe,
            "pace_mb_per_s": round(self.mb_per_s, 2),
            "pace_wal_mb": round(self.wal_bytes / MiB, 1),
            "pace_seconds": round(self.seconds, 2),
            "pace_slept_s": round(self.slept_s, 2),
            "pace_paused_for_baseline_s": round(self.paused_s, 2),
            "writers_baseline_p99_ms": None if self.baseline_p99_ms is None else round(self.baseline_p99_ms, 2),
            "writers_first_baseline_p99_ms": (None if self.first_baseline_p99_ms is None
                                              else round(self.first_baseline_p99_ms, 2)),
            "reference_probes": self.reference_probes,
            "writers_line_ms": None if self.line_ms is None else round(self.line_ms, 2),
            "probe_commits": self.probes,
            "probe_p99_ms": None if self.probe_p99_ms is None else round(self.probe_p99_ms, 2),
            "probes_over_line": self.crossings,
            "slowdowns": len(self.slowdowns),
            "pace_fallback": self.fallback,
        }

    def slowdowns_md(self, at_most: int = 20) -> str:
        if not self.slowdowns:
            return "No slowdown."
        lines = [f"- at {s.at_s:.1f} s: {_mb(s.from_mb_s)} -> {_mb(s.to_mb_s)}: {s.reason}"
                 for s in self.slowdowns[:at_most]]
        if len(self.slowdowns) > at_most:
            lines.append(f"- ... and {len(self.slowdowns) - at_most} more")
        return "\n".join(lines)


def _mb(rate: float | None) -> str:
    return "no limit" if rate is None else f"{rate:.2f} MB/s"


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class Controller:
    """The adaptive method's decisions, without a database: told whether writers are active
    and fed probe latencies, it says the rate (bytes/s, None: no limit) and the batch (bytes)."""

    def __init__(self, pace: Pace, clock: Callable[[], float] = time.monotonic) -> None:
        self.pace = pace
        self.clock = clock
        self.started = clock()
        self.writers = False
        self.baseline_s: float | None = None
        self.rate: float | None = pace.bytes_per_s  # None: no limit
        self.slow_start = True
        self.since_change = 0  # probes since the rate last changed
        self.window: deque[bool] = deque(maxlen=WINDOW)  # the last probes: over the line or not
        self.reference: deque[float] = deque(maxlen=REFERENCE_POOL)  # probes with the mover held
        self.first_baseline_s: float | None = None
        self.last_cut = -math.inf
        self.slowdowns: list[Slowdown] = []

    @property
    def line_s(self) -> float | None:
        return None if self.baseline_s is None else self.baseline_s * self.pace.target_p99_ratio

    @property
    def ceiling(self) -> float:
        """The highest rate while writers are active: max_mb_per_s, or UNLIMITED_RATE."""
        return self.pace.bytes_per_s or UNLIMITED_RATE

    def _note(self, reason: str, before: float | None, after: float | None) -> None:
        self.slowdowns.append(Slowdown(self.clock() - self.started, reason,
                                       None if before is None else before / MiB,
                                       None if after is None else after / MiB))

    def set_writers(self, active: bool) -> None:
        if active == self.writers:
            return
        self.writers = active
        if active:
            before, self.rate = self.rate, min(START_RATE, self.ceiling)
            self.slow_start, self.since_change = True, 0
            self.window.clear()
            self._note("other clients are active: from the fixed pace, rising while probe commits stay "
                       "under the line", before, self.rate)
        else:
            self.rate = self.pace.bytes_per_s  # nobody to protect

    def set_baseline(self, p99_s: float, latencies: list[float] | None = None) -> None:
        """The first baseline: its p99, and the probes it was measured with (None: adopted
        from another pacer) which seed the reference pool."""
        self.baseline_s = self.first_baseline_s = max(p99_s, 1e-4)
        self.reference.clear()
        self.reference.extend(latencies or ())

    def reference_probe(self, latency_s: float) -> None:
        """A probe's latency while the mover was held: the writers' latency without it, now.
        The baseline follows the reference pool once it holds a first baseline's worth of
        probes, between 1 / LINE_FALLS_AT_MOST and LINE_RISES_AT_MOST times the first baseline."""
        self.reference.append(latency_s)
        if self.first_baseline_s is None or len(self.reference) < BASELINE_PROBES:
            return
        p99 = _p99(list(self.reference)) or self.first_baseline_s
        low, high = self.first_baseline_s / LINE_FALLS_AT_MOST, self.first_baseline_s * LINE_RISES_AT_MOST
        self.baseline_s = max(1e-4, min(high, max(low, p99)))

    def expected_crossings(self) -> float:
        """How many of the moving window's probes would cross the line without the mover: the
        reference probes' crossing rate of the current line, times the window."""
        line = self.line_s
        if line is None or not self.reference:
            return 0.0
        rate = sum(1 for latency in self.reference if latency > line) / len(self.reference)
        return rate * len(self.window)

    def probe(self, latency_s: float) -> bool:
        """One probe commit's latency; True when it crossed the line. The writers' p99 is
        within the line while at most 1 commit in 100 crosses it, and a baseline crosses it
        now and then too: so one crossing is noise, CUT_AT of the last WINDOW are the mover's
        doing (or one stall SEVERE times the line)."""
        line = self.line_s
        if not self.writers or line is None:
            return False
        crossed = latency_s > line
        self.window.append(crossed)
        self.since_change += 1
        current = self.rate if self.rate is not None else self.ceiling
        now = self.clock()
        crossings = sum(self.window)
        expected = self.expected_crossings()
        many = crossings >= CUT_AT + expected
        if crossed and (many or latency_s > SEVERE * line) and now - self.last_cut >= CUT_GAP_S:
            why = (f"a probe commit took {latency_s * 1000:.1f} ms, over the line of {line * 1000:.1f} ms "
                   f"({self.pace.target_p99_ratio:g}x the writers' baseline p99 of {self.baseline_s * 1000:.1f} ms)"
                   + (f": {crossings} of the last {len(self.window)} probes crossed it"
                      + (f", {expected:.1f} expected from the probes with the mover held" if expected >= 0.05 else "")
                      if many else ": a stall"))
            self.rate, self.slow_start, self.last_cut = max(FLOOR_RATE, current * CUT), False, now
            self.window.clear()
            self.since_change = 0
            self._note(why, current, self.rate)
        elif self.since_change >= (SLOW_START_CLEAN if self.slow_start else STEADY_CLEAN):
            self.since_change = 0
            if crossings <= GROW_AT_MOST + expected:
                self.rate = min(self.ceiling, current * (SLOW_START_GROWTH if self.slow_start else STEADY_GROWTH))
        return crossed

    def batch_bytes(self) -> int:
        largest = self.pace.largest_batch
        if self.rate is None:
            return largest
        if self.writers:  # more, smaller commits: what a writer meets is one small batch's WAL
            largest = min(largest, WRITERS_BATCH_CAP)
        return int(max(BLOCK, min(largest, self.rate * BATCH_S)))


class Pacer:
    """One mover's pace; a context manager. Per batch: ``pacer.batch_bytes()``, the batch,
    ``pacer.done(bytes_copied)``. ``conn`` is the mover's connection: its DSN opens the probe
    connection, and while pacing its application_name says it is a mover, so that other
    pacers do not count it as a writer."""

    def __init__(self, conn: psycopg.Connection, pace: Pace, *, log: Callable[[str], None] = lambda _: None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.conn, self.pace, self.log, self.sleep, self.clock, self.wall = conn, pace, log, sleep, clock, wall
        self._report = PaceReport(pace.method, pace.describe())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._go = threading.Event()  # cleared while the probe thread measures a baseline
        self._go.set()
        # Set while the mover is between batches: once it has asked for its first batch
        # (batch_bytes or mark), except during each batch (mark to done), and whenever it waits
        # for a baseline. Clear before that: it is still preparing (DDL, capture triggers).
        self._held = threading.Event()
        self._waiting = threading.Event()  # the mover is blocked on _go: nothing of it runs
        self._hold_since: float | None = None  # when the mover started waiting in this reference window
        self._in_batch = False
        self._thread: threading.Thread | None = None
        self._probe_conn: psycopg.Connection | None = None
        self._controller: Controller | None = None
        self._started = self._last_sample = self._last_done = clock()
        self._interval_bytes = 0
        self._latencies: list[float] = []
        self._interval_latencies: list[float] = []
        self._interval_crossings = 0
        self._previous_app: str | None = None
        self._looks: dict[int, tuple] = {}  # pid -> (state, state_change, busy in the last looks)
        self._guard_pid: int | None = None  # stepping_aside's backend and statement
        self._guard_statement = ""
        self._guard_reason: str | None = None

    # -- the mover's side --------------------------------------------------------------
    def __enter__(self) -> Pacer:
        if self.pace.method == ADAPTIVE:
            try:
                self._open_probe()
            except (psycopg.Error, OSError) as exc:
                self._fall_back(f"the probe connection could not be opened ({_first_line(exc)})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batch_bytes(self) -> int:
        if not self._in_batch:
            self._held.set()
        self._wait_for_go()
        controller = self._controller
        if controller is None:
            return self.pace.largest_batch
        with self._lock:
            return controller.batch_bytes()

    def batch_rows(self, row_bytes: float, at_most: int) -> int:
        """The batch in rows of ``row_bytes`` each (a placement move's unit), at most ``at_most``."""
        if self.pace.method == FIXED:
            return at_most
        return max(1, min(at_most, int(self.batch_bytes() // max(1.0, row_bytes))))

    def nobody_writes(self) -> bool:
        """Whether the mover may copy at disk speed now: the adaptive method with no ceiling,
        and no other client writing."""
        controller = self._controller
        if controller is None or self.pace.bytes_per_s is not None:
            return False
        self._ready.wait(timeout=60)
        with self._lock:
            return not controller.writers

    @contextmanager
    def stepping_aside(self, pid: int, statement: str) -> Iterator[Callable[[], str | None]]:
        """While the block runs (a statement of backend ``pid`` that starts with
        ``statement``, at disk speed, holding locks: a file copy), the probe thread cancels
        that statement as soon as a client waits for a lock ``pid`` holds, or starts writing.
        Only a statement of ``pid`` that starts so is ever cancelled. Yields a function that
        says why it was (None: it was not)."""
        with self._lock:
            self._guard_pid, self._guard_statement, self._guard_reason = pid, statement, None
        try:
            yield lambda: self._guard_reason
        finally:
            with self._lock:
                self._guard_pid = None

    def count(self, nbytes: int) -> None:
        """Bytes moved without the pacer's batches (a file copy): in the report, no wait."""
        with self._lock:
            self._report.bytes += nbytes
            self._interval_bytes += nbytes

    def rate(self) -> float | None:
        """Bytes/s the mover may go at now (None: no limit)."""
        controller = self._controller
        if controller is None:
            return self.pace.bytes_per_s
        with self._lock:
            return controller.rate

    def mark(self) -> None:
        """A batch starts (``done`` counts its time from here): first, wait while a baseline
        is measured."""
        self._held.set()
        self._wait_for_go()
        self._held.clear()
        self._in_batch = True
        self._last_done = self.clock()

    def done(self, nbytes: int, wal_bytes: int = 0) -> None:
        """A batch of ``nbytes`` ended, having written ``wal_bytes`` of WAL (0: not measured):
        sleep as long as the rate says for the larger of the two (its own time counted). A batch
        that writes more WAL than it moves rows (index entries at random places, whole pages
        after a checkpoint) costs every writer's commit that WAL, not its rows' size."""
        self._in_batch = False
        self._held.set()
        elapsed = self.clock() - self._last_done
        with self._lock:
            self._report.bytes += nbytes
            self._report.wal_bytes += wal_bytes
            self._report.batches += 1
            self._interval_bytes += nbytes
        rate = self.rate()
        counted = max(nbytes, wal_bytes)
        if rate and counted / rate > elapsed:
            t = self.clock()
            self.sleep(counted / rate - elapsed)
            self._report.slept_s += self.clock() - t
        if self._controller is None:
            self._maybe_sample()
        self._last_done = self.clock()

    def report(self) -> PaceReport:
        r = self._report
        r.seconds = self.clock() - self._started
        controller = self._controller
        if controller is not None:
            with self._lock:
                r.slowdowns = list(controller.slowdowns)
                r.line_ms = None if controller.line_s is None else controller.line_s * 1000
                r.baseline_p99_ms = None if controller.baseline_s is None else controller.baseline_s * 1000
                p99 = _p99(self._latencies)
            r.probe_p99_ms = None if p99 is None else p99 * 1000
        return r

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.report()
        if self._probe_conn is not None:
            try:
                self._probe_conn.execute("DELETE FROM tenant_pipelines.pace_probes WHERE pid = pg_backend_pid()")
            except psycopg.Error:
                pass
            self._probe_conn.close()
            self._probe_conn = None
        if self._previous_app is not None:
            try:
                self._set_app(self._previous_app)
            except psycopg.Error:
                pass
            self._previous_app = None

    def _wait_for_go(self) -> None:
        controller = self._controller
        if (controller is None or self._ready.is_set()) and self._go.is_set():
            return
        held = self._held.is_set()
        self._held.set()  # waiting, the mover does nothing: a baseline may be measured now
        try:
            if controller is not None:
                self._ready.wait(timeout=60)
            if not self._go.is_set():
                t = self.clock()
                self._waiting.set()
                try:
                    self._go.wait(timeout=60)
                finally:
                    self._waiting.clear()
                self._report.paused_s += self.clock() - t
        finally:
            if not held:
                self._held.clear()

    def _fall_back(self, why: str) -> None:
        self._report.fallback = f"{why}; moved at the fixed pace instead"
        self.log(f"adaptive pacing unavailable: {self._report.fallback}")
        self.pace = Pace.fixed(min(self.pace.max_mb_per_s or FIXED_MB_PER_S, FIXED_MB_PER_S))
        self._report.describe = self.pace.describe()
        self._controller = None

    # -- the probe thread --------------------------------------------------------------
    def _set_app(self, name: str) -> None:
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("SELECT set_config('application_name', %s, false)", (name,))
            if not self.conn.autocommit:
                self.conn.commit()

    def _open_probe(self) -> None:
        info = self.conn.info
        self._probe_conn = psycopg.connect(info.dsn, password=info.password, autocommit=True,
                                           application_name=PROBE_APP, connect_timeout=10)
        self._probe_conn.execute("SET synchronous_commit = on")
        self._probe_conn.execute("SET lock_timeout = '5s'")  # only a pacer writes its row
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._previous_app = self.conn.execute("SELECT current_setting('application_name')").fetchone()[0]
            if not self.conn.autocommit:
                self.conn.commit()
            self._set_app(MOVER_APP)
        self._controller = Controller(self.pace, self.clock)
        self._thread = threading.Thread(target=self._run, name="pace-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        controller = self._controller
        assert controller is not None and self._probe_conn is not None
        next_activity = 0.0
        try:
            # Enough looks to tell a writer from a one-off query before the first batch.
            for _ in range(ACTIVE_LOOKS):
                self._writers_active()
                if self._stop.wait(FIRST_LOOKS_EVERY_S):
                    return
            while not self._stop.is_set():
                if self.clock() >= next_activity:
                    active = self._writers_active()
                    next_activity = self.clock() + ACTIVITY_EVERY_S
                    with self._lock:  # first: the guard acts on it while a baseline is taken
                        controller.set_writers(active)
                    if active and controller.baseline_s is None:
                        self._take_baseline(controller)
                    self._ready.set()
                self._guard(controller)
                if controller.writers and controller.baseline_s is not None:
                    held = self._reference_window()
                    latency = self._probe()
                    with self._lock:
                        if held:
                            controller.reference_probe(latency)
                            self._report.reference_probes += 1
                        else:
                            crossed = controller.probe(latency)
                            self._latencies.append(latency)
                            self._interval_latencies.append(latency)
                            self._report.probes += 1
                            self._report.crossings += crossed
                            self._interval_crossings += crossed
                elif not self._go.is_set():
                    self._go.set()  # writers stopped during a reference window
                self._maybe_sample()
                self._stop.wait(PROBE_INTERVAL_S)
        except psycopg.Error as exc:
            self.report()
            self._fall_back(f"the probe failed ({_first_line(exc)})")
        finally:
            self._go.set()
            self._ready.set()

    def _guard(self, controller: Controller) -> None:
        """stepping_aside's watch: cancel the guarded statement for a waiter or a writer."""
        with self._lock:
            pid, statement = self._guard_pid, self._guard_statement
        if pid is None:
            return
        waiter = self._probe_conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) LIMIT 1", (pid,)).fetchone()
        reason = (f"backend {waiter[0]} waited for a lock the file copy held" if waiter else
                  "another client started writing" if controller.writers else None)
        if reason is not None:
            # The reason first: the mover's statement fails the moment it is cancelled, and the
            # mover may ask why before this thread runs again.
            with self._lock:
                if self._guard_pid != pid:
                    return
                self._guard_reason = reason
            cancelled = self._probe_conn.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
                " AND left(query, length(%s)) = %s", (pid, statement, statement)).fetchone()
            with self._lock:
                if cancelled and cancelled[0] and self._guard_pid == pid:
                    self._guard_pid = None
                elif self._guard_pid == pid:
                    self._guard_reason = None  # nothing was cancelled: the statement had ended

    def _reference_window(self) -> bool:
        """Holds the mover for the first REFERENCE_S of every REFERENCE_EVERY_S of the wall
        clock, and releases it after. True when this probe is a reference probe: the mover has
        waited at a batch boundary for SETTLE_S or more."""
        if self.wall() % REFERENCE_EVERY_S >= REFERENCE_S:
            if not self._go.is_set():
                self._go.set()
            return False
        if self._go.is_set():
            self._go.clear()
            self._hold_since = None
        if not self._waiting.is_set():
            return False  # still in its batch, or at work that is not a batch (DDL, a file copy)
        if self._hold_since is None:
            self._hold_since = self.clock()
        return self.clock() - self._hold_since >= SETTLE_S

    def _probe(self) -> float:
        return probe(self._probe_conn)

    def _writers_active(self) -> bool:
        """Whether another client of this database is writing: in a transaction now (idle in
        one, or a statement running over two looks in a row), or busy (its state changed) in
        ACTIVE_LOOKS of the last LOOKS looks, 0.5 s apart. One query a moment ago (an admin's
        CHECKPOINT, a dashboard's refresh) is not a writer; a writer committing once a second
        or more often is. Movers and probes do not count; a session whose state this role may
        not see does."""
        rows = self._probe_conn.execute(
            "SELECT pid, state, state_change FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND coalesce(application_name, '') NOT IN (%s, %s)", (PROBE_APP, MOVER_APP)).fetchall()
        active = False
        seen: dict[int, tuple] = {}
        for pid, state, changed in rows:
            last_state, last_changed, history = self._looks.get(pid, (None, None, ()))
            busy = last_changed is not None and changed != last_changed
            history = (*history, busy)[-LOOKS:]
            seen[pid] = (state, changed, history)
            if (state is None or state.startswith("idle in transaction")
                    or (state == "active" and last_state == "active" and changed == last_changed)
                    or sum(history) >= ACTIVE_LOOKS):
                active = True
        self._looks = seen
        return active

    def _take_baseline(self, controller: Controller) -> None:
        """The writers' p99 commit latency without this mover: adopted from another pacer
        probing now if one has it (this mover would not see the writers without that one),
        else measured with BASELINE_PROBES probes while this mover waits."""
        shared = self._probe_conn.execute(
            "SELECT min(baseline_p99_ms) FROM tenant_pipelines.pace_probes WHERE pid <> pg_backend_pid()"
            " AND baseline_p99_ms IS NOT NULL AND probed_at > clock_timestamp() - make_interval(secs => %s)",
            (SHARED_BASELINE_WITHIN_S,)).fetchone()[0]
        try:
            latencies: list[float] | None = None  # the probes it was measured with, if measured here
            if shared is not None:
                p99, source = shared / 1000, "shared by another pacer"
            else:
                # The mover may ask now (nobody_writes), but its next batch waits (go) until the
                # baseline is recorded. Measured once the mover is between batches (its first one
                # included): not while it prepares or copies. The guard keeps watching a guarded
                # statement meanwhile.
                self._go.clear()
                self._ready.set()
                deadline = self.clock() + HOLD_WAIT_S
                while not self._held.is_set() and self.clock() < deadline:
                    self._guard(controller)
                    if self._stop.wait(PROBE_INTERVAL_S):
                        return
                latencies = []
                for _ in range(BASELINE_PROBES):
                    self._guard(controller)
                    if self._stop.wait(PROBE_INTERVAL_S):
                        break
                    latencies.append(self._probe())
                p99, source = _p99(latencies) or 1e-3, "measured"
            self._probe_conn.execute(
                "INSERT INTO tenant_pipelines.pace_probes (pid, probed_at, baseline_p99_ms, baseline_at)"
                " VALUES (pg_backend_pid(), clock_timestamp(), %s, clock_timestamp())"
                " ON CONFLICT (pid) DO UPDATE SET probed_at = excluded.probed_at,"
                " baseline_p99_ms = excluded.baseline_p99_ms, baseline_at = excluded.baseline_at", (p99 * 1000,))
            with self._lock:
                controller.set_baseline(p99, latencies)
            self._report.baseline_source = source
            self._report.first_baseline_p99_ms = p99 * 1000
        finally:
            self._go.set()
        self.log(f"pace: other clients are active; their baseline p99 commit is {p99 * 1000:.1f} ms ({source}); "
                 f"keeping probe commits under {p99 * 1000 * self.pace.target_p99_ratio:.1f} ms")

    def _maybe_sample(self) -> None:
        now = self.clock()
        if now - self._last_sample < SAMPLE_EVERY_S:
            return
        controller = self._controller
        with self._lock:
            dt = now - self._last_sample
            rate = controller.rate if controller is not None else self.pace.bytes_per_s
            writers = controller.writers if controller is not None else False
            batch = controller.batch_bytes() if controller is not None else self.pace.largest_batch
            latencies, self._interval_latencies = self._interval_latencies, []
            p99 = _p99(latencies)
            self._report.timeline.append(Sample(
                at_s=self._last_sample - self._started, limit_mb_s=None if rate is None else rate / MiB,
                achieved_mb_s=self._interval_bytes / MiB / dt, batch_kib=batch / KiB, writers=writers,
                probes=len(latencies), probe_p99_ms=None if p99 is None else p99 * 1000,
                crossings=self._interval_crossings))
            self._interval_bytes = 0
            self._interval_crossings = 0
            self._last_sample = now


PROBES_TABLE = sql.Identifier("tenant_pipelines", "pace_probes")


def probe(conn: psycopg.Connection, table: sql.Composable = PROBES_TABLE) -> float:
    """One probe of the adaptive pace: a writer's smallest transaction (BEGIN, a
    transaction-local setting, a one-row upsert, COMMIT: four round trips), timed, in seconds.
    ``table`` (pid, probed_at): bench/pace_cost.py runs it alone against a table of its own."""
    t = time.perf_counter()
    with conn.transaction():
        conn.execute("SELECT set_config('tenant_pipelines.pace_probe', '1', true)")
        conn.execute(sql.SQL("INSERT INTO {} (pid, probed_at) VALUES (pg_backend_pid(), clock_timestamp())"
                             " ON CONFLICT (pid) DO UPDATE SET probed_at = excluded.probed_at").format(table))
    return time.perf_counter() - t


def wal_position(conn: psycopg.Connection) -> str:
    """Where the server's WAL ends now. A batch's WAL, for ``Pacer.done``, is what was inserted
    between this (taken after ``Pacer.mark``) and ``wal_since`` at its end: other clients' WAL of
    those milliseconds too, which the writers' commits wait behind all the same."""
    return str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])


def wal_since(conn: psycopg.Connection, lsn: str) -> int:
    """Bytes of WAL inserted since ``lsn`` (a ``wal_position``)."""
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (lsn,)).fetchone()[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
