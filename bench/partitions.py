#!/usr/bin/env python
"""Benchmark: tenant storage in usage_events_mt as the tenant count grows.

The layout (sql/0016): most tenants share the pool, the DEFAULT partition split by month; a
tenant whose tier, flag or size asks for it gets a dedicated partition, while the leaves under
usage_events_mt stay within partition_config.leaf_budget. One database grows through the
scales (10 -> 1,000 -> 10,000 onboarded tenants by default). At each scale it measures:

1. onboarding: ensure_tenant_partition() for every new tenant, one by one (tenants/s over the
   growth step), and the time to onboard ONE more tenant (median of --extra-tenants free-tier
   tenants with a few events already in the pool);
2. single-tenant query latency as billing_app, planning and execution apart, for a free
   (pooled) and an enterprise (dedicated, monthly) tenant: with an explicit organization_id
   predicate (a literal: pruned at plan time) and with row-level security alone;
3. the catalog: relations in pg_class, catalog bytes, leaf partitions, relations per tenant;
4. at one scale (1,000 by default): ingest_usage_events() into usage_events_mt against the flat
   table with the same indexes and policy, reusing bench/ingest.py's variants and runs.

Targets: onboarding one more tenant < 100 ms at 10,000; explicit-predicate latency at 10,000
within 1.5x of the figure at 10; RLS-alone planning < 10 ms at 10,000; < 150,000 relations at
10,000 tenants; ingest >= 0.9x the flat table.

Run on demand:  python bench/partitions.py [--scales 10,1000,10000] [--dsn DSN] [--no-docs]
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
import ingest as ingest_bench  # noqa: E402  (bench/ingest.py: its variants, event generator and runs)
from tenant_pipelines.local.demo import METRICS  # noqa: E402
from tenant_pipelines.core.partitions import (
    attached_tenant_partitions,
    catalog_size,
    ensure_tenant_partition,
    interrupted_promotions,
    organization_ids,
    pool_tenants,
    stranded_in_pool,
)
from tenant_pipelines.core.placement import SHARED_PARTITION, partition_name  # noqa: E402
from tenant_pipelines.db.names import APP_ROLE  # noqa: E402
from tenant_pipelines.core.tenants import tenant_tiers  # noqa: E402

NAME = "partitions"
PARENT = "usage_events_mt"
DEFAULT_SCALES = (10, 1_000, 10_000)
PROBE_TIERS = ("free", "enterprise")  # the tenants whose queries are timed: pooled / dedicated, monthly
PROGRESS_EVERY = 250
IDLE_WAIT_S = 30.0  # a timed phase waits this long at most for an idle machine (h.IDLE_LOAD), and is flagged if not
INGEST_WARMUP_BATCHES = 100
MIN_QUERY_SAMPLES = 5

TARGET_SCALE = 10_000
TARGET_ONBOARD_ONE_MS = 100.0
TARGET_EXPLICIT_RATIO = 1.5
TARGET_RLS_PLANNING_MS = 10.0
TARGET_RELATIONS = 150_000
TARGET_INGEST_PARITY = 0.9
TARGET_BINDING_RATIO = 1.05  # the context bound to its transaction (sql/0017) against sql/0005's
BINDING_ROUNDS = 3  # alternations of the two function versions at the largest scale

# The "before" of the binding comparison: the context functions as sql/0005 created them (kept
# verbatim in tests/fixtures/sql_legacy/, the layout before the sql/ split), and the "after":
# today's, from sql/functions/, which holds each function once.
ROOT = Path(__file__).resolve().parent.parent
CONTEXT_FUNCTIONS = ("fn_current_tenant_id", "fn_set_tenant_context")


def unbound_context_functions() -> str:
    text = (ROOT / "tests" / "fixtures" / "sql_legacy" / "0005_create_tenant_context_functions.sql.legacy").read_text()
    blocks = [re.search(rf"CREATE FUNCTION {name}\(.*?\n\$\$;", text, re.S).group(0) for name in CONTEXT_FUNCTIONS]
    return "\n".join(b.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1) for b in blocks)


def bound_context_functions() -> str:
    return "\n".join((ROOT / "sql" / "functions" / f"{name}.sql").read_text() for name in CONTEXT_FUNCTIONS)


# Lock-table sizing for the throwaway cluster. A query that cannot prune at plan time (RLS
# alone) locks every table under usage_events_mt and every leaf's indexes at once: per tenant
# its partitioned table, plus per leaf the leaf and its 3 indexes. A monthly tenant has 4 month
# leaves besides _rest (this month and partition_config.premake_months = 3 ahead).
LOCKS_PER_TENANT = {"single": 1 + 4, "monthly": 1 + 4 * (1 + 4)}
LOCK_HEADROOM = 2.0
MONTHLY_TIERS = ("growth", "enterprise")  # tier_limits.partition_by_month; checked after migrating

FUNCTIONS_TRACKED = ("fn_prepare_tenant_partition", "fn_attach_tenant_partition")
EVENT_SPACING = timedelta(hours=1)


# -- tenants -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    tier: str
    number: int  # 1-based, in order of creation

    @property
    def name(self) -> str:
        return f"Bench tenant {self.number:05d} ({self.tier})"


class TierMix:
    """Deals tiers in fixed proportions, smoothly: each new tenant gets the tier furthest below
    its share of the tenants dealt so far. The first tenants get one of each tier, rarest first,
    so that the smallest scale already has a tenant of every tier (and of both layouts)."""

    def __init__(self, shares: dict[str, float]) -> None:
        total = sum(shares.values())
        self.shares = {tier: share / total for tier, share in shares.items() if share > 0}
        self.counts = dict.fromkeys(self.shares, 0)

    def record(self, tier: str) -> None:
        self.counts[tier] = self.counts.get(tier, 0) + 1

    def deal(self) -> str:
        dealt = sum(self.counts.values())
        unseen = [t for t in sorted(self.shares, key=self.shares.__getitem__) if self.counts[t] == 0]
        tier = unseen[0] if unseen else max(
            self.shares, key=lambda t: self.shares[t] * (dealt + 1) - self.counts[t])
        self.record(tier)
        return tier


def new_tenants(rng: random.Random, tiers: Iterable[str], first_number: int) -> list[Tenant]:
    return [Tenant(uuid.UUID(int=rng.getrandbits(128), version=4), tier, first_number + i)
            for i, tier in enumerate(tiers)]


def create_organizations(conn: psycopg.Connection, tenants: Sequence[Tenant]) -> None:
    """The organizations and their tier classifications (with the tier's default quotas)."""
    ids = [t.id for t in tenants]
    with conn.transaction():
        conn.execute(
            "INSERT INTO organizations (id, name) SELECT * FROM unnest(%s::uuid[], %s::text[])",
            (ids, [t.name for t in tenants]),
        )
        conn.execute(
            """INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit, storage_quota_gb)
               SELECT t.id, t.tier, l.monthly_events_limit, l.storage_quota_gb
                 FROM unnest(%s::uuid[], %s::text[]) AS t (id, tier) JOIN tier_limits l USING (tier)""",
            (ids, [t.tier for t in tenants]),
        )


def event_rows(tenants: Sequence[Tenant], per_tenant: int, anchor: datetime) -> Iterator[tuple]:
    """``per_tenant`` recent events per tenant, an hour apart before ``anchor`` (closer together
    when the month began less than that ago): all in the current month and the last 7 days."""
    month_start = anchor.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    step = min(EVENT_SPACING, (anchor - month_start) / (per_tenant + 1))
    for tenant in tenants:
        for i in range(per_tenant):
            yield (tenant.id, METRICS[i % len(METRICS)], Decimal(i + 1), anchor - step * (i + 1),
                   '{"source": "bench"}')


def copy_events(conn: psycopg.Connection, rows: Iterable[tuple]) -> int:
    """COPY into usage_events_mt as the superuser: rows of tenants not onboarded yet land in
    the DEFAULT partition, the others in their tenant's partition."""
    written = 0
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(sql.SQL(
            'COPY {} (organization_id, metric_name, quantity, "timestamp", properties) FROM STDIN'
        ).format(sql.Identifier(PARENT))) as copy:
            for row in rows:
                copy.write_row(row)
                written += 1
    return written


# -- onboarding ----------------------------------------------------------------------------------


def onboard(conn: psycopg.Connection, tenants: Sequence[Tenant], attached_before: int, label: str) -> list[dict]:
    """ensure_tenant_partition() for each tenant in turn; one record per tenant."""
    records = []
    window = time.perf_counter()
    for done, tenant in enumerate(tenants, 1):
        started = time.perf_counter()
        report = ensure_tenant_partition(conn, tenant.id)
        seconds = time.perf_counter() - started
        if report.layout != "pooled" and not report.attached_now:
            raise SystemExit(f"tenant {tenant.id} was attached already: the database is not the benchmark's")
        records.append({"tier": tenant.tier, "layout": report.layout, "ms": seconds * 1000,
                        "tenants_before": attached_before + done - 1, "rows_moved": report.rows_moved,
                        "over_budget": "leaf budget" in report.note})
        if done % PROGRESS_EVERY == 0 and done < len(tenants):
            recent = [r["ms"] for r in records[-PROGRESS_EVERY:]]
            h.log(f"{label}: {done:,}/{len(tenants):,} onboarded; last {PROGRESS_EVERY}: "
                  f"{PROGRESS_EVERY / (time.perf_counter() - window):,.1f} tenants/s, "
                  f"median {statistics.median(recent):.1f} ms")
            window = time.perf_counter()
    return records


def check_storage(conn: psycopg.Connection, tenants: Sequence[Tenant]) -> None:
    """No dedicated tenant left rows in the pool, and the leaves stay within the budget."""
    stranded = stranded_in_pool(conn, [str(t.id) for t in tenants])
    leaves, budget = conn.execute("SELECT fn_leaf_count(), leaf_budget FROM partition_config").fetchone()
    if stranded or leaves > budget:
        raise SystemExit(f"{len(stranded):,} dedicated tenants still have rows in {SHARED_PARTITION}; "
                         f"{leaves:,} leaves under usage_events_mt (budget {budget:,})")


def function_times(conn: psycopg.Connection) -> dict[str, dict]:
    """Calls and total milliseconds of the onboarding functions run by ``conn``'s backend
    (track_functions must be on in that session)."""
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed when the backend goes idle
    rows = conn.execute(
        "SELECT funcname, calls, total_time FROM pg_stat_user_functions WHERE funcname = ANY(%s)",
        (list(FUNCTIONS_TRACKED),),
    ).fetchall()
    found = {name: {"calls": calls, "ms": total} for name, calls, total in rows}
    return {name: found.get(name, {"calls": 0, "ms": 0.0}) for name in FUNCTIONS_TRACKED}


def grow(conn: psycopg.Connection, tenants: list[Tenant], scale: int, mix: TierMix,
         rng: random.Random, args: argparse.Namespace, anchor: datetime) -> dict:
    """Bring the database to ``scale`` onboarded tenants: create the new organizations with
    their events in DEFAULT, then onboard them one by one (timed)."""
    label = f"{len(tenants):,} -> {scale:,} tenants"
    added = new_tenants(rng, [mix.deal() for _ in range(scale - len(tenants))], len(tenants) + 1)
    started = time.perf_counter()
    create_organizations(conn, added)
    events = copy_events(conn, event_rows(added, args.events_per_tenant, anchor))
    setup_seconds = time.perf_counter() - started
    conn.execute("CHECKPOINT")
    load = h.wait_until_idle(timeout=IDLE_WAIT_S)
    h.log(f"{label}: created {len(added):,} organizations and {events:,} events in DEFAULT "
          f"({setup_seconds:.1f}s); onboarding them one by one")
    with h.ResourceProbe(h.local_backend_pid(conn)) as probe:
        started = time.perf_counter()
        records = onboard(conn, added, len(tenants), label)
        seconds = time.perf_counter() - started
    tenants.extend(added)
    check_storage(conn, tenants)
    h.log(f"{label}: onboarded {len(added):,} in {seconds:.1f}s = {len(added) / seconds:,.1f} tenants/s")
    return {"from": scale - len(added), "to": scale, "tenants_added": len(added),
            "events_in_default": events, "setup_seconds": setup_seconds, "seconds": seconds,
            "tenants_per_second": len(added) / seconds, "load_before_cores": load,
            "records": records, **probe.as_dict()}


def onboard_one_more(conn: psycopg.Connection, tenants: list[Tenant], mix: TierMix,
                     rng: random.Random, args: argparse.Namespace, anchor: datetime) -> dict:
    """The time to onboard one more free-tier tenant at the current scale: --extra-tenants of
    them, each with its events in the pool, onboarded one by one after a VACUUM of the pool and
    a CHECKPOINT."""
    scale = len(tenants)
    extra = new_tenants(rng, ["free"] * args.extra_tenants, scale + 1)
    for _ in extra:
        mix.record("free")
    create_organizations(conn, extra)
    copy_events(conn, event_rows(extra, args.events_per_tenant, anchor))
    conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(SHARED_PARTITION)))
    conn.execute("CHECKPOINT")
    load = h.wait_until_idle(timeout=IDLE_WAIT_S)
    before = function_times(conn)
    records = onboard(conn, extra, scale, f"one more tenant at {scale:,}")
    after = function_times(conn)
    tenants.extend(extra)
    check_storage(conn, tenants)
    times = [r["ms"] for r in records]
    inside = {name: (after[name]["ms"] - before[name]["ms"]) / len(extra) for name in FUNCTIONS_TRACKED}
    result = {"scale": scale, "samples_ms": times, "median_ms": statistics.median(times),
              "p95_ms": h.percentile(times, 95), "max_ms": max(times), "load_before_cores": load,
              "function_ms_per_tenant": inside,
              "outside_functions_ms_per_tenant": statistics.mean(times) - sum(inside.values())}
    h.log(f"one more tenant at {scale:,}: median {result['median_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms "
          f"(prepare {inside['fn_prepare_tenant_partition']:.1f} ms, attach {inside['fn_attach_tenant_partition']:.1f} ms)")
    return result


