#!/usr/bin/env python
"""Benchmark: the per-tenant metrics rollup at 1,000 and 10,000 tenants.

For each scale, a fresh database gets that many tenants (most pooled, the first growth and
enterprise ones with a dedicated partition split by month, within the leaf budget), onboarded
with ensure_tenant_partition(),
and --events usage events in all, spread over the last 120 days (some tenants churned, a few
idle), loaded as the superuser with COPY straight into usage_events_mt. Then it measures:

1. the rollup as the tenant_metrics asset runs it: collect() (SELECT from vw_tenant_metrics),
   record_history() and export_parquet(): wall time of each, peak memory of this process, of
   the server backend and of the whole server, and the locks collect() holds at once (per batch);
2. its correctness: collect()'s figures against a direct GROUP BY on usage_events_mt for a
   sample of tenants, in the same transaction (same now());
3. the seed's vw_tenant_metrics (docs: the seed's "Monitoring and Metrics"), created in the
   scratch database: verbatim (its storage expression names partitions our layout does not
   have: it fails; how and after how long is recorded), then with the storage expression fixed
   to our partition names (to_regclass) so that it runs: wall time, memory, and its counts
   against the ground truth (the join of subscriptions and events fans out).

Run on demand:  python bench/metrics.py [--scales 1000,10000] [--events N] [--dsn DSN] [--no-docs]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.core.metrics import (  # noqa: E402
    COLLECT_BATCH, collect, collect_batch, export_parquet, record_history, tenant_ids)
from tenant_pipelines.core.partitions import (  # noqa: E402
    attached_tenant_partitions, ensure_tenant_partition, stranded_in_pool)
from tenant_pipelines.local.cluster import find_bindir, server_os_user  # noqa: E402

NAME = "metrics"
DEFAULT_SCALES = (1_000, 10_000)
DEFAULT_EVENTS = 50_000_000
EVENT_WEIGHTS = {"free": 1, "starter": 4, "growth": 20, "enterprise": 100}  # events per tenant, relative
ACTIVE_SUBSCRIPTIONS = {"free": 1, "starter": 1, "growth": 2, "enterprise": 3}
HISTORY_DAYS = 120
CHURNED_EVERY, CHURNED_DAYS = 20, 40  # every 20th tenant: no events in its last 40 days
IDLE_EVERY = 50  # every 50th tenant (another one): no events at all
NO_ACTIVE_EVERY = 25  # every 25th tenant: its only subscription is canceled
LOAD_CHUNKS = 20
PROGRESS_EVERY = 500
IDLE_WAIT_S = 120.0
SEED_VIEW_TIMEOUT = "10min"
SCHEMA = "bench"  # the scratch database's own objects: load spec, the seed's views
# Locks one transaction may take per tenant when it reads every relation of its tree
# (partitioned tenant table and its 3 partitioned indexes; per leaf the leaf, 3 indexes,
# TOAST table and TOAST index). Monthly tenants: _rest + 5 history months + this + 3 premade.
LOCKS_PER_TENANT = {"single": 4 + 6, "monthly": 4 + 6 * 10}
LOCK_HEADROOM = 2.0
SEED_VIEW_SQL = """
CREATE VIEW {name} AS
SELECT
    o.id as organization_id,
    o.name as organization_name,
    tc.tier,
    COUNT(DISTINCT s.id) as active_subscriptions,
    COUNT(ue.id) as events_last_24h,
    pg_size_pretty(
        SUM(pg_total_relation_size(
            {storage}
        ))
    ) as storage_used,
    MAX(ue.timestamp) as last_activity
FROM organizations o
LEFT JOIN tenant_classifications tc ON o.id = tc.organization_id
LEFT JOIN subscriptions s ON o.id = s.organization_id AND s.status = 'active'
LEFT JOIN usage_events ue ON o.id = ue.organization_id
    AND ue.timestamp > NOW() - INTERVAL '24 hours'
