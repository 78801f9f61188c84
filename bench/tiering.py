#!/usr/bin/env python
"""Benchmark: storage tiering, as the pipelines run it, by both of tier_tenant()'s methods.

Enterprise (monthly) tenants get three old months of usage events (--rows in all, per tenant),
then ``tenant_pipelines.core.tiering.tier_tenant()`` moves them, with ``as_of`` at the 16th of
the current month (UTC) so that, whatever today's date, the month four back turns cold and the
months three and two back turn warm. Each month moves by one of the two methods:

- ``online`` (tier_tenant's default): copy-and-swap. A shadow copy in the target tablespace is
  filled in batches of ``--batch-blocks`` blocks, one short transaction each (committed
  asynchronously, its writes handed to the disk every 256 kB), paced to
  ``--max-mb-per-s`` of the partition's heap; a trigger logs rows written meanwhile, which are
  copied again; writers wait for a lock only while the trigger is created (the moved month's
  writers) and during the swap (DETACH, ATTACH: the tenant's writers).
- ``set-tablespace``: ``ALTER TABLE ... SET TABLESPACE``, one transaction per partition: a file
  copy at full disk speed, WAL included.

A "mode" is a (method, the inserter's synchronous_commit) pair; ``--method both`` (the
default) runs both methods in the same run, one after the other, each on fresh tenants. It
measures, per mode:

1. move throughput, from tier_tenant()'s Move records: MB/s over the whole move (``seconds``:
   copy, the pacer's sleeps, catch-up, VACUUM/ANALYZE and swap), MB/s over the move's working
   time (the pacer's sleeps, timed through tier_tenant's ``sleep`` argument, left out), and for
   online moves the block copy alone (timed by wrapping the module's helpers); the time under
   lock per move (``lock_held_s``: the ALTER for set-tablespace, the begin and swap
   transactions for online), max and total. Against plain file copies of the same size on the
   same filesystem: (a) the partition's own relation files (pg_relation_filepath) copied with
   shutil.copyfile + fsync, (b) a file of os.urandom bytes written, fsynced and evicted from the
   page cache first (posix_fadvise DONTNEED), so that its copy reads from the disk.
2. insert latency while tiering: an inserter process writes small batches (ingest_usage_events:
   billing_app, tenant context, RLS) into the current month of the tenant being tiered, at a
   fixed rate, through baseline windows (no tiering) and tiering windows (as long as
   tier_tenant() runs), interleaved: baseline, tiering, baseline, tiering, ..., baseline.
   Targets, per mode: no insert fails, and the p99 latency during tiering within 1.2x of the
   baseline's.

Run on demand:  python bench/tiering.py [--method online|set-tablespace|both] [--max-mb-per-s X]
                [--batch-blocks N] [--rows N] [--rounds R] [--dsn DSN] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.core import tiering  # noqa: E402
from tenant_pipelines.local.demo import METRICS  # noqa: E402
from tenant_pipelines.core.ingest import ingest_usage_events  # noqa: E402
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.core.placement import partition_name  # noqa: E402
from tenant_pipelines.local.cluster import TABLESPACES  # noqa: E402
from tenant_pipelines.files import fsync_path  # noqa: E402

NAME = "tiering"
TARGET_P99_RATIO = 1.2
MET = ("MET", "MISSED")  # the words of the targets' verdicts
IDLE_WAIT_S = 60.0
WARMUP_S = 3.0
SETTLE_S = 1.0
COPY_CHUNK = 8 * h.MIB
AS_OF_DAY = 16  # as_of = the 16th of the current month, 00:00 UTC
# Months back from the current one -> the tier they reach at as_of (see month_targets()).
OLD_MONTHS = (4, 3, 2)
PROPERTIES = '{"source": "bench", "region": "eu-west-1"}'


# -- months -----------------------------------------------------------------------------------------


def utc(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def month_targets(this_month: date, as_of: datetime, warm_after: timedelta, cold_after: timedelta) -> dict[date, str]:
    """The tier fn_tier_plan() gives each old month at ``as_of``: age = as_of - the month's end."""
    out = {}
    for back in OLD_MONTHS:
        start = h.add_months(this_month, -back)
        age = as_of - utc(h.add_months(start, 1))
        out[start] = "cold" if age >= cold_after else "warm" if age >= warm_after else "hot"
    return out


# -- set-up -----------------------------------------------------------------------------------------


def prepare_tablespaces(conn: psycopg.Connection, throwaway: bool) -> dict[str, str]:
    """hot/warm/cold -> tablespace. The throwaway cluster has hot_storage, warm_storage and
    cold_storage (EmbeddedCluster creates them); point the tiers at them as the test suite does.
    On another server the tiers must already name three distinct, existing tablespaces."""
    if throwaway:
        tiering.configure_tablespaces(conn, TABLESPACES)
    tiering.require_tablespaces(conn)
    tiers = dict(conn.execute("SELECT storage_tier, tablespace::text FROM storage_tiers").fetchall())
    if len(set(tiers.values())) != 3:
        raise SystemExit(f"the tiers share tablespaces ({tiers}): nothing would move; point them at three "
                         "tablespaces with 'tenant-pipelines tiering configure'")
    return tiers


def tablespace_folder(conn: psycopg.Connection, name: str) -> Path | None:
    """The folder of a tablespace (the server's data folder for pg_default), None if unknown."""
    location = conn.execute(
        "SELECT CASE WHEN spcname IN ('pg_default', 'pg_global') THEN current_setting('data_directory')"
        " ELSE pg_tablespace_location(oid) END FROM pg_tablespace WHERE spcname = %s",
        (name,),
    ).fetchone()
    return Path(location[0]) if location and location[0] else None


def policy(conn: psycopg.Connection) -> tuple[timedelta, timedelta]:
    """warm_after / cold_after for the enterprise tier (its own row, else the global one)."""
    return conn.execute(
        "SELECT warm_after, cold_after FROM tiering_policy WHERE tenant_tier = 'enterprise' OR tenant_tier IS NULL"
        " ORDER BY tenant_tier NULLS LAST LIMIT 1"
    ).fetchone()


def create_tenants(conn: psycopg.Connection, count: int, label: str, tier: str = "enterprise") -> list[uuid.UUID]:
    """Organizations on ``tier`` (enterprise: monthly partitions), each with an active subscription."""
    tenants = [uuid.uuid4() for _ in range(count)]
    names = [f"Tiering bench {label} {i + 1}" for i in range(count)]
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) SELECT * FROM unnest(%s::uuid[], %s::text[])",
                     (tenants, names))
        conn.execute(
            "INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit, storage_quota_gb)"
            " SELECT t, tier, monthly_events_limit, storage_quota_gb FROM unnest(%s::uuid[]) t, tier_limits"
            " WHERE tier = %s",
            (tenants, tier),
        )
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status)"
                     " SELECT t, 'enterprise_custom', 'active' FROM unnest(%s::uuid[]) t", (tenants,))
    return tenants


_GENERATE = h.GENERATE_EVENTS  # the server-generated events of bench/_harness.py


def copy_generated(source: psycopg.Connection, target: psycopg.Connection, params: dict) -> int:
    """Rows generated by the server on ``source`` (COPY (SELECT ... generate_series) TO STDOUT),
    streamed into usage_events_mt on ``target`` with COPY FROM STDIN as the superuser. Time
    ordered; COPY routes them to the tenant's month partitions."""
    return h.copy_events(source, target, sql.SQL(_GENERATE), params)