SENSOR_SAMPLES = 7


def measure_sensor(conn: psycopg.Connection, scale: int) -> dict:
    """What one tick of tenant_onboarding_sensor reads from the billing database (every
    organization id, the tenants in the pool's recent months, interrupted promotions, the tier
    map), timed as the sensor runs it; the median of SENSOR_SAMPLES ticks after one warm-up."""
    def tick() -> tuple[float, int, int]:
        started = time.perf_counter()
        organizations = organization_ids(conn)
        in_pool = pool_tenants(conn)
        interrupted_promotions(conn)
        tenant_tiers(conn)
        return (time.perf_counter() - started) * 1000, len(organizations), len(in_pool)

    tick()
    samples = [tick() for _ in range(SENSOR_SAMPLES)]
    times = [ms for ms, _, _ in samples]
    result = {"scale": scale, "median_ms": statistics.median(times), "max_ms": max(times),
              "organizations": samples[-1][1], "tenants_in_pool_recently": samples[-1][2]}
    h.log(f"sensor reads at {scale:,} tenants: median {result['median_ms']:.1f} ms "
          f"({result['organizations']:,} organizations, {result['tenants_in_pool_recently']:,} in the pool's recent months)")
    return result


# -- catalog -------------------------------------------------------------------------------------

_TENANT_RELATIONS = """
WITH tables AS (
    SELECT t.relid AS oid FROM pg_partition_tree(%(part)s::regclass) t
    UNION ALL
    SELECT c.reltoastrelid FROM pg_partition_tree(%(part)s::regclass) t
      JOIN pg_class c ON c.oid = t.relid
     WHERE c.reltoastrelid <> 0
)
SELECT (SELECT count(*) FROM tables)
     + (SELECT count(*) FROM pg_index i JOIN tables ON i.indrelid = tables.oid)
"""