GROUP BY o.id, o.name, tc.tier
"""
SEED_STORAGE = "'usage_events_mt_' || REPLACE(o.id::TEXT, '-', '_')"  # the seed's, verbatim
FIXED_STORAGE = "to_regclass('public.usage_events_mt_t_' || REPLACE(o.id::TEXT, '-', ''))"
SEED_VIEWS = {"seed_verbatim": SEED_STORAGE, "seed_fixed_names": FIXED_STORAGE}


# -- tenants -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    number: int  # 1-based
    tier: str
    events: int
    first: datetime  # events spread evenly over [first, end)
    end: datetime
    active_subscriptions: int

    @property
    def churned(self) -> bool:
        return self.number % CHURNED_EVERY == 0

    @property
    def idle(self) -> bool:
        return self.events == 0


def deal_tiers(count: int, mix: dict[str, float]) -> list[str]:
    """Tiers in fixed proportions, smoothly: each tenant gets the tier furthest below its share."""
    total = sum(mix.values())
    counts = dict.fromkeys(mix, 0)
    tiers = []
    for i in range(count):
        tier = max(mix, key=lambda t: mix[t] / total * (i + 1) - counts[t])
        counts[tier] += 1
        tiers.append(tier)
    return tiers


def plan_tenants(count: int, events: int, mix: dict[str, float], anchor: datetime, seed: int) -> list[Tenant]:
    """``count`` tenants sharing exactly ``events`` events by tier weight; every CHURNED_EVERY-th
    stops CHURNED_DAYS before ``anchor``, every IDLE_EVERY-th (offset by 1) has none."""
    rng = random.Random(seed)
    tiers = deal_tiers(count, mix)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]
    weights = [0 if (i + 1) % IDLE_EVERY == 1 and count > 1 else EVENT_WEIGHTS[t] for i, t in enumerate(tiers)]
    scale = events / sum(weights)
    shares = [math.floor(w * scale) for w in weights]
    for i in sorted(range(count), key=lambda i: -weights[i])[: events - sum(shares)]:
        shares[i] += 1  # largest tenants take the remainder: the total is exact
    tenants = []
    for i, (tenant_id, tier, n) in enumerate(zip(ids, tiers, shares)):
        number = i + 1
        end = anchor - timedelta(days=CHURNED_DAYS if number % CHURNED_EVERY == 0 else 0)
        active = 0 if number % NO_ACTIVE_EVERY == 0 else ACTIVE_SUBSCRIPTIONS[tier]
        tenants.append(Tenant(tenant_id, number, tier, n, anchor - timedelta(days=HISTORY_DAYS), end, active))
    return tenants


def create_tenants(conn: psycopg.Connection, tenants: Sequence[Tenant]) -> None:
    """Organizations, tier classifications with the tier's quotas, and subscriptions: the active
    ones of each tenant plus one canceled for every third tenant (and for those with none active)."""
    ids = [t.id for t in tenants]
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) SELECT * FROM unnest(%s::uuid[], %s::text[])",
                     (ids, [f"Metrics bench {t.number:05d} ({t.tier})" for t in tenants]))
        conn.execute(
            "INSERT INTO tenant_classifications (organization_id, tier, monthly_events_limit, storage_quota_gb)"
            " SELECT t.id, t.tier, l.monthly_events_limit, l.storage_quota_gb"
            " FROM unnest(%s::uuid[], %s::text[]) AS t (id, tier) JOIN tier_limits l USING (tier)",
            (ids, [t.tier for t in tenants]),
        )
        conn.execute(
            "INSERT INTO subscriptions (organization_id, plan, status)"
            " SELECT t.id, t.tier, 'active' FROM unnest(%s::uuid[], %s::text[], %s::int[]) AS t (id, tier, n),"
            " generate_series(1, t.n)",
            (ids, [t.tier for t in tenants], [t.active_subscriptions for t in tenants]),
        )
        canceled = [t.id for t in tenants if t.number % 3 == 0 or t.active_subscriptions == 0]
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status, canceled_at)"
                     " SELECT id, 'old', 'canceled', now() FROM unnest(%s::uuid[]) AS id", (canceled,))


def monthly_tiers(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tier FROM tier_limits WHERE partition_by_month")}


# -- loading -------------------------------------------------------------------------------------


def create_load_spec(conn: psycopg.Connection, tenants: Sequence[Tenant], monthly: set[str]) -> None:
    """bench.load_spec: per tenant with events, its events i = lo .. events - 1 are still to load,
    evenly spaced from first_ts by step."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL(
        "CREATE UNLOGGED TABLE {}.load_spec (ord int PRIMARY KEY, tenant uuid NOT NULL, monthly boolean NOT NULL,"
        " events bigint NOT NULL, lo bigint NOT NULL DEFAULT 0, first_ts timestamptz NOT NULL,"
        " step interval NOT NULL)").format(sql.Identifier(SCHEMA)))
    with conn.cursor() as cur, cur.copy(sql.SQL(
            "COPY {}.load_spec (ord, tenant, monthly, events, first_ts, step) FROM STDIN").format(
            sql.Identifier(SCHEMA))) as cp:
        for t in tenants:
            if t.events:
                cp.write_row((t.number, t.id, t.tier in monthly, t.events, t.first, (t.end - t.first) / t.events))


_GENERATE = """
SELECT s.tenant,
       (ARRAY['api_calls', 'compute_seconds', 'storage_gb_hours', 'messages_sent'])[1 + i %% 4],
       ((i * 7919 + s.ord) %% 10000000000) / 1000000.0,
       s.first_ts + s.step * i,
       '{{"source": "bench", "region": "' || (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[1 + i %% 3] || '"}}'
  FROM {schema}.load_spec s
 CROSS JOIN LATERAL generate_series(s.lo, LEAST(s.events, s.lo + %(limit)s) - 1) AS i
 WHERE s.ord BETWEEN %(first)s AND %(last)s AND (s.monthly OR NOT %(only_monthly)s)
"""


def copy_generated(source: psycopg.Connection, target: psycopg.Connection, first: int, last: int, *,
                   limit: int = 2**62, only_monthly: bool = False) -> int:
    """Up to ``limit`` events (from each one's ``lo``) of the tenants ord ``first``..``last``,
    generated by the server on ``source`` (COPY (SELECT ... generate_series) TO STDOUT) and
    streamed into usage_events_mt on ``target`` (COPY FROM STDIN, superuser): one tenant after
    another, each in time order."""
    query = sql.SQL(_GENERATE).format(schema=sql.Identifier(SCHEMA))
    params = {"limit": limit, "first": first, "last": last, "only_monthly": only_monthly}
    return h.copy_events(source, target, query, params)


def chunks(tenants: Sequence[Tenant], parts: int) -> Iterator[tuple[int, int]]:
    """(first ord, last ord) ranges of about equal events."""
    total = sum(t.events for t in tenants)
    first, acc = tenants[0].number, 0
    for t in tenants:
        acc += t.events
        if acc >= total / parts or t is tenants[-1]:
            yield first, t.number
            first, acc = t.number + 1, 0


def onboard_all(conn: psycopg.Connection, tenants: Sequence[Tenant], label: str) -> dict:
    """ensure_tenant_partition() for every tenant, one after another."""
    started = time.perf_counter()
    layouts: dict[str, int] = {}
    for done, t in enumerate(tenants, 1):
        report = ensure_tenant_partition(conn, t.id)
        layouts[report.layout] = layouts.get(report.layout, 0) + 1
        if done % PROGRESS_EVERY == 0:
            h.log(f"{label}: onboarded {done:,}/{len(tenants):,} ({done / (time.perf_counter() - started):,.0f}/s)")
    return {"seconds": time.perf_counter() - started, "layouts": layouts}


