#!/usr/bin/env python
"""Benchmark: what a mover's copy costs writers, by rate and batch size (issue 20).

The adaptive pacer (tenant_pipelines/db/pacing.py) keeps a line of 1.2x the writers' baseline
p99 and, on this machine, ends up near its 128 KiB/s floor whenever writers are active
(docs/pacing.md). This asks the question under it without the pacer: at a fixed rate R and
batch size B, how much does a copy raise the p99 of writers committing 100 transactions a
second each? If no (R, B) at or above the fixed 1 MB/s keeps the writers within 1.2x, the
pacer's floor is the machine's answer, not a line drawn too strictly.

Set-up: two writers (each its own process, one INSERT of one row per transaction into a plain
table, synchronous_commit on, latency from when the insert was due), and a mover in this
process copying rows of a source table (~250 bytes each) into a target table, one transaction
per batch of B KiB, paced to R MB/s of heap. Windows alternate: a baseline (no mover), then
the mover at one (R, B), for every pair, --repeats times over. Each move window's p99 is
compared with the baseline window just before it (same minute, same noise); a CHECKPOINT and
an emptied target precede each pair (then 2 s unmeasured: the first writes after a checkpoint
log whole pages).

With --probe, one more arm: no copy, the adaptive pacer's probe transaction alone at its rate
(does the pacer's own measuring cost the writers?).

Run on demand:  python bench/pace_cost.py [--rates 1,4] [--batches 8,32,256,1024] [--probe]
                [--seconds 10] [--repeats 3] [--dsn DSN] [--no-docs]
Writes bench/results/pace_cost.json and docs/benchmarks/pace_cost.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
import tiering as tb  # noqa: E402  bench/tiering.py: the writers' latency summary of a window
from tenant_pipelines.db.pacing import PROBE_INTERVAL_S, probe  # noqa: E402

NAME = "pace_cost"
ROW_BYTES = 250  # the source rows' heap size, about (id, timestamptz, 192-character text, numeric)
SOURCE_ROWS = 600_000
WRITERS = 2
WRITER_RATE = 100.0
TARGET_RATIO = 1.2
SETTLE_S = 2.0
SETTINGS = {"max_wal_size": "8GB"}  # checkpoints only where the benchmark asks for one


def _write_loop(dsn: str, interval: float, tenant, stop, results) -> None:
    """One writer: an INSERT of one row per transaction, every ``interval`` seconds."""
    samples: list[tuple] = []
    errors: list[dict] = []
    conn = psycopg.connect(dsn)
    try:
        for due in h.paced(interval, stop):
            started = time.perf_counter()
            ok = True
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO pace_cost_writes (note) VALUES (repeat('w', 100))")
            except psycopg.Error as exc:
                ok = False
                errors.append({"at": started, "error": f"{type(exc).__name__}: {exc}"})
            samples.append((due, started, time.perf_counter(), ok))
    finally:
        conn.close()
        results.send((samples, errors))


def _probe(dsn: str, stop: threading.Event, out: dict) -> None:
    """No copy: the adaptive pacer's probe alone (db/pacing.py ``probe``, every
    ``PROBE_INTERVAL_S``): BEGIN, a transaction-local setting, a one-row upsert, COMMIT."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        probes, started = 0, time.perf_counter()
        while not stop.is_set():
            probe(conn, sql.Identifier("pace_cost_probes"))
            probes += 1
            stop.wait(PROBE_INTERVAL_S)
        seconds = time.perf_counter() - started
    out.update(seconds=seconds, batches=probes, commits_per_s=probes / seconds, mb_per_s=0.0)


