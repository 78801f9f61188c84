#!/usr/bin/env python
"""Benchmark (diagnostic): which part of an online move costs a concurrent writer.

bench/tiering.py measures the whole of tier_tenant(); this takes a move apart. One enterprise
tenant gets three old months of usage events (loaded as bench/tiering.py loads them); an
inserter process (bench/tiering.py's: ingest_usage_events(), billing_app, tenant context, RLS,
``--insert-rate`` transactions/s of 10 rows) writes the tenant's current month throughout. In
turn, one window each, with no-load windows in between, the oldest month is copied the way
the online move's block copy copies it (INSERT ... SELECT by ctid range, ``--batch-blocks``
blocks per transaction, paced to ``--max-mb-per-s`` of heap, committed asynchronously, with
backend_flush_after), into a shadow table in warm_storage that has:

- ``heap``: no index;
- ``pk``, ``timestamp``, ``metric``: one of the partition's three indexes;
- ``indexes``: all three, with ON CONFLICT DO NOTHING: what tier_tenant()'s copy does;
- ``build``: no index during the copy (its window is ``build:heap``), then the three built by
  CREATE INDEX one after the other (window ``build:index``);

and ``file-copy``: the month's heap file copied by this process (pread, write, fdatasync per
batch, same pace): the floor, with no PostgreSQL work at all. ``none``: nothing runs.

Per window: the inserter's service time p50/p99 (from when each insert started), response
p99 and max (from when it was due), the WAL written and the shadow's size, per window and per
load with its ``--repeat`` windows pooled; the p99 ratios are against the no-load windows
pooled. Run on demand:

    .venv/bin/python bench/tiering_parts.py [--loads none,heap,...] [--repeat R] [--seconds S]
                                            [--max-mb-per-s X] [--batch-blocks N] [--rows N]
                                            [--setting NAME=VALUE] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
import tiering as bt  # noqa: E402  (bench/tiering.py: its loader and inserter)
from tenant_pipelines.core import tiering  # noqa: E402

NAME = "tiering_parts"
BLOCK = tiering.BLOCK
LOADS = ("none", "file-copy", "heap", "pk", "timestamp", "metric", "indexes", "build", "none")
ONE_INDEX = {"pk": 'organization_id, id, "timestamp"', "timestamp": '"timestamp" DESC',
             "metric": 'metric_name, "timestamp" DESC'}


def paced(pace: tiering.Pace, blocks: int, seconds: float, copy: Callable[[int, int], None]) -> float:
    """copy(first, last) over [0, blocks) in the move's paced batches, for at most ``seconds``.
    Returns the heap MB/s achieved."""
    started = time.monotonic()
    done = 0
    for first, last in tiering.paced_batches(blocks, pace):
        if time.monotonic() - started >= seconds:
            break
        copy(first, last)
        done = last
    return done * BLOCK / 1e6 / (time.monotonic() - started)


def make_shadow(work: psycopg.Connection, source: sql.Identifier, load: str) -> None:
    including = "INCLUDING ALL" if load == "indexes" else "INCLUDING DEFAULTS"
    work.execute(sql.SQL("CREATE TABLE bench_parts_shadow (LIKE {} " + including + ") TABLESPACE warm_storage")
                 .format(source))
    work.execute("ALTER TABLE bench_parts_shadow SET (autovacuum_enabled = off)")
    if load in ONE_INDEX:
        work.execute(sql.SQL("CREATE INDEX ON bench_parts_shadow (" + ONE_INDEX[load] + ") TABLESPACE warm_storage"))


def run_load(args: argparse.Namespace, admin: psycopg.Connection, work: psycopg.Connection, part: str,
             blocks: int, load: str) -> list[dict]:
    """One load; returns its window(s): start, end, heap MB/s and what it wrote."""
    source = sql.Identifier("public", part)
    if load not in ("none", "file-copy"):
        make_shadow(work, source, "heap" if load == "build" else load)
    conflict = " ON CONFLICT DO NOTHING" if load == "indexes" else ""
    insert = sql.SQL("INSERT INTO bench_parts_shadow SELECT * FROM {} WHERE ctid >= %s::tid AND ctid < %s::tid"
                     + conflict).format(source)

    def copy_rows(first: int, last: int) -> None:  # autocommitted, with the move's COPY_SETTINGS (below)
        work.execute(insert, (f"({first},0)", f"({last},0)"))

    pace = tiering.Pace(args.max_mb_per_s, args.batch_blocks)
    windows = []
    lsn = h.wal_lsn(admin)
    start = time.perf_counter()
    mbps = None
    if load == "none":
        time.sleep(args.seconds)
    elif load == "file-copy":
        data_dir = Path(admin.execute("SELECT current_setting('data_directory')").fetchone()[0])
        path = data_dir / admin.execute("SELECT pg_relation_filepath(%s)", (part,)).fetchone()[0]
        target = (bt.tablespace_folder(admin, "warm_storage") or data_dir) / "bench_parts_floor"
        src, dst = os.open(path, os.O_RDONLY), os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            def copy_file(first: int, last: int) -> None:
                os.write(dst, os.pread(src, (last - first) * BLOCK, first * BLOCK))
                os.fdatasync(dst)
            mbps = paced(pace, blocks, args.seconds, copy_file)
        finally:
            os.close(src)
            os.close(dst)
            target.unlink()
    else:
        with tiering.session_settings(work, tiering.COPY_SETTINGS):
            mbps = paced(pace, blocks, args.seconds, copy_rows)
    windows.append({"load": "build:heap" if load == "build" else load, "start": start, "end": time.perf_counter(),
                    "heap_mb_per_s": mbps, "wal_bytes": h.wal_bytes(admin, lsn)})
    if load == "build":
        lsn = h.wal_lsn(admin)
        start = time.perf_counter()
        work.execute("SET max_parallel_maintenance_workers = 0")  # one backend, as the mover is
        for columns in ONE_INDEX.values():
            work.execute(sql.SQL("CREATE INDEX ON bench_parts_shadow (" + columns + ") TABLESPACE warm_storage"))
        windows.append({"load": "build:index", "start": start, "end": time.perf_counter(), "heap_mb_per_s": None,
                        "wal_bytes": h.wal_bytes(admin, lsn)})
    size = None
    if load not in ("none", "file-copy"):
        size = admin.execute("SELECT pg_total_relation_size('bench_parts_shadow')").fetchone()[0]
        work.execute("DROP TABLE bench_parts_shadow")
    for w in windows:
        w["shadow_bytes"] = size
    return windows


def latency(samples: Sequence[bt.Sample], windows: list[dict]) -> dict:
    """bench/tiering.py's summary of the inserts due within ``windows``, with their length."""
    return {"seconds": sum(w["end"] - w["start"] for w in windows),
            **bt.latency_summary([s for w in windows for s in bt.in_window(samples, w)])}


