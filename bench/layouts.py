#!/usr/bin/env python
"""Benchmark: the two facts a bounded partition layout for usage events rests on.

Issue 3 asks for RLS-only planning under 10 ms at 10,000 tenants. Today every tenant has its
own partition (docs/partitioning.md), so an RLS-only query plans 14,001 leaves at 10,000
tenants (3.9 s: docs/benchmarks/partitions.md). This benchmark measures, on scratch tables
shaped like usage_events_mt (LIST by tenant; the indexes on timestamp and on metric and
timestamp; a policy that calls a STABLE context function directly):

1. **The leaf budget.** RLS-only planning time against the number of leaf partitions under
   the parent, warm (median of the last five of seven EXPLAIN ANALYZE runs, as a billing-app-like
   role), for a tenant split into months. The explicit-predicate query at the same leaf count is
   the baseline: it is pruned at plan time and should not grow; it is timed with its time bound
   written with ``now()`` and passed as a value.
2. **Onboarding a dedicated tenant next to a shared pool.** If small tenants share a DEFAULT
   partition (itself split by month), attaching a tenant's own partition makes PostgreSQL prove
   that the pool holds none of its rows: a scan of every pool month under ACCESS EXCLUSIVE,
   which stops every pooled tenant's writers. A validated ``CHECK (organization_id <> X)`` on
   each pool month lets ATTACH skip that scan; VALIDATE CONSTRAINT scans under SHARE UPDATE
   EXCLUSIVE, which writers do not wait for. Measured: the ATTACH with and without the CHECKs,
   and the VALIDATEs.

Run on demand:  python bench/layouts.py [--leaves 100,300,450,700,1000,2000] [--pool-rows N]
                                        [--dsn DSN] [--no-docs]
Writes bench/results/layouts.json and docs/benchmarks/layouts.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)

NAME = "layouts"
DEFAULT_LEAVES = (100, 300, 450, 700, 1000, 2000)
DEFAULT_POOL_ROWS = 3_000_000
POOL_MONTHS = 3
TARGET_RLS_PLANNING_MS = 10.0
RUNS, WARMUP = 7, 2
PROBE_MONTHS = 6  # the probe tenant is split by month, as a large tenant is today
RLS_QUERY = "SELECT count(*) FROM ev WHERE ts >= now() - interval '7 days'"
EXPLICIT_NOW_QUERY = "SELECT count(*) FROM ev WHERE org = {} AND ts >= now() - interval '7 days'"
EXPLICIT_VALUE_QUERY = "SELECT count(*) FROM ev WHERE org = {} AND ts >= {}"


def timings_ms(conn: psycopg.Connection, query: sql.Composable) -> tuple[float, float]:
    """Median planning and execution times of the warm runs of ``query``, from EXPLAIN
    (ANALYZE, SUMMARY)."""
    planning, execution = [], []
    for _ in range(RUNS):
        plan = "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN (ANALYZE, SUMMARY) {}").format(query)))
        planning.append(float(re.search(r"Planning Time: ([0-9.]+) ms", plan).group(1)))
        execution.append(float(re.search(r"Execution Time: ([0-9.]+) ms", plan).group(1)))
    return statistics.median(planning[WARMUP:]), statistics.median(execution[WARMUP:])


def create_parent(conn: psycopg.Connection) -> None:
    conn.execute("CREATE ROLE bench_layouts_app NOLOGIN")
    conn.execute("CREATE FUNCTION cur_tenant() RETURNS uuid STABLE LANGUAGE sql"
                 " AS $$ SELECT nullif(current_setting('app.tenant', true), '')::uuid $$")
    conn.execute("CREATE TABLE ev (org uuid NOT NULL, id bigint, ts timestamptz NOT NULL, metric text, v numeric)"
                 " PARTITION BY LIST (org)")
    conn.execute("CREATE INDEX ON ev (ts DESC)")
    conn.execute("CREATE INDEX ON ev (metric, ts DESC)")
    conn.execute("ALTER TABLE ev ENABLE ROW LEVEL SECURITY")
    conn.execute("ALTER TABLE ev FORCE ROW LEVEL SECURITY")
    conn.execute("CREATE POLICY tenant_isolation ON ev USING (org = cur_tenant())")
    conn.execute("GRANT SELECT ON ev TO bench_layouts_app")


def leaf_budget(dsn: str, counts: Sequence[int]) -> list[dict]:
    rows = []
    with psycopg.connect(dsn, autocommit=True) as admin:
        create_parent(admin)
        probe = uuid.uuid4()  # split by month: PROBE_MONTHS leaves, ending with the current month
        admin.execute(sql.SQL("CREATE TABLE {} PARTITION OF ev FOR VALUES IN ({}) PARTITION BY RANGE (ts)").format(
            sql.Identifier(f"ev_{probe.hex}"), sql.Literal(str(probe))))
        this_month = admin.execute("SELECT date_trunc('month', now())").fetchone()[0]
        for back in range(PROBE_MONTHS):  # the current month and the five before it
            admin.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"ev_{probe.hex}_m{back}"), sql.Identifier(f"ev_{probe.hex}"),
                sql.Literal(h.add_months(this_month, -back)), sql.Literal(h.add_months(this_month, 1 - back))))
        leaves = PROBE_MONTHS
        since = admin.execute("SELECT now() - interval '7 days'").fetchone()[0]
        for count in sorted(counts):
            while leaves < count:
                tenant = uuid.uuid4()
                admin.execute(sql.SQL("CREATE TABLE {} PARTITION OF ev FOR VALUES IN ({})").format(
                    sql.Identifier(f"ev_{tenant.hex}"), sql.Literal(str(tenant))))
                leaves += 1
            with psycopg.connect(dsn, autocommit=True) as app:
                app.execute("SET ROLE bench_layouts_app")
                app.execute("SELECT set_config('app.tenant', %s, false)", (str(probe),))
                rls, _ = timings_ms(app, sql.SQL(RLS_QUERY))
                now_plan, now_exec = timings_ms(app, sql.SQL(EXPLICIT_NOW_QUERY).format(sql.Literal(str(probe))))
                value_plan, value_exec = timings_ms(app, sql.SQL(EXPLICIT_VALUE_QUERY).format(
                    sql.Literal(str(probe)), sql.Literal(since)))
            rows.append({"leaves": leaves, "rls_planning_ms": rls,
                         "explicit_now_planning_ms": now_plan, "explicit_now_execution_ms": now_exec,
                         "explicit_value_planning_ms": value_plan, "explicit_value_execution_ms": value_exec})
            h.log(f"{leaves:,} leaves: RLS-only planning {rls:.2f} ms; explicit predicate with now() "
                  f"{now_plan:.2f} + {now_exec:.2f} ms, with a value {value_plan:.2f} + {value_exec:.2f} ms")
    return rows


def pool_attach(dsn: str, pool_rows: int) -> dict:
    """ATTACH a tenant's partition next to a DEFAULT pool split by month: scanned, then with
    validated CHECKs on the pool's months."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ev2 (org uuid NOT NULL, ts timestamptz NOT NULL, v int) PARTITION BY LIST (org)")
        conn.execute("CREATE TABLE pool PARTITION OF ev2 DEFAULT PARTITION BY RANGE (ts)")
        months = [f"pool_m{m}" for m in range(POOL_MONTHS)]
        for m, name in enumerate(months):
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF pool FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name), sql.Literal(f"2026-{m + 1:02d}-01"), sql.Literal(f"2026-{m + 2:02d}-01")))
        seconds = POOL_MONTHS * 28 * 86400
        conn.execute("INSERT INTO ev2 SELECT gen_random_uuid(), '2026-01-01'::timestamptz + (i::bigint * 7919 %% %s) * interval '1 s', i"
                     " FROM generate_series(1, %s) i", (seconds, pool_rows))
        conn.execute("VACUUM ANALYZE ev2")
        pool_bytes = conn.execute("SELECT sum(pg_relation_size(c)) FROM unnest(%s::regclass[]) c", (months,)).fetchone()[0]

        def attach(checked: bool) -> dict:
            tenant = uuid.uuid4()
            table = sql.Identifier(f"dedicated_{tenant.hex}")
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE ev2)").format(table))
            conn.execute(sql.SQL("ALTER TABLE {} ADD CHECK (org = {})").format(table, sql.Literal(str(tenant))))
            validate_ms = []
            if checked:
                check = sql.Identifier(f"pool_excludes_{tenant.hex[:12]}")
                for name in months:
                    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (org <> {}) NOT VALID").format(
                        sql.Identifier(name), check, sql.Literal(str(tenant))))
                    started = time.perf_counter()
                    conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(sql.Identifier(name), check))
                    validate_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conn.execute(sql.SQL("ALTER TABLE ev2 ATTACH PARTITION {} FOR VALUES IN ({})").format(
                table, sql.Literal(str(tenant))))
            attach_ms = (time.perf_counter() - started) * 1000
            h.log(f"ATTACH next to the pool, {'with' if checked else 'without'} CHECKs: {attach_ms:.1f} ms"
                  + (f" (VALIDATE {sum(validate_ms):.0f} ms)" if checked else ""))
            return {"attach_ms": attach_ms, "validate_ms": validate_ms}

        return {"pool_rows": pool_rows, "pool_months": POOL_MONTHS, "pool_bytes": pool_bytes,
                "without_check": attach(False), "with_check": attach(True)}


