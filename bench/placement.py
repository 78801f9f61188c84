#!/usr/bin/env python
"""Benchmark: placements (issue 17): online moves between them, queries of a schema tenant, and
what tenant schemas add to the catalog.

1. **Moves while writing.** A tenant of ``--events`` usage events (pooled, in the shared
   partition) is moved pooled -> schema, then schema -> partition, by
   ``tenant_pipelines.core.moves.move_tenant()``: one tenant at the core's default pace
   (adaptive, db/pacing.py), a second (same size) at the fixed pace (``moves.FIXED_MAX_MB_PER_S``, 4 MB/s, in
   ``moves.DEFAULT_BATCH_ROWS``-row batches). Two writer processes run throughout, each
   ``--insert-rate`` transactions a second through billing_app (``SET ROLE billing_app``;
   per transaction ``fn_set_tenant_context`` and one INSERT into ``usage_events``, the routed
   name): one for the moving tenant, one for another (pooled) tenant. A transaction refused by
   the cutover guard ("moved to its new placement") is retried, as an application would, and
   counted as a retry; any other error is a failed insert. Baseline windows (no move) and move
   windows alternate; latency counts from when each transaction was due. Against each move, a
   plain ``INSERT INTO ... SELECT`` of the same rows into an unlogged and a logged table
   (``LIKE usage_events_mt INCLUDING ALL``: the same indexes), in the same run.
2. **Queries at --tenants tenants.** The same two queries (the sum of quantity over a month; a
   point lookup by id and timestamp) for a schema tenant and for a dedicated-partition tenant
   with the same rows, with an explicit ``organization_id`` predicate and with RLS alone, as
   billing_app in the tenant's context: ``EXPLAIN (ANALYZE, TIMING, FORMAT JSON)``, planning and
   execution medians over ``--query-repeat`` rounds, and the client's time of the plain query.
3. **Catalog.** Relations in ``pg_class`` before and after ``--schema-tenants`` tenants get a
   schema of their own (``fn_create_tenant_schema`` + ``fn_record_placement``), at
   ``--tenants`` tenants in all.

Run on demand:  python bench/placement.py [--events N] [--tenants N] [--dsn DSN] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.core import moves  # noqa: E402
from tenant_pipelines.core import placement as placements  # noqa: E402
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.db.pacing import Pace  # noqa: E402
from tenant_pipelines.local.demo import METRICS  # noqa: E402

NAME = "placement"
APP_ROLE = "billing_app"
TARGET_P99_RATIO = 1.2
TARGET_CUTOVER_WAIT_MS = 100.0
TARGET_QUERY_RATIO = 1.0
WARMUP_S = 3.0
RETRY_ATTEMPTS = 20
STEP_AT_LEAST_S = 1.0  # a move's step shorter than this gets no p99 of its own in the table
CUTOVER_SLACK_S = 0.05  # a writer's transaction "meets the cutover" if it overlaps it within this
PROPERTIES = '{"source": "bench", "region": "eu-west-1"}'
MOVED_GUARD = "moved to its new placement"
COLUMNS = ("id", "organization_id", "metric_name", "quantity", "timestamp", "properties")
PACES = (("adaptive", Pace()), (f"fixed {moves.FIXED_MAX_MB_PER_S:g} MB/s", Pace.fixed(moves.FIXED_MAX_MB_PER_S)))
HOPS = (placements.SCHEMA, placements.PARTITION)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- tenants and rows ---------------------------------------------------------------------------------


def create_tenants(conn: psycopg.Connection, tiers: Sequence[str], label: str,
                   override: str | None = None) -> list[uuid.UUID]:
    """Organizations with their tier's classification (and a placement override)."""
    ids = [uuid.uuid4() for _ in tiers]
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) SELECT * FROM unnest(%s::uuid[], %s::text[])",
                     (ids, [f"Placement bench {label} {i + 1}" for i in range(len(ids))]))
        conn.execute(
            "INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit, storage_quota_gb,"
            " placement_override)"
            " SELECT t.id, t.tier, l.monthly_events_limit, l.storage_quota_gb, %s"
            "   FROM unnest(%s::uuid[], %s::text[]) AS t (id, tier) JOIN tier_limits l USING (tier)",
            (override, ids, list(tiers)))
    return ids


def set_override(conn: psycopg.Connection, tenant: uuid.UUID, kind: str) -> None:
    """The tenant's placement policy, as an operator sets it before a move."""
    conn.execute("UPDATE tenant_classifications SET placement_override = %s WHERE organization_id = %s",
                 (kind, tenant))


_GENERATE = h.GENERATE_EVENTS  # the server-generated events of bench/_harness.py


def load_pooled(dsn: str, admin: psycopg.Connection, tenant: uuid.UUID, rows: int, first: datetime,
                end: datetime) -> dict:
    """``rows`` events over [first, end) into the pool: the first before onboarding (so that
    ensure_tenant_partition() premakes the pool's months from ``first`` on), the rest streamed
    with COPY as the superuser."""
    params = {"tenant": tenant, "first": first, "step": (end - first) / rows, "properties": PROPERTIES}
    started = time.perf_counter()
    with h.connect(dsn) as source:
        h.copy_events(source, admin, sql.SQL(_GENERATE), {**params, "lo": 0, "hi": 0})
        report = ensure_tenant_partition(admin, tenant)
        if report.layout != "pooled":
            raise SystemExit(f"tenant {tenant}: layout {report.layout}, expected pooled")
        if rows > 1:
            h.copy_events(source, admin, sql.SQL(_GENERATE), {**params, "lo": 1, "hi": rows - 1})
    seconds = time.perf_counter() - started
    admin.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("public", placements.SHARED_PARTITION)))
    return {"tenant": str(tenant), "rows": rows, "seconds": seconds}


def rows_at(conn: psycopg.Connection, tenant: uuid.UUID) -> tuple[sql.Composable, int, int]:
    """The relation holding the tenant's usage events now, its row count and the sum of
    pg_column_size of its rows (the measure MoveReport.bytes_copied uses)."""
    relation = placements.placement_of(conn, tenant).usage_events_leaf
    count, size = conn.execute(sql.SQL("SELECT count(*), COALESCE(sum(pg_column_size(r.*)), 0) FROM {} r"
                                       " WHERE organization_id = %s").format(relation), (tenant,)).fetchone()
    return relation, count, int(size)