def _copy(dsn: str, rate_mb: float, batch_kib: int, stop: threading.Event, out: dict) -> None:
    """The mover: INSERT ... SELECT of the next batch's rows, one transaction each, paced. Rate 0:
    the pacer's probe alone, no copy."""
    if rate_mb == 0:
        return _probe(dsn, stop, out)
    rows = max(1, batch_kib * 1024 // ROW_BYTES)
    with psycopg.connect(dsn, autocommit=True) as conn:
        first, copied, batches = 0, 0, 0
        started = time.perf_counter()
        while not stop.is_set():
            conn.execute("INSERT INTO pace_cost_target SELECT * FROM pace_cost_source WHERE id > %s AND id <= %s",
                         (first, first + rows))
            first = (first + rows) % (SOURCE_ROWS - rows)
            copied += rows * ROW_BYTES
            batches += 1
            wait = started + copied / (rate_mb * h.MIB) - time.perf_counter()
            if wait > 0:
                stop.wait(wait)
        seconds = time.perf_counter() - started
    out.update(seconds=seconds, batches=batches, commits_per_s=batches / seconds, mb_per_s=copied / h.MIB / seconds)


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    started = time.perf_counter()
    admin = h.connect(dsn)
    admin.execute("CREATE TABLE pace_cost_writes (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), note text)")
    admin.execute("CREATE TABLE pace_cost_source (id bigint PRIMARY KEY, at timestamptz, note text, amount numeric)")
    h.log(f"loading {SOURCE_ROWS:,} source rows")
    admin.execute("INSERT INTO pace_cost_source SELECT g, now(), repeat(md5(g::text), 6), g"
                  " FROM generate_series(1, %s) g", (SOURCE_ROWS,))
    admin.execute("CREATE TABLE pace_cost_target (LIKE pace_cost_source INCLUDING ALL)")
    admin.execute("CREATE TABLE pace_cost_probes (pid integer PRIMARY KEY, probed_at timestamptz)")
    admin.execute("VACUUM ANALYZE pace_cost_source")
    pairs = [(0.0, 0)] * args.probe + [(rate, batch) for rate in args.rates for batch in args.batches]
    load_before = h.wait_until_idle(timeout=args.idle_wait)
    writers = [h.WriterProcess(_write_loop, (dsn, 1.0 / WRITER_RATE), uuid.UUID(int=i), h.Sample, f"writer-{i}")
               for i in range(WRITERS)]
    windows: list[dict] = []
    for w in writers:
        w.start()
    try:
        time.sleep(2.0)  # connected and writing
        for repeat in range(args.repeats):
            for rate, batch in pairs:
                admin.execute("TRUNCATE pace_cost_target")
                admin.execute("CHECKPOINT")
                time.sleep(SETTLE_S)  # the writers' first writes after it log whole pages: not measured
                start = time.perf_counter()
                time.sleep(args.seconds)
                windows.append({"kind": "baseline", "repeat": repeat, "rate": rate, "batch_kib": batch,
                                "start": start, "end": time.perf_counter()})
                stop, mover = threading.Event(), {}
                thread = threading.Thread(target=_copy, args=(dsn, rate, batch, stop, mover))
                start = time.perf_counter()
                thread.start()
                time.sleep(args.seconds)
                stop.set()
                thread.join()
                windows.append({"kind": "move", "repeat": repeat, "rate": rate, "batch_kib": batch,
                                "start": start, "end": time.perf_counter(), "mover": mover})
                h.log(f"repeat {repeat + 1}/{args.repeats}: {_arm(rate, batch)}: "
                      f"{mover['mb_per_s']:.2f} MB/s, {mover['commits_per_s']:.0f} commits/s")
    finally:
        for w in writers:
            w.stop()
    samples = [s for w in writers for s in w.samples]
    for window in windows:
        window.update(tb.latency_summary(tb.in_window(samples, window)))
    results_by_pair = []
    for rate, batch in pairs:
        ratios, moved, based, mb, commits = [], [], [], [], []
        for repeat in range(args.repeats):
            base, move = (next(w for w in windows if w["kind"] == kind and w["repeat"] == repeat
                               and w["rate"] == rate and w["batch_kib"] == batch) for kind in ("baseline", "move"))
            ratios.append(move["p99_ms"] / base["p99_ms"])
            moved.append(move["p99_ms"])
            based.append(base["p99_ms"])
            mb.append(move["mover"]["mb_per_s"])
            commits.append(move["mover"]["commits_per_s"])
        results_by_pair.append({"rate": rate, "batch_kib": batch, "ratios": ratios,
                                "median_ratio": statistics.median(ratios), "move_p99_ms": moved,
                                "baseline_p99_ms": based, "mb_per_s": statistics.median(mb),
                                "commits_per_s": statistics.median(commits)})
    return {"benchmark": NAME, "command": command_line(args), "machine": h.machine_info(), "server_kind": server_kind,
            "server": h.server_info(admin), "parameters": {"rates": args.rates, "batches": args.batches,
                                                           "probe": args.probe,
                                                           "seconds": args.seconds, "repeats": args.repeats,
                                                           "writers": WRITERS, "writer_rate": WRITER_RATE},
            "load_before_cores": load_before, "windows": windows, "pairs": results_by_pair,
            "failed": sum(not s.ok for s in samples), "writer_errors": [e for w in writers for e in w.errors][:20],
            "seconds": time.perf_counter() - started}


def _arm(rate: float, batch: int) -> str:
    return (f"no copy, the pacer's probe alone ({1 / PROBE_INTERVAL_S:g}/s)" if rate == 0
            else f"{rate:g} MB/s in {batch} KiB batches")


def render_markdown(r: dict) -> str:
    p = r["parameters"]
    rows = [(f"{x['rate']:g}" if x["rate"] else "probe only", f"{x['batch_kib']:,}" if x["rate"] else "—",
             f"{x['commits_per_s']:.0f}", f"{x['mb_per_s']:.2f}",
             f"**{x['median_ratio']:.2f}×**", " / ".join(f"{v:.2f}" for v in x["ratios"]),
             " / ".join(f"{v:.1f}" for v in x["baseline_p99_ms"]), " / ".join(f"{v:.1f}" for v in x["move_p99_ms"]))
            for x in r["pairs"]]
    within = [x for x in r["pairs"] if x["median_ratio"] <= TARGET_RATIO and x["rate"]]
    probe = [x for x in r["pairs"] if not x["rate"]]
    verdict = ("No rate and batch size kept the writers' p99 within "
               f"{TARGET_RATIO}× of the baseline before it (median of {p['repeats']} repeats)."
               if not within else
               "Within " + f"{TARGET_RATIO}× (median of {p['repeats']} repeats): "
               + ", ".join(f"{x['rate']:g} MB/s in {x['batch_kib']} KiB batches ({x['median_ratio']:.2f}×)"
                           for x in within) + ".")
    if probe:
        verdict += (f" The pacer's probe alone ({probe[0]['commits_per_s']:.0f} write transactions/s, no copy): "
                    f"{probe[0]['median_ratio']:.2f}× (median).")
    lines = ["# What a mover's copy costs writers, by rate and batch size", ""]
    lines += h.generated_by(NAME, r)
    lines += h.section(
        "Set-up",
        "\n".join(h.server_lines(r["server"], r["machine"], r["server_kind"])
                  + [f"- Writers: {p['writers']} processes, {p['writer_rate']:g} transactions/s each, one INSERT of "
                     "one row per transaction, synchronous_commit on; latency from when each insert was due.",
                     f"- Mover: INSERT ... SELECT of ~{ROW_BYTES}-byte rows, one transaction per batch, paced to the "
                     "rate (MB/s of heap). *Probe only* (with --probe): no copy, the adaptive pacer's probe "
                     f"transaction every {PROBE_INTERVAL_S * 1000:g} ms (BEGIN, set_config local, a one-row upsert, "
                     "COMMIT), as db/pacing.py runs it beside every adaptive move.",
                     f"- Windows of {p['seconds']:g} s: a baseline, then the mover at one rate and batch size; every "
                     f"pair {p['repeats']} times, interleaved. Ratio = the move window's p99 over the baseline "
                     "window's just before it. A CHECKPOINT precedes each pair, then 2 s unmeasured.",
                     f"- Failed inserts: {r['failed']}."]))
    lines += h.section(
        "Results",
        h.markdown_table(["MB/s asked", "batch KiB", "commits/s", "MB/s done", "p99 ratio (median)",
                          "ratios per repeat", "baseline p99 ms", "move p99 ms"], rows, "rrrrrlll"),
        verdict)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, """What a mover's copy costs writers (issue 20): two 100 tx/s writers' p99 while rows are
copied at each --rates MB/s in each --batches KiB batch size, against a baseline window just before, every pair
--repeats times. Writes bench/results/pace_cost.json and docs/benchmarks/pace_cost.md.""")
    parser.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 4.0],
                        metavar="MB,MB", help="copy rates in MB/s of heap (default: 1,4)")
    parser.add_argument("--batches", type=h.parse_counts, default=[8, 32, 256, 1024], metavar="KIB,KIB",
                        help="batch sizes in KiB (default: 8,32,256,1024)")
    parser.add_argument("--probe", action="store_true",
                        help="one more arm: no copy, the adaptive pacer's probe alone (what the probes cost)")
    h.add_numbers(parser,
                  ("--seconds", float, 10.0, "S", "length of each window (default: 10)"),
                  ("--repeats", int, 3, "N", "how many times every pair runs (default: 3)"),
                  ("--idle-wait", float, 20.0, "S", "seconds to wait for an idle machine first (default: 20)"))
    h.add_output_options(parser, NAME)
    args = parser.parse_args(argv)
    h.positive(parser, args, ("repeats",))
    if args.seconds < 2 or any(rate <= 0 for rate in args.rates):
        parser.error("--seconds: at least 2; --rates: above 0")
    return args


def command_line(args: argparse.Namespace) -> str:
    return h.command(NAME, [f"--rates {','.join(f'{x:g}' for x in args.rates)}",
                            f"--batches {','.join(str(b) for b in args.batches)}",
                            f"--seconds {args.seconds:g}", f"--repeats {args.repeats}"]
                     + (["--probe"] if args.probe else []), args.dsn)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind), scratch="bench_pace_cost",
                          settings=SETTINGS,
                          throwaway_kind="throwaway cluster started by the benchmark (durable: fsync and "
                                         "full_page_writes on; max_wal_size=8GB)")
    summary = [f"{_arm(x['rate'], x['batch_kib'])}: p99 {x['median_ratio']:.2f}x" for x in results["pairs"]]
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