def load_events(admin: psycopg.Connection, source: psycopg.Connection, tenants: Sequence[Tenant], label: str) -> dict:
    started = time.perf_counter()
    loaded = 0
    for first, last in chunks([t for t in tenants if t.events], LOAD_CHUNKS):
        loaded += copy_generated(source, admin, first, last)
        h.log(f"{label}: {loaded:,} events loaded, {loaded / (time.perf_counter() - started):,.0f}/s")
    return {"events": loaded, "seconds": time.perf_counter() - started}


def build_scale(admin: psycopg.Connection, dsn: str, tenants: Sequence[Tenant], label: str) -> dict:
    """Tenants, onboarding, events, VACUUM (ANALYZE), CHECKPOINT. Monthly tenants first get
    their first event in DEFAULT so that onboarding premakes their months back to it; the
    other events are COPYed once every tenant is onboarded, straight into its partitions."""
    setup: dict = {}
    started = time.perf_counter()
    create_tenants(admin, tenants)
    create_load_spec(admin, tenants, monthly_tiers(admin))
    spec = sql.Identifier(SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as source:
        first_rows = copy_generated(source, admin, 1, len(tenants), limit=1, only_monthly=True)
        admin.execute(sql.SQL("UPDATE {}.load_spec SET lo = 1 WHERE monthly").format(spec))
        setup["tenants_seconds"] = time.perf_counter() - started
        h.log(f"{label}: {len(tenants):,} tenants created; onboarding them")
        setup["onboarding"] = onboard_all(admin, tenants, label)
        h.log(f"{label}: onboarded in {setup['onboarding']['seconds']:.0f}s; loading events")
        load = load_events(admin, source, tenants, label)
    left = stranded_in_pool(admin, [str(t.id) for t in tenants])
    load["events"] += first_rows
    setup["load"] = load
    expected = sum(t.events for t in tenants)
    if load["events"] != expected or left:
        raise SystemExit(f"{label}: loaded {load['events']:,} events, expected {expected:,}; "
                         f"{len(left):,} dedicated tenants with rows in the pool")
    h.log(f"{label}: {load['events']:,} events in {load['seconds']:.0f}s; VACUUM (ANALYZE) of every tenant")
    started = time.perf_counter()
    vacuum_tenants(admin, tenants)
    setup["vacuum_seconds"] = time.perf_counter() - started
    admin.execute("CHECKPOINT")
    setup["database_bytes"] = admin.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    setup["relations"] = relation_counts(admin)
    return setup


def vacuum_tenants(conn: psycopg.Connection, tenants: Sequence[Tenant], per_statement: int = 200) -> None:
    """VACUUM (ANALYZE) of each tenant's partition tree, as autovacuum would have done: hint
    bits and visibility maps set (index-only scans), statistics there. Not of usage_events_mt
    itself: its ANALYZE samples every leaf in one transaction, which at 10,000 tenants runs
    out of lock slots with the default max_locks_per_transaction. Pooled tenants' rows are in
    the pool, vacuumed last."""
    dedicated = attached_tenant_partitions(conn)
    ids = [t.id for t in tenants if str(t.id) in dedicated]
    for i in range(0, len(ids), per_statement):
        names = [sql.Identifier("public", f"usage_events_mt_t_{t.hex}") for t in ids[i:i + per_statement]]
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(", ").join(names)))
    conn.execute("VACUUM (ANALYZE) usage_events_mt_default")


def relation_counts(conn: psycopg.Connection) -> dict:
    return dict(zip(("leaves", "partitioned", "pg_class"), conn.execute(
        "SELECT count(*) FILTER (WHERE isleaf), count(*) FILTER (WHERE NOT isleaf),"
        " (SELECT count(*) FROM pg_class) FROM pg_partition_tree('usage_events_mt')").fetchone()))


# -- the rollup ----------------------------------------------------------------------------------