def plain_copies(conn: psycopg.Connection, tenant: uuid.UUID) -> dict:
    """INSERT INTO ... SELECT of the tenant's rows from where they are now into an unlogged and a
    logged table LIKE usage_events_mt (its indexes included), each timed, then dropped."""
    relation, count, size = rows_at(conn, tenant)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    out = {"source": relation.as_string(conn), "rows": count, "bytes": size}
    for kind in ("unlogged", "logged"):
        table = sql.Identifier("public", f"bench_plain_copy_{kind}")
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE {} TABLE {} (LIKE public.usage_events_mt INCLUDING ALL)").format(
            sql.SQL("UNLOGGED" if kind == "unlogged" else ""), table))
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        copied = conn.execute(sql.SQL("INSERT INTO {} ({c}) SELECT {c} FROM {} WHERE organization_id = %s").format(
            table, relation, c=cols), (tenant,)).rowcount
        seconds = time.perf_counter() - started
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
        out[kind] = {"rows": copied, "seconds": seconds, "mb_per_second": size / h.MIB / seconds}
    return out


# -- the writers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    scheduled: float  # perf_counter when the transaction was due (fixed rate)
    started: float
    finished: float
    ok: bool
    retries: int


class Writer(h.WriterProcess):
    """Writes ``rate`` transactions a second for one tenant (switchable) through billing_app:
    fn_set_tenant_context, then one INSERT into usage_events (the routed name). Its own process
    (spawned), its own connection. A transaction refused by the cutover guard is retried at
    once; times are time.perf_counter() (CLOCK_MONOTONIC: the same clock in every process)."""

    def __init__(self, dsn: str, rate: float, tenant: uuid.UUID, label: str) -> None:
        super().__init__(_write_loop, (dsn, 1.0 / rate), tenant, Sample, f"writer-{label}")
        self.label = label


_INSERT = ('INSERT INTO usage_events (organization_id, metric_name, quantity, "timestamp", properties)'
           " VALUES (%s, %s, %s, %s, %s)")


def _write_loop(dsn: str, interval: float, tenant, stop, results) -> None:
    samples: list[tuple] = []
    errors: list[dict] = []
    seq = 0

    def connect() -> psycopg.Connection:
        conn = h.connect(dsn)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(APP_ROLE)))
        return conn

    conn = connect()
    try:
        for due in h.paced(interval, stop):
            started = time.perf_counter()
            seq += 1
            org = uuid.UUID(tenant.value.decode())
            row = (org, METRICS[seq % len(METRICS)], Decimal(seq % 1000), datetime.now(timezone.utc), PROPERTIES)
            ok, retries = False, 0
            while True:
                try:
                    with conn.transaction():
                        conn.execute("SELECT fn_set_tenant_context(%s)", (org,))
                        conn.execute(_INSERT, row)
                    ok = True
                    break
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        conn = connect()
                    if MOVED_GUARD in str(exc) and retries < RETRY_ATTEMPTS:
                        retries += 1
                        continue
                    errors.append({"at": started, "tenant": str(org), "error": f"{type(exc).__name__}: {exc}"})
                    break
            samples.append((due, started, time.perf_counter(), ok, retries))
    finally:
        conn.close()
        results.send((samples, errors))


def latency_summary(samples: Sequence[Sample]) -> dict:
    if not samples:
        return {"transactions": 0, "failed": 0, "retries": 0}
    response = [(s.finished - s.scheduled) * 1000 for s in samples]
    service = [(s.finished - s.started) * 1000 for s in samples]
    return {
        "transactions": len(samples), "failed": sum(1 for s in samples if not s.ok),
        "retries": sum(s.retries for s in samples),
        "p50_ms": h.percentile(response, 50), "p99_ms": h.percentile(response, 99), "max_ms": max(response),
        "service_p99_ms": h.percentile(service, 99), "service_max_ms": max(service),
    }


def in_window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.scheduled < end]


# -- part 1: moves while writing -----------------------------------------------------------------------


def report_dict(report: moves.MoveReport) -> dict:
    return {"from": f"{report.from_kind} ({report.from_location})", "to": f"{report.to_kind} ({report.to_location})",
            "moved": report.moved, "rows_copied": report.rows_copied, "keys_caught_up": report.keys_caught_up,
            "bytes_copied": report.bytes_copied, "cutover_lock_wait_ms": report.cutover_lock_wait_ms,
            "cutover_ms": report.cutover_ms, "cutover_keys": report.cutover_keys,
            "lock_retries": report.lock_retries, "steps": report.steps, "duration_s": report.duration_s,
            "hashes": report.hashes}


def run_moves(args: argparse.Namespace, dsn: str, admin: psycopg.Connection, first: datetime,
              end: datetime) -> dict:
    """Two moving tenants (one per pace) and another tenant that writes; baseline and move
    windows alternate while both writers run."""
    paces = [(name, pace) for name, pace in PACES if name.split()[0] in args.paces]
    movers = create_tenants(admin, ["growth"] * len(paces), "mover", override=placements.POOLED)
    (other,) = create_tenants(admin, ["free"], "other writer")
    loads = []
    for tenant in movers:
        h.log(f"moves: loading {args.events:,} events of tenant {tenant} into the pool")
        loads.append(load_pooled(dsn, admin, tenant, args.events, first, end))
        h.log(f"moves: loaded in {loads[-1]['seconds']:.1f}s")
    loads.append(load_pooled(dsn, admin, other, args.other_events, first, end))
    admin.execute("CHECKPOINT")
    load_before = h.wait_until_idle(timeout=args.idle_wait)
    loadavg_before = loadavg()
    writers = {"moving": Writer(dsn, args.insert_rate, movers[0], "moving"),
               "other": Writer(dsn, args.insert_rate, other, "other")}
    windows: list[dict] = []
    runs: list[dict] = []
    for w in writers.values():
        w.start()
    try:
        time.sleep(WARMUP_S)
        for (pace_name, pace), tenant in zip(paces, movers):
            writers["moving"].tenant = tenant
            for hop in HOPS:
                start = time.perf_counter()
                time.sleep(args.baseline_seconds)
                windows.append({"kind": "baseline", "start": start, "end": time.perf_counter(),
                                "tenant": str(tenant)})
                copies = plain_copies(admin, tenant)
                set_override(admin, tenant, hop)
                admin.execute("CHECKPOINT")
                time.sleep(1.0)
                h.log(f"moves: tenant {tenant} ({pace_name} pace) -> {hop}; load average {loadavg()}")
                stamps: list[tuple[float, str]] = []
                lsn = h.wal_lsn(admin)
                checkpoints = checkpoint_counts(admin)
                start = time.perf_counter()
                report = moves.move_tenant(admin, tenant, hop, pace=pace,
                                           log=lambda m: stamps.append((time.perf_counter(), m)))
                finished = time.perf_counter()
                if not report.moved or placements.placement_of(admin, tenant).kind != hop:
                    raise SystemExit(f"tenant {tenant}: not moved to {hop}: {report}")
                cut = next((t for t, m in stamps if "cut over to" in m), None)
                cutover = None if cut is None else (cut - report.steps.get("cutover", 0.0), cut)
                windows.append({"kind": "move", "start": start, "end": finished, "tenant": str(tenant),
                                "pace": pace_name, "hop": hop, "cutover": cutover,
                                "steps": step_windows(start, report.steps)})
                _, count, _ = rows_at(admin, tenant)
                runs.append({"tenant": str(tenant), "pace": pace_name, "max_mb_per_s": pace.max_mb_per_s, "hop": hop,
                             "pace_report": report.pace.summary() if report.pace else None,
                             "seconds": finished - start, "wal_bytes": h.wal_bytes(admin, lsn),
                             "checkpoints": {k: v - checkpoints[k] for k, v in checkpoint_counts(admin).items()},
                             "rows_after": count, "report": report_dict(report), "plain_copies": copies,
                             "mb_per_second": report.bytes_copied / h.MIB / (finished - start),
                             "copy_mb_per_second": report.bytes_copied / h.MIB / report.steps["copy"]
                             if report.steps.get("copy") else None})
                h.log(f"moves: -> {hop} in {finished - start:.1f}s ({runs[-1]['mb_per_second']:.1f} MB/s; plain "
                      f"copy unlogged {copies['unlogged']['mb_per_second']:.1f}, logged "
                      f"{copies['logged']['mb_per_second']:.1f} MB/s); cutover lock wait "
                      f"{report.cutover_lock_wait_ms:.1f} ms, held {report.cutover_ms:.1f} ms")
        start = time.perf_counter()
        time.sleep(args.baseline_seconds)
        windows.append({"kind": "baseline", "start": start, "end": time.perf_counter(), "tenant": str(movers[-1])})
    finally:
        for w in writers.values():
            w.stop()
    return {"tenants": {"movers": [str(t) for t in movers], "other": str(other)}, "loads": loads,
            "load_before_cores": load_before, "loadavg_before": loadavg_before, "loadavg_after": loadavg(),
            "runs": runs, **summarize_writers(writers, windows)}


