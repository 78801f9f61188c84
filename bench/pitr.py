#!/usr/bin/env python
"""Benchmark: point-in-time restore of one tenant on pgBackRest (issue 18).

On a throwaway cluster of its own that archives its WAL into an encrypted pgBackRest repository
(the embedded cluster's setup, durable settings), with ``--tenants`` tenants and filler usage
events up to about ``--size-mb`` of database:

* **restore**: one tenant (``--target-events`` events in a partition of its own, changed by
  updates, deletes and inserts after the full backup) restored to a time T by
  ``restore_tenant_to_time()``, each step timed, against pgBackRest's own restore of the same
  backup to the same T plus PostgreSQL's replay (the baseline), in the same run, alternating.
  Targets: the whole tenant restore within 1.5x of the baseline; the extraction and the load at
  the backup and restore paths' speeds, measured in the same run on the live cluster for the
  same tenant (``backup_tenant``, then a live ``restore_tenant`` of that backup).
* **RPO**: while a writer ingests through ``ingest_usage_events()`` (full speed, then one small
  transaction a second), every 0.1 s: the newest committed transaction's distance from the
  newest archived WAL (the last archived segment's end LSN against each commit's LSN). Target:
  at most ``archive_timeout`` + 5 s.
* **ingest**: ``ingest_usage_events()`` rows/s with archiving on against off (ALTER SYSTEM
  archive_mode and a restart), alternating. Target: on >= 0.9x off.

Run on demand:  python bench/pitr.py [--size-mb 2048] [--tenants 1000] [--target-events 500000]
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402
from tenant_pipelines.core.backups import backup_tenant, restore_tenant  # noqa: E402
from tenant_pipelines.core.ingest import ingest_usage_events  # noqa: E402
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.core.pitr import archive_now, restore_tenant_to_time, take_cluster_backup  # noqa: E402
from tenant_pipelines.core.tiering import configure_tablespaces  # noqa: E402
from tenant_pipelines.db.migrate import migrate  # noqa: E402
from tenant_pipelines.local.cluster import TABLESPACES, EmbeddedCluster  # noqa: E402

NAME = "pitr"
TARGET_RATIO = 1.5
TARGET_RPO_MARGIN_S = 5.0
TARGET_INGEST = 0.9
# The backup and restore paths' speeds (docs/benchmarks/backups.md, 5M events): rows/s.
BACKUP_PATH_ROWS_S = 1_381_299
RESTORE_PATH_ROWS_S = 75_246
SEGMENT = 16 * 1024 * 1024
KEY = os.urandom(32)


def lsn_int(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def segment_end(name: str) -> int:
    log_id, seg = int(name[8:16], 16), int(name[16:24], 16)
    return log_id * 0x100000000 + (seg + 1) * SEGMENT


def now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def seed(conn: psycopg.Connection, tenants: int, size_mb: int, target_events: int) -> uuid.UUID:
    h.log(f"seeding {tenants} tenants")
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) SELECT gen_random_uuid(), 'tenant ' || g FROM generate_series(1, %s) g",
                     (tenants - 1,))
        conn.execute("INSERT INTO tenant_classifications (organization_id, tier) "
                     "SELECT id, (ARRAY['free','starter','growth'])[1 + abs(hashtext(id::text)) % 3] FROM organizations")
    target = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, 'the restored tenant')", (target,))
        conn.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, 'enterprise')", (target,))
        conn.execute("INSERT INTO tenant_backup_config (organization_id, point_in_time_recovery, retention_days) "
                     "VALUES (%s, true, 30)", (target,))
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status) SELECT %s, 'plan ' || g, 'active' "
                     "FROM generate_series(1, 50) g", (target,))
        conn.execute("INSERT INTO invoices (organization_id, amount, currency, status) SELECT %s, g * 1.5, 'EUR', 'open' "
                     "FROM generate_series(1, 500) g", (target,))
    ensure_tenant_partition(conn, target)
    insert_events(conn, "SELECT %s::uuid", (target,), target_events)
    # Filler: the other tenants' events, in the pool, until the database is about size_mb.
    ids = [r[0] for r in conn.execute("SELECT id FROM organizations WHERE id <> %s ORDER BY id", (target,))]
    chunk = 0
    while (size := conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]) < size_mb * 1e6:
        some = ids[(chunk * 100) % len(ids):][:100]
        insert_events(conn, "SELECT unnest(%s::uuid[])", (some,), 2_000)
        chunk += 1
        if chunk % 20 == 0:
            h.log(f"filler: database {size / 1e6:,.0f} MB of {size_mb:,}")
    conn.execute("VACUUM ANALYZE")
    return target


def insert_events(conn: psycopg.Connection, tenants_sql: str, params: tuple, per_tenant: int) -> None:
    conn.execute(
        f"""INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)
            SELECT t, 'metric_' || (g %% 7), (g %% 1000) / 7.0, now() - (g %% 100000) * interval '1 minute',
                   jsonb_build_object('g', g, 'tag', 'x')
              FROM ({tenants_sql}) AS s(t), generate_series(1, %s) g""", (*params, per_tenant))


def change_tenant(conn: psycopg.Connection, tenant: uuid.UUID, events: int, round_: int) -> None:
    with conn.transaction():
        conn.execute("UPDATE usage_events_mt SET quantity = quantity + 1 WHERE organization_id = %s AND metric_name = %s",
                     (tenant, f"metric_{round_ % 7}"))
        conn.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND metric_name = %s",
                     (tenant, f"metric_{(round_ + 3) % 7}"))
        conn.execute("UPDATE invoices SET status = 'paid' WHERE organization_id = %s AND amount < %s", (tenant, round_ * 50))
    insert_events(conn, "SELECT %s::uuid", (tenant,), events // 20)


def restore_runs(cluster: EmbeddedCluster, dsn: str, target: uuid.UUID, target_events: int, repeat: int) -> dict:
    engine = cluster.pgbackrest()
    with psycopg.connect(dsn, autocommit=True) as conn:
        h.log("full backup")
        t0 = time.monotonic()
        backup, _ = take_cluster_backup(conn, engine, "full")
        backup_s = time.monotonic() - t0
        while now(conn) <= backup.stopped_at + timedelta(seconds=1):
            time.sleep(0.1)
        h.log("changing the tenant (and WAL from the others) after the backup")
        for r in range(3):
            change_tenant(conn, target, target_events, r)
        insert_events(conn, "SELECT id FROM organizations WHERE id <> %s LIMIT 200", (target,), 500)
        at = now(conn)
        change_tenant(conn, target, target_events, 9)  # after T: what the restore takes away
        # The baseline replays to T too: the WAL up to T must be archived first (the tenant restore
        # makes sure of that itself, with the same call).
        covered = archive_now(conn)
        assert covered.ok and covered.covered_until >= at, covered
        reference = path_speeds(conn, target)
        runs = []
        for round_ in range(repeat):
            for variant in (("baseline", "tenant") if round_ % 2 == 0 else ("tenant", "baseline")):
                h.wait_until_idle()
                load = h.machine_load()
                if variant == "baseline":
                    h.log("baseline: pgBackRest's restore of the same backup to T, and the replay")
                    t0 = time.monotonic()
                    with engine.sandbox(backup, at, h.log) as sandbox:
                        run = {"variant": variant, "restore_s": sandbox.restore_seconds,
                               "replay_s": sandbox.replay_seconds, "sandbox_bytes": sandbox.size_bytes,
                               "wal_replayed_bytes": sandbox.wal_replayed_bytes}
                    run["cleanup_s"] = time.monotonic() - t0 - run["restore_s"] - run["replay_s"]
                else:
                    h.log("tenant: restore_tenant_to_time")
                    report = restore_tenant_to_time(conn, target, at, engine, master_key=KEY, log=h.log)
                    run = {"variant": variant, **{f"{k}_s": v for k, v in report.seconds.items()},
                           "rows": report.rows, "sandbox_bytes": report.sandbox_bytes,
                           "wal_replayed_bytes": report.wal_replayed_bytes}
                run.update(round=round_ + 1, load=load)
                runs.append(run)
                h.log(f"{variant}: {run}")
    return {"backup": {"label": backup.label, "seconds": backup_s, "size": backup.size, "repo_size": backup.repo_size},
            "to_time": at.isoformat(), "runs": runs, "reference": reference}


def path_speeds(conn: psycopg.Connection, target: uuid.UUID) -> dict:
    """The backup and restore paths on the live cluster, same tenant, same run: the speeds the
    restore's extraction and load are held to. The live restore puts back what the backup just
    read (the tenant is unchanged); T is before both."""
    h.wait_until_idle()
    folder = Path(tempfile.mkdtemp(prefix="tp-bench-pitr-ref-"))
    try:
        t0 = time.monotonic()
        report = backup_tenant(conn, target, folder, master_key=KEY, encrypt=True, apply_retention_after=False)
        backup_s = time.monotonic() - t0
        t0 = time.monotonic()
        restored = restore_tenant(conn, target, report.path, master_key=KEY)
        restore_s = time.monotonic() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = report.total_rows
    h.log(f"reference: backup path {rows / backup_s:,.0f} rows/s, restore path {restored.total_rows / restore_s:,.0f} rows/s")
    return {"rows": rows, "backup_s": backup_s, "restore_s": restore_s,
            "backup_rows_s": rows / backup_s, "restore_rows_s": restored.total_rows / restore_s}


def rpo_window(dsn: str, tenants: list[uuid.UUID], seconds: float, batch: int, pause: float) -> dict:
    """A writer ingests batches of ``batch`` events (``pause`` seconds between them) while the
    sampler measures, every 0.1 s, how far the newest commit is from the newest archived WAL."""
    commits: list[tuple[float, int]] = []  # (wall time after commit, insert LSN after it)
    stop = threading.Event()
    lock = threading.Lock()

    def writer() -> None:
        rng = random.Random(7)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                tenant = rng.choice(tenants)
                ts = datetime.now(timezone.utc)
                events = [("api_calls", Decimal(rng.randint(0, 10_000)) / 100, ts, '{"k": 1}') for _ in range(batch)]
                ingest_usage_events(conn, tenant, events)
                lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
                with lock:
                    commits.append((time.time(), lsn_int(lsn)))
                if pause:
                    stop.wait(pause)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            wal = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            t = time.time()
            with lock:
                done = list(commits)
            if wal and done and len(wal) >= 24:
                covered_lsn = segment_end(wal[:24])
                covered = [c[0] for c in done if c[1] <= covered_lsn]
                newest = done[-1][0]
                samples.append(newest - covered[-1] if covered else t - done[0][0])
            time.sleep(0.1)
    stop.set()
    thread.join()
    rows = len(commits) * batch
    return {"seconds": seconds, "batch": batch, "pause_s": pause, "commits": len(commits),
            "rows_per_s": rows / seconds, "samples": len(samples),
            "rpo_max_s": max(samples) if samples else None, "rpo_p99_s": h.percentile(samples, 99) if samples else None,
            "rpo_median_s": h.median(samples) if samples else None}


def ingest_rate(dsn: str, tenants: list[uuid.UUID], events: int, batch: int) -> float:
    rng = random.Random(11)
    ts = datetime.now(timezone.utc)
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        written = 0
        while written < events:
            tenant = tenants[(written // batch) % len(tenants)]
            written += ingest_usage_events(conn, tenant, [("api_calls", Decimal(rng.randint(0, 999)), ts, "{}")
                                                          for _ in range(batch)])
        return written / (time.monotonic() - t0)


def set_archiving(cluster: EmbeddedCluster, dsn: str, on: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET archive_mode" if on else "ALTER SYSTEM SET archive_mode = off")
    cluster.down()
    cluster.up()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('archive_mode')").fetchone()[0] == ("on" if on else "off")


def render(results: dict) -> str:
    a = results["args"]
    runs = results["restore"]["runs"]
    base = [r for r in runs if r["variant"] == "baseline"]
    ten = [r for r in runs if r["variant"] == "tenant"]
    baseline = h.median(r["restore_s"] + r["replay_s"] for r in base)
    total = h.median(r["total_s"] for r in ten)
    ratio = total / baseline if baseline else None
    rows = ten[0]["rows"] if ten else {}
    rows_total = sum(rows.values())
    extract_rate = h.median(rows_total / r["extract_s"] for r in ten)
    load_rate = h.median(rows_total / r["load_s"] for r in ten)
    reference = results["restore"].get("reference") or {"backup_rows_s": BACKUP_PATH_ROWS_S,
                                                         "restore_rows_s": RESTORE_PATH_ROWS_S}
    ref_backup, ref_restore = reference["backup_rows_s"], reference["restore_rows_s"]
    heavy, light = results["rpo"]["full_speed"], results["rpo"]["one_per_second"]
    timeout = results["archive_timeout_s"]
    ing = results["ingest"]
    on = h.median(x for x in ing["on"])
    off = h.median(x for x in ing["off"])
    lines = [
        "# Benchmark: point-in-time restore of one tenant (pgBackRest)", "",
        f"Generated by `bench/pitr.py` on {results['machine']['date_utc']}; re-run it to refresh this page "
        "(see [bench/README.md](../../bench/README.md)). Command:", "",
        f"    {results['command']}", "",
        f"A throwaway cluster with durable settings whose WAL is archived into an encrypted pgBackRest repository "
        f"(lz4, aes-256-cbc, `archive_timeout = {timeout}`), {a['tenants']:,} tenants, "
        f"{results['database_bytes'] / 1e6:,.0f} MB of billing database ({results['cluster_bytes'] / 1e6:,.0f} MB of "
        f"cluster as pgBackRest backed it up). The restored tenant has {a['target_events']:,} usage events in a "
        "partition of its own, 50 subscriptions and 500 invoices, changed by three rounds of updates, deletes and "
        "inserts after the full backup; T is after them, and one more round after T is what the restore takes away. "
        f"{a['repeat']} round(s) of each restore, alternating. Machine: {results['machine']['cores']} cores "
        f"({results['machine']['cpu_model']}), shared with other work: the load at each run's start is in the tables.",
        "",
        "## Targets", "",
        h.markdown_table(["Target", "Required", "Measured", "Result"], [
            ["Tenant restore vs pgBackRest restore + replay of the same backup", f"≤ {TARGET_RATIO}×",
             f"{h.fmt(ratio, '.2f')}× ({total:.1f} s vs {baseline:.1f} s)", h.verdict(ratio is not None and ratio <= TARGET_RATIO)],
            ["Extraction rows/s vs the backup path, same tenant, same run", f"≥ 0.8× ({h.rate(ref_backup)}/s)",
             f"{h.rate(extract_rate)} ({extract_rate / ref_backup:.2f}×)",
             h.verdict(extract_rate >= 0.8 * ref_backup, ("PASS", "MISSED"))],
            ["Load rows/s vs the restore path, same tenant, same run", f"≥ 0.8× ({h.rate(ref_restore)}/s)",
             f"{h.rate(load_rate)} ({load_rate / ref_restore:.2f}×)",
             h.verdict(load_rate >= 0.8 * ref_restore, ("PASS", "MISSED"))],
            ["RPO under full-speed ingest (max)", f"≤ {timeout + TARGET_RPO_MARGIN_S:.0f} s",
             f"{h.fmt(heavy['rpo_max_s'], '.1f')} s", h.verdict(heavy["rpo_max_s"] is not None and heavy["rpo_max_s"] <= timeout + TARGET_RPO_MARGIN_S)],
            ["RPO under one transaction a second (max)", f"≤ {timeout + TARGET_RPO_MARGIN_S:.0f} s",
             f"{h.fmt(light['rpo_max_s'], '.1f')} s", h.verdict(light["rpo_max_s"] is not None and light["rpo_max_s"] <= timeout + TARGET_RPO_MARGIN_S)],
            ["Ingest with archiving on vs off", f"≥ {TARGET_INGEST}×", f"{on / off:.2f}×", h.verdict(on / off >= TARGET_INGEST)],
        ]), "",
        f"The tenant restore's own steps took {h.median(r['extract_s'] + r['load_s'] for r in ten):.1f} s (extract "
        f"{h.median(r['extract_s'] for r in ten):.1f} s, load {h.median(r['load_s'] for r in ten):.1f} s) plus "
        f"{h.median(r['checks_s'] + r['cleanup_s'] for r in ten):.1f} s of checks and removal; its pgBackRest restore "
        f"and replay took {h.median(r['sandbox_restore_s'] + r['sandbox_replay_s'] for r in ten):.1f} s against the "
        f"baseline's {baseline:.1f} s in the same run: on a machine shared with other work the same restore varies "
        "by half from one run to the next (the load at each start is in the table below). The steps of its own "
        "do not grow with the cluster, only with the tenant, so the ratio falls as the cluster grows.", "",
        "## The restore, step by step", "",
        h.markdown_table(["Round", "Variant", "pgBackRest restore s", "replay s", "extract s", "load s", "checks s",
                          "cleanup s", "total s", "sandbox MB", "WAL replayed MB", "load at start"], [
            [r["round"], r["variant"], f"{r.get('sandbox_restore_s', r.get('restore_s')):.1f}",
             f"{r.get('sandbox_replay_s', r.get('replay_s')):.1f}", h.fmt(r.get("extract_s"), ".1f"),
             h.fmt(r.get("load_s"), ".1f"), h.fmt(r.get("checks_s"), ".1f"), h.fmt(r.get("cleanup_s"), ".1f"),
             h.fmt(r.get("total_s", r.get("restore_s", 0) + r.get("replay_s", 0)), ".1f"),
             f"{r['sandbox_bytes'] / 1e6:,.0f}", f"{r['wal_replayed_bytes'] / 1e6:,.0f}", f"{r['load']:.2f}"]
            for r in runs], "rlrrrrrrrrrr"), "",
        f"The baseline is what pgBackRest and PostgreSQL alone take to bring the same backup to the same T "
        f"(`pgbackrest restore --type=time`, then the server's replay and promotion); its total leaves out the "
        f"sandbox's removal. The tenant restore adds the checks (`pgbackrest info`, a forced WAL switch archived), "
        f"the extraction of {rows_total:,} rows ({', '.join(f'{t} {n:,}' for t, n in rows.items())}) and their load "
        "in one transaction, and the removal (the sandbox's server and data are removed while the load runs). "
        "The backup and restore paths' speeds in the targets are measured in the same run on the live cluster, "
        f"for the same tenant ({reference.get('rows', rows_total):,} rows then): `backup_tenant`, then a live "
        "`restore_tenant` of that backup (which puts back what it read). docs/benchmarks/backups.md has them for "
        f"a tenant of 5,000,000 events ({h.rate(BACKUP_PATH_ROWS_S)} and {h.rate(RESTORE_PATH_ROWS_S)} rows/s), "
        "where a backup's fixed costs (the ADBC connection, seven tables, fsync of every file, the manifest) vanish.", "",
        "## RPO", "",
        h.markdown_table(["Load", "Commits", "Rows/s", "RPO median s", "RPO p99 s", "RPO max s", "Samples"], [
            [f"{name} ({w['batch']} events a transaction{', ' + str(w['pause_s']) + ' s apart' if w['pause_s'] else ''})",
             f"{w['commits']:,}", h.rate(w["rows_per_s"]), h.fmt(w["rpo_median_s"], ".1f"), h.fmt(w["rpo_p99_s"], ".1f"),
             h.fmt(w["rpo_max_s"], ".1f"), w["samples"]]
            for name, w in (("full speed", heavy), ("one a second", light))], "lrrrrrr"), "",
        "Every 0.1 s: the newest committed transaction's time minus the time of the newest commit whose WAL "
        "(its insert LSN after commit) lies before the end of the last archived segment (`pg_stat_archiver`). "
        "Under full-speed ingest segments fill and are archived long before `archive_timeout`; a trickle waits "
        "for it.", "",
        "## Ingest with archiving on and off", "",
        h.markdown_table(["Archiving", "Runs rows/s", "Median rows/s"], [
            ["on", ", ".join(h.rate(x) for x in ing["on"]), h.rate(on)],
            ["off", ", ".join(h.rate(x) for x in ing["off"]), h.rate(off)]], "lrr"), "",
        f"`ingest_usage_events()` (billing_app, tenant context, RLS), {ing['events']:,} events per run in batches of "
        f"{ing['batch']:,}, one writer; archiving switched with `ALTER SYSTEM SET archive_mode` and a restart, "
        "alternating (on, off, off, on, ...), after a warm-up run with archiving on that is not counted"
        + (f" ({h.rate(ing['warmup'])} rows/s)" if ing.get("warmup") else "") + ". With archiving on, each 16 MB "
        "segment also costs a `pgbackrest archive-push` process (lz4, aes-256-cbc, fsync) on the same cores.",
    ]
    return "\n".join(lines)


def main() -> int:
    p = h.parser(NAME, __doc__.split("\n\n")[0], raw=True)
    h.add_output_options(p, NAME, dsn_help="", from_results=True)
    h.add_numbers(p,
                  ("--size-mb", int, 2048, "MB", "billing database size to fill to (default 2048)"),
                  ("--tenants", int, 1000, "N", "tenants (default 1000)"),
                  ("--target-events", int, 500_000, "N", "usage events of the restored tenant (default 500,000)"),
                  ("--repeat", int, 2, "N", "rounds of each restore (default 2)"),
                  ("--archive-timeout", int, 60, "S", "archive_timeout in seconds (default 60)"),
                  ("--rpo-seconds", float, 0.0, "S", "length of each RPO window (default 2.5 x archive_timeout)"),
                  ("--ingest-events", int, 200_000, "N", "events per ingest run (default 200,000)"),
                  ("--ingest-repeat", int, 3, "N", "ingest runs with archiving on and with it off (default 3 each)"))
    args = p.parse_args()
    if args.from_results:
        return h.rewrite_page(NAME, render)
    h.positive(p, args, ["size_mb", "tenants", "target_events", "repeat", "archive_timeout", "ingest_events",
                         "ingest_repeat"])
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="tp-bench-pitr-", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = EmbeddedCluster(data_root=base / "pg", state_dir=base / "state", log=h.log, archive=True,
                              archive_key=lambda: KEY, archive_timeout_s=args.archive_timeout)
    try:
        dsn = cluster.up()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            configure_tablespaces(conn, TABLESPACES)
            target = seed(conn, args.tenants, args.size_mb, args.target_events)
            database_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            others = [r[0] for r in conn.execute("SELECT id FROM organizations WHERE id <> %s LIMIT 50", (target,))]
            server = h.server_info(conn)
        restore = restore_runs(cluster, dsn, target, args.target_events, args.repeat)
        window = args.rpo_seconds or 2.5 * args.archive_timeout
        h.log(f"RPO under full-speed ingest, {window:.0f} s")
        heavy = rpo_window(dsn, others, window, 5_000, 0.0)
        h.log(f"RPO under one small transaction a second, {window:.0f} s")
        light = rpo_window(dsn, others, window, 10, 1.0)
        ingest: dict = {"events": args.ingest_events, "batch": 5_000, "on": [], "off": [], "warmup": None}
        h.log("ingest warm-up run (archiving on, not counted)")
        ingest["warmup"] = ingest_rate(dsn, others, args.ingest_events, 5_000)
        order = [on for i in range(args.ingest_repeat) for on in ((True, False) if i % 2 == 0 else (False, True))]
        for on in order:
            if on != (cluster_archiving(dsn)):
                set_archiving(cluster, dsn, on)
            h.wait_until_idle()
            rate = ingest_rate(dsn, others, args.ingest_events, 5_000)
            ingest["on" if on else "off"].append(rate)
            h.log(f"ingest with archiving {'on' if on else 'off'}: {rate:,.0f} rows/s")
        set_archiving(cluster, dsn, True)
        results = {
            "args": vars(args), "command": h.command(NAME, [f"--size-mb {args.size_mb}", f"--tenants {args.tenants}",
                                                            f"--target-events {args.target_events}",
                                                            f"--repeat {args.repeat}",
                                                            f"--ingest-repeat {args.ingest_repeat}",
                                                            f"--archive-timeout {args.archive_timeout}"]),
            "machine": h.machine_info(), "server": server, "archive_timeout_s": args.archive_timeout,
            "database_bytes": database_bytes, "cluster_bytes": restore["backup"]["size"],
            "restore": restore, "rpo": {"full_speed": heavy, "one_per_second": light}, "ingest": ingest,
            "seconds": time.monotonic() - started,
        }
        return h.finish(NAME, results, render(results), docs=not args.no_docs)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def cluster_archiving(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT current_setting('archive_mode')").fetchone()[0] == "on"


if __name__ == "__main__":
    sys.exit(main())