def locks_held(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()").fetchone()[0]


def rollup_once(dsn: str, day, out_root: Path) -> dict:
    """collect(), record_history(), export_parquet() on a fresh connection, as the asset does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with h.ResourceProbe(h.local_backend_pid(conn)) as probe:
            t0 = time.perf_counter()
            metrics = collect(conn)
            t1 = time.perf_counter()
            record_history(conn, day, metrics)
            t2 = time.perf_counter()
            path = export_parquet(out_root, day, metrics)
            t3 = time.perf_counter()
    return {"tenants": len(metrics), "collect_seconds": t1 - t0, "record_seconds": t2 - t1,
            "export_seconds": t3 - t2, "seconds": t3 - t0, "parquet_bytes": path.stat().st_size, **probe.as_dict()}


def collect_locks(dsn: str) -> dict:
    """The locks collect() holds at once: the most any of its batches (one transaction each)
    holds at its end; and, for comparison, all tenants read in one transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = tenant_ids(conn)
        per_batch = 0
        for start in range(0, len(ids), COLLECT_BATCH):
            with conn.transaction():
                collect_batch(conn, ids[start:start + COLLECT_BATCH])
                per_batch = max(per_batch, locks_held(conn))
        with conn.transaction():
            collect_batch(conn, ids)
            one = locks_held(conn)
    return {"locks_held": per_batch, "batch": COLLECT_BATCH, "locks_one_transaction": one}


def _attempt(fn: Callable[[], object]) -> dict:
    started = time.perf_counter()
    try:
        fn()
        result = {"outcome": "ok"}
    except psycopg.Error as exc:
        result = {"outcome": "error", "sqlstate": exc.sqlstate, "error_class": type(exc).__name__,
                  "error": (exc.diag.message_primary or str(exc)).strip(), "hint": exc.diag.message_hint}
    return {**result, "seconds": time.perf_counter() - started}


def restart_server(admin_dsn: str, max_locks: int | None) -> None:
    """Restart the throwaway cluster with max_locks_per_transaction = ``max_locks`` (ALTER
    SYSTEM), or with its configured value again (None). pg_ctl restart keeps the port."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if max_locks is None:
            conn.execute("ALTER SYSTEM RESET max_locks_per_transaction")
        else:
            conn.execute(sql.SQL("ALTER SYSTEM SET max_locks_per_transaction = {}").format(sql.Literal(max_locks)))
        data_dir = Path(conn.execute("SELECT current_setting('data_directory')").fetchone()[0])
    user = server_os_user()
    switch = {} if user.uid == os.geteuid() else {"user": user.uid, "group": user.gid, "extra_groups": []}
    subprocess.run(
        [str(find_bindir() / "pg_ctl"), "restart", "-D", str(data_dir), "-l", str(data_dir.parent / "server.log"),
         "-m", "fast", "-w", "-t", "120"],
        check=True, capture_output=True, text=True, cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}, **switch)
    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg.connect(admin_dsn, connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def default_locks_check(admin_dsn: str, dsn: str) -> dict:
    """collect() (batched, autocommit, as the asset runs it), then all tenants in one
    transaction, on the same server restarted with the default max_locks_per_transaction."""
    restart_server(admin_dsn, h.DEFAULT_MAX_LOCKS)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            capacity = h.lock_capacity(conn, with_default=True)

            def one_transaction() -> None:
                with conn.transaction():
                    collect_batch(conn, tenant_ids(conn))

            batched = _attempt(lambda: collect(conn))
            whole = _attempt(one_transaction)
    finally:
        restart_server(admin_dsn, None)
    result = {**batched, "lock_capacity": capacity, "one_transaction": whole}
    for label, r in (("collect()", batched), ("one transaction", whole)):
        h.log(f"{label} with max_locks_per_transaction={h.DEFAULT_MAX_LOCKS}: {r['outcome']}"
              + (f" ({r['error']})" if r["outcome"] == "error" else f" in {r['seconds']:.1f}s"))
    return result


# -- correctness ---------------------------------------------------------------------------------

_TRUTH = """
SELECT organization_id,
       count(*) FILTER (WHERE "timestamp" > now() - interval '24 hours' AND "timestamp" <= now()),
       count(*) FILTER (WHERE "timestamp" >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                          AND "timestamp" <= now()),
       max("timestamp") FILTER (WHERE "timestamp" <= now()),
       max("timestamp") FILTER (WHERE "timestamp" > now() - interval '24 hours' AND "timestamp" <= now())
  FROM usage_events_mt WHERE organization_id = ANY(%s) GROUP BY organization_id
"""


def ground_truth(conn: psycopg.Connection, sample: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """Direct GROUP BY on usage_events_mt for the sample, and their active subscriptions, with
    the transaction's now(): the figures the views should give."""
    truth = {t: {"events_last_24h": 0, "events_this_month": 0, "last_activity": None, "last_24h_activity": None}
             for t in sample}
    for tenant, day, month, last, last24 in conn.execute(_TRUTH, (list(sample),)):
        truth[tenant].update(events_last_24h=day, events_this_month=month, last_activity=last,
                             last_24h_activity=last24)
    for tenant, active in conn.execute(
            "SELECT o, (SELECT count(*) FROM subscriptions s WHERE s.organization_id = o AND s.status = 'active')"
            " FROM unnest(%s::uuid[]) AS o", (list(sample),)):
        truth[tenant]["active_subscriptions"] = active
    return truth


def pick_sample(tenants: Sequence[Tenant], size: int, seed: int) -> list[Tenant]:
    """``size`` tenants at random, plus the first few of each tier, churned and idle kind."""
    rng = random.Random(seed + 1)
    picked = {t.id: t for t in rng.sample(list(tenants), min(size, len(tenants)))}
    for kind in ("free", "starter", "growth", "enterprise", "churned", "idle"):
        for t in [t for t in tenants if t.tier == kind or getattr(t, kind, False) is True][:3]:
            picked[t.id] = t
    return sorted(picked.values(), key=lambda t: t.number)


FIELDS = ("active_subscriptions", "events_last_24h", "events_this_month", "last_activity")


def compare(rows: dict[uuid.UUID, dict], truth: dict[uuid.UUID, dict], fields: Sequence[str],
            truth_field: dict[str, str] | None = None) -> dict:
    """Per field: how many sampled tenants differ from the truth, and a few examples."""
    truth_field = truth_field or {}
    out = {}
    for field in fields:
        wrong = [(t, rows[t].get(field), truth[t][truth_field.get(field, field)]) for t in truth
                 if rows.get(t, {}).get(field) != truth[t][truth_field.get(field, field)]]
        out[field] = {"checked": len(truth), "wrong": len(wrong),
                      "examples": [{"tenant": str(t), "view": str(v), "truth": str(g)} for t, v, g in wrong[:3]]}
    return out


def check_ours(dsn: str, sample: Sequence[Tenant]) -> dict:
    """collect() and the ground truth in one transaction (one now())."""
    ids = [t.id for t in sample]
    wanted = set(ids)
    with psycopg.connect(dsn) as conn, conn.transaction():
        ours = {m.organization_id: vars_of(m) for m in collect(conn) if m.organization_id in wanted}
        truth = ground_truth(conn, ids)
        # Dedicated tenants: the size of their partition tree. Pooled ones: their share of the
        # pool, from a direct count of their rows there (vw_tenant_metrics' estimate).
        storage = dict(conn.execute(
            "SELECT o, (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree("
            " to_regclass('public.usage_events_mt_t_' || replace(o::text, '-', ''))))"
            " + COALESCE(round((SELECT count(*) FROM usage_events_mt_default d WHERE d.organization_id = o)"
            "                  * fn_pool_bytes_per_row())::bigint, 0)"
            " FROM unnest(%s::uuid[]) AS o", (ids,)).fetchall())
    for t in truth:
        truth[t]["storage_bytes"] = storage[t]
    result = compare(ours, truth, FIELDS + ("storage_bytes",))
    result["tenants"] = len(ids)
    result["sum_events_last_24h"] = {"view": sum(ours[t]["events_last_24h"] for t in ours),
                                     "truth": sum(v["events_last_24h"] for v in truth.values())}
    return result


def vars_of(m: object) -> dict:
    return {k: getattr(m, k) for k in ("active_subscriptions", "events_last_24h", "events_this_month",
                                       "last_activity", "storage_bytes")}


# -- the seed's view -----------------------------------------------------------------------------


def create_seed_views(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    for name, storage in SEED_VIEWS.items():
        conn.execute(sql.SQL(SEED_VIEW_SQL).format(name=sql.Identifier(SCHEMA, name), storage=sql.SQL(storage)))


def run_seed_view(dsn: str, name: str, sample: Sequence[Tenant]) -> dict:
    """SELECT * FROM the view with a statement_timeout; then, in the same transaction, the ground
    truth for the sample. Records the outcome, the time and the memory."""
    ids = [t.id for t in sample]
    wanted = set(ids)
    result: dict = {"view": name, "storage_expression": SEED_VIEWS[name]}
    with psycopg.connect(dsn) as conn:
        with h.ResourceProbe(h.local_backend_pid(conn)) as probe:
            started = time.perf_counter()
            try:
                with conn.transaction():
                    conn.execute("SELECT set_config('statement_timeout', %s, true)", (SEED_VIEW_TIMEOUT,))
                    rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(SCHEMA, name))).fetchall()
                    result["seconds"] = time.perf_counter() - started
                    result["locks_held"] = locks_held(conn)
                    conn.execute("SELECT set_config('statement_timeout', '0', true)")
                    truth = ground_truth(conn, ids)
                result.update(outcome="ok", rows=len(rows))
            except psycopg.Error as exc:
                result.update(outcome="error", seconds=time.perf_counter() - started,
                              sqlstate=exc.sqlstate, error=(exc.diag.message_primary or str(exc)).strip(),
                              error_class=type(exc).__name__)
                conn.rollback()
                rows = None
        result.update(probe.as_dict())
    if rows is not None:
        by_id = {r[0]: {"active_subscriptions": r[3], "events_last_24h": r[4], "storage_used": r[5],
                        "last_activity": r[6]} for r in rows if r[0] in wanted}
        result["comparison"] = compare(by_id, truth, ("active_subscriptions", "events_last_24h", "last_activity"),
                                       {"last_activity": "last_24h_activity"})
        result["comparison"]["last_activity_vs_latest_ever"] = compare(
            by_id, truth, ("last_activity",))["last_activity"]
        fanout = [by_id[t]["events_last_24h"] / truth[t]["events_last_24h"] for t in truth
                  if truth[t]["events_last_24h"] and by_id[t]["events_last_24h"] != truth[t]["events_last_24h"]]
        result["fanout_factors"] = sorted(set(round(f, 3) for f in fanout))
        result["fanout_explained"] = all(
            by_id[t]["events_last_24h"] == truth[t]["events_last_24h"] * max(1, truth[t]["active_subscriptions"])
            for t in truth)
        result["storage_used_values"] = sorted({str(r["storage_used"]) for r in by_id.values()})
        result["sum_events_last_24h"] = {"view": sum(r["events_last_24h"] for r in by_id.values()),
                                         "truth": sum(v["events_last_24h"] for v in truth.values())}
    h.log(f"seed view {name}: {result['outcome']} after {result['seconds']:.1f}s"
          + (f" ({result['sqlstate']} {result['error']})" if result["outcome"] == "error" else ""))
    return result