def tenant_relations(conn: psycopg.Connection, tenant: Tenant) -> int:
    """Relations one tenant's partition tree adds to pg_class: tables, partitioned tables,
    indexes, TOAST tables and their indexes. A pooled tenant adds none."""
    part = f"public.{partition_name(tenant.id)}"
    if conn.execute("SELECT to_regclass(%s)", (part,)).fetchone()[0] is None:
        return 0
    return conn.execute(_TENANT_RELATIONS, {"part": part}).fetchone()[0]


def measure_catalog(conn: psycopg.Connection, tenants: Sequence[Tenant], probes: dict[str, Tenant]) -> dict:
    catalog = catalog_size(conn)
    catalog["database_bytes"] = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    catalog["tenants"] = len(tenants)
    catalog["relations_per_tenant"] = {tier: tenant_relations(conn, t) for tier, t in probes.items()}
    catalog["dedicated_tenants"] = len(attached_tenant_partitions(conn))
    catalog["leaf_budget"] = conn.execute("SELECT leaf_budget FROM partition_config").fetchone()[0]
    h.log(f"catalog at {len(tenants):,} tenants: {catalog['relations']:,} relations, "
          f"{h.mib(catalog['catalog_bytes'])} of catalog, {catalog['usage_events_leaves']:,} leaves")
    return catalog


def analyze_parent(conn: psycopg.Connection) -> float:
    """ANALYZE usage_events_mt (its inheritance statistics and every partition's); seconds."""
    started = time.perf_counter()
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(PARENT)))
    return time.perf_counter() - started


# -- queries -------------------------------------------------------------------------------------

_SINCE = sql.SQL("\"timestamp\" >= now() - interval '7 days'")
QUERY_KINDS = ("explicit", "rls_only")  # with an organization_id literal; with RLS alone


def query_text(kind: str, tenant: Tenant) -> sql.Composed:
    """The timed query. The explicit variant carries the tenant id as a literal in the SQL
    text, so the planner prunes to the tenant's partition; RLS alone adds
    organization_id = fn_current_tenant_id(), which prunes only at executor start-up."""
    where = _SINCE if kind == "rls_only" else sql.SQL("organization_id = {} AND {}").format(
        sql.Literal(tenant.id), _SINCE)
    return sql.SQL("SELECT count(*), sum(quantity) FROM usage_events WHERE {}").format(where)


def plan_shape(plan: dict) -> dict:
    """Leaves scanned and subplans removed at executor start-up, from an EXPLAIN JSON plan."""
    scanned, removed, stack = [], 0, [plan]
    while stack:
        node = stack.pop()
        removed += node.get("Subplans Removed", 0)
        if "Relation Name" in node:
            scanned.append(node["Relation Name"])
        stack.extend(node.get("Plans", []))
    return {"leaves_scanned": len(scanned), "subplans_removed_at_startup": removed, "scanned": sorted(scanned)}


def explain_as_app(conn: psycopg.Connection, tenant: Tenant, query: sql.Composed, count_locks: bool = False) -> dict:
    """One EXPLAIN (ANALYZE, FORMAT JSON) of ``query`` as billing_app in ``tenant``'s context,
    in its own transaction."""
    with conn.transaction():
        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant.id,))
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(APP_ROLE)))
        (output,) = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(query)).fetchone()
        locks = (conn.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()").fetchone()[0]
                 if count_locks else None)
    top = output[0]
    return {"planning_ms": top["Planning Time"], "execution_ms": top["Execution Time"],
            "plan": top["Plan"], "locks": locks}


def measure_query(dsn: str, args: argparse.Namespace, tenant: Tenant, kind: str, scale: int) -> dict:
    """The first run on a fresh connection (cold caches), then up to --query-repeat warm runs
    within --query-budget seconds (at least 5)."""
    query = query_text(kind, tenant)
    label = f"{kind} query, {tenant.tier} tenant, {scale:,} tenants"
    try:
        with h.connect(dsn, args.synchronous_commit) as conn:
            with h.ResourceProbe(h.local_backend_pid(conn)) as probe:
                cold = explain_as_app(conn, tenant, query, count_locks=True)
                warm, started = [], time.perf_counter()
                while len(warm) < args.query_repeat and (
                        len(warm) < MIN_QUERY_SAMPLES or time.perf_counter() - started < args.query_budget):
                    warm.append(explain_as_app(conn, tenant, query))
    except psycopg.errors.OutOfMemory as exc:  # out of shared memory: the lock table is full
        h.log(f"{label}: failed: {exc.diag.message_primary} ({exc.diag.message_hint})")
        return {"kind": kind, "tier": tenant.tier, "error": f"{exc.diag.message_primary}: {exc.diag.message_hint}"}
    planning = [r["planning_ms"] for r in warm]
    execution = [r["execution_ms"] for r in warm]
    result = {
        "kind": kind, "tier": tenant.tier, "tenant": str(tenant.id), "samples": len(warm),
        "planning_median_ms": statistics.median(planning), "planning_p95_ms": h.percentile(planning, 95),
        "execution_median_ms": statistics.median(execution), "execution_p95_ms": h.percentile(execution, 95),
        "cold_planning_ms": cold["planning_ms"], "cold_execution_ms": cold["execution_ms"],
        "locks_held": cold["locks"], "planning_ms": planning, "execution_ms": execution,
        **plan_shape(warm[-1]["plan"]), **probe.as_dict(),
    }
    result["total_median_ms"] = statistics.median(p + e for p, e in zip(planning, execution))
    h.log(f"{label}: planning median {result['planning_median_ms']:.2f} ms, execution median "
          f"{result['execution_median_ms']:.2f} ms ({len(warm)} runs; cold planning {cold['planning_ms']:.1f} ms, "
          f"{cold['locks']:,} locks held)")
    return result


