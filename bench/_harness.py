"""Shared plumbing for the on-demand benchmarks in bench/.

What every benchmark needs, once: a throwaway PostgreSQL (or a scratch database on a server
the caller names) and the main loop around it (``parser()``, ``on_server()``, ``finish()``),
the command-line options they share (--dsn, --no-docs, --from-results), waiting for an idle
machine, CPU and peak-memory measurement of this process and of the server, WAL positions,
percentiles and medians, the lock table's size, progress lines on stderr, the pieces of every
page (tables, verdicts, margins, the set-up lines), and the two outputs:
bench/results/<name>.json (git-ignored, the raw figures) and docs/benchmarks/<name>.md
(committed, the table a reader looks at).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import secrets
import statistics
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.local.cluster import BASE_SETTINGS, EmbeddedCluster

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_DIR = PROJECT_DIR / "docs" / "benchmarks"
MIB = 1024 * 1024
IDLE_LOAD = 0.25  # a timed section waits until fewer cores than this are busy (wait_until_idle)
DEFAULT_MIX = "free=70,starter=20,growth=8,enterprise=2"  # the tier mix of the benchmarks that deal tenants
DEFAULT_MAX_LOCKS = 64  # PostgreSQL's default max_locks_per_transaction

_T0 = time.monotonic()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- servers -------------------------------------------------------------------------------


@contextmanager
def throwaway_cluster(settings: dict[str, str] | None = None) -> Iterator[str]:
    """Start a private PostgreSQL in a /tmp folder and yield its superuser DSN (database
    ``postgres``); stop it and delete its data on exit.

    Unlike the test suite's cluster it keeps the durable defaults (fsync, full_page_writes):
    a benchmark of writes without them measures nothing a production node would see.
    """
    base = Path(tempfile.mkdtemp(prefix="tp-bench-", dir="/tmp"))
    os.chmod(base, 0o755)  # as root the server runs as 'postgres', which must reach its data
    cluster = EmbeddedCluster(
        data_root=base / "pg", state_dir=base / "state", settings=dict(settings or {}), log=log
    )
    try:
        cluster.up()
        yield cluster.dsn("postgres")
    finally:
        log("stopping the throwaway cluster")
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def scratch_database(admin_dsn: str, prefix: str) -> Iterator[str]:
    """Create an empty database on ``admin_dsn``'s server, yield a DSN to it, drop it on exit."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log(f"created scratch database {name}")
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        log(f"dropped scratch database {name}")