def load_tenant(admin: psycopg.Connection, source: psycopg.Connection, tenant: uuid.UUID, rows: int,
                first: datetime, end: datetime) -> dict:
    """``rows`` events spread evenly over [first, end), time ordered. The first one goes in
    before onboarding, so ensure_tenant_partition() premakes the months from ``first`` on;
    the rest are COPYed straight into the month partitions."""
    params = {"tenant": tenant, "first": first, "step": (end - first) / rows, "properties": PROPERTIES}
    copy_generated(source, admin, {**params, "lo": 0, "hi": 0})
    report = ensure_tenant_partition(admin, tenant)
    if report.layout != "monthly":
        raise SystemExit(f"tenant {tenant}: layout {report.layout}, expected monthly (enterprise tier)")
    started = time.perf_counter()
    loaded = 1 + copy_generated(source, admin, {**params, "lo": 1, "hi": rows - 1})
    return {"tenant": str(tenant), "rows": loaded, "seconds": time.perf_counter() - started,
            "tables_created": len(report.tables_created)}


POOL_TENANTS = 10


def load_pool(args: argparse.Namespace, dsn: str, admin: psycopg.Connection, mode: Mode,
              ctx: dict) -> tuple[list[None], list[uuid.UUID], list[dict]]:
    """--pool: POOL_TENANTS free (pooled) tenants share --rows events over the three old
    months, in the pool's months; every round tiers the pool (tenant None), and the inserter
    writes as the first of them into the pool's current month."""
    label = mode.label
    h.log(f"{label}: creating {POOL_TENANTS} pooled tenants with {args.rows:,} rows in all")
    tenants = create_tenants(admin, POOL_TENANTS, f"pool {mode.method} sc={mode.synchronous_commit}", tier="free")
    first, end = ctx["first"], ctx["end"]
    per_tenant = args.rows // POOL_TENANTS
    started = time.perf_counter()
    with h.connect(dsn) as source:
        for tenant in tenants:
            params = {"tenant": tenant, "first": first, "step": (end - first) / per_tenant, "properties": PROPERTIES}
            copy_generated(source, admin, {**params, "lo": 0, "hi": 0})
            if ensure_tenant_partition(admin, tenant).layout != "pooled":
                raise SystemExit(f"tenant {tenant}: expected pooled (free tier)")
            copy_generated(source, admin, {**params, "lo": 1, "hi": per_tenant - 1})
    seconds = time.perf_counter() - started
    vacuum_started = time.perf_counter()
    admin.execute("VACUUM (ANALYZE) usage_events_mt_default")
    load = {"tenant": "pool", "rows": per_tenant * POOL_TENANTS, "seconds": seconds,
            "vacuum_seconds": time.perf_counter() - vacuum_started}
    h.log(f"{label}: loaded {load['rows']:,} rows into the pool in {seconds:.1f}s (vacuum {load['vacuum_seconds']:.1f}s)")
    return [None] * args.rounds, [tenants[0]] * args.rounds, [load]


def pool_round_mapping(conn: psycopg.Connection, tiers: dict[str, str], *, back: bool) -> None:
    """The pool's rounds move the same three months each time: odd rounds by the policy (to
    warm and cold), even rounds back to hot, by pointing the warm and cold tiers at the hot
    tier's tablespace for that round."""
    for tier in ("warm", "cold"):
        conn.execute("UPDATE storage_tiers SET tablespace = %s WHERE storage_tier = %s",
                     (tiers["hot"] if back else tiers[tier], tier))


def vacuum_tenant(conn: psycopg.Connection, tenant: uuid.UUID) -> float:
    """VACUUM (ANALYZE) of the tenant's partition tree, as autovacuum would have done long
    before a month turns warm: the hint bits and visibility map are set, tuples not frozen."""
    started = time.perf_counter()
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("public", partition_name(tenant))))
    return time.perf_counter() - started


def month_name(tenant: uuid.UUID | None, month: date) -> str:
    """The month partition of ``tenant``, or of the pool (None)."""
    return f"usage_events_mt_pool_p{month:%Y%m}" if tenant is None else f"{partition_name(tenant)}_p{month:%Y%m}"


def month_partitions(conn: psycopg.Connection, tenant: uuid.UUID | None, months: Sequence[date]) -> list[dict]:
    out = []
    for month in months:
        name = month_name(tenant, month)
        rows, size, space = conn.execute(
            sql.SQL("SELECT (SELECT count(*) FROM {}), pg_total_relation_size(%s::regclass),"
                    " (SELECT coalesce(t.spcname, 'default') FROM pg_class c LEFT JOIN pg_tablespace t"
                    "   ON t.oid = c.reltablespace WHERE c.oid = %s::regclass)").format(sql.Identifier("public", name)),
            (f"public.{name}", f"public.{name}"),
        ).fetchone()
        out.append({"partition": name, "month": month.isoformat(), "rows": rows, "bytes": size, "tablespace": space})
    return out


# -- plain file copies (the baseline) ------------------------------------------------------------------


def relation_files(conn: psycopg.Connection, partition: str, data_dir: Path) -> list[Path]:
    """Every file of the partition: heap, TOAST and its index, the indexes; all forks and
    1 GB segments. Paths under the server's data folder (pg_tblspc/... for tablespaces)."""
    rel = f"public.{partition}"
    bases = [r[0] for r in conn.execute(
        """
        SELECT pg_relation_filepath(oid) FROM (
            SELECT %s::regclass::oid AS oid
            UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass
            UNION ALL SELECT reltoastrelid FROM pg_class WHERE oid = %s::regclass AND reltoastrelid <> 0
            UNION ALL SELECT x.indexrelid FROM pg_index x JOIN pg_class c ON x.indrelid = c.reltoastrelid
                       WHERE c.oid = %s::regclass) r
        """,
        (rel, rel, rel, rel),
    )]
    files = []
    for base in bases:
        path = data_dir / base
        for candidate in [path, *path.parent.glob(path.name + ".*"), *path.parent.glob(path.name + "_*")]:
            if candidate.is_file():
                files.append(candidate)
    return sorted(set(files))


def copy_files(sources: Sequence[Path], folder: Path) -> tuple[int, float]:
    """shutil.copyfile of each file into ``folder``, each fsynced (as SET TABLESPACE syncs each
    fork it writes), then the folder. Returns bytes and seconds."""
    started = time.perf_counter()
    total = 0
    for i, src in enumerate(sources):
        dst = folder / f"{i:04d}_{src.name}"
        shutil.copyfile(src, dst)
        fsync_path(dst)
        total += dst.stat().st_size
    fsync_path(folder)
    return total, time.perf_counter() - started


def random_file(path: Path, size: int) -> None:
    """``size`` bytes of os.urandom, fsynced, then dropped from the page cache."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, os.urandom(min(COPY_CHUNK, left)))
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def scratch_folder(near: Path | None) -> Path:
    """A temporary folder beside ``near`` (a tablespace's folder: the same filesystem), else in
    the system's temporary folder."""
    for parent in ([near.parent] if near is not None else []) + [Path(tempfile.gettempdir())]:
        if os.access(parent, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="tp-bench-copy-", dir=parent))
    raise SystemExit("no writable folder for the file-copy baseline")


def file_copy_baselines(conn: psycopg.Connection, partitions: Sequence[str], data_dir: Path | None,
                        source_space: Path | None, target_space: Path | None) -> dict:
    """Copy (a) the partitions' relation files and (b) an equal-sized random file that is not
    in the page cache, onto the target tablespace's filesystem. Both fsynced."""
    result: dict = {"relation_files": None, "random_file": None}
    target = scratch_folder(target_space)
    source = scratch_folder(source_space)
    try:
        result["same_filesystem"] = (source_space is not None and target_space is not None
                                     and os.stat(source_space).st_dev == os.stat(target_space).st_dev)
        files: list[Path] = []
        if data_dir is not None and os.access(data_dir, os.R_OK | os.X_OK):
            for part in partitions:
                files += relation_files(conn, part, data_dir)
        if files:
            size, seconds = copy_files(files, target)
            result["relation_files"] = {"files": len(files), "bytes": size, "seconds": seconds,
                                        "mb_per_second": size / h.MIB / seconds}
            for f in target.iterdir():
                f.unlink()
        size = result["relation_files"]["bytes"] if result["relation_files"] else sum(
            conn.execute("SELECT pg_total_relation_size(%s::regclass)", (f"public.{p}",)).fetchone()[0]
            for p in partitions)
        blob = source / "random.bin"
        random_file(blob, size)
        size, seconds = copy_files([blob], target)
        result["random_file"] = {"bytes": size, "seconds": seconds, "mb_per_second": size / h.MIB / seconds}
        result["folders"] = [str(source), str(target)]
    finally:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
    return result