def probe_tenants(tenants: Sequence[Tenant]) -> dict[str, Tenant]:
    """The first tenant of each PROBE_TIERS tier: the same tenants at every scale."""
    probes = {}
    for tier in PROBE_TIERS:
        found = next((t for t in tenants if t.tier == tier), None)
        if found is not None:
            probes[tier] = found
    return probes


# -- ingest ----------------------------------------------------------------------------------------


def measure_ingest(admin: psycopg.Connection, dsn: str, tenants: Sequence[Tenant], args: argparse.Namespace) -> dict:
    """bench/ingest.py's subject and baseline A, in alternating order after one warm-up round,
    into the emptied tables, with all ``tenants`` onboarded. Drops the flat table afterwards."""
    variants = [v for v in ingest_bench.VARIANTS if v.key in ("subject", "flat_rls")]
    day = admin.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'").fetchone()[0]
    ingest_bench.create_flat_table(admin)
    ingest_bench.check_flat_matches(admin)
    batches = ingest_bench.generate_batches([t.id for t in tenants], args.ingest_events, args.ingest_batch,
                                            args.seed, day)
    h.log(f"ingest at {len(tenants):,} tenants: {args.ingest_events:,} events in {len(batches):,} batches")
    warmup = batches[:INGEST_WARMUP_BATCHES]
    for variant in variants:
        ingest_bench.run_once(variant, warmup, admin, dsn, args.synchronous_commit, "ingest warm-up")
    runs = []
    for round_ in range(args.ingest_repeat):
        for variant in variants if round_ % 2 == 0 else reversed(variants):
            run = ingest_bench.run_once(variant, batches, admin, dsn, args.synchronous_commit,
                                        f"ingest round {round_ + 1}/{args.ingest_repeat}")
            run.pop("leaves", None)  # one line per leaf: too much for the results file at 1,000 tenants
            runs.append(run)
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(ingest_bench.FLAT_TABLE)))
    del batches
    gc.collect()
    keys = [v.key for v in variants]
    clean = [r for r in runs if not r.get("disturbed")]
    clean_basis = all(any(r["variant"] == key for r in clean) for key in keys)
    counted = clean if clean_basis else runs
    medians = {key: statistics.median(r["rows_per_second"] for r in counted if r["variant"] == key)
               for key in keys}
    return {"tenants": len(tenants), "events": args.ingest_events, "batch": args.ingest_batch,
            "repeat": args.ingest_repeat, "runs": runs,
            "basis": "undisturbed runs" if clean_basis else "all runs (a variant had no undisturbed run)",
            "median_rows_per_second": medians, "labels": {v.key: v.label for v in variants},
            "ratio_subject_to_flat_rls": medians["subject"] / medians["flat_rls"]}


# -- the benchmark ---------------------------------------------------------------------------------


def check_tiers(conn: psycopg.Connection, mix: dict[str, float]) -> dict[str, bool]:
    """The tiers and which are split by month, from tier_limits; the mix must use real tiers."""
    by_month = dict(conn.execute("SELECT tier, partition_by_month FROM tier_limits ORDER BY tier").fetchall())
    unknown = sorted(set(mix) - set(by_month))
    if unknown:
        raise SystemExit(f"--mix names tiers that tier_limits does not have: {', '.join(unknown)} "
                         f"(tiers: {', '.join(by_month)})")
    if {t for t, monthly in by_month.items() if monthly} != set(MONTHLY_TIERS):
        h.log("note: tier_limits.partition_by_month differs from MONTHLY_TIERS; the lock estimate may be off")
    return by_month


def measure_scale(admin: psycopg.Connection, dsn: str, tenants: list[Tenant], scale: int, mix: TierMix,
                  rng: random.Random, args: argparse.Namespace, anchor: datetime) -> dict:
    growth = grow(admin, tenants, scale, mix, rng, args, anchor)
    probes = probe_tenants(tenants)
    catalog = measure_catalog(admin, tenants, probes)
    analyze_seconds = analyze_parent(admin)
    h.log(f"ANALYZE {PARENT} at {scale:,} tenants: {analyze_seconds:.1f}s")
    load = h.wait_until_idle(timeout=IDLE_WAIT_S)
    queries = [measure_query(dsn, args, tenant, kind, scale) for tenant in probes.values() for kind in QUERY_KINDS]
    result = {"scale": scale, "tiers": dict(sorted(Counter(t.tier for t in tenants).items())),
              "growth": growth, "catalog": catalog, "analyze_seconds": analyze_seconds,
              "load_before_queries_cores": load, "queries": queries}
    if scale == args.ingest_at and args.ingest_events:
        result["ingest"] = measure_ingest(admin, dsn, tenants, args)
        # The runs emptied usage_events_mt: give the tenants their events back, in their partitions.
        copy_events(admin, event_rows(tenants, args.events_per_tenant, anchor))
    if scale == args.scales[-1]:
        result["binding"] = measure_binding(admin, dsn, args, probes, scale)
    result["one_more"] = onboard_one_more(admin, tenants, mix, rng, args, anchor)
    result["sensor"] = measure_sensor(admin, len(tenants))
    return result


def measure_binding(admin: psycopg.Connection, dsn: str, args: argparse.Namespace,
                    probes: dict[str, Tenant], scale: int) -> dict:
    """The cost of binding the context to its transaction (sql/0017): the same queries with
    sql/0005's context functions ("unbound") and today's ("bound"), alternating BINDING_ROUNDS
    times on the same data, in the same run. Leaves the bound functions in place."""
    series: dict[str, list[dict]] = {"unbound": [], "bound": []}
    try:
        for round_number in range(BINDING_ROUNDS):
            order = ("unbound", "bound") if round_number % 2 == 0 else ("bound", "unbound")
            for version in order:
                admin.execute(unbound_context_functions() if version == "unbound" else bound_context_functions())
                h.wait_until_idle(timeout=IDLE_WAIT_S)
                h.log(f"context binding, round {round_number + 1}: {version} functions")
                series[version] += [measure_query(dsn, args, tenant, kind, scale)
                                    for tenant in probes.values() for kind in QUERY_KINDS]
    finally:
        admin.execute(bound_context_functions())
    out = []
    for tier in probes:
        for kind in QUERY_KINDS:
            runs = {v: [q for q in series[v] if q["tier"] == tier and q["kind"] == kind and "error" not in q]
                    for v in series}
            if not all(runs.values()):
                continue
            figure = {v: {"planning_median_ms": statistics.median(x for q in runs[v] for x in q["planning_ms"]),
                          "total_median_ms": statistics.median(p + e for q in runs[v]
                                                               for p, e in zip(q["planning_ms"], q["execution_ms"])),
                          "samples": sum(q["samples"] for q in runs[v])}
                      for v in runs}
            out.append({"tier": tier, "kind": kind, **figure,
                        "planning_ratio": figure["bound"]["planning_median_ms"] / figure["unbound"]["planning_median_ms"],
                        "total_ratio": figure["bound"]["total_median_ms"] / figure["unbound"]["total_median_ms"]})
    return {"scale": scale, "rounds": BINDING_ROUNDS, "comparisons": out}


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    with h.connect(dsn, args.synchronous_commit) as admin:
        h.migrate_scratch(admin, "the benchmark migrates, creates partitions, checkpoints and reads function "
                                 "statistics")
        if args.leaf_budget is not None:
            admin.execute("UPDATE partition_config SET leaf_budget = %s", (args.leaf_budget,))
        tiers = check_tiers(admin, args.mix)
        admin.execute("SET track_functions = 'pl'")  # prepare/attach time of the onboarding functions
        server, locks = h.server_info(admin), h.lock_capacity(admin)
        h.log(f"server: {server['version']}; lock table: {locks['lock_slots']:,} slots "
              f"(max_locks_per_transaction={locks['max_locks_per_transaction']})")
        anchor = admin.execute("SELECT now()").fetchone()[0]
        mix, rng, tenants = TierMix(args.mix), random.Random(args.seed), []
        baseline = measure_catalog(admin, tenants, {})
        started = time.perf_counter()
        scales = [measure_scale(admin, dsn, tenants, scale, mix, rng, args, anchor) for scale in args.scales]
        return {
            "benchmark": NAME,
            "command": command_line(args),
            "parameters": {k: v for k, v in vars(args).items() if k not in ("dsn", "no_docs")},
            "targets": targets(scales),
            "machine": h.machine_info(),
            "server": server,
            "server_kind": server_kind,
            "lock_capacity": locks,
            "tier_by_month": tiers,
            "events_anchor": anchor.isoformat(),
            "catalog_before_tenants": baseline,
            "scales": scales,
            "seconds": time.perf_counter() - started,
            "python_peak_rss_bytes": h.python_peak_rss(),
        }