def checkpoint_counts(conn: psycopg.Connection) -> dict[str, int]:
    """The checkpointer's counters (pg_stat_bgwriter): checkpoints by time and requested (WAL
    volume), and buffers it wrote."""
    timed, requested, buffers = conn.execute(
        "SELECT checkpoints_timed, checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter").fetchone()
    return {"timed": timed, "requested": requested, "buffers": buffers}


def step_windows(start: float, steps: dict[str, float]) -> list[tuple[str, float, float]]:
    """The move's steps as (name, start, end) on the writers' clock: MoveReport.steps are
    sequential durations, in order, from when move_tenant() was called."""
    out, at = [], start
    for name, seconds in steps.items():
        out.append((name, at, at + seconds))
        at += seconds
    return out


def summarize_writers(writers: dict[str, Writer], windows: list[dict]) -> dict:
    per_window, pooled_baseline, errors = [], {}, {}
    for name, w in writers.items():
        base = [s for win in windows if win["kind"] == "baseline" for s in in_window(w.samples, win["start"], win["end"])]
        pooled_baseline[name] = latency_summary(base)
        errors[name] = w.errors[:20]
    for win in windows:
        entry = {k: win.get(k) for k in ("kind", "pace", "hop", "tenant")}
        entry["seconds"] = win["end"] - win["start"]
        for name, w in writers.items():
            samples = in_window(w.samples, win["start"], win["end"])
            entry[name] = latency_summary(samples)
            if win.get("cutover"):
                lo, hi = win["cutover"][0] - CUTOVER_SLACK_S, win["cutover"][1] + CUTOVER_SLACK_S
                met = [s for s in samples if s.started <= hi and s.finished >= lo]
                entry[name]["cutover_transactions"] = len(met)
                entry[name]["cutover_longest_ms"] = max(((s.finished - s.started) * 1000 for s in met), default=0.0)
                entry[name]["cutover_longest_response_ms"] = max(
                    ((s.finished - s.scheduled) * 1000 for s in met), default=0.0)
            if win["kind"] == "move":
                entry[name]["p99_ratio"] = entry[name]["p99_ms"] / pooled_baseline[name]["p99_ms"]
                entry[name]["steps"] = {step: latency_summary(in_window(samples, a, b))
                                        for step, a, b in win.get("steps", []) if b - a >= STEP_AT_LEAST_S}
        per_window.append(entry)
    totals = {name: latency_summary(w.samples) for name, w in writers.items()}
    return {"windows": per_window, "baseline": pooled_baseline, "totals": totals, "writer_errors": errors}


# -- part 2 and 3: at --tenants tenants ----------------------------------------------------------------


def tier_of(i: int) -> str:
    """The demo mix, dealt smoothly: 2% enterprise, 8% growth, 20% starter, 70% free."""
    r = i % 50
    return "enterprise" if r == 0 else "growth" if r <= 4 else "starter" if r <= 14 else "free"


def load_query_tenants(admin: psycopg.Connection, rows: int, first: datetime, end: datetime) -> dict:
    """Two enterprise tenants with the same ``rows`` events: one in a dedicated partition (by
    month), one in a schema of its own (by month), both written by the same generator."""
    part, schema_tenant = create_tenants(admin, ["enterprise", "enterprise"], "query",
                                         override=None)
    set_override(admin, schema_tenant, placements.SCHEMA)
    params = {"first": first, "step": (end - first) / rows, "properties": PROPERTIES, "lo": 0, "hi": rows - 1}
    cols = sql.SQL('organization_id, metric_name, quantity, "timestamp", properties')
    # The partition tenant: its first row (in the pool), onboarded (its partition and its months
    # from that row's on, the row moved in), then the other rows.
    started = time.perf_counter()
    admin.execute(sql.SQL("INSERT INTO public.usage_events_mt ({}) " + _GENERATE).format(cols),
                  {**params, "tenant": part, "hi": 0})
    report = ensure_tenant_partition(admin, part)
    if placements.placement_of(admin, part).kind != placements.PARTITION or report.layout != "monthly":
        raise SystemExit(f"query tenant {part}: not given a monthly partition ({report.layout}, {report.note})")
    admin.execute(sql.SQL("INSERT INTO public.usage_events_mt ({}) " + _GENERATE).format(cols),
                  {**params, "tenant": part, "lo": 1})
    # The schema tenant: its schema from the first month on, recorded, then its rows.
    with admin.transaction():
        schema = admin.execute("SELECT fn_create_tenant_schema(%s, (%s::timestamptz AT TIME ZONE 'UTC')::date)",
                               (schema_tenant, first)).fetchone()[0]
        admin.execute("SELECT fn_record_placement(%s, 'schema', %s)", (schema_tenant, schema))
    admin.execute(sql.SQL("INSERT INTO {} ({}) " + _GENERATE).format(sql.Identifier(schema, "usage_events"), cols),
                  {**params, "tenant": schema_tenant})
    seconds = time.perf_counter() - started
    for tenant in (part, schema_tenant):
        admin.execute(sql.SQL("VACUUM (ANALYZE) {}").format(placements.placement_of(admin, tenant).usage_events_leaf))
    return {"partition": str(part), "schema": str(schema_tenant), "schema_name": schema, "rows": rows,
            "seconds": seconds}