# -- the inserter -------------------------------------------------------------------------------------


Sample = h.Sample  # an insert: when it was due (fixed rate), started, finished, committed


class Inserter(h.WriterProcess):
    """Writes ``rows`` events per transaction into the current month of ``tenant`` with
    ingest_usage_events() (billing_app, tenant context, RLS), ``rate`` transactions a second,
    on its own connection, in its own process (as an application's writer would be: not
    sharing this process's interpreter lock or CPU time with the benchmark). Latency is
    measured from when each insert was due, so a stall counts for every insert queued behind
    it, and from when it started (service time). Times are time.perf_counter(), which is
    CLOCK_MONOTONIC on Linux: the same clock in both processes."""

    def __init__(self, dsn: str, synchronous_commit: str, rate: float, rows: int, tenant: uuid.UUID) -> None:
        # the main process switches the tenant between rounds
        super().__init__(_insert_loop, (dsn, synchronous_commit, 1.0 / rate, rows), tenant, Sample, "inserter")


def _insert_loop(dsn: str, synchronous_commit: str, interval: float, rows: int, tenant, stop, results) -> None:
    """The inserter process: runs until ``stop`` is set, then sends (samples, errors) back."""
    samples: list[tuple] = []
    errors: list[dict] = []
    seq = 0
    conn = h.connect(dsn, synchronous_commit)
    try:
        for due in h.paced(interval, stop):
            started = time.perf_counter()
            now = datetime.now(timezone.utc)
            seq += 1
            events = [(METRICS[(seq + i) % len(METRICS)], Decimal(seq % 1000 + i), now, PROPERTIES) for i in range(rows)]
            ok = True
            try:
                ingest_usage_events(conn, uuid.UUID(tenant.value.decode()), events)
            except Exception as exc:  # noqa: BLE001  every failure is a finding
                ok = False
                errors.append({"at": started, "error": f"{type(exc).__name__}: {exc}"})
                if conn.broken or conn.closed:
                    conn = h.connect(dsn, synchronous_commit)
            samples.append((due, started, time.perf_counter(), ok))
    finally:
        conn.close()
        results.send((samples, errors))


def latency_summary(samples: Sequence[Sample]) -> dict:
    if not samples:
        return {"inserts": 0}
    response = [(s.finished - s.scheduled) * 1000 for s in samples]
    service = [(s.finished - s.started) * 1000 for s in samples]
    return {
        "inserts": len(samples),
        "failed": sum(1 for s in samples if not s.ok),
        "p50_ms": h.percentile(response, 50), "p99_ms": h.percentile(response, 99), "max_ms": max(response),
        "service_p50_ms": h.percentile(service, 50), "service_p99_ms": h.percentile(service, 99),
        "service_max_ms": max(service),
    }


def in_window(samples: Sequence[Sample], window: dict) -> list[Sample]:
    return [s for s in samples if window["start"] <= s.scheduled < window["end"]]


# -- one mode: a tiering method and the inserter's synchronous_commit ------------------------------------


@dataclass(frozen=True)
class Mode:
    method: str  # tiering.ONLINE or tiering.SET_TABLESPACE: how tier_tenant() moves the months
    synchronous_commit: str  # the inserter's

    @property
    def label(self) -> str:
        return f"{self.method}, synchronous_commit={self.synchronous_commit}"


def _rate(nbytes: float | None, seconds: float | None) -> float | None:
    return nbytes / h.MIB / seconds if nbytes is not None and seconds else None


def tier_round(admin: psycopg.Connection, tenant: uuid.UUID | None, as_of: datetime, expected: dict[str, str],
               mode: Mode, pace: tiering.Pace) -> dict:
    """tier_tenant() for one tenant (tier_pool() for the pool: ``tenant`` None) by
    ``mode.method`` (paced by ``pace`` when online), timed, with its WAL, the time under lock
    and where each move's time went (the Move records' copy_s, copy_bytes, slept_s, vacuum_s)."""
    lsn = h.wal_lsn(admin)
    # No PSS sampling: it steals CPU from the inserter whose latency this window measures.
    with h.ResourceProbe(h.local_backend_pid(admin), pss=False) as probe:
        started = time.perf_counter()
        if tenant is None:
            report = tiering.tier_pool(admin, as_of=as_of, method=mode.method, pace=pace)
        else:
            report = tiering.tier_tenant(admin, tenant, as_of=as_of, method=mode.method, pace=pace)
        seconds = time.perf_counter() - started
    moves = []
    for m in report.moves:
        slept, copy_s, heap = m.slept_s, m.copy_s, m.copy_bytes
        moves.append({
            "partition": m.partition, "method": m.method, "from": m.from_tablespace, "to": m.to_tablespace,
            "bytes": m.bytes, "seconds": m.seconds, "lock_seconds": m.lock_held_s, "slept_seconds": slept,
            "working_seconds": m.seconds - slept, "copy_seconds": copy_s, "copy_heap_bytes": heap,
            "vacuum_seconds": m.vacuum_s, "rows_caught_up": m.rows_caught_up,
            "attempts": m.attempts, "frozen": m.frozen,
            "mb_per_second": _rate(m.bytes, m.seconds), "working_mb_per_second": _rate(m.bytes, m.seconds - slept),
            "lock_mb_per_second": _rate(m.bytes, m.lock_held_s),
            "copy_heap_mb_per_second": _rate(heap, copy_s),
            "copy_heap_active_mb_per_second": _rate(heap, copy_s - slept) if copy_s is not None else None,
        })
    wrong_method = sorted({m["method"] for m in moves} - {mode.method})
    if wrong_method:
        raise SystemExit(f"tenant {tenant or 'pool'}: method={mode.method!r} moved by {wrong_method}")
    moved = {m["partition"]: m["to"] for m in moves}
    wrong = {p: (moved.get(p), t) for p, t in expected.items() if moved.get(p) != t}
    if wrong or report.misplaced_left:
        raise SystemExit(f"{tenant or 'pool'}: moves {moved} differ from the plan {expected} "
                         f"({report.misplaced_left} misplaced left)")
    move_seconds = sum(m["seconds"] for m in moves)
    slept = sum(m["slept_seconds"] for m in moves)
    vacuums = [m["vacuum_seconds"] for m in moves if m["vacuum_seconds"] is not None]
    return {
        "tenant": str(tenant) if tenant else "pool", "method": mode.method, "seconds": seconds, "moves": moves,
        "bytes_moved": report.bytes_moved, "move_seconds": move_seconds, "slept_seconds": slept,
        "working_seconds": move_seconds - slept,
        "lock_seconds": sum(m["lock_seconds"] for m in moves), "lock_max_seconds": max(m["lock_seconds"] for m in moves),
        "vacuum_seconds": sum(vacuums) if vacuums else None,
        "mb_per_second": report.bytes_moved / h.MIB / move_seconds,
        "working_mb_per_second": report.bytes_moved / h.MIB / (move_seconds - slept),
        "rows_caught_up": sum(m["rows_caught_up"] for m in moves), "restarted": report.restarted,
        "helpers_wrapped": [],  # earlier runs timed the phases by wrapping tiering's helpers: now Move records them
        "wal_bytes": h.wal_bytes(admin, lsn), "placement": report.placement, **probe.as_dict(),
    }