def connect(dsn: str, synchronous_commit: str = "on") -> psycopg.Connection:
    """An autocommit connection with ``synchronous_commit`` set for the session."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
    return conn


def on_server(dsn: str | None, benchmark: Callable[[str, str, bool], dict], *, throwaway_kind: str,
              scratch: str | None = None, settings: dict[str, str] | None = None,
              dsn_kind: str = "scratch database") -> dict:
    """Run ``benchmark(dsn, server_kind, throwaway)`` against the server the caller named
    (``dsn``, a superuser's) or, without one, a throwaway cluster started with ``settings``.
    With ``scratch`` (a name prefix) the benchmark gets a scratch database created there and
    dropped afterwards; without, the server's admin DSN (it makes its own databases).
    ``server_kind`` is what the page says of the server: ``throwaway_kind`` for the cluster,
    "the server at host:port/db, <dsn_kind>" otherwise."""

    def run(admin: str, kind: str, throwaway: bool) -> dict:
        if scratch is None:
            return benchmark(admin, kind, throwaway)
        with scratch_database(admin, scratch) as target:
            return benchmark(target, kind, throwaway)

    if dsn:
        return run(dsn, f"the server at {describe_dsn(dsn)}, {dsn_kind}", False)
    with throwaway_cluster(settings) as admin_dsn:
        return run(admin_dsn, throwaway_kind, True)


def migrate_scratch(conn: psycopg.Connection, superuser_for: str | None = None) -> None:
    """Migrate the benchmark's database with the project's migrations. With ``superuser_for``
    (what the benchmark does that needs it), refuse first unless ``conn`` is a superuser's."""
    if superuser_for is not None and not conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
        raise SystemExit(f"the DSN must be a superuser's{': ' + superuser_for if superuser_for else ''}")
    log("migrating the scratch database")
    migrate(conn)


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, without the password, for reports."""
    parts = conninfo_to_dict(dsn)
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


SETTINGS_REPORTED = (
    "fsync", "synchronous_commit", "full_page_writes", "wal_level", "shared_buffers",
    "max_wal_size", "checkpoint_timeout", "wal_compression", "autovacuum", "work_mem",
    "maintenance_work_mem", "temp_buffers",
)


def server_info(conn: psycopg.Connection) -> dict:
    """Server version and the settings that bear on write throughput, as this session sees them."""
    version = conn.execute("SELECT version()").fetchone()[0]
    num = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]
    settings = dict(
        conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(SETTINGS_REPORTED),),
        ).fetchall()
    )
    return {"version": version, "version_num": num, "settings": settings}


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# -- memory ----------------------------------------------------------------------------------


def python_peak_rss() -> int:
    """Peak resident set size of this Python process since it started, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _proc_fields(path: str) -> dict[str, int]:
    """The "Key: N kB" fields of a /proc file (status, smaps_rollup) in bytes, and PPid."""
    fields: dict[str, int] = {}
    with open(path) as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key == "PPid":
                fields[key] = int(parts[0])
            elif len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * 1024
    return fields


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon...), in bytes, and PPid."""
    return _proc_fields(f"/proc/{pid}/status")


def _pss(pid: int) -> int:
    return _proc_fields(f"/proc/{pid}/smaps_rollup").get("Pss", 0)


def _server_processes(postmaster: int) -> list[int]:
    pids = [postmaster]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if proc_status(int(entry.name)).get("PPid") == postmaster:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def local_backend_pid(conn: psycopg.Connection) -> int | None:
    """The pid of ``conn``'s server process when that server runs on this machine and its
    /proc entry is readable; None otherwise (a remote server: its memory is not measured)."""
    host = conn.info.host or ""
    if not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
        return None
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
            return None
        proc_status(pid)
    except OSError:
        return None
    return pid


def machine_cpu_fields() -> dict[str, float]:
    """The machine's CPU seconds since boot by kind (/proc/stat, all cores): user, nice, system,
    idle, iowait, irq, softirq (kernel work such as loopback TCP) and steal."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: v / os.sysconf("SC_CLK_TCK") for n, v in zip(names, values + [0] * 8)}


