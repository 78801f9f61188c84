#!/usr/bin/env python
"""Benchmark: per-tenant backup (export to Parquet) and restore, against COPY of the same rows.

In the same run, on the same tenant:

* export: ``backup_tenant()`` (one snapshot, ADBC binary COPY into Arrow, exact decimals,
  content hash, Parquet with zstd, modular encryption, fsync, manifest, rename) against
  ``COPY (SELECT * FROM usage_events_mt WHERE organization_id = ...) TO STDOUT`` of the
  tenant's events by psql into /dev/null, binary (the floor) and text;
* restore: ``restore_tenant()`` into the live tables (checksums verified first, the tenant's
  partition truncated, every table loaded through ADBC in one transaction) against psql's
  ``COPY usage_events_mt FROM STDIN (FORMAT binary)`` of the same rows after the same TRUNCATE,
  in one transaction;
* memory: the peak RSS of the process that backs up (and restores) a tenant of each size,
  each in a fresh process: flat as the tenant grows is the target.

Targets (issue 5): export >= 0.8x the COPY TO floor, restore >= 0.8x COPY FROM, peak RSS flat.

Run on demand:  python bench/backups.py [--events 1000000,5000000] [--repeat 3] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402
from tenant_pipelines.settings import BACKUP_KEY_ENV  # noqa: E402
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.local.cluster import find_bindir  # noqa: E402

NAME = "backups"
TARGET_EXPORT = 0.8
TARGET_RESTORE = 0.8
RSS_FLAT_TOLERANCE = 1.25  # the largest tenant's peak RSS within 1.25x the smallest's
IDLE_WAIT = 30.0
KEY = base64.b64encode(bytes(range(32))).decode()


# -- the child processes: one backup or one restore, measured on their own -------------------------


def child(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.backups import backup_tenant, restore_tenant
    from tenant_pipelines.local.keys import load_master_key

    key = load_master_key(generate_dev_key=False)
    rss_before = h.python_peak_rss()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        started = time.perf_counter()
        if args.child == "backup":
            report = backup_tenant(conn, args.tenant, Path(args.root), master_key=key, apply_retention_after=False)
            seconds = time.perf_counter() - started
            out = {"seconds": seconds, "rows": report.rows, "bytes": report.bytes, "path": str(report.path),
                   "encrypted": report.encrypted}
        else:
            report = restore_tenant(conn, args.tenant, Path(args.backup), master_key=key)
            seconds = time.perf_counter() - started
            out = {"seconds": seconds, "rows": report.rows, "verify_seconds": report.verify_seconds,
                   "table_seconds": {t.table: t.seconds for t in report.tables}}
    out["rss_before_bytes"] = rss_before
    out["peak_rss_bytes"] = h.python_peak_rss()
    print(json.dumps(out))
    return 0


def run_child(kind: str, dsn: str, tenant: str, **extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--dsn", dsn, "--tenant", tenant]
    for k, v in extra.items():
        cmd += [f"--{k}", v]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, BACKUP_KEY_ENV: KEY}, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- baselines: psql, a C client, so that the floor is the server's and not Python's ---------------


def psql(dsn: str, args: list[str], stdout=subprocess.DEVNULL) -> float:
    started = time.perf_counter()
    subprocess.run([str(find_bindir() / "psql"), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
                   stdout=stdout, stderr=subprocess.PIPE, check=True, timeout=3600)
    return time.perf_counter() - started


def events_query(tenant: str) -> str:
    return f"SELECT * FROM usage_events_mt WHERE organization_id = '{uuid.UUID(tenant)}'::uuid"


def copy_to_devnull(dsn: str, tenant: str, fmt: str) -> float:
    return psql(dsn, ["-c", f"COPY ({events_query(tenant)}) TO STDOUT (FORMAT {fmt})"])


def copy_from_file(dsn: str, tenant: str, path: Path) -> float:
    """What a restore does, minus everything but the load: TRUNCATE the tenant's partition, COPY
    the same rows through usage_events_mt, in one transaction."""
    partition = "usage_events_mt_t_" + uuid.UUID(tenant).hex
    script = (f"BEGIN;\nTRUNCATE {partition};\n"
              f"\\copy usage_events_mt FROM '{path}' (FORMAT binary)\nCOMMIT;\n")
    started = time.perf_counter()
    subprocess.run([str(find_bindir() / "psql"), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                   input=script, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True, timeout=3600)
    return time.perf_counter() - started


# -- the tenants -----------------------------------------------------------------------------------


def make_tenant(conn: psycopg.Connection, events: int) -> str:
    """An enterprise tenant (split by month) with ``events`` usage events over 120 days, plus a
    few rows in each other table. Generated by the server: nothing held in Python."""
    tenant = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, f"bench {events}"))
        conn.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, 'enterprise')", (tenant,))
        conn.execute("INSERT INTO tenant_backup_config (organization_id) VALUES (%s)", (tenant,))
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status) SELECT %s, 'pro', 'active' FROM generate_series(1, 3)", (tenant,))
        conn.execute("INSERT INTO invoices (organization_id, amount, status) SELECT %s, g * 1234.567891, 'paid' "
                     "FROM generate_series(1, 100) g", (tenant,))
        conn.execute("INSERT INTO payment_methods (organization_id, kind, last4) VALUES (%s, 'card', '4242')", (tenant,))
    ensure_tenant_partition(conn, tenant)
    done = 0
    while done < events:  # in slices: one transaction of millions of rows would hold a lot of WAL
        n = min(1_000_000, events - done)
        conn.execute(
            """INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)
               SELECT %s, (ARRAY['api_calls','storage_gb','compute_seconds','bandwidth_gb'])[1 + g %% 4],
                      round((random() * 100000)::numeric, 6),
                      now() - random() * interval '120 days',
                      jsonb_build_object('region', (ARRAY['eu-west-1','us-east-1','ap-south-1'])[1 + g %% 3],
                                         'sdk', 'python', 'request', g)
                 FROM generate_series(%s::bigint, %s::bigint) g""",
            (tenant, done + 1, done + n),
        )
        done += n
        h.log(f"tenant of {events:,}: {done:,} events")
    conn.execute("VACUUM (ANALYZE) usage_events_mt")
    conn.execute("CHECKPOINT")
    return str(tenant)


# -- the benchmark ---------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str, root: Path) -> dict:
    sizes = sorted(args.events)
    with psycopg.connect(dsn, autocommit=True) as conn:
        h.migrate_scratch(conn)
        server = h.server_info(conn)
        tenants = {}
        for n in sizes:
            h.log(f"generating a tenant of {n:,} events")
            tenants[n] = make_tenant(conn, n)
        leaves = {n: conn.execute("SELECT count(DISTINCT tableoid) FROM usage_events_mt WHERE organization_id = %s",
                                  (tenants[n],)).fetchone()[0] for n in sizes}

    export_runs, restore_runs = [], []
    backups: dict[int, str] = {}
    for n in sizes:
        tenant = tenants[n]
        copy_to_devnull(dsn, tenant, "binary")  # warm-up: the same pages cached for every variant
        for round_ in range(args.repeat):
            order = ("copy_binary", "copy_text", "backup") if round_ % 2 == 0 else ("backup", "copy_text", "copy_binary")
            for variant in order:
                load = h.wait_until_idle(timeout=IDLE_WAIT)
                if variant == "backup":
                    result = run_child("backup", dsn, tenant, root=str(root))
                    if n in backups:
                        shutil.rmtree(backups[n], ignore_errors=True)
                    backups[n] = result["path"]
                    run = {"variant": variant, "seconds": result["seconds"], "rows": sum(result["rows"].values()),
                           "event_rows": result["rows"]["usage_events_mt"], "bytes": result["bytes"],
                           "peak_rss_bytes": result["peak_rss_bytes"], "rss_before_bytes": result["rss_before_bytes"]}
                else:
                    seconds = copy_to_devnull(dsn, tenant, variant.removeprefix("copy_"))
                    run = {"variant": variant, "seconds": seconds, "rows": n, "event_rows": n}
                run.update({"events": n, "round": round_ + 1, "load_at_start": load, "disturbed": load >= h.IDLE_LOAD})
                h.log(f"{n:,} events, {variant}: {run['seconds']:.2f}s ({run['event_rows'] / run['seconds']:,.0f} event rows/s)")
                export_runs.append(run)

    copy_file = root / "events.bin"
    for n in sizes:
        tenant = tenants[n]
        psql(dsn, ["-c", f"\\copy ({events_query(tenant)}) TO '{copy_file}' (FORMAT binary)"])
        for round_ in range(args.repeat):
            order = ("copy_from", "restore") if round_ % 2 == 0 else ("restore", "copy_from")
            for variant in order:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("CHECKPOINT")
                load = h.wait_until_idle(timeout=IDLE_WAIT)
                if variant == "restore":
                    result = run_child("restore", dsn, tenant, backup=backups[n])
                    run = {"variant": variant, "seconds": result["seconds"], "rows": sum(result["rows"].values()),
                           "event_rows": result["rows"]["usage_events_mt"], "verify_seconds": result["verify_seconds"],
                           "events_load_seconds": result["table_seconds"]["usage_events_mt"],
                           "peak_rss_bytes": result["peak_rss_bytes"], "rss_before_bytes": result["rss_before_bytes"]}
                else:
                    run = {"variant": variant, "seconds": copy_from_file(dsn, tenant, copy_file), "rows": n, "event_rows": n}
                run.update({"events": n, "round": round_ + 1, "load_at_start": load, "disturbed": load >= h.IDLE_LOAD})
                h.log(f"{n:,} events, {variant}: {run['seconds']:.2f}s ({run['event_rows'] / run['seconds']:,.0f} event rows/s)")
                restore_runs.append(run)
        copy_file.unlink(missing_ok=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            count = conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s", (tenant,)).fetchone()[0]
        assert count == n, f"the tenant of {n} has {count} events after the restores"

    return {
        "benchmark": NAME,
        "command": command_line(args),
        "parameters": {"events": sizes, "repeat": args.repeat},
        "machine": h.machine_info(),
        "server": server,
        "server_kind": server_kind,
        "month_partitions": leaves,
        "export_runs": export_runs,
        "restore_runs": restore_runs,
        "summary": summarize(sizes, export_runs, restore_runs),
    }


def _median_seconds(runs: list[dict], variant: str, n: int) -> float:
    chosen = [r for r in runs if r["variant"] == variant and r["events"] == n]
    calm = [r for r in chosen if not r["disturbed"]] or chosen
    return h.median(r["seconds"] for r in calm)


def summarize(sizes: list[int], export_runs: list[dict], restore_runs: list[dict]) -> dict:
    per_size = {}
    for n in sizes:
        binary, text, backup = (_median_seconds(export_runs, v, n) for v in ("copy_binary", "copy_text", "backup"))
        copy_from, restore = (_median_seconds(restore_runs, v, n) for v in ("copy_from", "restore"))
        peak_backup = max(r["peak_rss_bytes"] for r in export_runs if r["variant"] == "backup" and r["events"] == n)
        peak_restore = max(r["peak_rss_bytes"] for r in restore_runs if r["variant"] == "restore" and r["events"] == n)
        per_size[n] = {
            "copy_binary_rows_per_second": n / binary, "copy_text_rows_per_second": n / text,
            "backup_event_rows_per_second": n / backup,
            "export_ratio_vs_binary": binary / backup, "export_ratio_vs_text": text / backup,
            "copy_from_rows_per_second": n / copy_from, "restore_event_rows_per_second": n / restore,
            "restore_ratio": copy_from / restore,
            "backup_peak_rss_bytes": peak_backup, "restore_peak_rss_bytes": peak_restore,
        }
    largest, smallest = sizes[-1], sizes[0]
    rss_growth = per_size[largest]["backup_peak_rss_bytes"] / per_size[smallest]["backup_peak_rss_bytes"]
    restore_rss_growth = per_size[largest]["restore_peak_rss_bytes"] / per_size[smallest]["restore_peak_rss_bytes"]
    return {
        "per_size": per_size,
        "targets": {
            "export": {"required": TARGET_EXPORT, "measured": per_size[largest]["export_ratio_vs_binary"],
                       "pass": per_size[largest]["export_ratio_vs_binary"] >= TARGET_EXPORT},
            "restore": {"required": TARGET_RESTORE, "measured": per_size[largest]["restore_ratio"],
                        "pass": per_size[largest]["restore_ratio"] >= TARGET_RESTORE},
            "rss_flat": {"required": RSS_FLAT_TOLERANCE, "measured": max(rss_growth, restore_rss_growth),
                         "pass": max(rss_growth, restore_rss_growth) <= RSS_FLAT_TOLERANCE},
        },
    }


# -- the page --------------------------------------------------------------------------------------


LABELS = {"copy_binary": "psql COPY TO STDOUT, binary, > /dev/null", "copy_text": "psql COPY TO STDOUT, text, > /dev/null",
          "backup": "backup_tenant() (all 7 tables)", "copy_from": "psql COPY FROM STDIN, binary (after TRUNCATE)",
          "restore": "restore_tenant() into the live tables (all 7 tables)"}


def render_markdown(results: dict) -> str:
    s, m, srv = results["summary"], results["machine"], results["server"]
    sizes = results["parameters"]["events"]
    largest = sizes[-1]
    t = s["targets"]
    leaves = ", ".join(f"{results['month_partitions'][n]} leaf partitions" for n in sizes)
    out = [
        "# Benchmark: per-tenant backup and restore",
        "",
        *h.generated_by(NAME, results),
        f"One enterprise tenant per size ({', '.join(f'{n:,}' for n in sizes)} usage events over 120 days, in its "
        f"own partition split by month; the rows sit in {leaves}), plus a few "
        "rows in every other table. Each variant ran "
        f"{results['parameters']['repeat']} times per size in alternating order; the figures are medians over the runs "
        "that started on an idle machine (all runs when none did). Backups and restores run in a fresh process each, "
        "so that their peak RSS is their own. Rows/s counts the tenant's usage events (the other tables add "
        "about a hundred rows).",
        "",
        "## Targets",
        "",
        h.markdown_table(
            ["Target", "Required", "Measured", "Result"],
            [
                [f"Export of {largest:,} events vs binary COPY TO /dev/null", f"≥ {TARGET_EXPORT:.2f}×",
                 f"{t['export']['measured']:.2f}×", h.verdict(t["export"]["pass"])],
                [f"Restore of {largest:,} events vs binary COPY FROM STDIN", f"≥ {TARGET_RESTORE:.2f}×",
                 f"{t['restore']['measured']:.2f}×", h.verdict(t["restore"]["pass"])],
                [f"Peak RSS, {largest:,} vs {sizes[0]:,} events (backup and restore)", f"≤ {RSS_FLAT_TOLERANCE:.2f}×",
                 f"{t['rss_flat']['measured']:.2f}×", h.verdict(t["rss_flat"]["pass"])],
            ],
            "llll",
        ),
        "",
        "## Export",
        "",
        h.markdown_table(
            ["Events", "COPY binary rows/s", "COPY text rows/s", "backup rows/s", "vs binary", "vs text",
             "Backup peak RSS"],
            [[f"{n:,}", h.rate(p["copy_binary_rows_per_second"]), h.rate(p["copy_text_rows_per_second"]),
              h.rate(p["backup_event_rows_per_second"]), f"{p['export_ratio_vs_binary']:.2f}×",
              f"{p['export_ratio_vs_text']:.2f}×", h.mib(p["backup_peak_rss_bytes"])]
             for n, p in ((n, s["per_size"][n]) for n in sizes)],
            "lrrrrrr",
        ),
        "",
        "The backup does everything a real one does: a REPEATABLE READ snapshot exported to an ADBC "
        "connection, binary COPY into Arrow, NUMERIC as decimal128(20,6), the content hash, Parquet (zstd "
        "level 1) with modular encryption (AES-GCM), sha256 of every file, fsync, manifest, rename, "
        "last_backup_at. The baseline only moves the bytes to /dev/null.",
        "",
        "## Restore",
        "",
        h.markdown_table(
            ["Events", "COPY FROM rows/s", "restore rows/s", "vs COPY FROM", "of which verification", "Restore peak RSS"],
            [[f"{n:,}", h.rate(p["copy_from_rows_per_second"]), h.rate(p["restore_event_rows_per_second"]),
              f"{p['restore_ratio']:.2f}×",
              f"{h.median([r['verify_seconds'] for r in results['restore_runs'] if r['variant'] == 'restore' and r['events'] == n]):.2f}s",
              h.mib(p["restore_peak_rss_bytes"])]
             for n, p in ((n, s["per_size"][n]) for n in sizes)],
            "lrrrrr",
        ),
        "",
        "Both sides TRUNCATE the tenant's partition and load the same rows through usage_events_mt into its month "
        "partitions (three indexes each) in one transaction. The restore also verifies every file's sha256 and "
        "the key first, decrypts, checks that every row belongs to the tenant, reloads the six small tables "
        "and compares the row counts with the manifest before committing.",
        "",
        "## Every run",
        "",
        h.markdown_table(
            ["Events", "Round", "Variant", "Seconds", "Event rows/s", "Peak RSS", "Load at start"],
            [[f"{r['events']:,}", r["round"], LABELS[r["variant"]], f"{r['seconds']:.2f}",
              h.rate(r["event_rows"] / r["seconds"]), h.mib(r.get("peak_rss_bytes")),
              f"{r['load_at_start']:.2f}{' ⚠' if r['disturbed'] else ''}"]
             for r in results["export_runs"] + results["restore_runs"]],
            "rrlrrrr",
        ),
        "",
        "## Set-up",
        "",
        *h.server_lines(srv, m, results["server_kind"]),
        "- Peak RSS is the ru_maxrss of the process that ran one backup or restore, imports included "
        "(pyarrow, ADBC, psycopg: about 150 MiB before any data).",
    ]
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------------


def command_line(args: argparse.Namespace) -> str:
    return h.command(NAME, ["--events " + ",".join(str(n) for n in sorted(args.events)), f"--repeat {args.repeat}"],
                     args.dsn)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(
        NAME, "Backup and restore benchmark: backup_tenant() against psql COPY TO /dev/null of the same "
        "rows, restore_tenant() against psql COPY FROM STDIN of the same rows, and the peak RSS of each as the "
        f"tenant grows. Targets: export >= {TARGET_EXPORT}x, restore >= {TARGET_RESTORE}x, RSS flat. Writes "
        "bench/results/backups.json and docs/benchmarks/backups.md.",
    )
    parser.add_argument("--events", type=lambda t: [int(x) for x in t.split(",")], default=[1_000_000, 5_000_000],
                        metavar="N[,N...]", help="tenant sizes in usage events (default: 1000000,5000000)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="runs per variant and size (default: 3)")
    h.add_output_options(parser, NAME, dsn_help="a superuser DSN of a PostgreSQL 15+ server on this machine: "
                         "a scratch database is created there and dropped (default: a throwaway cluster)")
    parser.add_argument("--child", choices=("backup", "restore"), help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--backup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and (args.repeat < 1 or len(args.events) < 1 or min(args.events) < 1):
        parser.error("--repeat and every --events size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    root = Path(tempfile.mkdtemp(prefix="tp-bench-backups-", dir="/tmp"))
    os.chmod(root, 0o755)  # the server (as postgres) writes nothing here, psql (as us) reads the COPY file
    try:
        results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind, root), scratch="bench_backups",
                              throwaway_kind="throwaway cluster started by the benchmark (initdb defaults "
                                             "plus the project's BASE_SETTINGS; fsync on)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{name}: required {target['required']}, measured {target['measured']:.2f}: "
        f"{'PASS' if target['pass'] else 'FAIL'}" for name, target in results["summary"]["targets"].items()])


if __name__ == "__main__":
    sys.exit(main())