# -- targets ---------------------------------------------------------------------------------------


def _query(scale: dict, kind: str, tier: str) -> dict | None:
    return next((q for q in scale["queries"] if q["kind"] == kind and q["tier"] == tier and "error" not in q), None)


def _target(what: str, required: str, value: float | None, measured: str, met: bool, limit: float, *,
            minimum: bool = False) -> dict:
    """One target's entry: its margin from ``limit`` when a value was measured."""
    return {"target": what, "required": required, "measured_value": value, "measured": measured, "met": met,
            "margin": "" if value is None else h.margin(value, limit, minimum=minimum)}


def targets(scales: list[dict]) -> list[dict]:
    """Each target: what is required, what was measured at the largest scale, met or not."""
    first, last = scales[0], scales[-1]
    one_more = last["one_more"]["median_ms"]
    out = [_target(f"Onboard one more tenant at {last['scale']:,} tenants (median)",
                   f"< {TARGET_ONBOARD_ONE_MS:.0f} ms", one_more, f"{one_more:.1f} ms",
                   one_more < TARGET_ONBOARD_ONE_MS, TARGET_ONBOARD_ONE_MS)]
    for tier in PROBE_TIERS:
        small, large = _query(first, "explicit", tier), _query(last, "explicit", tier)
        if small and large:
            ratio = large["total_median_ms"] / small["total_median_ms"]
            out.append(_target(
                f"Explicit predicate, {tier} tenant: planning + execution at {last['scale']:,} "
                f"vs {first['scale']:,} tenants (medians)", f"≤ {TARGET_EXPLICIT_RATIO}×", ratio,
                f"{ratio:.2f}× ({small['total_median_ms']:.2f} → {large['total_median_ms']:.2f} ms)",
                ratio <= TARGET_EXPLICIT_RATIO, TARGET_EXPLICIT_RATIO))
    for tier in PROBE_TIERS:
        rls = _query(last, "rls_only", tier)
        failed = next((q for q in last["queries"] if q["kind"] == "rls_only" and q["tier"] == tier and "error" in q), None)
        if rls or failed:
            value = rls["planning_median_ms"] if rls else None
            out.append(_target(
                f"RLS alone, {tier} tenant: planning at {last['scale']:,} tenants (median)",
                f"< {TARGET_RLS_PLANNING_MS:.0f} ms", value,
                f"{value:,.1f} ms" if rls else f"failed: {failed['error']}",
                bool(rls) and value < TARGET_RLS_PLANNING_MS, TARGET_RLS_PLANNING_MS))
    relations = last["catalog"]["relations"]
    out.append(_target(f"Relations in pg_class at {last['scale']:,} tenants", f"< {TARGET_RELATIONS:,}", relations,
                       f"{relations:,}", relations < TARGET_RELATIONS, TARGET_RELATIONS))
    ingest = next((s["ingest"] for s in scales if "ingest" in s), None)
    if ingest:
        ratio = ingest["ratio_subject_to_flat_rls"]
        out.append(_target(
            f"Ingest with {ingest['tenants']:,} tenants onboarded: usage_events_mt vs flat table + RLS",
            f"≥ {TARGET_INGEST_PARITY}×", ratio, f"{ratio:.3f}×", ratio >= TARGET_INGEST_PARITY,
            TARGET_INGEST_PARITY, minimum=True))
    for c in last.get("binding", {}).get("comparisons", []):
        key, what = (("planning_ratio", "planning") if c["kind"] == "rls_only" else ("total_ratio", "planning + execution"))
        ratio, metric = c[key], key.replace("_ratio", "_median_ms")
        out.append(_target(
            f"Context bound to its transaction (sql/0017) vs unbound (sql/0005), {c['kind']}, "
            f"{c['tier']} tenant: {what} at {last['scale']:,} tenants (medians, same run)",
            f"≤ {TARGET_BINDING_RATIO}×", ratio,
            f"{ratio:.3f}× ({c['unbound'][metric]:.2f} → {c['bound'][metric]:.2f} ms)",
            ratio <= TARGET_BINDING_RATIO, TARGET_BINDING_RATIO))
    if last["scale"] != TARGET_SCALE:
        for entry in out:
            entry["target"] += f" (the targets are set for {TARGET_SCALE:,})"
    return out


# -- report ----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _layout_medians(records: list[dict]) -> str:
    parts = []
    for layout in ("pooled", "single", "monthly"):
        times = [r["ms"] for r in records if r["layout"] == layout]
        parts.append(_ms(statistics.median(times)) if times else "–")
    return " / ".join(parts)