def machine_cpu_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores; idle and iowait excluded)."""
    fields = machine_cpu_fields()
    return sum(fields[k] for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def machine_load(window: float = 2.0) -> float:
    """How many cores' worth of CPU the machine kept busy over ``window`` seconds, right now.
    A benchmark wants this near 0 before it starts: anything else competes for the cores."""
    before = machine_cpu_busy_seconds()
    time.sleep(window)
    return (machine_cpu_busy_seconds() - before) / window


def wait_until_idle(threshold: float = IDLE_LOAD, timeout: float = 30.0, window: float = 1.0) -> float:
    """Wait (up to ``timeout`` seconds) until the machine keeps fewer than ``threshold`` cores
    busy over ``window``. Returns the last load measured."""
    deadline = time.monotonic() + timeout
    load = machine_load(window)
    if load >= threshold:
        log(f"waiting for the machine to go idle ({load:.2f} cores busy)")
    while load >= threshold and time.monotonic() < deadline:
        load = machine_load(window)
    return load


def process_cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat; with ``reaped_children``,
    plus that of its children that have exited and been waited for."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(postmaster: int) -> float:
    """CPU time of a whole PostgreSQL server: the postmaster, its live children (backends,
    checkpointer, WAL writer, autovacuum...) and the children that have already exited."""
    total = process_cpu_seconds(postmaster, reaped_children=True)
    for pid in _server_processes(postmaster)[1:]:
        try:
            total += process_cpu_seconds(pid)
        except OSError:  # exited since the scan: its time is in the postmaster's now or soon
            continue
    return total


class ResourceProbe:
    """Measures a timed section. CPU time spent in it by this process, one server backend,
    the whole server and the whole machine: what the machine spent beyond this process and
    the server is other work (kernel I/O threads, other programs), which competes for the
    cores. Sampled while it runs: this process's RSS, the backend's RSS and private
    (anonymous) memory, and the whole server's proportional set size (sum of PSS over the
    postmaster and its children: shared buffers are counted once, not once per process).

    Use as a context manager around the timed section. ``backend_pid`` may be None (remote
    server): then only the Python side is measured.

    Reading a process's PSS (/proc/<pid>/smaps_rollup) walks its page tables under its mmap
    lock: a few ms of CPU per server process and sample. ``pss=False`` leaves the server's PSS
    out, for sections whose other sessions' latency is being measured: with it, the tiering
    benchmark's inserter p99 went from 8 to 13 ms.
    """

    def __init__(self, backend_pid: int | None, interval: float = 0.25, *, pss: bool = True) -> None:
        self.backend_pid, self.interval, self.pss = backend_pid, interval, pss
        self.client_rss_start = self.client_rss_peak = 0
        # Peaks in bytes, None while unknown (no backend, or its /proc not readable).
        self.backend_anon_peak: int | None = None
        self.backend_hwm: int | None = None
        self.server_pss_peak: int | None = None
        # CPU seconds spent within the section; the backend's and server's None when unknown.
        self.client_cpu_seconds = self.machine_cpu_seconds = 0.0
        self.backend_cpu_seconds: float | None = None
        self.server_cpu_seconds: float | None = None
        self._client_cpu_start = self._machine_cpu_start = 0.0
        self._backend_cpu_start: float | None = None
        self._server_cpu_start: float | None = None
        self._postmaster: int | None = None
        self._server_pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-probe", daemon=True)

    def __enter__(self) -> "ResourceProbe":
        self.client_rss_start = self.client_rss_peak = proc_status(os.getpid()).get("VmRSS", 0)
        if self.backend_pid is not None:
            try:
                self._postmaster = proc_status(self.backend_pid)["PPid"]
                if self.pss:  # the server's processes are only needed for their PSS
                    self._server_pids = _server_processes(self._postmaster)
            except (OSError, KeyError):
                self._postmaster = None
        self._sample()
        self._thread.start()
        if self.backend_pid is not None:
            try:
                self._backend_cpu_start = process_cpu_seconds(self.backend_pid)
                if self._postmaster is not None:
                    self._server_cpu_start = server_cpu_seconds(self._postmaster)
            except OSError:
                pass
        self._client_cpu_start = time.process_time()
        self._machine_cpu_start = machine_cpu_busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_cpu_seconds = time.process_time() - self._client_cpu_start
        self.machine_cpu_seconds = machine_cpu_busy_seconds() - self._machine_cpu_start
        if self._backend_cpu_start is not None:
            try:
                self.backend_cpu_seconds = process_cpu_seconds(self.backend_pid) - self._backend_cpu_start
                if self._server_cpu_start is not None:
                    self.server_cpu_seconds = server_cpu_seconds(self._postmaster) - self._server_cpu_start
            except OSError:
                pass
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.backend_pid is not None:
            try:
                self.backend_hwm = proc_status(self.backend_pid).get("VmHWM")
            except OSError:
                pass

    def _loop(self) -> None:
        rescan = 0
        while not self._stop.wait(self.interval):
            rescan += 1
            if self.pss and self._postmaster is not None and rescan % 8 == 0:
                try:  # autovacuum workers and the like come and go
                    self._server_pids = _server_processes(self._postmaster)
                except OSError:
                    pass
            self._sample()

    def _sample(self) -> None:
        try:
            self.client_rss_peak = max(self.client_rss_peak, proc_status(os.getpid()).get("VmRSS", 0))
        except OSError:
            pass
        if self.backend_pid is None:
            return
        try:
            anon = proc_status(self.backend_pid).get("RssAnon", 0)
            self.backend_anon_peak = max(self.backend_anon_peak or 0, anon)
        except OSError:
            pass
        if not self.pss:
            return
        total = 0
        readable = False
        for pid in self._server_pids:
            try:
                total += _pss(pid)
                readable = True
            except OSError:  # gone, or not ours to read (no root, server runs as another user)
                continue
        if readable:
            self.server_pss_peak = max(self.server_pss_peak or 0, total)

    def as_dict(self) -> dict:
        return {
            "client_cpu_seconds": self.client_cpu_seconds,
            "backend_cpu_seconds": self.backend_cpu_seconds,
            "server_cpu_seconds": self.server_cpu_seconds,
            "machine_cpu_seconds": self.machine_cpu_seconds,
            "other_cpu_seconds": (
                None if self.server_cpu_seconds is None
                else self.machine_cpu_seconds - self.client_cpu_seconds - self.server_cpu_seconds
            ),
            "client_rss_start_bytes": self.client_rss_start,
            "client_rss_peak_bytes": self.client_rss_peak,
            "client_rss_growth_bytes": self.client_rss_peak - self.client_rss_start,
            "backend_peak_rss_bytes": self.backend_hwm,
            "backend_peak_private_bytes": self.backend_anon_peak,
            "server_peak_pss_bytes": self.server_pss_peak,
        }


# -- the server's figures ---------------------------------------------------------------------


def wal_lsn(conn: psycopg.Connection) -> str:
    """The server's current WAL position, for wal_bytes()."""
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_bytes(conn: psycopg.Connection, start: str, end: str | None = None) -> int:
    """WAL written from ``start`` to ``end`` (default: the current position), in bytes."""
    if end is None:
        return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start,)).fetchone()[0])
    return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)).fetchone()[0])


