#!/usr/bin/env python
"""Benchmark: the adaptive pace of online tiering (issue 20) against the fixed one, same run.

Each scenario tiers fresh enterprise tenants (three old months each; --rows events for the
idle scenario, --fixed-rows for the fixed pace's, --writer-rows for the adaptive ones with writers,
loaded like bench/tiering.py's) with ``tier_tenant()`` online, while inserters
(bench/tiering.py's: ingest_usage_events as billing_app, a process of their own, latency from
when each insert was due) write into the tenants' current months. Windows: baseline (no move),
move, baseline. The p99 of the move window is compared with the p99 of both baselines.

Scenarios:

1. ``idle``: no writer; adaptive. MB/s against a plain copy of the same relation files
   (shutil.copyfile + fsync onto the target tablespace's filesystem). Target: at least 0.5x.
2. ``100 tps, fixed``: the fixed pace of today (1 MB/s in 32 KiB batches), on a smaller tenant
   (--fixed-rows): its MB/s is the fixed rate whatever the size.
3. ``100 tps, adaptive``: p99 within 1.2x, 0 failed inserts, MB/s against scenario 2's (at
   least 3x). Scenarios 2 and 3 run --repeat times (3), interleaved, each on a fresh tenant,
   and are judged on their medians: one window of each is inside this machine's noise.
4. ``heavy writer, adaptive``: an inserter at --heavy-rate transactions per second (1,000 by
   default), or 70% of what one inserter sustained in a calibration run if that is lower.
   Targets: p99 within 1.2x, 0 failed.
5. ``two moves, adaptive``: two tenants tiered at once (two connections, as two runs in the
   Dagster pool ``tiering``), each with its own 100 tps inserter. The same targets.

Run on demand:  python bench/pacing.py [--rows N] [--fixed-rows N] [--baseline-seconds S] [--repeat N]
                [--heavy-rate TPS] [--dsn DSN] [--no-docs]
Writes bench/results/pacing.json and docs/benchmarks/pacing.md.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
import tiering as tb  # noqa: E402  bench/tiering.py: tenants, loading, the inserter, file copies
from tenant_pipelines.core import tiering  # noqa: E402
from tenant_pipelines.db.pacing import Pace  # noqa: E402

NAME = "pacing"
TARGET_P99_RATIO = 1.2
TARGET_IDLE_VS_COPY = 0.5
TARGET_VS_FIXED = 3.0
MET = ("MET", "MISSED")
CALIBRATION_S = 5.0
HEADROOM = 0.7  # the heavy writer runs at this share of what one inserter sustained


def load(args, dsn: str, admin: psycopg.Connection, ctx: dict, label: str, count: int, rows: int) -> list[uuid.UUID]:
    tenants = tb.create_tenants(admin, count, label)
    with h.connect(dsn) as source:
        for tenant in tenants:
            tb.load_tenant(admin, source, tenant, rows, ctx["first"], ctx["end"])
            tb.vacuum_tenant(admin, tenant)
    h.log(f"{label}: loaded {count} tenant(s) of {rows:,} rows")
    return tenants


def old_months(admin: psycopg.Connection, tenant: uuid.UUID, ctx: dict) -> list[str]:
    return [p["partition"] for p in tb.month_partitions(admin, tenant, list(ctx["targets"]))]


def tier(dsn: str, tenant: uuid.UUID, ctx: dict, pace: Pace, out: dict) -> None:
    """tier_tenant() on a connection of its own; its figures into ``out``."""
    with h.connect(dsn) as conn:
        started = time.perf_counter()
        report = tiering.tier_tenant(conn, tenant, as_of=ctx["as_of"], pace=pace)
        seconds = time.perf_counter() - started
    if report.misplaced_left or len(report.moves) != len(ctx["targets"]):
        raise SystemExit(f"tenant {tenant}: {len(report.moves)} moves, {report.misplaced_left} misplaced left")
    p = report.pace
    out.update({
        "tenant": str(tenant), "seconds": seconds, "bytes_moved": report.bytes_moved,
        "copy_bytes": sum(m.copy_bytes or 0 for m in report.moves),
        "copy_seconds": sum(m.copy_s or 0 for m in report.moves),
        "mb_per_second": report.bytes_moved / h.MIB / seconds,
        "lock_max_ms": max(m.lock_held_s for m in report.moves) * 1000,
        "pace": p.summary() if p else None,
        "timeline": p.timeline_rows(40) if p else [],
        "slowdowns": [{"at_s": s.at_s, "reason": s.reason, "from_mb_s": s.from_mb_s, "to_mb_s": s.to_mb_s}
                      for s in (p.slowdowns if p else [])],
    })


def scenario(args, dsn: str, admin: psycopg.Connection, ctx: dict, name: str, tenants: list[uuid.UUID],
             pace: Pace, rate: float | None, kind: str | None = None) -> dict:
    """Baseline, the tenants tiered at once, baseline; an inserter per tenant at ``rate``
    (None: no writer)."""
    admin.execute("CHECKPOINT")
    load_before = h.wait_until_idle(timeout=tb.IDLE_WAIT_S)
    inserters = [tb.Inserter(dsn, "on", rate, args.insert_rows, t) for t in tenants] if rate else []
    copies = None
    if rate is None:
        parts = [p for t in tenants for p in old_months(admin, t, ctx)]
        copies = tb.file_copy_baselines(admin, parts, ctx["data_dir"], ctx["folders"]["hot"], ctx["folders"]["warm"])
        admin.execute("CHECKPOINT")
    windows: dict[str, list[tuple[float, float]]] = {"baseline": [], "move": []}
    moves = [dict() for _ in tenants]
    for w in inserters:
        w.start()
    try:
        if inserters:
            time.sleep(tb.WARMUP_S)
            start = time.perf_counter()
            time.sleep(args.baseline_seconds)
            windows["baseline"].append((start, time.perf_counter()))
        h.log(f"{name}: moving {len(tenants)} tenant(s), {pace.describe()}")
        start = time.perf_counter()
        threads = [threading.Thread(target=tier, args=(dsn, t, ctx, pace, out)) for t, out in zip(tenants, moves)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        windows["move"].append((start, time.perf_counter()))
        if inserters:
            start = time.perf_counter()
            time.sleep(args.baseline_seconds)
            windows["baseline"].append((start, time.perf_counter()))
    finally:
        for w in inserters:
            w.stop()
    if any(not m for m in moves):
        raise SystemExit(f"{name}: a move failed (see above)")
    writers = []
    for w in inserters:
        def within(kind: str) -> list:
            return [s for s in w.samples for a, b in windows[kind] if a <= s.scheduled < b]
        base, move = tb.latency_summary(within("baseline")), tb.latency_summary(within("move"))
        writers.append({"tenant": str(w.tenant), "baseline": base, "move": move,
                        "p99_ratio": move["p99_ms"] / base["p99_ms"], "errors": w.errors,
                        "inserts": len(w.samples)})
    seconds = windows["move"][0][1] - windows["move"][0][0]
    moved = sum(m["bytes_moved"] for m in moves)
    result = {"name": name, "kind": kind or name, "pace": pace.describe(), "rate_tps": rate, "tenants": len(tenants),
              "load_before_cores": load_before, "moves": moves, "writers": writers, "seconds": seconds,
              "bytes_moved": moved, "mb_per_second": moved / h.MIB / seconds, "copies": copies}
    h.log(f"{name}: {h.mib(moved)} in {seconds:.1f}s = {result['mb_per_second']:.1f} MB/s; " + "; ".join(
        f"p99 {w['baseline']['p99_ms']:.1f} -> {w['move']['p99_ms']:.1f} ms = {w['p99_ratio']:.2f}x, "
        f"{len(w['errors'])} failed" for w in writers))
    return result


def calibrate(dsn: str, args, tenant: uuid.UUID) -> dict:
    """What one inserter sustains at --heavy-rate: the rate the heavy scenario uses."""
    w = tb.Inserter(dsn, "on", args.heavy_rate, args.insert_rows, tenant)
    w.start()
    time.sleep(CALIBRATION_S)
    w.stop()
    achieved = len(w.samples) / CALIBRATION_S
    use = min(args.heavy_rate, round(HEADROOM * achieved))  # a writer at its limit only measures its backlog
    h.log(f"calibration: asked {args.heavy_rate:g} tx/s, sustained {achieved:.0f}; the heavy writer runs at {use:g}")
    return {"asked": args.heavy_rate, "sustained": achieved, "used": use}


def benchmark(args, dsn: str, server_kind: str, throwaway: bool) -> dict:
    started = time.perf_counter()
    with h.connect(dsn) as admin:
        h.migrate_scratch(admin, "")
        tiers = tb.prepare_tablespaces(admin, throwaway)
        warm_after, cold_after = tb.policy(admin)
        this_month = admin.execute("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date").fetchone()[0]
        as_of = tb.utc(this_month) + timedelta(days=tb.AS_OF_DAY - 1)
        targets = tb.month_targets(this_month, as_of, warm_after, cold_after)
        folders = {tier_: tb.tablespace_folder(admin, name) for tier_, name in tiers.items()}
        data_dir = Path(admin.execute("SELECT current_setting('data_directory')").fetchone()[0])
        ctx = {"as_of": as_of, "targets": targets, "folders": folders, "data_dir": data_dir,
               "first": tb.utc(h.add_months(this_month, -max(tb.OLD_MONTHS))),
               "end": tb.utc(h.add_months(this_month, -min(tb.OLD_MONTHS) + 1))}
        server = h.server_info(admin)
        adaptive, fixed = Pace(), Pace.fixed()
        runs = []
        runs.append(scenario(args, dsn, admin, ctx, "idle, adaptive",
                             load(args, dsn, admin, ctx, "idle", 1, args.rows), adaptive, None))
        # One window of each is inside this machine's noise (the same setting measured 0.94x,
        # 1.08x and 1.35x in three runs): --repeat pairs, interleaved, judged on their medians.
        for i in range(1, args.repeat + 1):
            suffix = f" #{i}" if args.repeat > 1 else ""
            runs.append(scenario(args, dsn, admin, ctx, f"100 tps, fixed{suffix}",
                                 load(args, dsn, admin, ctx, "fixed", 1, args.fixed_rows), fixed, args.insert_rate,
                                 kind="fixed"))
            runs.append(scenario(args, dsn, admin, ctx, f"100 tps, adaptive{suffix}",
                                 load(args, dsn, admin, ctx, "adaptive", 1, args.writer_rows), adaptive,
                                 args.insert_rate, kind="adaptive"))
        heavy_tenants = load(args, dsn, admin, ctx, "heavy", 1, args.writer_rows)
        calibration = calibrate(dsn, args, heavy_tenants[0])
        runs.append(scenario(args, dsn, admin, ctx, f"{calibration['used']:g} tps, adaptive",
                             heavy_tenants, adaptive, calibration["used"]))
        runs.append(scenario(args, dsn, admin, ctx, "two moves at once, 100 tps each, adaptive",
                             load(args, dsn, admin, ctx, "two", 2, args.writer_rows), adaptive, args.insert_rate))
        leftovers = tb.move_leftovers(admin)
    return {"benchmark": NAME, "command": h.command(NAME, [f"--rows {args.rows}", f"--fixed-rows {args.fixed_rows}", f"--writer-rows {args.writer_rows}",
                                                           f"--baseline-seconds {args.baseline_seconds:g}",
                                                           f"--heavy-rate {args.heavy_rate:g}",
                                                           f"--repeat {args.repeat}"], args.dsn),
            "parameters": {k: getattr(args, k) for k in ("rows", "fixed_rows", "writer_rows", "baseline_seconds", "insert_rate",
                                                         "insert_rows", "heavy_rate", "repeat")},
            "machine": h.machine_info(), "server": server, "server_kind": server_kind,
            "calibration": calibration, "runs": runs, "leftovers": leftovers,
            "targets": targets_of(runs), "seconds": time.perf_counter() - started}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def targets_of(runs: list[dict]) -> list[dict]:
    idle = next(r for r in runs if r.get("kind", r["name"]).startswith("idle"))
    fixed = [r for r in runs if r.get("kind") == "fixed"] or [runs[1]]
    adaptive = [r for r in runs if r.get("kind") == "adaptive"] or [runs[2]]
    others = [r for r in runs if r is not idle and r not in fixed and r not in adaptive]
    out = []
    copy = (idle["copies"] or {}).get("relation_files") or {}
    if copy:
        ratio = idle["mb_per_second"] / copy["mb_per_second"]
        out.append({"target": f"No writer: MB/s ≥ {TARGET_IDLE_VS_COPY}× a plain copy of the same files",
                    "measured": f"{idle['mb_per_second']:.1f} vs {copy['mb_per_second']:.1f} MB/s = {ratio:.2f}×",
                    "met": ratio >= TARGET_IDLE_VS_COPY})
    for label, group in (("100 tps, fixed", fixed), ("100 tps, adaptive", adaptive)):
        ratios = [w["p99_ratio"] for run in group for w in run["writers"]]
        median = _median(ratios)
        each = ", ".join(f"{x:.2f}×" for x in ratios)
        out.append({"target": f"{label}: writer p99 ≤ {TARGET_P99_RATIO}× baseline"
                              + (f" (median of {len(ratios)} runs)" if len(ratios) > 1 else ""),
                    "measured": (f"{median:.2f}× ({each})" if len(ratios) > 1 else
                                 f"{group[0]['writers'][0]['baseline']['p99_ms']:.1f} → "
                                 f"{group[0]['writers'][0]['move']['p99_ms']:.1f} ms = {median:.2f}×"),
                    "met": median <= TARGET_P99_RATIO})
        failed = sum(len(w["errors"]) for run in group for w in run["writers"])
        inserts = sum(w["inserts"] for run in group for w in run["writers"])
        out.append({"target": f"{label}: 0 failed inserts", "measured": f"{failed} of {inserts:,}", "met": not failed})
    for run in others:
        for w in run["writers"]:
            out.append({"target": f"{run['name']}: writer p99 ≤ {TARGET_P99_RATIO}× baseline",
                        "measured": f"{w['baseline']['p99_ms']:.1f} → {w['move']['p99_ms']:.1f} ms = "
                                    f"{w['p99_ratio']:.2f}×", "met": w["p99_ratio"] <= TARGET_P99_RATIO})
            out.append({"target": f"{run['name']}: 0 failed inserts",
                        "measured": f"{len(w['errors'])} of {w['inserts']:,}", "met": not w["errors"]})
    fixed_mb = _median([r["mb_per_second"] for r in fixed])
    adaptive_mb = _median([r["mb_per_second"] for r in adaptive])
    ratio = adaptive_mb / fixed_mb
    out.append({"target": f"100 tps: adaptive MB/s ≥ {TARGET_VS_FIXED}× the fixed pace's"
                          + (" (medians)" if len(fixed) > 1 else ""),
                "measured": f"{adaptive_mb:.2f} vs {fixed_mb:.2f} MB/s = {ratio:.1f}×",
                "met": ratio >= TARGET_VS_FIXED})
    for run in others:
        out.append({"target": f"{run['name']}: MB/s (no target)", "measured": f"{run['mb_per_second']:.2f} MB/s",
                    "met": None})
    return out


def render_markdown(r: dict) -> str:
    lines = ["# Benchmark: the adaptive pace of online moves (issue 20)", ""]
    lines += h.generated_by(NAME, r)
    lines += h.server_lines(r["server"], r["machine"], r["server_kind"])
    lines += ["", "## Targets", "", h.markdown_table(
        ["Target", "Measured", ""],
        [[t["target"], t["measured"], "—" if t["met"] is None else h.verdict(t["met"], MET)] for t in r["targets"]]), ""]
    lines += ["## Scenarios", "", h.markdown_table(
        ["Scenario", "Pace", "Writers", "Moved", "Seconds", "MB/s", "Writer p99 baseline → move (ms)", "Failed",
         "Slowdowns", "Probe commits (over the line)"],
        [[run["name"], run["pace"], "none" if not run["rate_tps"] else f"{len(run['writers'])} × {run['rate_tps']:g} tx/s",
          h.mib(run["bytes_moved"]), f"{run['seconds']:.1f}", f"{run['mb_per_second']:.2f}",
          ", ".join(f"{w['baseline']['p99_ms']:.1f} → {w['move']['p99_ms']:.1f}" for w in run["writers"]) or "—",
          sum(len(w["errors"]) for w in run["writers"]),
          sum((m["pace"] or {}).get("slowdowns", 0) for m in run["moves"]),
          ", ".join(f"{(m['pace'] or {}).get('probe_commits', 0)} ({(m['pace'] or {}).get('probes_over_line', 0)})"
                    for m in run["moves"])] for run in r["runs"]]), ""]
    c = r["calibration"]
    lines += [f"Heavy writer: one inserter asked for {c['asked']:g} tx/s sustained {c['sustained']:.0f} "
              f"(calibration, {CALIBRATION_S:g} s); the scenario ran it at {c['used']:g}.", ""]
    for run in r["runs"]:
        for m in run["moves"]:
            if not m["timeline"]:
                continue
            lines += [f"### Pace over time: {run['name']}, tenant {m['tenant'][:8]}", ""]
            pace = m["pace"] or {}
            lines += [f"Writers' baseline p99 commit {pace.get('writers_baseline_p99_ms')} ms, line "
                      f"{pace.get('writers_line_ms')} ms; probe p99 during the move {pace.get('probe_p99_ms')} ms; "
                      f"paused {pace.get('pace_paused_for_baseline_s')} s to measure the baseline.", ""]
            lines.append(h.markdown_table(
                ["at s", "limit MB/s", "MB/s", "batch KiB", "writers", "probe p99 ms", "over the line"],
                [[row["at_s"], "none" if row["limit_mb_s"] is None else row["limit_mb_s"], row["mb_s"],
                  row["batch_kib"], "yes" if row["writers"] else "no",
                  "—" if row["probe_p99_ms"] is None else row["probe_p99_ms"], row["crossings"]]
                 for row in m["timeline"]]))
            if m["slowdowns"]:
                lines += ["", "Why it slowed down (first 8):", ""]
                lines += [f"- {s['at_s']:.1f} s: {s['reason']}" for s in m["slowdowns"][:8]]
            lines.append("")
    lines += ["## Leftovers", "", f"`{r['leftovers']}`", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, "Adaptive against fixed pace of online tiering, with and without writers "
                            "(bench/results/pacing.json, docs/benchmarks/pacing.md).")
    h.add_numbers(
        parser,
        ("--rows", int, 600_000, "N", "events of the idle scenario's tenant, over three old months (600,000)"),
        ("--writer-rows", int, 150_000, "N", "events per tenant of the adaptive scenarios with writers (150,000)"),
        ("--fixed-rows", int, 150_000, "N", "events of the fixed-pace scenario's tenant (150,000)"),
        ("--baseline-seconds", float, 10.0, "S", "each baseline window (10)"),
        ("--insert-rate", float, 100.0, "TPS", "the writers' transactions per second (100)"),
        ("--insert-rows", int, 10, "K", "rows per writer transaction (10)"),
        ("--heavy-rate", float, 1000.0, "TPS", "the heavy writer's transactions per second (1,000)"),
        ("--repeat", int, 3, "N", "runs of the 100 tps fixed and adaptive scenarios, interleaved; "
                                  "their targets are judged on the medians (3)"),
    )
    h.add_output_options(parser, NAME)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = h.on_server(args.dsn, lambda dsn, kind, throwaway: benchmark(args, dsn, kind, throwaway),
                          scratch="bench_pacing",
                          throwaway_kind="throwaway cluster started by the benchmark (durable: fsync and "
                                         "full_page_writes on)")
    summary = [f"{t['target']}: {t['measured']} ({'—' if t['met'] is None else MET[0 if t['met'] else 1]})"
               for t in results["targets"]]
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