def onboarding_buckets(records: list[dict], size: int = 1_000) -> list[list[str]]:
    """Per-tenant onboarding time by how many tenants were attached already, in buckets."""
    buckets: dict[int, list[dict]] = {}
    for r in records:
        buckets.setdefault(r["tenants_before"] // size, []).append(r)
    rows = []
    for key in sorted(buckets):
        group = buckets[key]
        times = [r["ms"] for r in group]
        rows.append([f"{key * size:,}–{key * size + size - 1:,}", f"{len(group):,}", _ms(statistics.median(times)),
                     _ms(h.percentile(times, 95)), _layout_medians(group),
                     f"{len(group) / (sum(times) / 1000):,.1f}"])
    return rows


def render_markdown(results: dict) -> str:
    p = results["parameters"]
    mix = ", ".join(f"{share:g}% {tier}" for tier, share in p["mix"].items())
    monthly = sorted(t for t, by_month in results["tier_by_month"].items() if by_month)
    out = [
        "# Benchmark: tenant partitions at scale",
        "",
        *h.generated_by(NAME, results),
        f"One database grows through {', '.join(f'{s:,}' for s in p['scales'])} onboarded tenants "
        f"(whole run: {results['seconds'] / 60:.1f} min). Tier mix: {mix} of the tenants, dealt "
        f"smoothly, the first four tenants one of each tier. Layout (sql/0016): {', '.join(monthly)} "
        "tenants ask for a dedicated partition split by month (`tier_limits.partition_by_month`: a "
        "partition per month, this one and `partition_config.premake_months` ahead, besides `_rest`) "
        "and get one while the leaves under `usage_events_mt` stay within "
        "`partition_config.leaf_budget`, first come first served; every other tenant, and those past "
        "the budget, is pooled: its rows live in the DEFAULT partition, one pool shared by all, split "
        f"by month. Each tenant gets {p['events_per_tenant']} usage events in the current month, "
        "inserted as the superuser before it is onboarded, so they land in the pool.",
        "",
        "## Targets",
        "",
        h.markdown_table(["Target", "Required", "Measured", "Result", "Margin"],
                         [[t["target"], t["required"], t["measured"], h.verdict(t["met"], ("met", "missed")), t["margin"]]
                          for t in results["targets"]]),
        "",
        *render_onboarding(results),
        *render_queries(results),
        *render_binding(results),
        *render_catalog(results),
        *render_ingest(results),
        *render_setup(results),
    ]
    return "\n".join(out)


def render_onboarding(results: dict) -> list[str]:
    scales = results["scales"]
    growth_rows = [
        [f"{g['from']:,} → {g['to']:,}", f"{g['tenants_added']:,}", f"{g['setup_seconds']:.1f}",
         f"{g['seconds']:.1f}", f"{g['tenants_per_second']:,.1f}",
         _ms(statistics.median(r["ms"] for r in g["records"])), _ms(h.percentile([r["ms"] for r in g["records"]], 95)),
         _layout_medians(g["records"]), h.mib(g["backend_peak_private_bytes"])]
        for g in (s["growth"] for s in scales)
    ]
    one_more_rows = [
        [f"{o['scale']:,}", len(o["samples_ms"]), _ms(o["median_ms"]), _ms(o["p95_ms"]), _ms(o["max_ms"]),
         _ms(o["function_ms_per_tenant"]["fn_prepare_tenant_partition"]),
         _ms(o["function_ms_per_tenant"]["fn_attach_tenant_partition"]),
         _ms(o["outside_functions_ms_per_tenant"])]
        for o in (s["one_more"] for s in scales)
    ]
    largest = max(scales, key=lambda s: s["growth"]["tenants_added"])["growth"]
    return [
        "## Onboarding",
        "",
        "`ensure_tenant_partition(conn, tenant)` for each new tenant in turn, on one superuser "
        "connection. For a pooled tenant that is one transaction, `fn_prepare_tenant_partition`, "
        "which checks that the pool's months are in place and creates nothing. For a tenant that "
        "gets a dedicated partition: `fn_prepare_tenant_partition` creates it standalone (and its "
        "months); then, holding the tenant's advisory lock, `fn_pool_exclude_tenant` adds NOT VALID "
        "CHECKs to the pool's leaves, `fn_attach_tenant_partition` moves its rows out of the pool, "
        "validates the CHECKs and ATTACHes, and `fn_pool_unexclude_tenant` drops them: four "
        "transactions. *Set-up* (creating the organizations and their events, not timed as "
        "onboarding) and *onboarding* are wall-clock seconds; the rate is tenants onboarded per second "
        "of onboarding.",
        "",
        h.markdown_table(
            ["Growth step", "Tenants", "Set-up s", "Onboarding s", "Tenants/s", "Median ms", "p95 ms",
             "Median ms pooled / single / monthly", "Backend peak private"],
            growth_rows, "lrrrrrrrr"),
        "",
        "### Onboarding one more tenant",
        "",
        f"At each scale, {len(scales[0]['one_more']['samples_ms'])} more free-tier tenants, each with "
        f"{results['parameters']['events_per_tenant']} events in the pool, onboarded one by one "
        "after a `VACUUM` of the pool and a `CHECKPOINT`: pooled, so onboarding is registering. Time per call of "
        "`ensure_tenant_partition`, and its split from `pg_stat_user_functions` (mean per tenant): inside "
        "`fn_prepare_tenant_partition`, inside `fn_attach_tenant_partition`, and outside both (round "
        "trips, BEGIN/COMMIT, commit-time work).",
        "",
        h.markdown_table(
            ["Tenants onboarded", "Samples", "Median ms", "p95 ms", "Max ms", "prepare ms", "attach ms",
             "outside ms"],
            one_more_rows, "rrrrrrrr"),
        "",
        "### What the onboarding sensor reads per tick",
        "",
        "What one tick of `tenant_onboarding_sensor` reads from the billing database, timed on the "
        "benchmark's connection: every organization id (an index-only scan), the tenants with rows "
        "in the pool's recent months (a skip scan of its primary key: one index probe per tenant "
        "there), interrupted promotions and the tier map. Median of "
        f"{SENSOR_SAMPLES} ticks after a warm-up.",
        "",
        h.markdown_table(["Tenants", "Organizations read", "Tenants in the pool's recent months", "Median ms", "Max ms"],
                         [[f"{o['scale']:,}", f"{o['organizations']:,}", f"{o['tenants_in_pool_recently']:,}",
                           _ms(o["median_ms"]), _ms(o["max_ms"])]
                          for o in (s["sensor"] for s in scales if "sensor" in s)], "rrrrr"),
        "",
        f"### Time per tenant as the count grows ({largest['from']:,} → {largest['to']:,})",
        "",
        "Bucketed by how many tenants were onboarded before the tenant; the rate is "
        "tenants per second of onboarding time in the bucket.",
        "",
        h.markdown_table(["Tenants onboarded before", "Tenants", "Median ms", "p95 ms",
                          "Median ms pooled / single / monthly", "Tenants/s"],
                         onboarding_buckets(largest["records"]), "lrrrrr"),
        "",
    ]


def render_queries(results: dict) -> list[str]:
    rows = []
    for s in results["scales"]:
        for q in s["queries"]:
            if "error" in q:
                rows.append([f"{s['scale']:,}", f"{s['catalog']['usage_events_leaves']:,}", q["tier"],
                             q["kind"], "failed", q["error"], "", "", "", "", "", "", ""])
                continue
            rows.append([
                f"{s['scale']:,}", f"{s['catalog']['usage_events_leaves']:,}", q["tier"], q["kind"],
                _ms(q["planning_median_ms"]), _ms(q["planning_p95_ms"]), _ms(q["execution_median_ms"]),
                _ms(q["execution_p95_ms"]), _ms(q["cold_planning_ms"]), q["samples"],
                f"{q['leaves_scanned']} / {q['subplans_removed_at_startup']:,}", f"{q['locks_held']:,}",
                h.mib(q["backend_peak_private_bytes"]),
            ])
    return [
        "## Single-tenant query latency",
        "",
        "As billing_app: in a transaction, `SELECT fn_set_tenant_context(tenant)`, `SET LOCAL ROLE "
        "billing_app`, then `EXPLAIN (ANALYZE, FORMAT JSON)` of the query; *Planning Time* and "
        "*Execution Time* as the server reports them (tier limits are not applied). Queries:",
        "",
        "- **explicit**: `SELECT count(*), sum(quantity) FROM usage_events WHERE organization_id = "
        "'<tenant>'::uuid AND \"timestamp\" >= now() - interval '7 days'`. The tenant id is a literal "
        "in the SQL text (`psycopg.sql.Literal`), so the planner prunes to the tenant's partition "
        "(for a pooled tenant: to the pool).",
        "- **rls_only**: the same without the `organization_id` predicate: the tenant comes from the "
        "policy alone (`organization_id = fn_current_tenant_id()`, STABLE), which prunes only at "
        "executor start-up: the planner plans every leaf, which is why the layout bounds them.",
        "",
        f"Each series runs on a fresh connection: the first run (*cold*) fills that backend's caches "
        f"and is not counted; then up to {results['parameters']['query_repeat']} warm runs, stopping "
        f"after {results['parameters']['query_budget']:g}s with at least {MIN_QUERY_SAMPLES}. The free "
        "tenant is pooled: its rows are in the pool's months, with every other pooled tenant's; "
        "the enterprise tenant (the first one dealt) has a dedicated partition, `_rest` and its "
        "month leaves. "
        "*Leaves scanned / removed* are from the last warm plan: leaves in the plan, and subplans removed at "
        "executor start-up. *Locks* are the locks the cold run's transaction held; *backend private* is "
        "the sampled peak of the serving backend's private memory over the series (its caches of "
        "every partition it planned).",
        "",
        h.markdown_table(
            ["Tenants", "Leaves", "Tenant", "Query", "Planning median ms", "Planning p95 ms",
             "Execution median ms", "Execution p95 ms", "Cold planning ms", "Runs",
             "Leaves scanned / removed", "Locks", "Backend private"],
            rows, "rrllrrrrrrrrr"),
        "",
    ]


def render_binding(results: dict) -> list[str]:
    binding = results["scales"][-1].get("binding")
    if not binding:
        return []
    rows = [[c["tier"], c["kind"], _ms(c["unbound"]["planning_median_ms"]), _ms(c["bound"]["planning_median_ms"]),
             f"{c['planning_ratio']:.3f}×", _ms(c["unbound"]["total_median_ms"]), _ms(c["bound"]["total_median_ms"]),
             f"{c['total_ratio']:.3f}×", f"{c['unbound']['samples']} / {c['bound']['samples']}"]
            for c in binding["comparisons"]]
    return [
        "## The context bound to its transaction",
        "",
        f"At {binding['scale']:,} tenants, the queries above with the context functions as sql/0005 had them "
        "(*unbound*: `fn_current_tenant_id()` reads the tenant from `app.current_tenant` whatever set it) and as they are now "
        "(*bound*, sql/0017: the value counts only when its stamp is this transaction's start, so a session-level "
        f"value from an earlier transaction reads as no context), alternating {binding['rounds']} times "
        "on the same data, in the same run; medians over every warm run of each version.",
        "",
        h.markdown_table(["Tenant", "Query", "Planning unbound ms", "Planning bound ms", "Planning ratio",
                          "Total unbound ms", "Total bound ms", "Total ratio", "Runs"],
                         rows, "llrrrrrrr"),
        "",
    ]


def render_catalog(results: dict) -> list[str]:
    rows, previous = [], results["catalog_before_tenants"]
    rows.append(["0", f"{previous['relations']:,}", h.mib(previous["catalog_bytes"]),
                 h.mib(previous["database_bytes"]), f"{previous['usage_events_leaves']:,}", "0", "–", "–", "–"])
    for s in results["scales"]:
        c = s["catalog"]
        per_tenant = (c["relations"] - previous["relations"]) / (c["tenants"] - previous["tenants"])
        rows.append([f"{c['tenants']:,}", f"{c['relations']:,}", h.mib(c["catalog_bytes"]),
                     h.mib(c["database_bytes"]), f"{c['usage_events_leaves']:,} ({c['leaf_budget']:,})",
                     f"{c['dedicated_tenants']:,}",
                     f"{per_tenant:.1f}",
                     " / ".join(str(c["relations_per_tenant"].get(t, "–")) for t in PROBE_TIERS),
                     f"{s['analyze_seconds']:.1f}"])
        previous = c
    return [
        "## Catalog",
        "",
        "From `catalog_size()` (tenant_pipelines.core.partitions): relations in `pg_class`, bytes of "
        "the `pg_catalog` tables with their indexes and TOAST, and leaf partitions under "
        "`usage_events_mt`. *Per tenant (growth)* is the growth in relations over the growth in tenants "
        "since the previous scale (the tier mix); *per free / enterprise tenant* counts one tenant's tables, "
        "partitioned tables, indexes, TOAST tables and TOAST indexes (a pooled tenant has none). "
        "*Dedicated* is the tenants with a partition of their own; the leaves are bounded by "
        "`partition_config.leaf_budget`. *ANALYZE* is `ANALYZE usage_events_mt` before the queries.",
        "",
        h.markdown_table(["Tenants", "Relations", "Catalog", "Database", "Leaves (budget)", "Dedicated",
                          "Per tenant (growth)", "Per free / enterprise tenant", "ANALYZE s"],
                         rows, "rrrrrrrrr"),
        "",
    ]


def render_ingest(results: dict) -> list[str]:
    ingest = next((s["ingest"] for s in results["scales"] if "ingest" in s), None)
    if ingest is None:
        return []
    rows = [[ingest["labels"][key], f"{rate:,.0f}", f"{rate / ingest['median_rows_per_second']['flat_rls']:.3f}×",
             ", ".join(f"{r['rows_per_second']:,.0f}" + (" ⚠" if r.get("disturbed") else "")
                       for r in ingest["runs"] if r["variant"] == key)]
            for key, rate in ingest["median_rows_per_second"].items()]
    return [
        f"## Ingest with {ingest['tenants']:,} tenants onboarded",
        "",
        f"bench/ingest.py's subject and baseline A ({ingest['events']:,} time-ordered events over the "
        f"current UTC day, batches of {ingest['batch']:,} rows sent to the tenants in turn, every run on a "
        "fresh connection into the emptied, checkpointed table, after waiting for the machine to go "
        f"idle; an unmeasured warm-up of {INGEST_WARMUP_BATCHES} batches; {ingest['repeat']} run(s) of each, "
        "order alternated). The subject's rows land in the pool's current month for pooled tenants, and "
        "in their own partitions for dedicated ones (the current month's for monthly tenants). bench/ingest.py marks ⚠ a run disturbed by other work on the machine; "
        f"the medians are over **{ingest['basis']}**.",
        "",
        h.markdown_table(["Variant", "Median rows/s", "vs A", "All runs (rows/s)"], rows, "lrrl"),
        "",
    ]


def render_setup(results: dict) -> list[str]:
    m, srv, locks, p = results["machine"], results["server"], results["lock_capacity"], results["parameters"]
    last = results["scales"][-1]
    rls_locks = max((q.get("locks_held") or 0 for q in last["queries"] if q["kind"] == "rls_only"), default=0)
    loads = [(f"onboarding up to {s['scale']:,}", s["growth"]["load_before_cores"]) for s in results["scales"]]
    loads += [(f"the queries at {s['scale']:,}", s["load_before_queries_cores"]) for s in results["scales"]]
    loads += [(f"one more tenant at {s['scale']:,}", s["one_more"]["load_before_cores"]) for s in results["scales"]]
    busy = [what for what, load in loads if load >= h.IDLE_LOAD]
    tiers = "; ".join(f"{s['scale']:,}: " + ", ".join(f"{n:,} {t}" for t, n in s["tiers"].items())
                      for s in results["scales"])
    default_slots = 64 * (locks["lock_slots"] // locks["max_locks_per_transaction"])
    return [
        "## Set-up",
        "",
        *h.server_lines(srv, m, results["server_kind"]),
        f"- Lock table: max_locks_per_transaction={locks['max_locks_per_transaction']} "
        f"({locks['lock_slots']:,} slots for the whole server). The RLS-alone query at "
        f"{last['scale']:,} tenants held {rls_locks:,} locks in one transaction"
        + (f": {rls_locks / default_slots:.1f}× the {default_slots:,} slots the default "
           "max_locks_per_transaction=64 gives this server (PostgreSQL sizes the shared lock table "
           "to that, plus some slack; a transaction that overflows it fails with *out of shared "
           "memory*)" if rls_locks > default_slots else "")
        + ".",
        f"- Tenants per tier at each scale (the one-more tenants of the previous scale included, those of "
        f"the scale itself not): {tiers}.",
        f"- synchronous_commit={p['synchronous_commit']} on every benchmark connection; seed {p['seed']}.",
        f"- Each timed phase first waited (up to {IDLE_WAIT_S:g}s) for the machine to go idle (fewer than "
        f"{h.IDLE_LOAD} cores busy): "
        + (f"**still busy before {', '.join(busy)}: those figures are depressed by other work**."
           if busy else "it was idle before each."),
        f"- Python process peak RSS: {h.mib(results['python_peak_rss_bytes'])}.",
    ]


# -- main ------------------------------------------------------------------------------------------


def parse_scales(text: str) -> list[int]:
    return h.parse_counts(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(
        NAME, f"""Tenant-partition benchmark: one database grows through the scales of onboarded tenants; at each it
measures onboarding (tenants/s, and the time to onboard one more), single-tenant query planning and
execution as billing_app (explicit predicate vs RLS alone), the catalog's size, and at one scale
ingestion against a flat table. Writes bench/results/partitions.json and
docs/benchmarks/partitions.md. Targets at 10,000 tenants: one more tenant <
{TARGET_ONBOARD_ONE_MS:.0f} ms, explicit predicate within {TARGET_EXPLICIT_RATIO}x of the figure at
10, RLS-alone planning < {TARGET_RLS_PLANNING_MS:.0f} ms, < {TARGET_RELATIONS:,} relations, ingest
>= {TARGET_INGEST_PARITY}x flat.""",
    )
    parser.add_argument("--scales", type=parse_scales, default=list(DEFAULT_SCALES), metavar="N,N,...",
                        help="onboarded tenant counts to measure at, increasing (default: 10,1000,10000)")
    parser.add_argument("--mix", type=h.parse_mix, default=h.parse_mix(h.DEFAULT_MIX), metavar="TIER=SHARE,...",
                        help=f"tier mix of the tenants (default: {h.DEFAULT_MIX})")
    h.add_numbers(
        parser,
        ("--events-per-tenant", int, 5, "E", "usage events each tenant has in DEFAULT before it is onboarded (default: 5)"),
        ("--extra-tenants", int, 20, "K",
         "free-tier tenants onboarded at each scale to time one more onboarding (default: 20)"),
        ("--query-repeat", int, 30, "R", "warm runs of each query series (default: 30)"),
        ("--query-budget", float, 60.0, "S",
         f"stop a query series after S seconds, with at least {MIN_QUERY_SAMPLES} runs (default: 60)"),
        ("--ingest-at", int, None, "N", "the scale at which to measure ingestion (default: 1000 when it is one of "
                                        "the scales, else the largest scale below it, else the smallest)"),
        ("--ingest-events", int, 500_000, "N", "events per ingestion run; 0 skips the ingestion part (default: 500,000)"),
        ("--ingest-batch", int, 500, "B", "rows per ingestion batch, sent to the tenants in turn (default: 500)"),
        ("--ingest-repeat", int, 3, "R", "ingestion runs of each variant (default: 3)"),
        ("--seed", int, 42, None, "seed of the tenants and the ingested events"),
        ("--leaf-budget", int, None, "L", "partition_config.leaf_budget for the run (default: the migration's)"),
        ("--max-locks-per-transaction", int, None, "L",
         "for the throwaway cluster (default: enough for a query that locks every "
         "partition at the largest scale; ignored with --dsn)"),
    )
    parser.add_argument("--synchronous-commit", choices=("off", "on"), default="off",
                        help="synchronous_commit of every benchmark connection (default: off)")
    h.add_output_options(parser, NAME)
    args = parser.parse_args(argv)
    h.positive(parser, args, ("events_per_tenant", "extra_tenants", "query_repeat", "ingest_batch", "ingest_repeat"))
    if args.ingest_events < 0:
        parser.error("--ingest-events must be 0 or more")
    if args.leaf_budget is not None and args.leaf_budget < 1:
        parser.error("--leaf-budget must be at least 1")
    if args.ingest_at is None:
        below = [s for s in args.scales if s <= 1_000]
        args.ingest_at = below[-1] if below else args.scales[0]
    elif args.ingest_at not in args.scales:
        parser.error(f"--ingest-at {args.ingest_at} is not one of --scales")
    for a, b in zip(args.scales, args.scales[1:]):
        if b < a + args.extra_tenants:
            parser.error(f"--scales: {b} is less than {a} + the {args.extra_tenants} one-more tenants onboarded at {a}")
    return args


def command_line(args: argparse.Namespace) -> str:
    parts = ["--scales " + ",".join(str(s) for s in args.scales)]
    if args.mix != h.parse_mix(h.DEFAULT_MIX):
        parts.append("--mix " + ",".join(f"{t}={s:g}" for t, s in args.mix.items()))
    defaults = parse_args([])
    for name in ("events_per_tenant", "extra_tenants", "query_repeat", "query_budget", "ingest_events",
                 "ingest_batch", "ingest_repeat", "seed", "max_locks_per_transaction", "synchronous_commit",
                 "leaf_budget"):
        if getattr(args, name) != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    if args.ingest_at != 1_000:
        parts.append(f"--ingest-at {args.ingest_at}")
    return h.command(NAME, parts, args.dsn)


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds: the throwaway cluster is deleted


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    locks = args.max_locks_per_transaction or h.locks_setting_for(
        args.scales[-1], args.mix, LOCKS_PER_TENANT, MONTHLY_TIERS, LOCK_HEADROOM)
    results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind), scratch="bench_partitions",
                          settings={"max_locks_per_transaction": str(locks)},
                          throwaway_kind="throwaway cluster started by the benchmark (initdb defaults, "
                                         f"the project's BASE_SETTINGS and max_locks_per_transaction={locks})")
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{'MET   ' if target['met'] else 'MISSED'} {target['target']}: {target['measured']} "
        f"(required {target['required']}; {target['margin']})" for target in results["targets"]])


if __name__ == "__main__":
    sys.exit(main())