_COPY_EVENTS_IN = sql.SQL(
    'COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties) FROM STDIN'
)


# A tenant's usage events, generated by the server: rows lo..hi of %(tenant)s, one every %(step)s
# from %(first)s, four metrics in turn, amounts with six decimals. For copy_events (or an
# INSERT ... SELECT); bench/tiering.py, bench/placement.py and bench/citus.py load with it.
GENERATE_EVENTS = """
SELECT %(tenant)s::uuid,
       (ARRAY['api_calls', 'compute_seconds', 'storage_gb_hours', 'messages_sent'])[1 + i %% 4],
       ((i * 7919 + 13) %% 10000000000) / 1000000.0,
       %(first)s::timestamptz + %(step)s::interval * i,
       %(properties)s::jsonb
  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
"""


def copy_events(source: psycopg.Connection, target: psycopg.Connection, select: sql.Composable,
                params: dict | None = None) -> int:
    """Usage events generated by the server on ``source`` (``select``: organization_id,
    metric_name, quantity, "timestamp", properties, e.g. from generate_series) streamed into
    usage_events_mt on ``target`` (COPY TO STDOUT, then COPY FROM STDIN, in one transaction
    of ``target``'s: as its role, a superuser's for the benchmarks' loads). Nothing is held
    in Python. Returns the rows written."""
    with target.transaction(), target.cursor() as cur:
        with source.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(select), params) as out, \
                cur.copy(_COPY_EVENTS_IN) as into:
            for chunk in out:
                into.write(chunk)
        return cur.rowcount