def grow(admin: psycopg.Connection, total: int) -> dict:
    """Organizations up to ``total`` in all, of the demo tier mix, each onboarded with
    ensure_tenant_partition() (a dedicated partition while the leaf budget allows)."""
    have = admin.execute("SELECT count(*) FROM organizations").fetchone()[0]
    need = max(0, total - have)
    tenants = create_tenants(admin, [tier_of(i) for i in range(need)], "tenant")
    started = time.perf_counter()
    layouts: dict[str, int] = {}
    for done, tenant in enumerate(tenants, 1):
        layout = ensure_tenant_partition(admin, tenant).layout
        layouts[layout] = layouts.get(layout, 0) + 1
        if done % 2000 == 0:
            h.log(f"catalog: {done:,}/{need:,} onboarded")
    seconds = time.perf_counter() - started
    kinds = dict(admin.execute("SELECT kind, count(*) FROM tenant_placements GROUP BY kind").fetchall())
    return {"created": need, "seconds": seconds, "placements": kinds, "layouts": layouts,
            "organizations": admin.execute("SELECT count(*) FROM organizations").fetchone()[0]}


def pg_class_counts(conn: psycopg.Connection) -> dict:
    total = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    by_kind = dict(conn.execute("SELECT relkind::text, count(*) FROM pg_class GROUP BY 1 ORDER BY 1").fetchall())
    leaves = conn.execute("SELECT fn_leaf_count()").fetchone()[0]
    return {"relations": total, "by_relkind": by_kind, "usage_events_leaves": leaves}


def make_schema_tenants(admin: psycopg.Connection, count: int) -> dict:
    """``count`` pooled, empty free tenants get a schema of their own, each in one transaction."""
    tenants = [r[0] for r in admin.execute(
        "SELECT o.id FROM organizations o JOIN tenant_classifications c ON c.organization_id = o.id"
        " LEFT JOIN tenant_placements p ON p.organization_id = o.id"
        " WHERE c.tier = 'free' AND COALESCE(p.kind, 'pooled') = 'pooled'"
        "   AND NOT EXISTS (SELECT 1 FROM usage_events_mt_default e WHERE e.organization_id = o.id)"
        " ORDER BY o.name LIMIT %s", (count,)).fetchall()]
    if len(tenants) < count:
        raise SystemExit(f"only {len(tenants)} empty pooled free tenants for {count} schema tenants: raise --tenants")
    started = time.perf_counter()
    for tenant in tenants:
        with admin.transaction():
            set_override(admin, tenant, placements.SCHEMA)
            schema = admin.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
            admin.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    return {"tenants": len(tenants), "seconds": time.perf_counter() - started}


def query_texts(tenant: uuid.UUID, month: tuple[datetime, datetime], point: tuple) -> dict[tuple[str, str], sql.Composed]:
    org = sql.SQL("organization_id = {} AND ").format(sql.Literal(tenant))
    out = {}
    for predicate, prefix in (("explicit", org), ("rls_only", sql.SQL(""))):
        out[("month_sum", predicate)] = sql.SQL(
            'SELECT sum(quantity) FROM usage_events WHERE {}"timestamp" >= {} AND "timestamp" < {}').format(
            prefix, sql.Literal(month[0]), sql.Literal(month[1]))
        out[("point", predicate)] = sql.SQL(
            'SELECT * FROM usage_events WHERE {}id = {} AND "timestamp" = {}').format(
            prefix, sql.Literal(point[0]), sql.Literal(point[1]))
    return out


def run_as_app(conn: psycopg.Connection, tenant: uuid.UUID, query: sql.Composed) -> dict:
    """In one transaction as billing_app in the tenant's context: EXPLAIN (ANALYZE, TIMING) of the
    query, then the query itself timed by the client."""
    with conn.transaction():
        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        (plan,) = conn.execute(sql.SQL("EXPLAIN (ANALYZE, TIMING, FORMAT JSON) {}").format(query)).fetchone()
        started = time.perf_counter()
        rows = conn.execute(query).fetchall()
        client = (time.perf_counter() - started) * 1000
    top = plan[0]
    return {"planning_ms": top["Planning Time"], "execution_ms": top["Execution Time"], "client_ms": client,
            "rows": len(rows), "plan": top["Plan"]}


def relations_scanned(plan: dict) -> list[str]:
    out, stack = [], [plan]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            out.append(f"{node.get('Schema', '')}.{node['Relation Name']}".lstrip("."))
        stack.extend(node.get("Plans", []))
    return sorted(out)


def run_queries(dsn: str, admin: psycopg.Connection, q: dict, repeat: int, month: tuple[datetime, datetime]) -> dict:
    tenants = {"schema": uuid.UUID(q["schema"]), "partition": uuid.UUID(q["partition"])}
    texts = {}
    for kind, tenant in tenants.items():
        leaf = placements.placement_of(admin, tenant).usage_events_leaf
        point = admin.execute(sql.SQL('SELECT id, "timestamp" FROM {} WHERE organization_id = %s AND "timestamp" >= %s'
                                      ' ORDER BY "timestamp" LIMIT 1').format(leaf), (tenant, month[0])).fetchone()
        for key, text in query_texts(tenant, month, point).items():
            texts[(kind, *key)] = text
    conns = {kind: h.connect(dsn) for kind in tenants}
    samples: dict[tuple, list[dict]] = {key: [] for key in texts}
    cold: dict[tuple, dict] = {}
    try:
        for key, text in texts.items():
            cold[key] = run_as_app(conns[key[0]], tenants[key[0]], text)
        keys = list(texts)
        for r in range(repeat):
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            for key in order:
                samples[key].append(run_as_app(conns[key[0]], tenants[key[0]], texts[key]))
    finally:
        for c in conns.values():
            c.close()
    out = []
    for key, runs in samples.items():
        kind, query, predicate = key
        out.append({
            "placement": kind, "query": query, "predicate": predicate, "runs": len(runs), "rows": runs[-1]["rows"],
            "planning_median_ms": statistics.median(r["planning_ms"] for r in runs),
            "execution_median_ms": statistics.median(r["execution_ms"] for r in runs),
            "total_median_ms": statistics.median(r["planning_ms"] + r["execution_ms"] for r in runs),
            "client_median_ms": statistics.median(r["client_ms"] for r in runs),
            "planning_p95_ms": h.percentile([r["planning_ms"] for r in runs], 95),
            "execution_p95_ms": h.percentile([r["execution_ms"] for r in runs], 95),
            "cold_planning_ms": cold[key]["planning_ms"], "cold_execution_ms": cold[key]["execution_ms"],
            "scanned": relations_scanned(runs[-1]["plan"]),
        })
        h.log(f"queries: {kind} {query} {predicate}: planning {out[-1]['planning_median_ms']:.3f} ms, execution "
              f"{out[-1]['execution_median_ms']:.3f} ms, client {out[-1]['client_median_ms']:.3f} ms")
    return {"results": out, "month": [m.isoformat() for m in month], "repeat": repeat}


