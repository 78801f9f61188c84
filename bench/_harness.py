"""Shared plumbing for the on-demand benchmarks in bench/.

What every benchmark needs and nothing more: a throwaway PostgreSQL (or a scratch database on
a server the caller names), peak-memory measurement of this process and of the server,
progress lines on stderr, and the two outputs: bench/results/<name>.json (git-ignored, the
raw figures) and docs/benchmarks/<name>.md (committed, the table a reader looks at).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tenant_pipelines.db.embedded import EmbeddedCluster

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DOCS_DIR = PROJECT_DIR / "docs" / "benchmarks"
MIB = 1024 * 1024

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


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key == "PPid":
                fields[key] = int(parts[0])
            elif len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * 1024
    return fields


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _server_processes(postmaster: int) -> list[int]:
    pids = [postmaster]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if _status(int(entry.name)).get("PPid") == postmaster:
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
        _status(pid)
    except OSError:
        return None
    return pid


def machine_cpu_busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (all cores; idle and iowait excluded)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine_load(window: float = 2.0) -> float:
    """How many cores' worth of CPU the machine kept busy over ``window`` seconds, right now.
    A benchmark wants this near 0 before it starts: anything else competes for the cores."""
    before = machine_cpu_busy_seconds()
    time.sleep(window)
    return (machine_cpu_busy_seconds() - before) / window


def wait_until_idle(threshold: float, timeout: float = 30.0, window: float = 1.0) -> float:
    """Wait (up to ``timeout`` seconds) until the machine keeps fewer than ``threshold`` cores
    busy over ``window``. Returns the last load measured."""
    deadline = time.monotonic() + timeout
    load = machine_load(window)
    if load >= threshold:
        log(f"waiting for the machine to go idle ({load:.2f} cores busy)")
    while load >= threshold and time.monotonic() < deadline:
        load = machine_load(window)
    return load


def _cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
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
    total = _cpu_seconds(postmaster, reaped_children=True)
    for pid in _server_processes(postmaster)[1:]:
        try:
            total += _cpu_seconds(pid)
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
        self.backend_pid = backend_pid
        self.interval = interval
        self.pss = pss
        self.client_rss_start = 0
        self.client_rss_peak = 0
        self.backend_anon_peak: int | None = None
        self.backend_hwm: int | None = None
        self.server_pss_peak: int | None = None
        self.client_cpu_seconds = 0.0
        self.machine_cpu_seconds = 0.0
        self._machine_cpu_start = 0.0
        self.backend_cpu_seconds: float | None = None
        self.server_cpu_seconds: float | None = None
        self._server_cpu_start: float | None = None
        self._client_cpu_start = 0.0
        self._backend_cpu_start: float | None = None
        self._postmaster: int | None = None
        self._server_pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-probe", daemon=True)

    def __enter__(self) -> "ResourceProbe":
        self.client_rss_start = self.client_rss_peak = _status(os.getpid()).get("VmRSS", 0)
        if self.backend_pid is not None:
            try:
                self._postmaster = _status(self.backend_pid)["PPid"]
                if self.pss:  # the server's processes are only needed for their PSS
                    self._server_pids = _server_processes(self._postmaster)
            except (OSError, KeyError):
                self._postmaster = None
        self._sample()
        self._thread.start()
        if self.backend_pid is not None:
            try:
                self._backend_cpu_start = _cpu_seconds(self.backend_pid)
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
                self.backend_cpu_seconds = _cpu_seconds(self.backend_pid) - self._backend_cpu_start
                if self._server_cpu_start is not None:
                    self.server_cpu_seconds = server_cpu_seconds(self._postmaster) - self._server_cpu_start
            except OSError:
                pass
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.backend_pid is not None:
            try:
                self.backend_hwm = _status(self.backend_pid).get("VmHWM")
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
            self.client_rss_peak = max(self.client_rss_peak, _status(os.getpid()).get("VmRSS", 0))
        except OSError:
            pass
        if self.backend_pid is None:
            return
        try:
            anon = _status(self.backend_pid).get("RssAnon", 0)
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