def add_months(first, months: int):
    """The first of the month ``months`` after ``first``'s (a date or a datetime; its time and
    time zone kept)."""
    index = first.year * 12 + first.month - 1 + months
    return first.replace(year=index // 12, month=index % 12 + 1, day=1)


LOCK_SETTINGS = ("max_locks_per_transaction", "max_connections", "autovacuum_max_workers",
                 "max_worker_processes", "max_wal_senders", "max_prepared_transactions")


def lock_capacity(conn: psycopg.Connection, *, with_default: bool = False) -> dict:
    """The server's shared lock table: max_locks_per_transaction x (MaxBackends + prepared
    transactions); with ``with_default``, also what it would be with the default
    max_locks_per_transaction (``default_lock_slots``)."""
    values = dict(conn.execute("SELECT name, setting::int FROM pg_settings WHERE name = ANY(%s)",
                               (list(LOCK_SETTINGS),)).fetchall())
    backends = sum(values[n] for n in LOCK_SETTINGS[1:]) + 1  # + the autovacuum launcher
    out = {**values, "lock_slots": values["max_locks_per_transaction"] * backends}
    if with_default:
        out["default_lock_slots"] = DEFAULT_MAX_LOCKS * backends
    return out


def locks_setting_for(max_scale: int, mix: dict[str, float], locks_per_tenant: dict[str, int],
                      monthly_tiers: Iterable[str], headroom: float = 2.0) -> int:
    """max_locks_per_transaction for a throwaway cluster on which one transaction may lock
    every relation under usage_events_mt at ``max_scale`` tenants of ``mix``, with
    ``headroom``: ``locks_per_tenant`` holds the locks of a "monthly" and of a "single" tenant."""
    monthly = set(monthly_tiers)
    total = sum(mix.values())
    per_tenant = sum(share / total * locks_per_tenant["monthly" if tier in monthly else "single"]
                     for tier, share in mix.items())
    other = 3 + 1 + 8  # autovacuum workers, their launcher, max_worker_processes (defaults)
    backends = int(BASE_SETTINGS["max_connections"]) + int(BASE_SETTINGS["max_wal_senders"]) + other
    wanted = math.ceil(max_scale * per_tenant * headroom / backends)
    return max(DEFAULT_MAX_LOCKS, math.ceil(wanted / 64) * 64)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``pct``% of them at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def median(values: Iterable[float]) -> float:
    """The median, NaN for no values (a page shows "nan" rather than the run failing)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


# -- command line ------------------------------------------------------------------------------


def parser(name: str, description: str, *, raw: bool = False) -> argparse.ArgumentParser:
    """The argument parser of bench/<name>.py (``raw``: keep the description's line breaks)."""
    return argparse.ArgumentParser(
        prog=f"python bench/{name}.py", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter)


def add_output_options(parser: argparse.ArgumentParser, name: str, *, dsn_help: str | None = None,
                       docs_help: str | None = None, from_results: bool = False) -> None:
    """The options every benchmark shares: --dsn (unless ``dsn_help`` is "", for a benchmark
    that needs its own throwaway cluster), --no-docs and, with ``from_results``, --from-results."""
    if dsn_help != "":
        parser.add_argument("--dsn", metavar="DSN", help=dsn_help or (
            "a superuser DSN of a PostgreSQL 15+ server to use: the benchmark creates a scratch database "
            "there and drops it afterwards (default: start a throwaway cluster in /tmp with durable settings)"))
    parser.add_argument("--no-docs", action="store_true", help=docs_help or (
        f"write only bench/results/{name}.json, not docs/benchmarks/{name}.md "
        "(for smoke runs that should not replace the committed figures)"))
    if from_results:
        parser.add_argument("--from-results", action="store_true",
                            help=f"run nothing: write the page again from bench/results/{name}.json")


def add_numbers(parser: argparse.ArgumentParser,
                *options: tuple[str, type, int | float | None, str | None, str]) -> None:
    """Numeric options, one (flag, type, default, metavar, help) each; a default of None means
    the option is unset unless given, a metavar of None argparse's own."""
    for flag, kind, default, metavar, help_text in options:
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help_text)


def positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Iterable[str]) -> None:
    """parser.error() unless each of ``args``' ``names`` is at least 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def parse_counts(text: str, minimum: int = 1) -> list[int]:
    """"10,1000,10000" (underscores allowed) as sorted, distinct whole numbers >= ``minimum``."""
    try:
        counts = sorted({int(part.strip().replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write whole numbers separated by commas, e.g. 10,1000") from None
    if not counts or counts[0] < minimum:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be at least {minimum}")
    return counts


def parse_mix(text: str, tiers: Iterable[str] | None = None) -> dict[str, float]:
    """"free=70,starter=20,..." as tier -> share; the tiers among ``tiers`` when given."""
    known = None if tiers is None else list(tiers)
    mix = {}
    for part in text.split(","):
        tier, _, share = part.partition("=")
        tier = tier.strip()
        if known is not None and tier not in known:
            raise argparse.ArgumentTypeError(f"tier {tier!r}: the tiers are {', '.join(known)}")
        try:
            mix[tier] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: write tier=share, e.g. {DEFAULT_MIX}") from None
    if any(share < 0 for share in mix.values()) or not sum(mix.values()):
        raise argparse.ArgumentTypeError("the shares must be zero or more, and not all zero")
    return mix


def command(name: str, parts: Iterable[str], dsn: str | None = None) -> str:
    """The command line a page shows: ``python bench/<name>.py`` and ``parts``; a DSN shows as
    ``--dsn <admin DSN>`` (never its password)."""
    return " ".join([f"python bench/{name}.py", *parts, *(["--dsn <admin DSN>"] if dsn else [])])


# -- output ------------------------------------------------------------------------------------


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f} MiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A GitHub markdown table. ``align`` holds one of l/r per column (default: left)."""
    align = align.ljust(len(headers), "l")
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, results: dict, markdown: str, *, docs: bool = True) -> list[Path]:
    """bench/results/<name>.json always; docs/benchmarks/<name>.md unless ``docs`` is False.
    Logs each file written."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    written = [RESULTS_DIR / f"{name}.json"]
    written[0].write_text(json.dumps(results, indent=2, default=str) + "\n")
    if docs:
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        written.append(DOCS_DIR / f"{name}.md")
        written[1].write_text(markdown.rstrip() + "\n")
    for path in written:
        log(f"wrote {path}")
    return written



def finish(name: str, results: dict, markdown: str, *, docs: bool, summary: Iterable[str] = ()) -> int:
    """The end of a benchmark's main(): write_results(), then the ``summary`` lines and the
    whole run's minutes (when the results have ``seconds``) on stderr. Returns 0."""
    write_results(name, results, markdown, docs=docs)
    for line in summary:
        log(line)
    if "seconds" in results:
        log(f"whole run: {results['seconds'] / 60:.1f} min")
    return 0