def query_ratios(queries: list[dict]) -> list[dict]:
    by = {(r["placement"], r["query"], r["predicate"]): r for r in queries}
    out = []
    for (kind, query, predicate), s in by.items():
        if kind != "schema":
            continue
        p = by[("partition", query, predicate)]
        out.append({"query": query, "predicate": predicate,
                    **{f"{m}_ratio": s[f"{m}_median_ms"] / p[f"{m}_median_ms"]
                       for m in ("planning", "execution", "total", "client")}})
    return out


# -- the run --------------------------------------------------------------------------------------------


def queries_and_catalog(args: argparse.Namespace, dsn: str, admin: psycopg.Connection, results: dict,
                        this_month: datetime, first: datetime, end: datetime) -> None:
    """Parts 2 and 3: a schema tenant's queries against a partition tenant's, and the catalog."""
    h.log(f"queries: two tenants of {args.query_events:,} events; load average {loadavg()}")
    results["query_tenants"] = load_query_tenants(admin, args.query_events, first, end)
    h.log(f"catalog: growing to {args.tenants:,} tenants")
    results["growth"] = grow(admin, args.tenants)
    h.log(f"catalog: {results['growth']['organizations']:,} tenants in {results['growth']['seconds']:.1f}s")
    before = pg_class_counts(admin)
    made = make_schema_tenants(admin, args.schema_tenants)
    after = pg_class_counts(admin)
    results["catalog"] = {"before": before, "after": after, "schema_tenants": made,
                          "added": after["relations"] - before["relations"],
                          "per_schema": (after["relations"] - before["relations"]) / made["tenants"],
                          "organizations": admin.execute("SELECT count(*) FROM organizations").fetchone()[0],
                          "schemas": admin.execute("SELECT count(*) FROM tenant_schemas").fetchone()[0]}
    h.log(f"catalog: pg_class {before['relations']:,} -> {after['relations']:,} with {made['tenants']} schema "
          f"tenants ({results['catalog']['per_schema']:.1f} each) in {made['seconds']:.1f}s")
    admin.execute("ANALYZE")
    results["loadavg_queries"] = loadavg()
    results["load_before_queries_cores"] = h.wait_until_idle(timeout=args.idle_wait)
    prev = h.add_months(this_month, -1)
    results["queries"] = run_queries(dsn, admin, results["query_tenants"], args.query_repeat, (prev, this_month))
    results["query_ratios"] = query_ratios(results["queries"]["results"])


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    started = time.perf_counter()
    results: dict = {"benchmark": NAME, "command": command_line(args), "machine": h.machine_info(),
                     "server_kind": server_kind, "loadavg_start": loadavg(),
                     "parameters": {k: getattr(args, k) for k in (
                         "events", "other_events", "tenants", "schema_tenants", "query_events", "query_repeat",
                         "baseline_seconds", "insert_rate", "paces")}}
    with h.connect(dsn) as admin:
        h.migrate_scratch(admin, "")
        results["server"] = h.server_info(admin)
        now = admin.execute("SELECT date_trunc('minute', now())").fetchone()[0]
        this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        first = h.add_months(this_month, -2)
        end = now - timedelta(minutes=1)
        results["moves"] = run_moves(args, dsn, admin, first, end) if not args.skip_moves else None
        if not args.moves_only:
            queries_and_catalog(args, dsn, admin, results, this_month, first, end)
    results["loadavg_end"] = loadavg()
    results["targets"] = targets(results)
    results["python_peak_rss_bytes"] = h.python_peak_rss()
    results["seconds"] = time.perf_counter() - started
    return results


def targets(results: dict) -> list[dict]:
    out = []
    m = results.get("moves")
    if m:
        for name in ("moving", "other"):
            failed = sum(w[name]["failed"] for w in m["windows"])
            out.append({"target": f"failed inserts, {name} tenant's writer", "required": "0",
                        "measured": f"{failed} ({sum(w[name]['retries'] for w in m['windows'])} retries)",
                        "met": failed == 0})
        for w in m["windows"]:
            if w["kind"] != "move":
                continue
            label = f"{w['pace']} pace, -> {w['hop']}"
            wait = w["moving"].get("cutover_longest_ms")
            out.append({"target": f"moving tenant's longest wait at the cutover ({label})",
                        "required": f"<= {TARGET_CUTOVER_WAIT_MS:g} ms",
                        "measured": "n/a" if wait is None else f"{wait:.1f} ms",
                        "met": wait is not None and wait <= TARGET_CUTOVER_WAIT_MS})
            for name in ("moving", "other"):
                base = baseline_median(m, name)
                ratio = w[name]["p99_ms"] / base
                out.append({"target": f"{name} tenant's p99 vs baseline ({label})",
                            "required": f"<= {TARGET_P99_RATIO}x",
                            "measured": f"{w[name]['p99_ms']:.1f} / {base:.1f} ms = {ratio:.2f}x (against the pooled "
                                        f"baseline {m['baseline'][name]['p99_ms']:.1f} ms: {w[name]['p99_ratio']:.2f}x)",
                            "met": ratio <= TARGET_P99_RATIO})
    for r in results.get("query_ratios", []):
        out.append({"target": f"schema vs partition, {r['query']}, {r['predicate']} (planning + execution medians)",
                    "required": f"<= {TARGET_QUERY_RATIO}x", "measured": f"{r['total_ratio']:.2f}x",
                    "met": r["total_ratio"] <= TARGET_QUERY_RATIO})
    return out


# -- the page ------------------------------------------------------------------------------------------


def _ms(v: float | None, spec: str = ".1f") -> str:
    return h.fmt(v, spec)