# -- one scale -----------------------------------------------------------------------------------


def measure_scale(args: argparse.Namespace, admin_dsn: str, scale: int, anchor: datetime, restartable: bool) -> dict:
    label = f"{scale:,} tenants"
    tenants = plan_tenants(scale, args.events, args.mix, anchor, args.seed)
    with h.scratch_database(admin_dsn, "bench_metrics") as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT set_config('synchronous_commit', 'off', false)")
            h.migrate_scratch(admin)
            unknown = monthly_tiers(admin) ^ {"growth", "enterprise"}
            if unknown:
                h.log(f"note: tiers split by month differ from growth/enterprise: {unknown}")
            setup = build_scale(admin, dsn, tenants, label)
            with psycopg.connect(dsn, autocommit=True) as fresh:  # the server's settings, not the loader's
                server = h.server_info(fresh)
            locks = h.lock_capacity(admin, with_default=True)
            create_seed_views(admin)
            day = admin.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
        h.log(f"{label}: built ({h.mib(setup['database_bytes'])}); rollup runs")
        out_root = Path(tempfile.mkdtemp(prefix="tp-bench-metrics-"))
        try:
            load = h.wait_until_idle(timeout=IDLE_WAIT_S)
            runs = []
            for i in range(args.repeat):
                runs.append(rollup_once(dsn, day, out_root))
                h.log(f"{label}: rollup {i + 1}/{args.repeat}: {runs[-1]['seconds']:.2f}s (collect "
                      f"{runs[-1]['collect_seconds']:.2f}s), backend private peak "
                      f"{h.mib(runs[-1]['backend_peak_private_bytes'])}")
        finally:
            shutil.rmtree(out_root, ignore_errors=True)
        lock_use = collect_locks(dsn)
        sample = pick_sample(tenants, args.sample, args.seed)
        correctness = check_ours(dsn, sample)
        h.log(f"{label}: ours vs ground truth on {len(sample)} tenants: "
              + ", ".join(f"{k} {v['wrong']} wrong" for k, v in correctness.items() if isinstance(v, dict) and "wrong" in v))
        seed_views = [] if args.skip_seed_view else [run_seed_view(dsn, name, sample) for name in SEED_VIEWS]
        default_locks = default_locks_check(admin_dsn, dsn) if restartable else None
    tiers: dict[str, int] = {}
    for t in tenants:
        tiers[t.tier] = tiers.get(t.tier, 0) + 1
    return {
        "scale": scale, "events": sum(t.events for t in tenants), "tiers": tiers,
        "churned": sum(t.churned for t in tenants), "idle": sum(t.idle for t in tenants),
        "events_by_tier": {tier: sum(t.events for t in tenants if t.tier == tier) for tier in tiers},
        "setup": setup, "server": server, "lock_capacity": locks, "load_before_cores": load,
        "runs": runs, "median": {k: statistics.median(r[k] for r in runs)
                                 for k in ("seconds", "collect_seconds", "record_seconds", "export_seconds")},
        "collect_locks": lock_use, "sample": len(sample), "correctness": correctness, "seed_views": seed_views,
        "default_locks": default_locks,
    }