def move_leftovers(conn: psycopg.Connection) -> dict:
    """What online moves left behind: rows of tenant_pipelines.partition_moves, shadow and
    change-log tables (tiering_move_*) in schema tenant_pipelines, capture triggers anywhere."""
    return {
        "partition_moves": conn.execute("SELECT count(*) FROM tenant_pipelines.partition_moves").fetchone()[0],
        "tables": [r[0] for r in conn.execute(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'tenant_pipelines' AND left(c.relname, 13) = 'tiering_move_' ORDER BY 1")],
        "triggers": [r[0] for r in conn.execute(
            "SELECT format('%I on %s', tgname, tgrelid::regclass) FROM pg_trigger"
            " WHERE left(tgname, 13) = 'tiering_move_' ORDER BY 1")],
    }


def run_mode(args: argparse.Namespace, dsn: str, admin: psycopg.Connection, mode: Mode, ctx: dict) -> dict:
    """Build ``args.rounds`` tenants, then: baseline, tier tenant 1, baseline, tier tenant 2, ...,
    baseline, with the inserter writing throughout at a fixed rate."""
    label = mode.label
    if args.pool:
        tenants, writers, loads = load_pool(args, dsn, admin, mode, ctx)
    else:
        h.log(f"{label}: creating {args.rounds} enterprise tenants with {args.rows:,} rows each")
        tenants = create_tenants(admin, args.rounds, f"{mode.method} sc={mode.synchronous_commit}")
        writers = tenants
        loads = []
        with h.connect(dsn) as source:
            for tenant in tenants:
                loads.append(load_tenant(admin, source, tenant, args.rows, ctx["first"], ctx["end"]))
                loads[-1]["vacuum_seconds"] = vacuum_tenant(admin, tenant)
                h.log(f"{label}: loaded {loads[-1]['rows']:,} rows in {loads[-1]['seconds']:.1f}s "
                      f"(vacuum {loads[-1]['vacuum_seconds']:.1f}s)")

    def expected(number: int, tenant: uuid.UUID | None) -> dict[str, str]:
        """Where tiering puts each old month: by the policy; in the pool's even rounds, back to
        the hot tablespace (pool_round_mapping() points warm and cold there)."""
        back = tenant is None and number % 2 == 0
        return {month_name(tenant, m): ctx["tiers"]["hot" if back else target] for m, target in ctx["targets"].items()}
    admin.execute("CHECKPOINT")
    load_before = h.wait_until_idle(timeout=IDLE_WAIT_S)
    inserter = Inserter(dsn, mode.synchronous_commit, args.insert_rate, args.insert_rows, writers[0])
    windows: list[dict] = []
    rounds: list[dict] = []

    def window(kind: str, number: int, work: Callable[[], object]) -> object:
        start = time.perf_counter()
        value = work()
        windows.append({"kind": kind, "round": number, "start": start, "end": time.perf_counter()})
        return value

    inserter.start()
    try:
        time.sleep(WARMUP_S)
        for number, tenant in enumerate(tenants, 1):
            inserter.tenant = writers[number - 1]
            window("baseline", number, lambda: time.sleep(args.baseline_seconds))
            if tenant is None:
                pool_round_mapping(admin, ctx["tiers"], back=number % 2 == 0)
            admin.execute("CHECKPOINT")
            before = month_partitions(admin, tenant, list(ctx["targets"]))
            parts = [p["partition"] for p in before]
            copies = file_copy_baselines(admin, parts, ctx["data_dir"], ctx["folders"]["hot"], ctx["folders"]["warm"])
            time.sleep(SETTLE_S)
            h.log(f"{label}: round {number}: tiering {f'tenant {tenant}' if tenant else 'the pool'}")
            result = window("tiering", number, lambda: tier_round(admin, tenant, ctx["as_of"],
                                                                  expected(number, tenant), mode, ctx["pace"]))
            after = month_partitions(admin, tenant, list(ctx["targets"]))
            if [p["rows"] for p in before] != [p["rows"] for p in after]:
                raise SystemExit(f"tenant {tenant}: rows per month changed by tiering: {before} -> {after}")
            result.update({"number": number, "partitions_before": before, "partitions_after": after,
                           "copies": copies})
            rounds.append(result)
            h.log(f"{label}: round {number}: moved {h.mib(result['bytes_moved'])} in {result['move_seconds']:.2f}s "
                  f"= {result['mb_per_second']:.0f} MB/s ({_mbps(result['working_mb_per_second'])} MB/s without "
                  f"the pacer's {result['slept_seconds']:.1f}s of sleeps); under lock max "
                  f"{result['lock_max_seconds'] * 1000:.1f} ms, total {result['lock_seconds'] * 1000:.1f} ms; "
                  f"file copy {copies['relation_files']['mb_per_second'] if copies['relation_files'] else 0:.0f} MB/s"
                  f" (relation files), {copies['random_file']['mb_per_second']:.0f} MB/s (random file, from disk)")
            admin.execute("CHECKPOINT")
            time.sleep(SETTLE_S)
        window("baseline", len(tenants) + 1, lambda: time.sleep(args.baseline_seconds))
    finally:
        inserter.stop()

    per_window = []
    for w in windows:
        summary = latency_summary(in_window(inserter.samples, w))
        per_window.append({**{k: w[k] for k in ("kind", "round")}, "seconds": w["end"] - w["start"], **summary})
    pooled = {kind: latency_summary([s for w in windows if w["kind"] == kind for s in in_window(inserter.samples, w)])
              for kind in ("baseline", "tiering")}
    ratio = pooled["tiering"]["p99_ms"] / pooled["baseline"]["p99_ms"]
    service_ratio = pooled["tiering"]["service_p99_ms"] / pooled["baseline"]["service_p99_ms"]
    errors = [{**e, "at": e["at"] - windows[0]["start"]} for e in inserter.errors]
    leftovers = move_leftovers(admin)
    return {
        "method": mode.method, "synchronous_commit": mode.synchronous_commit, "label": label,
        "tenants": [str(t) if t else "pool" for t in tenants], "loads": loads,
        "load_before_cores": load_before, "rounds": rounds, "windows": per_window, "pooled": pooled,
        "inserts_total": len(inserter.samples), "insert_errors": errors,
        "p99_ratio": ratio, "service_p99_ratio": service_ratio, "leftovers": leftovers,
        "targets": {"no_failed_insert": not errors, "p99_ratio": ratio <= TARGET_P99_RATIO},
    }


# -- report ------------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _mbps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:,.1f}"


def _secs(value: float | None) -> str:
    return h.fmt(value, ".2f")


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known and len(known) == len(values) else None


def method_summary(rounds: list[dict]) -> dict:
    """Throughput and time under lock of one method's moves, over all its rounds."""
    moves = [m for r in rounds for m in r["moves"]]
    moved = sum(m["bytes"] for m in moves)
    move_s = sum(m["seconds"] for m in moves)
    slept = sum(r["slept_seconds"] for r in rounds)
    locks = [m["lock_seconds"] for m in moves]
    copied = [m for m in moves if m["copy_seconds"] is not None and m["copy_heap_bytes"] is not None]
    copy_s = sum(m["copy_seconds"] for m in copied)
    copy_heap = sum(m["copy_heap_bytes"] for m in copied)
    copy_slept = sum(m["slept_seconds"] for m in copied)
    by_target: dict[str, list] = {}
    for m in moves:
        by_target.setdefault(m["to"], []).append(m)
    return {
        "rounds": len(rounds), "moves": len(moves), "bytes_moved": moved, "move_seconds": move_s,
        "slept_seconds": slept, "working_seconds": move_s - slept,
        "mb_per_second": moved / h.MIB / move_s, "working_mb_per_second": moved / h.MIB / (move_s - slept),
        "median_round_mb_per_second": statistics.median(r["mb_per_second"] for r in rounds),
        "lock_seconds": sum(locks), "lock_max_seconds": max(locks), "lock_median_seconds": statistics.median(locks),
        "lock_mb_per_second": moved / h.MIB / sum(locks),
        "copy_seconds": copy_s if copied else None, "copy_heap_bytes": copy_heap if copied else None,
        "copy_slept_seconds": copy_slept if copied else None,
        "copy_heap_mb_per_second": _rate(copy_heap, copy_s) if copied else None,
        "copy_heap_active_mb_per_second": _rate(copy_heap, copy_s - copy_slept) if copied else None,
        "by_target": {t: {"moves": len(ms), "bytes": sum(m["bytes"] for m in ms),
                          "seconds": sum(m["seconds"] for m in ms),
                          "mb_per_second": sum(m["bytes"] for m in ms) / h.MIB / sum(m["seconds"] for m in ms)}
                      for t, ms in sorted(by_target.items())},
        "vacuum": [{"seconds": m["vacuum_seconds"], "bytes": m["bytes"], "frozen": m["frozen"], "to": m["to"]}
                   for m in moves if m["vacuum_seconds"] is not None],
        "rows_caught_up": sum(m["rows_caught_up"] for m in moves),
        "attempts_max": max(m["attempts"] for m in moves),
        "wal_bytes": sum(r["wal_bytes"] for r in rounds),
    }


def throughput_summary(modes: list[dict]) -> dict:
    rounds = [r for m in modes for r in m["rounds"]]
    rel = [r["copies"]["relation_files"] for r in rounds if r["copies"]["relation_files"]]
    rnd = [r["copies"]["random_file"] for r in rounds]
    methods = list(dict.fromkeys(m["method"] for m in modes))
    return {
        "by_method": {method: method_summary([r for m in modes if m["method"] == method for r in m["rounds"]])
                      for method in methods},
        "relation_files_mb_per_second": (sum(c["bytes"] for c in rel) / h.MIB / sum(c["seconds"] for c in rel))
        if rel else None,
        "random_file_mb_per_second": sum(c["bytes"] for c in rnd) / h.MIB / sum(c["seconds"] for c in rnd),
    }


def _pace_text(p: dict) -> str:
    cap = "no rate limit" if p["max_mb_per_s"] is None else f"at most {p['max_mb_per_s']:g} MB/s"
    return f"{cap}, {p['batch_blocks']} blocks ({p['batch_blocks'] * tiering.BLOCK // 1024} KiB) per transaction"


def verdicts(results: dict) -> list[str]:
    """One honest sentence per method: does it meet the issue's target in every mode it ran?"""
    out = []
    p = results["parameters"]
    for method in dict.fromkeys(m["method"] for m in results["modes"]):
        modes = [m for m in results["modes"] if m["method"] == method]
        ok = all(m["targets"]["no_failed_insert"] and m["targets"]["p99_ratio"] for m in modes)
        figures = "; ".join(
            f"synchronous_commit={m['synchronous_commit']}: p99 {_ms(m['pooled']['tiering']['p99_ms'])} ms vs "
            f"{_ms(m['pooled']['baseline']['p99_ms'])} ms = {m['p99_ratio']:.2f}×, "
            f"{len(m['insert_errors'])} failed inserts" for m in modes)
        how = f" ({_pace_text(p)})" if method == tiering.ONLINE else ""
        if ok:
            out.append(f"- `{method}`{how} **meets** the target: {figures}.")
        else:
            missed = [what for m in modes for what, good in (("p99", m["targets"]["p99_ratio"]),
                                                             ("no failed insert", m["targets"]["no_failed_insert"]))
                      if not good]
            out.append(f"- `{method}`{how} **misses** the target ({', '.join(dict.fromkeys(missed))}): {figures}.")
    return out


def render_markdown(results: dict) -> str:
    p, m, srv, t = results["parameters"], results["machine"], results["server"], results["throughput"]
    modes = results["modes"]
    by_method = t["by_method"]
    target_rows = []
    for mode in modes:
        pool = mode["pooled"]
        target_rows.append([f"No insert fails ({mode['label']})", "0 failed",
                            f"{len(mode['insert_errors'])} failed of {mode['inserts_total']:,}",
                            h.verdict(mode["targets"]["no_failed_insert"], MET)])
        target_rows.append([
            f"p99 insert latency while tiering ({mode['label']})",
            f"≤ {TARGET_P99_RATIO}× baseline p99",
            f"{_ms(pool['tiering']['p99_ms'])} ms vs {_ms(pool['baseline']['p99_ms'])} ms = "
            f"{mode['p99_ratio']:.2f}×", h.verdict(mode["targets"]["p99_ratio"], MET)])
    rel = t["relation_files_mb_per_second"]
    tenants_of = {method: sum(len(mo["tenants"]) for mo in modes if mo["method"] == method) for method in by_method}
    throughput_rows = []
    for method, s in by_method.items():
        throughput_rows.append([
            method, "whole move: bytes / `Move.seconds`" + (" (copy, pacing, catch-up, ANALYZE or VACUUM FREEZE, "
                                                           "swap)" if method == tiering.ONLINE else
                                                           " (the ALTER, then VACUUM FREEZE of the cold month)"),
            _mbps(s["mb_per_second"]),
            f"{h.mib(s['bytes_moved'])} in {s['move_seconds']:.1f}s over {tenants_of[method]} tenants; "
            f"median round {_mbps(s['median_round_mb_per_second'])} MB/s"])
        if method == tiering.ONLINE:
            throughput_rows += [
                [method, "working time: the same without the pacer's sleeps", _mbps(s["working_mb_per_second"]),
                 f"{s['slept_seconds']:.1f}s of sleeps left out of {s['move_seconds']:.1f}s"],
                [method, "block copy, paced: heap bytes / copy time", _mbps(s["copy_heap_mb_per_second"]),
                 f"{h.mib(s['copy_heap_bytes'])} of heap in {_secs(s['copy_seconds'])}s; the pace caps the heap "
                 f"bytes copied ({_pace_text(p)}); the copy's inserts build the indexes too"],
                [method, "block copy without its sleeps: heap bytes / (copy time − sleeps)",
                 _mbps(s["copy_heap_active_mb_per_second"]),
                 "what the INSERT … SELECT batches ran at, heap and index maintenance included"],
            ]
        else:
            throughput_rows.append([method, "the ALTER … SET TABLESPACE alone: bytes / time under lock",
                                    _mbps(s["lock_mb_per_second"]), f"{h.mib(s['bytes_moved'])} in "
                                    f"{s['lock_seconds']:.1f}s"])
        throughput_rows += [[method, f"… to {to} (whole move)", _mbps(v["mb_per_second"]),
                             f"{v['moves']} moves, {h.mib(v['bytes'])}"] for to, v in s["by_target"].items()]
    throughput_rows += [
        ["—", "Plain copy: the partitions' relation files (page cache warm)", _mbps(rel),
         "shutil.copyfile + fsync per file, same files, same filesystem, just before the moves"],
        ["—", "Plain copy: random file of the same size, read from disk", _mbps(t["random_file_mb_per_second"]),
         "os.urandom file, fsynced and evicted from this machine's page cache (posix_fadvise "
         "DONTNEED), then copied + fsync; a virtual disk may still be cached by its host"],
    ]
    lock_what = {
        tiering.ONLINE: "the begin transaction (shadow table, change-log trigger: SHARE ROW EXCLUSIVE on the month) "
                        "and the swap (ACCESS EXCLUSIVE on the tenant's partition and the month: last catch-up, "
                        "DETACH, ATTACH, renames)",
        tiering.SET_TABLESPACE: "the ALTER TABLE … SET TABLESPACE transaction (ACCESS EXCLUSIVE on the month "
                                "being moved, for the whole file copy)",
    }
    lock_rows = [[method, s["moves"], f"{s['lock_max_seconds'] * 1000:,.1f}", f"{s['lock_median_seconds'] * 1000:,.1f}",
                  f"{s['lock_seconds'] * 1000:,.1f}", s["attempts_max"], lock_what.get(method, "")]
                 for method, s in by_method.items()]
    wal_notes = {
        tiering.ONLINE: "the copy is INSERT … SELECT in batches: every row and its index entries are WAL-logged",
        tiering.SET_TABLESPACE: f"with wal_level={srv['settings'].get('wal_level')} `SET TABLESPACE` writes every "
                                "page to the WAL as well as to the new file, then fsyncs the file",
    }
    vacuum_notes = {
        tiering.ONLINE: "ANALYZE of each shadow, VACUUM (FREEZE, ANALYZE) of the cold one, both before the swap and "
                        "paced with vacuum_cost_delay/limit to the copy's rate",
        tiering.SET_TABLESPACE: "VACUUM (FREEZE, ANALYZE) of the cold month after its move, not paced",
    }
    leftover_lines = []
    for mode in modes:
        lo = mode["leftovers"]
        if lo["partition_moves"] or lo["tables"] or lo["triggers"]:
            leftover_lines.append(f"- Left behind after {mode['label']}: {lo['partition_moves']} rows in "
                                  f"tenant_pipelines.partition_moves, tables {lo['tables'] or 'none'}, "
                                  f"triggers {lo['triggers'] or 'none'}.")
    if not leftover_lines:
        leftover_lines = ["- Left behind after every mode: nothing (no row in tenant_pipelines.partition_moves, no "
                          "`tiering_move_*` table in schema tenant_pipelines, no capture trigger)."]
    out = [
        "# Benchmark: storage tiering" + (" of the pool" if p.get("pool") else ""),
        "",
        *h.generated_by(NAME, results),
        (f"**The pool** (`--pool`): {POOL_TENANTS} free tenants, pooled, share {p['rows']:,} usage events "
         f"spread evenly over three old months of the pool "
         f"({', '.join(f'{k} → {v}' for k, v in results['month_targets'].items())} at `as_of` = "
         f"{results['as_of']}), loaded, vacuumed (not frozen) and checkpointed. Each round tiers the pool with "
         "`tier_pool()`: odd rounds move the three months to warm and cold by the policy, even rounds back to hot "
         "(the warm and cold tiers pointed at the hot tablespace for that round), so every round moves the same "
         f"bytes. An inserter process writes {p['insert_rows']} rows per transaction, {p['insert_rate']:g} "
         "transactions/s, as the first of those tenants, into the pool's current month with "
         "`ingest_usage_events()` (billing_app, tenant context, RLS): the swap of a pool month locks the pool, "
         f"so this writer, like every pooled tenant's, waits for it. {p['rounds']} rounds per mode: baseline "
         "window, tiering, baseline, ..., baseline. Modes: " + "; ".join(mode["label"] for mode in modes) + "."
         if p.get("pool") else
         f"Per round, one enterprise tenant (monthly partitions) with {p['rows']:,} usage events spread evenly "
         f"over three old months ({', '.join(f'{k} → {v}' for k, v in results['month_targets'].items())} at "
         f"`as_of` = {results['as_of']}), loaded, vacuumed (not frozen) and checkpointed, is tiered with "
         "`tier_tenant()` while an inserter process writes "
         f"{p['insert_rows']} rows per transaction, {p['insert_rate']:g} transactions/s, into the same tenant's "
         "current month with `ingest_usage_events()` (billing_app, tenant context, RLS). "
         f"{p['rounds']} rounds per mode (a tiering method and the inserter's `synchronous_commit`), each on a "
         "fresh tenant: baseline window, tiering, baseline, tiering, ..., baseline. The modes ran one after the "
         "other: " + "; ".join(mode["label"] for mode in modes) + "."),
        "",
        "The methods (`tier_tenant(method=...)`):",
        "",
        f"- `{tiering.ONLINE}` (the default): copy-and-swap (sql/0014). A shadow copy of the month in the target "
        f"tablespace is filled in small batches, one short transaction each, committed asynchronously, with its "
        f"writes handed to the disk every {tiering.FLUSH_AFTER} (`backend_flush_after`), paced ({_pace_text(p)}); "
        "a trigger "
        "logs the keys of rows written meanwhile, which are copied again. Writers wait for a lock only while the "
        "trigger is created (the moved month's writers) and during the swap (DETACH the old table, ATTACH the copy: "
        "the tenant's writers).",
        f"- `{tiering.SET_TABLESPACE}`: `ALTER TABLE … SET TABLESPACE`, one transaction per month: a file copy at "
        "full disk speed, its WAL included, under ACCESS EXCLUSIVE on that month.",
        "",
        "## Targets",
        "",
        h.markdown_table(["Target", "Required", "Measured", "Result"], target_rows, "llll"),
        "",
        *verdicts(results),
        "",
        "Latency is counted from when each insert was due at the fixed rate, so a stall also counts "
        "for the inserts queued behind it; the service time (from when it started) is listed below too. "
        "A tiering window lasts as long as `tier_tenant()`: an online move is paced, so its windows are longer "
        "and hold more inserts.",
        "",
        "## Move throughput",
        "",
        h.markdown_table(["Method", "What", "MB/s", "Notes"], throughput_rows, "llrl"),
        "",
        *[f"- {method}: whole move vs plain copy of the same files: {s['mb_per_second'] / rel:.2g}×." if rel else
          f"- {method}: the relation files were not readable (remote server): only the random-file copy is a "
          "baseline." for method, s in by_method.items()],
        *[f"- WAL written by the {method} moves (their VACUUM/ANALYZE included): {h.mib(s['wal_bytes'])} for "
          f"{h.mib(s['bytes_moved'])} moved ({s['wal_bytes'] / s['bytes_moved']:.2f}×): "
          f"{wal_notes.get(method, '')}." for method, s in by_method.items()],
        "- What the plain copy means: the same bytes copied once, on the same filesystem, with no WAL and no "
        "locks: the floor under any move. The relation files and the moved partitions were loaded minutes "
        "before, on a machine with free memory, so both read from the page cache (caches cannot be dropped "
        "here); the random-file copy shows what reading from the disk costs.",
        *[f"- VACUUM / ANALYZE inside the {method} moves ({vacuum_notes.get(method, '')}): "
          + (", ".join(f"{v['to']} {v['seconds']:.2f}s" + (" (freeze)" if v["frozen"] else "")
                       for v in s["vacuum"]) or "not timed") + "."
          for method, s in by_method.items()],
        *[f"- Rows written to the old months during the online copies and copied again: {s['rows_caught_up']:,} "
          "(the inserter writes the current month only)." for method, s in by_method.items()
          if method == tiering.ONLINE],
        "",
        "## Time under lock",
        "",
        "Per move, `Move.lock_held_s`: the time from the start of the locking statement to the commit.",
        "",
        h.markdown_table(["Method", "Moves", "max ms", "median ms", "total ms", "max attempts", "What"], lock_rows,
                         "lrrrrrl"),
        "",
        *leftover_lines,
        "",
        "## Every tiering round",
        "",
        h.markdown_table(
            ["Method", "Sync commit", "Round", "Moves (to: MiB in s, lock ms)", "Whole move MB/s", "Working MB/s",
             "VACUUM/ANALYZE s", "tier_tenant s", "WAL", "Copy relation files MB/s", "Copy random file MB/s"],
            [[mode["method"], mode["synchronous_commit"], r["number"],
              "; ".join(f"{mv['to']}: {mv['bytes'] / h.MIB:,.0f} in {mv['seconds']:.2f}, "
                        f"{mv['lock_seconds'] * 1000:,.1f}" for mv in r["moves"]),
              _mbps(r["mb_per_second"]), _mbps(r["working_mb_per_second"]), _secs(r["vacuum_seconds"]),
              f"{r['seconds']:.2f}", h.mib(r["wal_bytes"]),
              _mbps(r["copies"]["relation_files"]["mb_per_second"] if r["copies"]["relation_files"] else None),
              _mbps(r["copies"]["random_file"]["mb_per_second"])]
             for mode in modes for r in mode["rounds"]],
            "llrlrrrrrrr",
        ),
        "",
        "## Insert latency",
        "",
        h.markdown_table(
            ["Method", "Sync commit", "Windows", "Inserts", "Failed", "p50 ms", "p99 ms", "max ms", "service p50",
             "service p99", "service max"],
            [[mode["method"], mode["synchronous_commit"], kind, f"{pool['inserts']:,}", pool["failed"],
              _ms(pool["p50_ms"]), _ms(pool["p99_ms"]), _ms(pool["max_ms"]), _ms(pool["service_p50_ms"]),
              _ms(pool["service_p99_ms"]), _ms(pool["service_max_ms"])]
             for mode in modes for kind, pool in mode["pooled"].items()],
            "lllrrrrrrrr",
        ),
        "",
        "Every window, in the order they ran:",
        "",
        h.markdown_table(
            ["Method", "Sync commit", "Window", "Seconds", "Inserts", "Failed", "p50 ms", "p99 ms", "max ms",
             "service p99"],
            [[mode["method"], mode["synchronous_commit"], f"{w['kind']} {w['round']}", f"{w['seconds']:.1f}",
              w["inserts"], w.get("failed", 0), _ms(w.get("p50_ms", 0)), _ms(w.get("p99_ms", 0)),
              _ms(w.get("max_ms", 0)), _ms(w.get("service_p99_ms", 0))]
             for mode in modes for w in mode["windows"]],
            "lllrrrrrrr",
        ),
        "",
    ]
    for mode in modes:
        if mode["insert_errors"]:
            out.append(f"- Failed inserts ({mode['label']}): "
                       + "; ".join(f"{e['at']:.1f}s: {e['error']}" for e in mode["insert_errors"][:5]))
    wrapped = sorted({w for mode in modes for r in mode["rounds"] for w in r["helpers_wrapped"]})
    out += [
        "",
        "## Set-up",
        "",
        *h.server_lines(srv, m, results["server_kind"], {**srv["settings"], **srv.get("wal", {})}),
        f"- Tiers: {', '.join(f'{k} = `{v}`' for k, v in results['tiers'].items())}; folders: "
        + ", ".join(f"{k} `{v}`" for k, v in results["folders"].items())
        + f"; same filesystem: {results['same_filesystem']}.",
        f"- Policy (enterprise): warm after {results['policy']['warm_after']}, cold after "
        f"{results['policy']['cold_after']}; `as_of` = {results['as_of']} (the current and later months are "
        "never movable: the inserter's month stays hot).",
        "- Data: generated by the server (`generate_series`) and streamed with COPY into `usage_events_mt` as "
        "the superuser; each tenant's first event went in before `ensure_tenant_partition()` so that its "
        "old months exist. Then `VACUUM (ANALYZE)` of the tenant (hint bits and visibility map set, as "
        "autovacuum would have done long before; tuples not frozen) and a CHECKPOINT.",
        f"- Windows: {p['baseline_seconds']:g}s baselines; a tiering window lasts as long as `tier_tenant()` "
        f"(the moves with their VACUUM/ANALYZE). Between windows (not measured): a CHECKPOINT, the "
        f"file-copy baselines, {SETTLE_S:g}s pause. The inserter ran {WARMUP_S:g}s before the first window.",
        f"- `tier_tenant()` was called with `method` = the mode's method and `pace = Pace(max_mb_per_s="
        f"{p['max_mb_per_s']!r}, batch_blocks={p['batch_blocks']})` (used by online moves only)"
        + (", and a `sleep` that times the pacer's sleeps. Phases timed by wrapping the module's helpers: "
           + ", ".join(f"`{w}`" for w in wrapped) + "." if wrapped else
           ". Phases (the pacer's sleeps, the block copy, the VACUUM/ANALYZE) from its `Move` records: "
           "`slept_s`, `copy_s`, `copy_bytes`, `vacuum_s`."),
        "- The tiering connection uses the server's synchronous_commit (on); the inserter's is the mode's.",
        "- Machine load before each mode's runs: "
        + "; ".join(f"{mode['label']}: {mode['load_before_cores']:.2f} cores" for mode in modes)
        + f" (waited up to {IDLE_WAIT_S:g}s for < {h.IDLE_LOAD}).",
        f"- Python process peak RSS: {h.mib(results['python_peak_rss_bytes'])}. Whole run: "
        f"{results['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------------


def _rate_arg(text: str) -> float | None:
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give MB/s as a number, or 'none' for no limit") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive rate, or 'none' for no limit")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(
        NAME, f"""Storage-tiering benchmark: tier_tenant() moves three old months of an enterprise tenant to the warm
and cold tablespaces by each method (online: paced copy-and-swap; set-tablespace: ALTER TABLE ...
SET TABLESPACE): MB/s over the whole move and without the pacer's sleeps, time under lock per move,
against plain file copies of the same size; while an inserter writes small batches into the same
tenant's current month (p50/p99/max latency with and without tiering). A mode is a (method, the
inserter's synchronous_commit) pair. Writes bench/results/tiering.json and
docs/benchmarks/tiering.md. Targets, per mode: no insert fails; p99 while tiering <=
{TARGET_P99_RATIO}x the baseline's.""",
    )
    parser.add_argument("--method", choices=(*tiering.METHODS, "both"), default="both",
                        help="how tier_tenant() moves the months: online (paced copy-and-swap, its default), "
                             "set-tablespace, or both one after the other in the same run (default)")
    parser.add_argument("--pace", dest="pace_method", choices=("fixed", "adaptive"), default="fixed",
                        help="online moves: the fixed pace (default: the figures of this page; bench/pacing.py "
                             "measures the adaptive one) or the adaptive one (--max-mb-per-s its ceiling)")
    parser.add_argument("--max-mb-per-s", type=_rate_arg, default=tiering.DEFAULT_MAX_MB_PER_S, metavar="X",
                        help="online moves: the pace, MB/s of the partition's heap ('none': no limit; default: "
                             f"{tiering.DEFAULT_MAX_MB_PER_S:g}, the core's)")
    h.add_numbers(
        parser,
        ("--batch-blocks", int, tiering.DEFAULT_BATCH_BLOCKS, "N",
         f"online moves: heap blocks copied per transaction (default: {tiering.DEFAULT_BATCH_BLOCKS}, the core's)"),
        ("--rows", int, 2_000_000, "N", "events per tiered tenant, over its three old months (default: 2,000,000)"),
        ("--rounds", int, 5, "R",
         "tiering rounds per mode (method and synchronous_commit), one fresh tenant each (default: 5)"),
        ("--baseline-seconds", float, 10.0, "S", "length of each baseline window (default: 10)"),
        ("--insert-rate", float, 100.0, "TPS", "inserter transactions per second (default: 100; keep it well under "
                                               "what one connection can commit, or a backlog builds)"),
        ("--insert-rows", int, 10, "K", "rows per inserter transaction (default: 10)"),
    )
    parser.add_argument("--synchronous-commit", choices=("on", "off", "both"), default="on",
                        help="the inserter's synchronous_commit: on (default), off, or both one after the other "
                             "(for each method)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting for the throwaway cluster, e.g. wal_buffers=64MB (repeatable; to "
                             "try what would soften the moves' effect on writers)")
    parser.add_argument("--pool", action="store_true",
                        help="tier the pool's months (pooled tenants, tier_pool()) instead of dedicated tenants': "
                             f"{POOL_TENANTS} free tenants share --rows; the rounds move the same three months, to "
                             "warm and cold and back to hot; writes tiering_pool.json and tiering_pool.md")
    h.add_output_options(parser, NAME, dsn_help=(
        "a superuser DSN of a PostgreSQL 15+ server whose storage_tiers name three existing tablespaces: the "
        "benchmark uses a scratch database there (default: a throwaway cluster in /tmp with "
        "hot_storage/warm_storage/cold_storage)"))
    args = parser.parse_args(argv)
    try:
        args.settings = dict(item.split("=", 1) for item in args.setting)
    except ValueError:
        parser.error("--setting takes NAME=VALUE")
    if args.settings and args.dsn:
        parser.error("--setting applies to the throwaway cluster only, not to --dsn")
    if args.rows < 1000 or args.rounds < 1 or args.insert_rate <= 0 or args.insert_rows < 1:
        parser.error("--rows >= 1000, --rounds >= 1, --insert-rate > 0, --insert-rows >= 1")
    if args.pool and args.method == "both" and args.rounds % 2:
        # The modes share the pool: an odd round count leaves its months in warm and cold, and
        # the next mode's first round would find nothing to move.
        parser.error("--pool with --method both needs an even --rounds (e.g. --rounds 4), so that each mode "
                     "leaves the pool's months back in hot for the next")
    try:
        args.pace = tiering.Pace(max_mb_per_s=args.max_mb_per_s, batch_blocks=args.batch_blocks, method=args.pace_method)
    except tiering.InvalidInput as exc:
        parser.error(str(exc))
    return args


def modes_of(args: argparse.Namespace) -> list[Mode]:
    methods = list(tiering.METHODS) if args.method == "both" else [args.method]
    commits = ["on", "off"] if args.synchronous_commit == "both" else [args.synchronous_commit]
    return [Mode(method, commit) for method in methods for commit in commits]


def command_line(args: argparse.Namespace) -> str:
    rate = "none" if args.max_mb_per_s is None else f"{args.max_mb_per_s:g}"
    parts = [f"--method {args.method}", f"--pace {args.pace_method}", f"--max-mb-per-s {rate}",
             f"--batch-blocks {args.batch_blocks}", f"--rows {args.rows}", f"--rounds {args.rounds}",
             f"--baseline-seconds {args.baseline_seconds:g}", f"--insert-rate {args.insert_rate:g}",
             f"--insert-rows {args.insert_rows}", f"--synchronous-commit {args.synchronous_commit}"]
    parts += [f"--setting {k}={v}" for k, v in args.settings.items()]
    if args.pool:
        parts.append("--pool")
    return h.command(NAME, parts, args.dsn)


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str, throwaway: bool) -> dict:
    started = time.perf_counter()
    with h.connect(dsn) as admin:
        h.migrate_scratch(admin, "")
        tiers = prepare_tablespaces(admin, throwaway)
        warm_after, cold_after = policy(admin)
        this_month = admin.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date").fetchone()[0]
        as_of = utc(this_month) + timedelta(days=AS_OF_DAY - 1)
        targets = month_targets(this_month, as_of, warm_after, cold_after)
        if sorted(targets.values()) != ["cold", "warm", "warm"]:
            raise SystemExit(f"the policy (warm after {warm_after}, cold after {cold_after}) gives {targets} at "
                             f"{as_of}: the benchmark expects one cold and two warm months")
        folders = {tier: tablespace_folder(admin, name) for tier, name in tiers.items()}
        data_dir = Path(admin.execute("SELECT current_setting('data_directory')").fetchone()[0])
        if h.local_backend_pid(admin) is None:
            data_dir, folders = None, {k: None for k in folders}
        ctx = {"as_of": as_of, "targets": targets, "tiers": tiers, "folders": folders, "data_dir": data_dir,
               "first": utc(h.add_months(this_month, -max(OLD_MONTHS))),
               "end": utc(h.add_months(this_month, -min(OLD_MONTHS) + 1)), "pace": args.pace}
        server = h.server_info(admin)
        server["wal"] = dict(admin.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (["wal_buffers", "wal_segment_size", "wal_writer_delay", "commit_delay"],)).fetchall())
        h.log(f"server: {server['version']}; as_of {as_of:%Y-%m-%d}: {targets}")
        results_modes = [run_mode(args, dsn, admin, mode, ctx) for mode in modes_of(args)]
        same_fs = next((r["copies"].get("same_filesystem") for m in results_modes for r in m["rounds"]), None)
    return {
        "benchmark": NAME, "command": command_line(args),
        "parameters": {k: getattr(args, k) for k in ("method", "max_mb_per_s", "batch_blocks", "rows", "rounds",
                                                     "baseline_seconds", "insert_rate", "insert_rows",
                                                     "synchronous_commit", "pool")},
        "machine": h.machine_info(), "server": server, "server_kind": server_kind,
        "tiers": tiers, "folders": {k: str(v) for k, v in folders.items()}, "same_filesystem": same_fs,
        "policy": {"warm_after": f"{warm_after.days} days", "cold_after": f"{cold_after.days} days"},
        "as_of": as_of.isoformat(), "month_targets": {f"{k:%Y-%m}": v for k, v in targets.items()},
        "modes": results_modes, "throughput": throughput_summary(results_modes),
        "python_peak_rss_bytes": h.python_peak_rss(), "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    extra = "; plus " + h.settings_text(args.settings) if args.settings else ""
    results = h.on_server(args.dsn, lambda dsn, kind, throwaway: benchmark(args, dsn, kind, throwaway),
                          scratch="bench_tiering", settings={k: f"'{v}'" for k, v in args.settings.items()},
                          throwaway_kind="throwaway cluster started by the benchmark (initdb defaults plus "
                                         "the project's BASE_SETTINGS; durable: fsync and "
                                         f"full_page_writes on{extra})")
    t = results["throughput"]
    summary = [f"{method}: moves {s['mb_per_second']:.1f} MB/s whole move, {s['working_mb_per_second']:.1f} MB/s "
               f"without the pacer's sleeps; under lock max {s['lock_max_seconds'] * 1000:.1f} ms, total "
               f"{s['lock_seconds'] * 1000:.1f} ms over {s['moves']} moves" for method, s in t["by_method"].items()]
    summary.append(f"plain copy of the relation files {_mbps(t['relation_files_mb_per_second'])} MB/s, random file "
                   f"from disk {t['random_file_mb_per_second']:.0f} MB/s")
    summary += [f"{mode['label']}: p99 baseline {mode['pooled']['baseline']['p99_ms']:.1f} ms, "
                f"tiering {mode['pooled']['tiering']['p99_ms']:.1f} ms = {mode['p99_ratio']:.2f}x "
                f"({'MET' if mode['targets']['p99_ratio'] else 'MISSED'}); failed inserts "
                f"{len(mode['insert_errors'])} ({'MET' if mode['targets']['no_failed_insert'] else 'MISSED'})"
                for mode in results["modes"]]
    return h.finish(NAME + "_pool" if args.pool else NAME, results, render_markdown(results), docs=not args.no_docs,
                    summary=summary)


if __name__ == "__main__":
    sys.exit(main())