def baseline_median(m: dict, name: str) -> float:
    """The median of the baseline windows' p99: what a target is judged against. The pooled
    baseline (every baseline window's transactions together) is one disturbed window's p99 when
    that window alone holds more than 1% of them (the pool's autovacuum after a move's cleanup
    deleted 2,000,000 rows measured 69-87 ms beside 6-10 ms windows)."""
    return statistics.median(w[name]["p99_ms"] for w in m["windows"] if w["kind"] == "baseline")


def quietest_baseline_line(m: dict) -> str:
    """The baseline windows vary (the first follows the load and its checkpoint): each move's p99
    also against the quietest baseline window, so that a ratio is not met by a noisy baseline."""
    base = [w for w in m["windows"] if w["kind"] == "baseline"]
    if len(base) < 2:
        return ""
    quiet = {n: min(w[n]["p99_ms"] for w in base if w[n].get("p99_ms")) for n in ("moving", "other")}
    parts = [f"{w['pace']} pace, -> {w['hop']}: " + ", ".join(
        f"{n} {w[n]['p99_ms'] / quiet[n]:.2f}x" for n in ("moving", "other"))
        for w in m["windows"] if w["kind"] == "move"]
    return ("The baseline windows ranged from " + ", ".join(
        f"{n} {min(w[n]['p99_ms'] for w in base):.1f} to {max(w[n]['p99_ms'] for w in base):.1f} ms" for n in
        ("moving", "other")) + " p99. Against the quietest baseline window alone (moving "
            f"{quiet['moving']:.1f} ms, other {quiet['other']:.1f} ms), the moves' p99: " + "; ".join(parts) + ".")


def pace_tenants(paces: list[str]) -> str:
    said = {"adaptive": "one at the core's default pace (`Pace()`: adaptive, docs/pacing.md)",
            "fixed": f"one at the fixed pace (`Pace.fixed({moves.FIXED_MAX_MB_PER_S:g})`, in batches of "
                     f"{moves.DEFAULT_BATCH_ROWS} rows, the default; a batch counts as the larger of its rows "
                     "and the WAL it wrote)"}
    if len(paces) == 1:
        return "A growth tenant, " + said[paces[0]].removeprefix("one ") + ","
    return "Growth tenants, " + " and ".join(said[p] for p in paces) + ", each"