# -- report --------------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def _peak(runs: list[dict], key: str) -> int | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return max(values) if values else None


def render_markdown(results: dict) -> str:
    p, scales = results["parameters"], results["scales"]
    out = [
        "# Benchmark: per-tenant metrics rollup",
        "",
        *h.generated_by(NAME, results),
    ]
    if p["events"] < DEFAULT_EVENTS:
        out += [f"**Events: {p['events']:,} per scale, not the {DEFAULT_EVENTS:,} asked for**: "
                f"{results.get('events_note') or 'see --events'}", ""]
    out += [
        f"Each scale is a fresh database: the tenants (tier mix {p['mix_text']}; events by tier weight "
        f"{', '.join(f'{k} {v}' for k, v in EVENT_WEIGHTS.items())}), onboarded with "
        f"`ensure_tenant_partition()`, and {p['events']:,} usage events in all over the last {HISTORY_DAYS} days "
        f"(every {CHURNED_EVERY}th tenant stopped {CHURNED_DAYS} days ago, every {IDLE_EVERY}th has none), "
        "COPYed into `usage_events_mt` as the superuser, then `VACUUM (ANALYZE)` and a CHECKPOINT. The rollup is "
        "what the `tenant_metrics` asset runs, each run on a fresh connection: `collect()` (SELECT from "
        f"`vw_tenant_metrics`), `record_history()`, `export_parquet()`; {p['repeat']} runs, medians shown.",
        "",
        "## Rollup: wall time and memory",
        "",
        h.markdown_table(
            ["Tenants", "Events", "Rollup s", "collect() s", "record_history() s", "export_parquet() s",
             "Python peak RSS", "Python RSS growth", "Backend peak private", "Backend peak RSS",
             "Server peak PSS", "Locks held by collect() (largest batch)"],
            [[f"{s['scale']:,}", f"{s['events']:,}", _s(s["median"]["seconds"]), _s(s["median"]["collect_seconds"]),
              _s(s["median"]["record_seconds"]), _s(s["median"]["export_seconds"]),
              h.mib(_peak(s["runs"], "client_rss_peak_bytes")), h.mib(_peak(s["runs"], "client_rss_growth_bytes")),
              h.mib(_peak(s["runs"], "backend_peak_private_bytes")), h.mib(_peak(s["runs"], "backend_peak_rss_bytes")),
              h.mib(_peak(s["runs"], "server_peak_pss_bytes")), f"{s['collect_locks']['locks_held']:,}"]
             for s in scales],
            "rrrrrrrrrrrr",
        ),
        "",
        "All runs (rollup seconds): " + "; ".join(
            f"{s['scale']:,}: " + ", ".join(_s(r["seconds"]) for r in s["runs"]) for s in scales) + ".",
        "",
    ]
    out += render_locks(scales)
    out += render_correctness(scales)
    out += render_seed(scales)
    out += render_setup(results)
    return "\n".join(out)


def _outcome(check: dict) -> str:
    if check["outcome"] == "ok":
        return f"ran ({check['seconds']:.1f}s)"
    return (f"failed: `{check['error_class']} ({check['sqlstate']}): {check['error']}`"
            + (f" (HINT: {check['hint']})" if check.get("hint") else "") + f" after {check['seconds']:.1f}s")


def render_locks(scales: list[dict]) -> list[str]:
    lines = h.section("Locks",
                      "Reading a tenant's figures locks its partitions, their indexes and TOAST tables, and a "
                      "transaction holds every lock until it ends. The lock table is shared by the whole server: "
                      "max_locks_per_transaction × (max_connections + autovacuum_max_workers + max_worker_processes + "
                      "max_wal_senders + 1) slots, with a little slack. `collect()` reads the tenants "
                      f"{COLLECT_BATCH} at a time, one transaction each; *one transaction* is all tenants at once "
                      "(what a plain `SELECT * FROM vw_tenant_metrics` does).")
    rows = []
    for s in scales:
        cap = s["lock_capacity"]
        locks = s["collect_locks"]
        seed = next((v.get("locks_held") for v in s["seed_views"] if v.get("locks_held")), None)
        check = s.get("default_locks")
        rows.append([f"{s['scale']:,}", f"{locks['locks_held']:,}", f"{locks.get('locks_one_transaction', 0):,}",
                     f"{seed:,}" if seed else "n/a",
                     f"{cap['lock_slots']:,} (max_locks_per_transaction={cap['max_locks_per_transaction']})",
                     f"{cap['default_lock_slots']:,}",
                     *((_outcome(check), _outcome(check["one_transaction"])) if check else ("not run", "not run"))])
    lines.append(h.markdown_table(
        ["Tenants", "Locks, largest batch", "Locks, one transaction", "Seed's view (names fixed)", "Lock slots, this run",
         "Lock slots, default", "`collect()`, default lock table", "One transaction, default lock table"],
        rows, "rrrrrrll"))
    return lines + [""]