def rewrite_page(name: str, render: Callable[[dict], str]) -> int:
    """--from-results: docs/benchmarks/<name>.md again from bench/results/<name>.json, running
    nothing. Returns 0."""
    results = json.loads((RESULTS_DIR / f"{name}.json").read_text())
    page = DOCS_DIR / f"{name}.md"
    page.write_text(render(results).rstrip() + "\n")
    log(f"wrote {page} from the results of {results['machine']['date_utc']}")
    return 0


# -- pieces of a page ------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f") -> str:
    """``value`` formatted by ``spec``, "n/a" for None."""
    return "n/a" if value is None else format(value, spec)


def rate(value: float) -> str:
    """Rows (or events) per second, whole: 141,667."""
    return f"{value:,.0f}"


def verdict(ok: bool, words: tuple[str, str] = ("PASS", "FAIL")) -> str:
    """A target's result in bold: ``words[0]`` when met, ``words[1]`` when not."""
    return f"**{words[0] if ok else words[1]}**"


def percent(share: float) -> str:
    """A share as a percentage: one decimal under 10%, whole above."""
    return f"{share * 100:.1f}%" if share < 0.1 else f"{share * 100:.0f}%"


def margin(measured: float, limit: float, *, minimum: bool = False) -> str:
    """How far from the limit, as a share of it: '43% under the limit', '4.1× the limit',
    or for a minimum ('≥' targets) '4% above the minimum', '10% short of the minimum'."""
    ratio = measured / limit
    if minimum:
        return (f"{percent(ratio - 1)} above the minimum" if ratio >= 1
                else f"{percent(1 - ratio)} short of the minimum")
    if ratio <= 1:
        return f"{percent(1 - ratio)} under the limit"
    return f"{ratio:.1f}× the limit" if ratio >= 2 else f"{percent(ratio - 1)} over the limit"