def render_markdown(results: dict) -> str:
    p, m = results["parameters"], results["moves"]
    out = ["# Placements: online moves, schema-tenant queries, catalog", "", *h.generated_by(NAME, results)]
    out += [
        f"**Shared machine.** This run shared the machine with other work: load average "
        f"{' / '.join(map(str, results['loadavg_start']))} (1/5/15 min) at the start, "
        f"{' / '.join(map(str, results['loadavg_end']))} at the end"
        + (f"; {m['load_before_cores']:.2f} cores busy before the moves (waited for < {h.IDLE_LOAD})" if m else "")
        + (f", {results['load_before_queries_cores']:.2f} before the queries" if "queries" in results else "")
        + ". Latency tails and ratios are noisier "
        "than on an idle machine.", ""]
    scaled = []
    if p["events"] < 2_000_000:
        scaled.append(f"the moving tenants have {p['events']:,} events each, not the issue's 2,000,000")
    if p["tenants"] < 10_000:
        scaled.append(f"{p['tenants']:,} tenants, not 10,000")
    out += [("**Scaled down:** " + "; ".join(scaled) + ".") if scaled else
            "Full size: 2,000,000 events per moving tenant, 10,000 tenants.", ""]
    out += ["## Targets", "", h.markdown_table(
        ["Target", "Required", "Measured", "Verdict"],
        [[t["target"], t["required"], t["measured"], h.verdict(t["met"], ("MET", "MISSED"))] for t in targets(results)],
        "lllc"), ""]
    if m:
        out += h.section(
            "1. Moves while two tenants write",
            f"{pace_tenants(p.get('paces', ['adaptive', 'fixed']))} of {p['events']:,} usage events "
            "(over the last two months and this one), pooled, moved pooled -> schema then schema -> partition by "
            "`core.moves.move_tenant()`. Before each move the tenant's `placement_override` is set to the "
            "target kind (as an operator would). Two writer processes, each "
            f"{p['insert_rate']:g} transactions/s as billing_app (`SET ROLE billing_app`; per transaction "
            "`fn_set_tenant_context(tenant)` and one INSERT into `usage_events`, the routed name; "
            "synchronous_commit on): *moving* writes the tenant being moved (and, in the baseline before "
            f"its moves, the same tenant), *other* a free pooled tenant with {p['other_events']:,} events. "
            f"A transaction refused by the cutover guard ('{MOVED_GUARD}') is retried at once and counted as "
            "a retry; any other error is a failed insert. Latency is from when each transaction was due "
            f"(fixed rate), so a stall counts for every transaction queued behind it. Baselines: "
            f"{p['baseline_seconds']:g} s windows with no move, before each move and after the last; a target "
            "is judged against the median of their p99s (the pooled figure, all their transactions together, is "
            "shown beside it).")
        out += ["### Move time and throughput", "", h.markdown_table(
            ["Pace", "Move", "Rows", "MB copied", "Move s", "MB/s (whole move)", "MB/s (copy step)",
             "Plain copy unlogged MB/s (s)", "Plain copy logged MB/s (s)", "WAL"],
            [[r["pace"], f"-> {r['hop']}", f"{sum(r['report']['rows_copied'].values()):,}",
              f"{r['report']['bytes_copied'] / h.MIB:,.0f}", f"{r['seconds']:.1f}", f"{r['mb_per_second']:.1f}",
              _ms(r["copy_mb_per_second"]),
              f"{r['plain_copies']['unlogged']['mb_per_second']:.1f} ({r['plain_copies']['unlogged']['seconds']:.1f})",
              f"{r['plain_copies']['logged']['mb_per_second']:.1f} ({r['plain_copies']['logged']['seconds']:.1f})",
              h.mib(r["wal_bytes"])] for r in m["runs"]], "llrrrrrrrr"), "",
            "*MB* is the sum of `pg_column_size` of the rows copied (`MoveReport.bytes_copied`); the plain copies "
            "are rated on the same bytes of the same rows, from where they were just before the move, into a "
            "table `LIKE usage_events_mt INCLUDING ALL` (the same primary key and indexes), one "
            "`INSERT INTO ... SELECT` statement each, between windows. *Move s* is `move_tenant()`'s wall time "
            "(all steps, the old copy's removal included).", ""]
        out += ["### MoveReport", "", h.markdown_table(
            ["Pace", "Move", "Steps (s)", "Keys caught up", "Cutover lock wait ms", "Cutover ms", "Cutover keys",
             "Lock retries"],
            [[r["pace"], f"{r['report']['from']} -> {r['report']['to']}",
              ", ".join(f"{k} {v:.2f}" for k, v in r["report"]["steps"].items()), r["report"]["keys_caught_up"],
              f"{r['report']['cutover_lock_wait_ms']:.1f}", f"{r['report']['cutover_ms']:.1f}",
              r["report"]["cutover_keys"], r["report"]["lock_retries"]] for r in m["runs"]], "llllrrrr"), ""]
        out += ["### Writers", "", h.markdown_table(
            ["Window", "Writer", "Tx", "Failed", "Retries", "p50 ms", "p99 ms", "p99 / baseline", "Longest ms",
             "At cutover: tx, longest ms"],
            [[("baseline (all)" if w is None else f"{w['pace']} pace, -> {w['hop']}"), name,
              f"{s['transactions']:,}", s["failed"], s["retries"], _ms(s.get("p50_ms")), _ms(s.get("p99_ms")),
              "" if w is None else f"{s['p99_ratio']:.2f}x", _ms(s.get("max_ms")),
              "" if w is None or "cutover_transactions" not in s else
              f"{s['cutover_transactions']}, {s['cutover_longest_ms']:.1f}"]
             for w in [None, *[x for x in m["windows"] if x["kind"] == "move"]]
             for name, s in ((n, (m["baseline"][n] if w is None else w[n])) for n in ("moving", "other"))],
            "llrrrrrrrl"), "",
            "*Longest* is the longest response (from due to commit) in the window; *at cutover* counts the moving "
            "writer's and the other writer's transactions that overlapped the cutover transaction (from "
            "`steps['cutover']` before the mover's 'cut over' log line, ±50 ms) and the longest of them from "
            "start to commit, retries included.", "",
            quietest_baseline_line(m), "",
            "Every window, in order:", "", h.markdown_table(
                ["Window", "s", "moving tx", "moving p99 ms", "moving max ms", "other tx", "other p99 ms",
                 "other max ms"],
                [[w["kind"] if w["kind"] == "baseline" else f"move ({w['pace']}, -> {w['hop']})",
                  f"{w['seconds']:.1f}", w["moving"]["transactions"], _ms(w["moving"].get("p99_ms")),
                  _ms(w["moving"].get("max_ms")), w["other"]["transactions"], _ms(w["other"].get("p99_ms")),
                  _ms(w["other"].get("max_ms"))] for w in m["windows"]], "lrrrrrrr"), ""]
        by_step = [(w, step, n) for w in m["windows"] if w["kind"] == "move"
                   for n in ("moving", "other") for step in w[n].get("steps", {})]
        if by_step:
            runs_by_hop = {(r["pace"], r["hop"]): r for r in m["runs"]}
            out += ["Writers' p99 by step of each move (the steps of `MoveReport.steps` of 1 s or more, laid end "
                    "to end from when `move_tenant()` was called), against the pooled baseline:", "",
                    h.markdown_table(
                        ["Move", "Step", "s", "Writer", "Tx", "p99 ms", "p99 / baseline", "Longest ms"],
                        [[f"{w['pace']} pace, -> {w['hop']}", step,
                          f"{runs_by_hop[(w['pace'], w['hop'])]['report']['steps'][step]:.1f}",
                          n, w[n]["steps"][step]["transactions"], _ms(w[n]["steps"][step].get("p99_ms")),
                          h.fmt(None if not w[n]["steps"][step].get("p99_ms") else
                                w[n]["steps"][step]["p99_ms"] / m["baseline"][n]["p99_ms"], ".2f") + "x",
                          _ms(w[n]["steps"][step].get("max_ms"))] for w, step, n in by_step], "llrlrrrr"), ""]
            out += ["Checkpoints during each move (`pg_stat_bgwriter`): " + "; ".join(
                f"{r['pace']} -> {r['hop']}: {r['checkpoints']['timed']} timed, {r['checkpoints']['requested']} "
                f"requested (WAL volume), {r['checkpoints']['buffers'] * 8 / 1024:,.0f} MiB written by them"
                for r in m["runs"] if r.get("checkpoints")) + ".", ""]
        errs = [f"{n}: {e['error']}" for n, es in m["writer_errors"].items() for e in es[:3]]
        if errs:
            out += ["Failed inserts (first of each writer): " + "; ".join(errs), ""]
        out += [f"Load average before the writers started: {' / '.join(map(str, m['loadavg_before']))}; after the "
                f"last window: {' / '.join(map(str, m['loadavg_after']))}. Loading each moving tenant: "
                + ", ".join(f"{l['rows']:,} rows {l['seconds']:.0f} s" for l in m["loads"]) + ".", ""]
    if "queries" not in results:
        out += ["Parts 2 and 3 (queries, catalog) were not run (`--moves-only`).", ""]
        return "\n".join(out + setup_lines(results))
    q, c, g = results["queries"], results["catalog"], results["growth"]
    out += h.section(
        f"2. Queries of a schema tenant at {c['organizations']:,} tenants",
        f"Two enterprise tenants with the same {results['query_tenants']['rows']:,} events (same generator): one in "
        "a dedicated partition of `usage_events_mt` (by month, onboarded by `ensure_tenant_partition()`), one in "
        "a schema of its own (`fn_create_tenant_schema` from its first month, `fn_record_placement`, rows "
        f"inserted into its `usage_events`), among {c['organizations']:,} tenants: {c['schemas']} in schemas when "
        "the queries ran (part 3's included); the registry before part 3: "
        + ", ".join(f"{v:,} {k}" for k, v in sorted(g["placements"].items())) + "; "
        f"{c['after']['usage_events_leaves']:,} leaves under `usage_events_mt`). Queries, through the routed name "
        f"`usage_events`: *month_sum* `sum(quantity)` over the previous month ({q['month'][0][:10]} to "
        f"{q['month'][1][:10]}), *point* one row by `id` and `\"timestamp\"`; *explicit* adds "
        "`organization_id = '<tenant>'`, *rls_only* leaves it to the policy. Each run is one transaction: "
        "`fn_set_tenant_context`, `SET LOCAL ROLE billing_app`, `EXPLAIN (ANALYZE, TIMING, FORMAT JSON)` of the "
        "query, then the query itself timed by the client. One connection per tenant; a cold run first (not "
        f"counted), then {q['repeat']} rounds of the eight series in rotating order; medians.")
    out += [h.markdown_table(
        ["Query", "Predicate", "Placement", "Planning ms", "Execution ms", "Plan + exec ms", "Client ms",
         "Planning p95", "Execution p95", "Cold planning", "Relations scanned"],
        [[r["query"], r["predicate"], r["placement"], _ms(r["planning_median_ms"], ".3f"),
          _ms(r["execution_median_ms"], ".3f"), _ms(r["total_median_ms"], ".3f"), _ms(r["client_median_ms"], ".3f"),
          _ms(r["planning_p95_ms"], ".3f"), _ms(r["execution_p95_ms"], ".3f"), _ms(r["cold_planning_ms"], ".2f"),
          ", ".join(r["scanned"])]
         for r in sorted(q["results"], key=lambda r: (r["query"], r["predicate"], r["placement"]))],
        "lllrrrrrrrl"), "", "Schema over partition:", "", h.markdown_table(
        ["Query", "Predicate", "Planning", "Execution", "Plan + exec", "Client"],
        [[r["query"], r["predicate"], *(f"{r[f'{k}_ratio']:.2f}x" for k in ("planning", "execution", "total", "client"))]
         for r in results["query_ratios"]], "llrrrr"), ""]
    out += h.section(
        f"3. Relations in pg_class with {c['schema_tenants']['tenants']} schema tenants",
        f"At {c['organizations']:,} tenants (grown with the demo tier mix, 2% enterprise, 8% growth, 20% starter, "
        "70% free, each onboarded by `ensure_tenant_partition()`: a dedicated partition while "
        "`partition_config.leaf_budget` allows, else pooled), then "
        f"{c['schema_tenants']['tenants']} empty pooled free tenants each given a schema "
        f"(`fn_create_tenant_schema` + `fn_record_placement`, one transaction each: "
        f"{c['schema_tenants']['seconds']:.1f} s in all).")
    kinds = sorted(set(c["before"]["by_relkind"]) | set(c["after"]["by_relkind"]))
    out += [h.markdown_table(
        ["", "pg_class rows", *[f"relkind {k}" for k in kinds], "usage_events_mt leaves"],
        [[label, f"{x['relations']:,}", *[f"{x['by_relkind'].get(k, 0):,}" for k in kinds],
          f"{x['usage_events_leaves']:,}"] for label, x in (("before", c["before"]), ("after", c["after"]))],
        "l" + "r" * (len(kinds) + 2)), "",
        f"Added: {c['added']:,} relations, {c['per_schema']:.1f} per schema tenant (tables, partitioned tables, "
        "month partitions, indexes, TOAST tables and their indexes).", ""]
    return "\n".join(out + setup_lines(results))