def render_correctness(scales: list[dict]) -> list[str]:
    lines = h.section("Correctness of `vw_tenant_metrics` (ours)",
                      "`collect()` and a direct `GROUP BY organization_id` on `usage_events_mt` (plus a count of active "
                      "subscriptions, and for storage: the size of a dedicated tenant's partition tree, or for a pooled "
                      "tenant its rows in the pool counted directly times the pool's bytes per row, the estimate "
                      "`vw_tenant_metrics` documents) for a sample of tenants (random, plus the first of every tier, "
                      "churned and idle), in one transaction, so with the same `now()`.")
    rows = []
    for s in scales:
        c = s["correctness"]
        rows.append([f"{s['scale']:,}", c["tenants"]] + [f"{c[f]['wrong']} wrong" for f in FIELDS + ("storage_bytes",)])
    lines.append(h.markdown_table(["Tenants", "Sampled", *FIELDS, "storage_bytes"], rows, "rrlllll"))
    return lines + [""]


def render_seed(scales: list[dict]) -> list[str]:
    if not any(s["seed_views"] for s in scales):
        return []
    lines = [
        "## The seed's view",
        "",
        "The seed's `vw_tenant_metrics` (\"Monitoring and Metrics\"), created as it is written in the scratch "
        "database (`bench.seed_verbatim`; `usage_events` is our view over `usage_events_mt`), and a copy with "
        f"only its storage expression fixed to our partition names (`bench.seed_fixed_names`: `{FIXED_STORAGE}`). "
        f"Each ran as the superuser with statement_timeout={SEED_VIEW_TIMEOUT}; its figures were compared with "
        "the ground truth for the same sample, in the same transaction.",
        "",
    ]
    rows = []
    for s in scales:
        for v in s["seed_views"]:
            if v["outcome"] == "ok":
                c = v["comparison"]
                what = (f"ok, {v['rows']:,} rows; events_last_24h wrong for {c['events_last_24h']['wrong']} of "
                        f"{c['events_last_24h']['checked']} sampled (fan-out ×{', ×'.join(str(f) for f in v['fanout_factors'])}"
                        f"{', = × active subscriptions' if v['fanout_explained'] else ''}); "
                        f"active_subscriptions wrong for {c['active_subscriptions']['wrong']}; storage_used: "
                        f"{', '.join(v['storage_used_values'][:3])}")
            else:
                what = f"**{v['error_class']} ({v['sqlstate']})**: {v['error']}"
            rows.append([f"{s['scale']:,}", f"`{v['view']}`", _s(v["seconds"]), what,
                         h.mib(v.get("backend_peak_private_bytes")), h.mib(v.get("server_peak_pss_bytes"))])
    lines.append(h.markdown_table(["Tenants", "View", "Seconds", "Outcome", "Backend peak private",
                                   "Server peak PSS"], rows, "rlrlrr"))
    lines.append("")
    for s in scales:
        for v in s["seed_views"]:
            if v["outcome"] == "ok":
                c = v["comparison"]
                lines.append(
                    f"- {s['scale']:,} tenants, `{v['view']}`: sum of events_last_24h over the sample "
                    f"{v['sum_events_last_24h']['view']:,} against {v['sum_events_last_24h']['truth']:,} true; "
                    f"its last_activity is the latest event *of the last 24 hours* (NULL for a tenant quiet "
                    f"that long): it differs from the latest event ever for "
                    f"{c['last_activity_vs_latest_ever']['wrong']} of {c['last_activity']['checked']} sampled "
                    f"tenants ({c['last_activity']['wrong']} differ from the latest of the last 24 hours). "
                    "pg_total_relation_size() of a partitioned table is 0 (a parent has no storage), so "
                    "storage_used says nothing even with the names fixed. It has no events_this_month.")
    return lines + [""]


def render_setup(results: dict) -> list[str]:
    m = results["machine"]
    scales = results["scales"]
    srv = scales[0]["server"]
    rows = []
    for s in scales:
        st = s["setup"]
        rows.append([f"{s['scale']:,}", ", ".join(f"{n:,} {t}" for t, n in s["tiers"].items()),
                     ", ".join(f"{n:,} {t}" for t, n in st["onboarding"]["layouts"].items()),
                     f"{st['relations']['leaves']:,}", f"{st['onboarding']['seconds']:.0f}",
                     f"{st['load']['events']:,} in {st['load']['seconds']:.0f}s "
                     f"({st['load']['events'] / st['load']['seconds']:,.0f}/s)",
                     f"{st['vacuum_seconds']:.0f}", h.mib(st["database_bytes"])])
    return [
        "## Set-up",
        "",
        h.markdown_table(["Tenants", "Tiers", "Layouts", "Leaf partitions", "Onboarding s", "Events loaded",
                          "VACUUM (ANALYZE) s", "Database size"], rows, "rllrrlrr"),
        "",
        *h.server_lines(srv, m, results["server_kind"]),
        f"- Events: generated by the server (`generate_series`, evenly spaced in time per tenant) and streamed "
        "through this process with COPY into `usage_events_mt` as the superuser, tenant after tenant; monthly "
        "tenants' first event went into DEFAULT before onboarding so that their months reach back to it. "
        f"Subscriptions: active ones per tier {ACTIVE_SUBSCRIPTIONS}, none for every {NO_ACTIVE_EVERY}th "
        "tenant, plus a canceled one for every third tenant.",
        "- Machine load before the rollup runs: "
        + ", ".join(f"{s['scale']:,}: {s['load_before_cores']:.2f} cores" for s in scales)
        + f" (waited up to {IDLE_WAIT_S:g}s for < {h.IDLE_LOAD}).",
        "- Memory: *Python peak RSS* is the process's RSS sampled during the run (it holds nothing from the "
        "load); *backend* figures are of the server process serving the run's connection (private = "
        "anonymous memory: relation and catalog caches, plans, work memory); *server peak PSS* sums the "
        "whole server (shared buffers counted once).",
        f"- Whole run: {results['seconds'] / 60:.1f} min; Python process peak RSS "
        f"{h.mib(results['python_peak_rss_bytes'])}.",
    ]