def summarize(samples: Sequence[bt.Sample], windows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per window, and per load with its windows pooled; ratios against the `none` windows pooled."""
    rows = [{**w, **latency(samples, [w])} for w in windows]
    loads = list(dict.fromkeys(w["load"] for w in windows))
    pooled = []
    for load in loads:
        mine = [w for w in windows if w["load"] == load]
        rates = [w["heap_mb_per_s"] for w in mine if w["heap_mb_per_s"] is not None]
        sizes = [w["shadow_bytes"] for w in mine if w["shadow_bytes"] is not None]
        pooled.append({"load": load, "windows": len(mine), **latency(samples, mine),
                       "heap_mb_per_s": sum(rates) / len(rates) if rates else None,
                       "wal_bytes": sum(w["wal_bytes"] for w in mine) // len(mine),
                       "shadow_bytes": sum(sizes) // len(sizes) if sizes else None})
    base = next(p for p in pooled if p["load"] == "none")
    for r in rows + pooled:
        r["service_p99_ratio"] = r["service_p99_ms"] / base["service_p99_ms"]
        r["p99_ratio"] = r["p99_ms"] / base["p99_ms"]
    return rows, pooled


def benchmark(args: argparse.Namespace, dsn: str) -> dict:
    started = time.perf_counter()
    with h.connect(dsn) as admin, h.connect(dsn) as work:
        h.migrate_scratch(admin)
        bt.prepare_tablespaces(admin, True)
        this_month = admin.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date").fetchone()[0]
        first = bt.utc(h.add_months(this_month, -max(bt.OLD_MONTHS)))
        end = bt.utc(h.add_months(this_month, -min(bt.OLD_MONTHS) + 1))
        tenant = bt.create_tenants(admin, 1, "tiering parts")[0]
        with h.connect(dsn) as source:
            load = bt.load_tenant(admin, source, tenant, args.rows, first, end)
        bt.vacuum_tenant(admin, tenant)
        part = bt.month_name(tenant, h.add_months(this_month, -max(bt.OLD_MONTHS)))
        blocks, total = admin.execute("SELECT pg_relation_size(%s) / %s, pg_total_relation_size(%s)",
                                      (part, BLOCK, part)).fetchone()
        h.log(f"loaded {load['rows']:,} rows; copying {part}: {blocks:,} blocks of heap, {h.mib(total)} with indexes")
        inserter = bt.Inserter(dsn, "on", args.insert_rate, 10, tenant)
        windows: list[dict] = []
        inserter.start()
        try:
            time.sleep(bt.WARMUP_S)
            for repeat in range(1, args.repeat + 1):
                for load_name in args.loads:
                    admin.execute("CHECKPOINT")
                    time.sleep(2)
                    for w in run_load(args, admin, work, part, blocks, load_name):
                        windows.append({**w, "repeat": repeat})
                    h.log(f"{load_name} ({repeat} of {args.repeat}): done")
        finally:
            inserter.stop()
        rows, pooled = summarize(inserter.samples, windows)
        server = h.server_info(admin)
    return {"benchmark": NAME, "parameters": {k: getattr(args, k) for k in
                                              ("loads", "repeat", "seconds", "max_mb_per_s", "batch_blocks", "rows",
                                               "insert_rate", "settings")},
            "partition": {"name": part, "heap_bytes": blocks * BLOCK, "total_bytes": total},
            "machine": h.machine_info(), "server": server, "loads": pooled, "windows": rows,
            "seconds": time.perf_counter() - started}


def _table(rows: list[dict], first: str, label: Callable[[dict], str]) -> str:
    return h.markdown_table(
        [first, "Seconds", "Heap MB/s", "WAL", "Shadow", "Inserts", "Failed", "service p50 ms", "service p99 ms",
         "service p99 ×", "p99 ms", "p99 ×", "max ms"],
        [[label(w), f"{w['seconds']:.1f}", "" if w["heap_mb_per_s"] is None else f"{w['heap_mb_per_s']:.1f}",
          h.mib(w["wal_bytes"]), "" if w["shadow_bytes"] is None else h.mib(w["shadow_bytes"]), w["inserts"],
          w["failed"], f"{w['service_p50_ms']:.2f}", f"{w['service_p99_ms']:.2f}", f"{w['service_p99_ratio']:.2f}",
          f"{w['p99_ms']:.2f}", f"{w['p99_ratio']:.2f}", f"{w['max_ms']:.1f}"] for w in rows],
        "lrrrrrrrrrrrr")


def render_markdown(r: dict) -> str:
    p, part = r["parameters"], r["partition"]
    table = (_table(r["loads"], "Load (windows pooled)", lambda w: f"{w['load']} ({w['windows']})")
             + "\n\nEvery window, in the order they ran (WAL per window; per load above, the mean):\n\n"
             + _table(r["windows"], "Window", lambda w: f"{w['load']} #{w['repeat']}"))
    settings = ", ".join(f"{k}={v}" for k, v in p["settings"].items()) or "none"
    return "\n".join([
        "# Benchmark: which part of an online move costs a writer",
        "",
        f"Generated by `bench/tiering_parts.py` (see its docstring and [bench/README.md](../../bench/README.md)). "
        f"Loads, one window each, in this order: {', '.join(p['loads'])}, {p['repeat']} times over; "
        f"{p['seconds']:.0f}s at most per window, "
        f"{p['max_mb_per_s']:g} MB/s of heap, {p['batch_blocks']} blocks per transaction; extra server settings: "
        f"{settings}.",
        "",
        f"The copied month: `{part['name']}`, {h.mib(part['heap_bytes'])} of heap, {h.mib(part['total_bytes'])} "
        f"with its three indexes (one tenant, {p['rows']:,} events over three months). The inserter writes 10 rows "
        f"per transaction, {p['insert_rate']:g} transactions/s, into the same tenant's current month throughout. "
        "The ratios are against the `none` windows pooled; the target of the tiering issue is p99 within 1.2×.",
        "",
        table,
        "",
        f"- Machine: {r['machine'].get('cores', '?')} cores; {r['server']['version']}",
        f"- Whole run: {r['seconds'] / 60:.1f} min.",
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, __doc__.split("\n\n")[0], raw=True)
    parser.add_argument("--loads", default=",".join(LOADS), metavar="L,L,...",
                        help=f"windows in order, from: {', '.join(sorted(set(LOADS)))} (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=15.0, metavar="S", help="at most S seconds per window")
    parser.add_argument("--repeat", type=int, default=2, metavar="R",
                        help="run the --loads sequence R times; each load's windows are pooled (default: %(default)s)")
    parser.add_argument("--max-mb-per-s", type=float, default=tiering.DEFAULT_MAX_MB_PER_S, metavar="X",
                        help="pace of every copy, MB/s of heap (default: tiering's, %(default)s)")
    parser.add_argument("--batch-blocks", type=int, default=tiering.DEFAULT_BATCH_BLOCKS, metavar="N",
                        help="blocks per copy transaction (default: tiering's, %(default)s)")
    parser.add_argument("--rows", type=int, default=2_000_000, metavar="N", help="events over the three months")
    parser.add_argument("--insert-rate", type=float, default=100.0, metavar="TPS")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra server setting for the throwaway cluster (repeatable)")
    h.add_output_options(parser, NAME, dsn_help="")  # no --dsn: the loads need the throwaway cluster's tablespaces
    args = parser.parse_args(argv)
    args.loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    unknown = sorted(set(args.loads) - set(LOADS))
    if unknown or "none" not in args.loads:
        parser.error(f"--loads: unknown {unknown}" if unknown else "--loads needs at least one 'none' window")
    try:
        args.settings = dict(s.split("=", 1) for s in args.setting)
    except ValueError:
        parser.error("--setting takes NAME=VALUE")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = h.on_server(None, lambda dsn, _kind, _throwaway: benchmark(args, dsn), scratch="bench_tiering_parts",
                          settings={k: f"'{v}'" for k, v in args.settings.items()}, throwaway_kind="")
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{w['load']:12} service p99 {w['service_p99_ms']:.2f} ms ({w['service_p99_ratio']:.2f}x), "
        f"p99 {w['p99_ms']:.2f} ms ({w['p99_ratio']:.2f}x), WAL {h.mib(w['wal_bytes'])}" for w in results["loads"]])


if __name__ == "__main__":
    sys.exit(main())