def setup_lines(results: dict) -> list[str]:
    return ["## Set-up", "", *h.server_lines(results["server"], results["machine"], results["server_kind"]),
            f"- Python process peak RSS: {h.mib(results['python_peak_rss_bytes'])}. Whole run: "
            f"{results['seconds'] / 60:.1f} min.", ""]


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, """Placements benchmark (issue 17): a tenant moved pooled -> schema -> partition by
move_tenant() (the adaptive pace and the fixed 4 MB/s) while it and another tenant write 100 tx/s each
through billing_app (failed inserts, retries, longest wait, p99 against baseline; MB/s against a plain
INSERT ... SELECT); a schema tenant's queries against a partition tenant's at --tenants tenants
(explicit predicate and RLS alone); pg_class before and after --schema-tenants schema tenants.
Writes bench/results/placement.json and docs/benchmarks/placement.md.""")
    h.add_numbers(
        parser,
        ("--events", int, 2_000_000, "N", "usage events of each moving tenant (default: 2,000,000)"),
        ("--other-events", int, 100_000, "N", "usage events of the other (pooled) writing tenant (default: 100,000)"),
        ("--tenants", int, 10_000, "N", "tenants in all for the queries and the catalog (default: 10,000)"),
        ("--schema-tenants", int, 200, "N", "tenants given a schema for the catalog count (default: 200)"),
        ("--query-events", int, 300_000, "N", "usage events of each query tenant (default: 300,000)"),
        ("--query-repeat", int, 200, "R", "rounds of the query series (default: 200)"),
        ("--baseline-seconds", float, 15.0, "S", "length of each baseline window (default: 15)"),
        ("--insert-rate", float, 100.0, "TPS", "each writer's transactions per second (default: 100)"),
        ("--idle-wait", float, 20.0, "S", "seconds to wait for an idle machine before timed parts (default: 20)"),
    )
    parser.add_argument("--skip-moves", action="store_true", help="run parts 2 and 3 only")
    parser.add_argument("--moves-only", action="store_true", help="run part 1 only")
    parser.add_argument("--paces", default="adaptive,fixed", metavar="LIST",
                        help="the paces of part 1, comma-separated, each with a tenant of its own: adaptive, "
                             "fixed (default: adaptive,fixed; the adaptive pace moves 2,000,000 events in about "
                             "40 min a hop, the fixed one in a few minutes)")
    h.add_output_options(parser, NAME, from_results=True)
    args = parser.parse_args(argv)
    if args.from_results:
        return args
    if args.skip_moves and args.moves_only:
        parser.error("--skip-moves and --moves-only: one or the other")
    h.positive(parser, args, ("events", "other_events", "tenants", "schema_tenants", "query_events", "query_repeat"))
    if args.events < 1000 or args.query_events < 1000:
        parser.error("--events and --query-events: at least 1000")
    args.paces = [p.strip() for p in args.paces.split(",") if p.strip()]
    if not args.paces or set(args.paces) - {"adaptive", "fixed"} or len(set(args.paces)) != len(args.paces):
        parser.error("--paces: adaptive, fixed or both, comma-separated, each once")
    return args


def command_line(args: argparse.Namespace) -> str:
    parts = ([f"--events {args.events}", f"--other-events {args.other_events}", f"--tenants {args.tenants}",
             f"--schema-tenants {args.schema_tenants}", f"--query-events {args.query_events}",
             f"--query-repeat {args.query_repeat}", f"--baseline-seconds {args.baseline_seconds:g}",
             f"--insert-rate {args.insert_rate:g}", f"--paces {','.join(args.paces)}"]
             + (["--skip-moves"] if args.skip_moves else []) + (["--moves-only"] if args.moves_only else []))
    return h.command(NAME, parts, args.dsn)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return h.rewrite_page(NAME, render_markdown)
    results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind), scratch="bench_placement",
                          settings={"max_locks_per_transaction": "256"},
                          throwaway_kind="throwaway cluster started by the benchmark (initdb defaults, the "
                                         "project's BASE_SETTINGS and max_locks_per_transaction=256; durable: "
                                         "fsync and full_page_writes on)")
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']} (required {t['required']})"
        for t in results["targets"]])


if __name__ == "__main__":
    sys.exit(main())