# -- main ----------------------------------------------------------------------------------------


def parse_scales(text: str) -> list[int]:
    return h.parse_counts(text, minimum=10)


def parse_mix(text: str) -> dict[str, float]:
    return h.parse_mix(text, EVENT_WEIGHTS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(
        NAME, """Metrics rollup benchmark: collect() (vw_tenant_metrics), record_history() and export_parquet() at
each scale of tenants with --events usage events in all: wall time, peak memory, locks, correctness
against a direct GROUP BY, and the seed's view (verbatim, then with its partition names fixed).
Writes bench/results/metrics.json and docs/benchmarks/metrics.md.""",
    )
    parser.add_argument("--scales", type=parse_scales, default=list(DEFAULT_SCALES), metavar="N,N",
                        help="tenant counts, one fresh database each (default: 1000,10000)")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, metavar="N",
                        help=f"usage events in all at each scale (default: {DEFAULT_EVENTS:,})")
    parser.add_argument("--events-note", default="", metavar="TEXT",
                        help="why --events is below the default, printed on the page")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix(h.DEFAULT_MIX), metavar="TIER=SHARE,...",
                        help=f"tier mix (default: {h.DEFAULT_MIX})")
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="rollup runs per scale (default: 3)")
    parser.add_argument("--sample", type=int, default=200, metavar="K",
                        help="random tenants compared with the ground truth (default: 200)")
    parser.add_argument("--skip-seed-view", action="store_true", help="do not run the seed's view")
    parser.add_argument("--seed", type=int, default=42, help="seed of the tenant ids (default: 42)")
    parser.add_argument("--max-locks-per-transaction", type=int, metavar="N",
                        help="for the throwaway cluster (default: sized so one transaction can lock every "
                             "tenant's relations at the largest scale)")
    h.add_output_options(parser, NAME, dsn_help="a superuser DSN of a PostgreSQL 15+ server: scratch databases "
                                                "there (default: a throwaway cluster in /tmp)")
    args = parser.parse_args(argv)
    if args.events < max(args.scales) or args.repeat < 1 or args.sample < 1:
        parser.error("--events must be at least the largest scale; --repeat and --sample at least 1")
    args.mix_text = ",".join(f"{k}={v:g}" for k, v in args.mix.items())
    return args


def command_line(args: argparse.Namespace) -> str:
    parts = [f"--scales {','.join(str(s) for s in args.scales)}",
             f"--events {args.events}", f"--repeat {args.repeat}", f"--sample {args.sample}"]
    if args.mix_text != ",".join(f"{k}={v:g}" for k, v in parse_mix(h.DEFAULT_MIX).items()):
        parts.append(f"--mix {args.mix_text}")
    if args.max_locks_per_transaction:
        parts.append(f"--max-locks-per-transaction {args.max_locks_per_transaction}")
    if args.skip_seed_view:
        parts.append("--skip-seed-view")
    return h.command(NAME, parts, args.dsn)


def benchmark(args: argparse.Namespace, admin_dsn: str, server_kind: str, restartable: bool) -> dict:
    started = time.perf_counter()
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        anchor = conn.execute("SELECT date_trunc('second', now()) - interval '1 minute'").fetchone()[0]
    scales = []
    for scale in args.scales:
        scales.append(measure_scale(args, admin_dsn, scale, anchor, restartable))
    return {
        "benchmark": NAME, "command": command_line(args),
        "parameters": {"scales": args.scales, "events": args.events, "mix": args.mix, "mix_text": args.mix_text,
                       "repeat": args.repeat, "sample": args.sample, "seed": args.seed},
        "events_note": args.events_note, "machine": h.machine_info(), "server_kind": server_kind,
        "events_anchor": anchor.isoformat(), "scales": scales,
        "python_peak_rss_bytes": h.python_peak_rss(), "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # One transaction may lock every relation of every tenant (collect() does; so does the
    # seed's view) at the largest scale, with headroom.
    locks = args.max_locks_per_transaction or h.locks_setting_for(
        max(args.scales), args.mix, LOCKS_PER_TENANT, ("growth", "enterprise"), LOCK_HEADROOM)
    results = h.on_server(
        args.dsn, lambda dsn, kind, throwaway: benchmark(args, dsn, kind, throwaway), dsn_kind="scratch databases",
        settings={"max_locks_per_transaction": str(locks), "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'"},
        throwaway_kind="throwaway cluster started by the benchmark (initdb defaults, the "
                       "project's BASE_SETTINGS, durable; plus max_locks_per_transaction="
                       f"{locks} so that one transaction can lock every tenant's relations, "
                       "and max_wal_size=8GB, checkpoint_timeout=30min for the load)")
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{s['scale']:,} tenants: rollup median {s['median']['seconds']:.2f}s (collect "
        f"{s['median']['collect_seconds']:.2f}s); collect() holds {s['collect_locks']['locks_held']:,} locks per batch"
        for s in results["scales"]])


if __name__ == "__main__":
    sys.exit(main())