def generated_by(name: str, results: dict) -> list[str]:
    """The lines under a page's title: which script wrote it, when, and its command."""
    return [
        f"Generated by `bench/{name}.py` on {results['machine']['date_utc']}; re-run it to refresh this page "
        "(see [bench/README.md](../../bench/README.md)). Command:",
        "",
        f"    {results['command']}",
        "",
    ]


def settings_text(settings: dict) -> str:
    """name=value, name=value, ..."""
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def machine_line(m: dict) -> str:
    """The "- Machine: ..." line of a page's set-up, from machine_info()."""
    return (f"- Machine: {m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model']}, "
            f"{mib(m['memory_bytes'])} RAM; {m['platform']}; Python {m['python']}, psycopg {m['psycopg']}")


def server_lines(server: dict, machine: dict, server_kind: str, settings: dict | None = None) -> list[str]:
    """The first lines of a page's set-up: PostgreSQL's version, the machine, the server and
    its settings (``settings``, default: those server_info() read)."""
    return [
        f"- PostgreSQL: {server['version']}",
        machine_line(machine),
        f"- Server: {server_kind}. Settings: " + settings_text(server["settings"] if settings is None else settings),
    ]


def section(title: str, *paragraphs: str) -> list[str]:
    """A page's "## title" and its paragraphs, each followed by a blank line."""
    out = [f"## {title}", ""]
    for paragraph in paragraphs:
        out += [paragraph, ""]
    return out


@dataclass(frozen=True)
class Sample:
    """One transaction of a paced writer (``WriterProcess``): perf_counter when it was due (fixed
    rate), when it started and finished, and whether it committed."""
    scheduled: float
    started: float
    finished: float
    ok: bool


def paced(interval: float, stop) -> Iterator[float]:
    """A paced writer's schedule: each time a transaction is due, every ``interval`` seconds from
    now, yielded once it is due, until ``stop`` (an Event) is set. A writer late for one is not
    given more time for the next: latency counts from ``due``."""
    due = time.perf_counter()
    while not stop.is_set():
        wait = due - time.perf_counter()
        if wait > 0 and stop.wait(wait):
            return
        yield due
        due += interval


class WriterProcess:
    """A paced writer in a process of its own (spawned: it shares neither this process's
    interpreter lock nor its CPU time), for one tenant that the main process may switch between
    rounds. The child runs ``target(*args, tenant, stop, results)``: ``tenant`` a shared char
    array holding the tenant's UUID, ``stop`` an Event, ``results`` a pipe end on which it sends
    ``(samples, errors)`` once ``stop`` is set; each sample becomes ``sample(*fields)``."""

    def __init__(self, target: Callable[..., None], args: tuple, tenant: uuid.UUID, sample: Callable[..., Any],
                 name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._tenant = ctx.Array("c", 36)
        self.tenant = tenant
        self._sample = sample
        self._stop = ctx.Event()
        self._results, child_end = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=target, name=name, daemon=True,
                                    args=(*args, self._tenant, self._stop, child_end))
        self.samples: list = []
        self.errors: list[dict] = []

    @property
    def tenant(self) -> uuid.UUID:
        return uuid.UUID(self._tenant.value.decode())

    @tenant.setter
    def tenant(self, value: uuid.UUID) -> None:
        self._tenant.value = str(value).encode()

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        samples, self.errors = self._results.recv()
        self.samples = [self._sample(*s) for s in samples]
        self._process.join()