def render_markdown(results: dict) -> str:
    budget = [r["leaves"] for r in results["leaf_budget"] if r["rls_planning_ms"] < TARGET_RLS_PLANNING_MS]
    pool, m = results["pool_attach"], results["machine"]
    lines = [
        "# Benchmark: what a bounded partition layout rests on",
        "",
        f"Command: `{results['command']}`. Server: {results['server_kind']}. Whole run: "
        f"{results['seconds'] / 60:.1f} min. Why these figures: [../partitioning.md](../partitioning.md).",
        "",
        "## RLS-only planning against leaf partitions",
        "",
        "Scratch table shaped like `usage_events_mt`: LIST by tenant, indexes on `(ts DESC)` and "
        "`(metric, ts DESC)`, RLS forced with a policy that calls a STABLE context function directly; "
        f"one empty leaf per tenant, except the probe tenant, split into {PROBE_MONTHS} months. A 7-day count "
        "in the probe tenant's context as a non-owner role, median of the last "
        f"{RUNS - WARMUP} of {RUNS} runs: RLS alone, and with an explicit tenant predicate (pruned at plan "
        "time; the baseline), its time bound written with `now()` (the months pruned at executor start-up) "
        "or passed as a value (pruned at plan time).",
        "",
        h.markdown_table(["Leaves", "RLS-only planning ms", "Explicit, `now()` bound: planning + execution ms",
                          "Explicit, bound as a value: planning + execution ms", f"RLS-only < {TARGET_RLS_PLANNING_MS:g} ms"],
                         [[f"{r['leaves']:,}", f"{r['rls_planning_ms']:.2f}",
                           f"{r['explicit_now_planning_ms']:.2f} + {r['explicit_now_execution_ms']:.3f}",
                           f"{r['explicit_value_planning_ms']:.2f} + {r['explicit_value_execution_ms']:.3f}",
                           "yes" if r["rls_planning_ms"] < TARGET_RLS_PLANNING_MS else "no"]
                          for r in results["leaf_budget"]], "rrrrl"),
        "",
        f"Leaf budget for the {TARGET_RLS_PLANNING_MS:g} ms target: at most "
        f"{max(budget):,} of the counts measured." if budget else "No count measured meets the target.",
        "",
        "## Attaching a tenant's partition next to a shared pool",
        "",
        f"A DEFAULT partition split into {pool['pool_months']} months holds {pool['pool_rows']:,} rows "
        f"of other tenants ({h.mib(pool['pool_bytes'])}). ATTACH of a new tenant's (empty) partition, "
        "which holds ACCESS EXCLUSIVE on the pool while it checks it:",
        "",
        h.markdown_table(["Pool months carry", "ATTACH ms (pool locked)", "VALIDATE ms (writers go on)"],
                         [["no CHECK: the pool is scanned", f"{pool['without_check']['attach_ms']:.1f}", "n/a"],
                          ["a validated `CHECK (org <> tenant)` each", f"{pool['with_check']['attach_ms']:.1f}",
                           " + ".join(f"{v:.0f}" for v in pool["with_check"]["validate_ms"])]], "lrr"),
        "",
        "## Set-up",
        "",
        f"- PostgreSQL: {results['server']['version']}",
        f"{h.machine_line(m)}; {m['date_utc']}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, __doc__.split("\n\n")[0], raw=True)
    parser.add_argument("--leaves", default=",".join(map(str, DEFAULT_LEAVES)),
                        help="leaf partition counts to measure RLS-only planning at (default: %(default)s)")
    parser.add_argument("--pool-rows", type=int, default=DEFAULT_POOL_ROWS,
                        help="rows in the shared pool for the ATTACH measurement (default: %(default)s)")
    h.add_output_options(parser, NAME, dsn_help="a superuser DSN: the benchmark uses a scratch database there "
                                                "(default: a throwaway cluster in /tmp)")
    args = parser.parse_args(argv)
    try:
        args.leaf_counts = sorted({int(x) for x in args.leaves.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--leaves: comma-separated whole numbers, not {args.leaves!r}")
    if not args.leaf_counts or min(args.leaf_counts) < 1 or args.pool_rows < 1:
        parser.error("--leaves and --pool-rows must be positive")
    return args


def benchmark(args: argparse.Namespace, admin_dsn: str, server_kind: str) -> dict:
    started = time.perf_counter()
    with h.scratch_database(admin_dsn, "bench_layouts") as dsn:
        with psycopg.connect(dsn) as conn:
            server = h.server_info(conn)
        budget = leaf_budget(dsn, args.leaf_counts)
        pool = pool_attach(dsn, args.pool_rows)
    return {"benchmark": NAME, "command": h.command(NAME, sys.argv[1:]),
            "server_kind": server_kind, "server": server, "machine": h.machine_info(),
            "leaf_budget": budget, "pool_attach": pool, "seconds": time.perf_counter() - started}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    locks = str(max(h.DEFAULT_MAX_LOCKS, 2 * max(args.leaf_counts)))
    results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind),
                          settings={"max_locks_per_transaction": locks},
                          throwaway_kind="throwaway cluster started by the benchmark (initdb defaults, the "
                                         f"project's BASE_SETTINGS, durable; max_locks_per_transaction {locks})")
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
