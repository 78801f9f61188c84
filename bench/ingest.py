#!/usr/bin/env python
"""Benchmark: usage-event ingestion through the application path.

The subject is ``ingest_usage_events()`` writing into ``usage_events_mt`` (partitioned by
tenant, RLS forced) as billing_app in a tenant context: COPY into a session-private staging
table, then one INSERT ... SELECT per batch. It is measured against, in the same run and on
the same pre-generated events:

* flat_rls  (baseline A): a flat, unpartitioned ``usage_events_flat`` with the same columns,
  primary key and two indexes, RLS forced with the same tenant_isolation policy, written by a
  function that mirrors ingest_usage_events() line for line;
* flat_copy (baseline B, reference only): plain COPY into the same flat table as the
  superuser, which bypasses RLS.

The reference is the seed's 850K events/min on a single primary; the targets are a subject
rate of at least 10x that (141,667 rows/s) on one node, and at least 0.9x flat_rls.

Run on demand:  python bench/ingest.py [--events N] [--tenants T] [--batch B] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import random
import re
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.core.demo import METRICS, seed_demo  # noqa: E402
from tenant_pipelines.core.ingest import _STAGE, UsageEvent, ingest_usage_events  # noqa: E402
from tenant_pipelines.core.tenants import list_tenants  # noqa: E402
from tenant_pipelines.db.migrate import migrate  # noqa: E402
from tenant_pipelines.db.session import tenant_session  # noqa: E402

NAME = "ingest"
REFERENCE_EVENTS_PER_MIN = 850_000
REFERENCE_RPS = REFERENCE_EVENTS_PER_MIN / 60
TARGET_MULTIPLE = 10
TARGET_RPS = TARGET_MULTIPLE * REFERENCE_RPS  # 141,666.7 rows/s
TARGET_PARITY = 0.9
IDLE_LOAD = 0.25  # a run waits until fewer cores than this are busy
IDLE_WAIT = 20.0  # seconds a run waits at most for that
DISTURBED_LOAD = 0.25  # other work beyond this many cores on average during a run marks it disturbed

SUBJECT_TABLE = "usage_events_mt"
FLAT_TABLE = "usage_events_flat"
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
SDKS = ("python", "node", "go")

Batch = tuple[uuid.UUID, list[UsageEvent]]


# -- the three ways of writing a batch ------------------------------------------------------------

_FLAT_INSERT = sql.SQL(
    """INSERT INTO {} (organization_id, metric_name, quantity, "timestamp", properties)
       SELECT fn_current_tenant_id(), metric_name, quantity, "timestamp", properties
         FROM usage_events_stage"""
).format(sql.Identifier(FLAT_TABLE))

_FLAT_COPY = sql.SQL(
    'COPY {} (organization_id, metric_name, quantity, "timestamp", properties) FROM STDIN'
).format(sql.Identifier(FLAT_TABLE))


def ingest_flat_usage_events(
    conn: psycopg.Connection, tenant_id: uuid.UUID, events: Iterable[UsageEvent]
) -> int:
    """Baseline A: ingest_usage_events() step for step, into the flat table. Same session
    (billing_app, tenant context, tier limits), same staging table, same COPY, same
    INSERT ... SELECT; only the target differs."""
    with tenant_session(conn, tenant_id) as tx:
        tx.execute(_STAGE)
        with tx.cursor().copy(
            'COPY usage_events_stage (metric_name, quantity, "timestamp", properties) FROM STDIN'
        ) as copy:
            for event in events:
                copy.write_row(event)
        return tx.execute(_FLAT_INSERT).rowcount


def copy_flat_as_superuser(
    conn: psycopg.Connection, tenant_id: uuid.UUID, events: Iterable[UsageEvent]
) -> int:
    """Baseline B: one plain COPY per batch, as the superuser (RLS bypassed, no staging)."""
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy(_FLAT_COPY) as copy:
                for event in events:
                    copy.write_row((tenant_id, *event))
            return cur.rowcount


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    table: str
    write: Callable[[psycopg.Connection, uuid.UUID, Sequence[UsageEvent]], int]
    description: str


VARIANTS = (
    Variant("subject", "subject: usage_events_mt, app path", SUBJECT_TABLE, ingest_usage_events,
            "ingest_usage_events() into usage_events_mt: billing_app, tenant context, RLS forced, "
            "COPY to staging + INSERT ... SELECT"),
    Variant("flat_rls", "A: flat table, app path + RLS", FLAT_TABLE, ingest_flat_usage_events,
            "the same path into usage_events_flat (unpartitioned, same key and indexes, same policy)"),
    Variant("flat_copy", "B: flat table, superuser COPY", FLAT_TABLE, copy_flat_as_superuser,
            "plain COPY into usage_events_flat as the superuser (reference only: no RLS, no staging)"),
)


# -- events -----------------------------------------------------------------------------------------


def generate_batches(
    tenants: Sequence[uuid.UUID], events: int, batch: int, seed: int, day: datetime
) -> list[Batch]:
    """``events`` usage events in time order, cut into batches of ``batch`` rows that go to the
    tenants in turn (round-robin). Timestamps rise across the whole stream and span the one
    day that starts at ``day``; quantities are NUMERIC(20,6) Decimals; properties are small
    JSON objects. The same arguments give the same rows."""
    rng = random.Random(seed)
    properties = [json.dumps({"region": r, "sdk": s, "source": "bench"}) for r in REGIONS for s in SDKS]
    step = timedelta(days=1) / events
    batches: list[Batch] = []
    for start in range(0, events, batch):
        tenant = tenants[len(batches) % len(tenants)]
        rows = [
            (
                rng.choice(METRICS),
                Decimal(rng.randrange(0, 10_000_000_000)).scaleb(-6),
                day + step * i,
                rng.choice(properties),
            )
            for i in range(start, min(start + batch, events))
        ]
        batches.append((tenant, rows))
    return batches


# -- database set-up ---------------------------------------------------------------------------------


def connect(dsn: str, synchronous_commit: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,))
    return conn


def find_partition_onboarding(enabled: bool = True) -> tuple[Callable | None, str]:
    """The project's function that gives a tenant its own partition, if it has one yet."""
    if not enabled:
        return None, ("tenants not partitioned (--no-tenant-partitions): rows land in the "
                      "DEFAULT partition")
    try:
        module = importlib.import_module("tenant_pipelines.core.partitions")
    except ModuleNotFoundError as exc:
        if exc.name != "tenant_pipelines.core.partitions":
            raise
        return None, ("tenants not yet partitioned: rows land in the DEFAULT partition "
                      "(tenant_pipelines/core/partitions.py does not exist)")
    for name in ("create_tenant_partition", "ensure_tenant_partition", "onboard_tenant_partition",
                 "attach_tenant_partition"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn, f"tenants onboarded with partitions.{name}(conn, tenant) first: rows land in tenant partitions"
    return None, ("tenants not yet partitioned: rows land in the DEFAULT partition "
                  "(tenant_pipelines/core/partitions.py has no function to create a tenant partition)")


def create_flat_table(conn: psycopg.Connection) -> None:
    """usage_events_flat: usage_events_mt's columns, defaults, key and indexes (LIKE copies the
    parent's partitioned indexes, not the DEFAULT partition's own), its owner, forced RLS and
    the same tenant_isolation policy, and the same grants to billing_app."""
    flat = sql.Identifier(FLAT_TABLE)
    with conn.transaction():
        conn.execute(sql.SQL(
            "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES"
            " INCLUDING STORAGE INCLUDING COMPRESSION)"
        ).format(flat, sql.Identifier(SUBJECT_TABLE)))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO billing_owner").format(flat))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(flat))
        conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(flat))
        conn.execute(sql.SQL(
            "CREATE POLICY tenant_isolation ON {} AS PERMISSIVE FOR ALL TO PUBLIC"
            " USING (organization_id = public.fn_current_tenant_id())"
            " WITH CHECK (organization_id = public.fn_current_tenant_id())"
        ).format(flat))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO billing_app").format(flat))


def _policies(conn: psycopg.Connection, table: str) -> list[tuple]:
    return conn.execute(
        "SELECT policyname, permissive, roles::text[], cmd, qual, with_check FROM pg_policies"
        " WHERE schemaname = 'public' AND tablename = %s ORDER BY policyname",
        (table,),
    ).fetchall()


def index_shapes(conn: psycopg.Connection, table: str) -> list[str]:
    """The indexes of ``table`` with their names and the table's name left out, so that two
    tables' indexes can be compared: ``PRIMARY KEY btree (organization_id, id, "timestamp")``."""
    rows = conn.execute(
        "SELECT i.indisprimary, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = %s::regclass ORDER BY 2",
        (table,),
    ).fetchall()
    return sorted(
        ("PRIMARY KEY " if primary else "") + re.sub(r"^.* USING ", "", definition)
        for primary, definition in rows
    )


def check_flat_matches(conn: psycopg.Connection) -> None:
    """Refuse to run when the flat table is not a faithful copy: a baseline that differs in
    indexes or policy would make the ratio meaningless."""
    subject, flat = index_shapes(conn, SUBJECT_TABLE), index_shapes(conn, FLAT_TABLE)
    if subject != flat:
        raise SystemExit(f"flat table indexes differ from {SUBJECT_TABLE}'s: {flat} vs {subject}")
    if _policies(conn, SUBJECT_TABLE) != _policies(conn, FLAT_TABLE):
        raise SystemExit(f"flat table policies differ from {SUBJECT_TABLE}'s")
    forced = conn.execute(
        "SELECT bool_and(relrowsecurity AND relforcerowsecurity) FROM pg_class"
        " WHERE oid IN (%s::regclass, %s::regclass)",
        (SUBJECT_TABLE, FLAT_TABLE),
    ).fetchone()[0]
    if not forced:
        raise SystemExit("row-level security is not enabled and forced on both tables")


def leaf_rows(conn: psycopg.Connection, table: str) -> list[dict]:
    """Where the rows of ``table`` are (per leaf partition), and how many indexes each leaf has."""
    rows = conn.execute(
        sql.SQL(
            "SELECT tableoid::regclass::text, count(*) FROM {} GROUP BY 1 ORDER BY 1"
        ).format(sql.Identifier(table))
    ).fetchall()
    return [
        {"relation": leaf, "rows": count, "indexes": index_shapes(conn, leaf)}
        for leaf, count in rows
    ]


def total_size(conn: psycopg.Connection, table: str) -> int:
    """Heap, indexes and TOAST of ``table`` and, when it is partitioned, of all its partitions."""
    return conn.execute(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::regclass)),"
        " pg_total_relation_size(%s::regclass))::bigint",
        (table, table),
    ).fetchone()[0]


def checkpoints_so_far(conn: psycopg.Connection) -> int:
    if conn.info.server_version >= 170000:
        query = "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
    else:
        query = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
    return conn.execute(query).fetchone()[0]


def wal_lsn(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_bytes(conn: psycopg.Connection, start: str, end: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)).fetchone()[0])


def reset(admin: psycopg.Connection, table: str) -> None:
    """Empty ``table`` and checkpoint, so each run starts from the same state."""
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    admin.execute("CHECKPOINT")


# -- runs ---------------------------------------------------------------------------------------------


def run_once(
    variant: Variant,
    batches: Sequence[Batch],
    admin: psycopg.Connection,
    dsn: str,
    synchronous_commit: str,
    label: str,
) -> dict:
    """Write ``batches`` with ``variant`` on a fresh connection into an empty table; timed."""
    expected = sum(len(rows) for _, rows in batches)
    reset(admin, variant.table)
    load = h.wait_until_idle(IDLE_LOAD, timeout=IDLE_WAIT)
    checkpoints = checkpoints_so_far(admin)
    with connect(dsn, synchronous_commit) as conn:
        backend = h.local_backend_pid(conn)
        lsn = wal_lsn(admin)
        progress_every = max(1, len(batches) // 4)
        h.log(f"{label}: {variant.key} starts ({expected:,} rows in {len(batches)} batches)")
        written = 0
        with h.ResourceProbe(backend) as probe:
            started = time.perf_counter()
            for index, (tenant, rows) in enumerate(batches, 1):
                written += variant.write(conn, tenant, rows)
                if index % progress_every == 0 and index < len(batches):
                    h.log(f"{label}: {variant.key} {written:,}/{expected:,} rows")
            seconds = time.perf_counter() - started
    end_lsn = wal_lsn(admin)
    stored = admin.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(variant.table))
    ).fetchone()[0]
    if written != expected or stored != expected:
        raise SystemExit(f"{variant.key}: wrote {written:,} and stored {stored:,} rows, expected {expected:,}")
    result = {
        "variant": variant.key,
        "rows": expected,
        "seconds": seconds,
        "rows_per_second": expected / seconds,
        "wal_bytes": wal_bytes(admin, lsn, end_lsn),
        "size_after_bytes": total_size(admin, variant.table),
        "checkpoints_during_run": checkpoints_so_far(admin) - checkpoints,
        "leaves": leaf_rows(admin, variant.table) if variant.table == SUBJECT_TABLE else None,
        "load_before_cores": load,
        **probe.as_dict(),
    }
    other = result["other_cpu_seconds"]
    result["disturbed"] = load >= IDLE_LOAD or (other is not None and other / seconds > DISTURBED_LOAD)
    h.log(f"{label}: {variant.key} done: {expected:,} rows in {seconds:.1f}s = {result['rows_per_second']:,.0f} rows/s"
          + (f" (disturbed: other work took {other or 0:.1f} CPU-s)" if result["disturbed"] else ""))
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(variant.table)))
    return result


def summarize(runs: list[dict]) -> dict:
    summary: dict = {}
    """Per variant, the median and best of its undisturbed runs, then the ratios and the
    verdicts on the targets. When some variant has no undisturbed run, every variant's runs
    all count instead, so that the variants are always compared on the same basis."""
    clean_basis = all(any(not r["disturbed"] for r in runs if r["variant"] == v.key) for v in VARIANTS)
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant.key]
        counted = [r for r in mine if not r["disturbed"]] if clean_basis else mine
        rates = [r["rows_per_second"] for r in counted]
        summary[variant.key] = {
            "label": variant.label,
            "description": variant.description,
            "runs_rows_per_second": [r["rows_per_second"] for r in mine],
            "runs_disturbed": [r["disturbed"] for r in mine],
            "runs_counted": len(counted),
            "median_rows_per_second": statistics.median(rates),
            "best_rows_per_second": max(rates),
            "reference_multiple": statistics.median(rates) / REFERENCE_RPS,
        }
    subject = summary["subject"]["median_rows_per_second"]
    flat_rls = summary["flat_rls"]["median_rows_per_second"]
    for entry in summary.values():
        entry["ratio_to_flat_rls"] = entry["median_rows_per_second"] / flat_rls
    return {
        "basis": "undisturbed runs" if clean_basis else "all runs (some variant had no undisturbed run)",
        "variants": summary,
        "ratio_subject_to_flat_rls": subject / flat_rls,
        "ratio_subject_to_flat_copy": subject / summary["flat_copy"]["median_rows_per_second"],
        "reference_multiple": subject / REFERENCE_RPS,
        "targets": {
            "throughput": {
                "required_rows_per_second": TARGET_RPS,
                "measured_rows_per_second": subject,
                "pass": subject >= TARGET_RPS,
            },
            "parity_with_flat_rls": {
                "required_ratio": TARGET_PARITY,
                "measured_ratio": subject / flat_rls,
                "pass": subject / flat_rls >= TARGET_PARITY,
            },
        },
    }


# -- report ---------------------------------------------------------------------------------------------


def describe_leaves(leaves: list[dict]) -> str:
    """The leaves that got rows, grouped by name pattern: ``usage_events_mt_t_<tenant>_rest`` x6 ..."""
    groups: dict[tuple[str, int], list[int]] = {}
    for leaf in leaves:
        pattern = re.sub(r"_t_[0-9a-f]{32}", "_t_<tenant>", leaf["relation"])
        groups.setdefault((pattern, len(leaf["indexes"])), []).append(leaf["rows"])
    return "; ".join(
        f"`{pattern}` × {len(rows)} ({sum(rows):,} rows in all, {indexes} indexes each)"
        for (pattern, indexes), rows in sorted(groups.items())
    )


def _ratio(value: float) -> str:
    """Three decimals, cut rather than rounded: 0.8998 shows as 0.899, not as a failing 0.900."""
    return f"{math.floor(value * 1000) / 1000:.3f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _disturbed(runs: list[dict]) -> str:
    numbers = [str(i) for i, r in enumerate(runs, 1) if r["disturbed"]]
    if not numbers:
        return "none"
    return (f"{', '.join(numbers)} of {len(runs)} (other work competed for the cores: their "
            "figures are low; for figures that use every run, re-run on an idle machine)")


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def render_markdown(results: dict) -> str:
    p, s, m, srv = results["parameters"], results["summary"], results["machine"], results["server"]
    tp, par = s["targets"]["throughput"], s["targets"]["parity_with_flat_rls"]
    short = {v.key: v.label for v in VARIANTS}
    out = [
        "# Benchmark: usage-event ingestion",
        "",
        f"Generated by `bench/ingest.py` on {m['date_utc']}; re-run it to refresh this page "
        "(see [bench/README.md](../../bench/README.md)). Command:",
        "",
        f"    {results['command']}",
        "",
        f"{p['events']:,} time-ordered usage events for {p['tenants']} tenants, in batches of "
        f"{p['batch']:,} rows sent to the tenants in turn; each variant ran {p['repeat']} times "
        "(order alternated between rounds) into an emptied, checkpointed table, on the same "
        "pre-generated events. Median and best are over the runs not disturbed by other work on "
        "the machine (disturbed runs are marked ⚠), or over all runs when some variant had no "
        f"undisturbed run; here: **{s['basis']}**. Every run is listed below.",
        "",
        "## Targets",
        "",
        h.markdown_table(
            ["Target", "Required", "Measured", "Result"],
            [
                ["Throughput of the subject on one node",
                 f"≥ {_rate(tp['required_rows_per_second'])} rows/s "
                 f"({TARGET_MULTIPLE}× the seed's {REFERENCE_EVENTS_PER_MIN:,} events/min)",
                 f"{_rate(tp['measured_rows_per_second'])} rows/s ({s['reference_multiple']:.1f}×)",
                 _verdict(tp["pass"])],
                ["Subject vs flat table with RLS (A)",
                 f"≥ {par['required_ratio']:.2f}×",
                 f"{_ratio(par['measured_ratio'])}×",
                 _verdict(par["pass"])],
            ],
            "llll",
        ),
        "",
        "## Throughput",
        "",
        h.markdown_table(
            ["Variant", "Median rows/s", "Best rows/s", "× 850K/min", "vs A", "Runs counted",
             "All runs (rows/s)"],
            [
                [e["label"], _rate(e["median_rows_per_second"]), _rate(e["best_rows_per_second"]),
                 f"{e['reference_multiple']:.1f}×", f"{_ratio(e['ratio_to_flat_rls'])}×",
                 f"{e['runs_counted']} of {len(e['runs_rows_per_second'])}",
                 ", ".join(_rate(rate) + (" ⚠" if disturbed else "")
                           for rate, disturbed in zip(e["runs_rows_per_second"], e["runs_disturbed"]))]
                for e in s["variants"].values()
            ],
            "lrrrrrl",
        ),
        "",
        *[f"- **{e['label']}**: {e['description']}." for e in s["variants"].values()],
        "",
        "## Every run",
        "",
        "In the order they ran. CPU is user + system seconds: of the Python process; of the "
        "server process serving the run's connection; of the whole server (that backend, the "
        "checkpointer, WAL writer, autovacuum); and *other*: the rest of the machine's busy "
        f"time (kernel I/O threads, other programs). {results['machine']['cores']} cores give "
        f"{results['machine']['cores']} CPU-seconds per second. WAL is what the server wrote "
        f"during the run. ⚠ marks a disturbed run: other work averaged more than {DISTURBED_LOAD} "
        "of a core, or the machine was still busy when it started.",
        "",
        h.markdown_table(
            ["#", "Variant", "Seconds", "Rows/s", "Python CPU s", "Backend CPU s", "Server CPU s",
             "Other CPU s", "WAL", "Table + indexes", "Checkpoints"],
            [
                [f"{i}{' ⚠' if r['disturbed'] else ''}", short[r["variant"]], f"{r['seconds']:.1f}",
                 _rate(r["rows_per_second"]), f"{r['client_cpu_seconds']:.1f}",
                 _seconds(r["backend_cpu_seconds"]), _seconds(r["server_cpu_seconds"]),
                 _seconds(r["other_cpu_seconds"]), h.mib(r["wal_bytes"]), h.mib(r["size_after_bytes"]),
                 r["checkpoints_during_run"]]
                for i, r in enumerate(results["runs"], 1)
            ],
            "rlrrrrrrrrr",
        ),
        "",
        "## Memory",
        "",
        h.markdown_table(
            ["#", "Variant", "Python RSS growth", "Backend peak RSS", "Backend peak private",
             "Server peak PSS"],
            [
                [i, short[r["variant"]], h.mib(r["client_rss_growth_bytes"]),
                 h.mib(r["backend_peak_rss_bytes"]), h.mib(r["backend_peak_private_bytes"]),
                 h.mib(r["server_peak_pss_bytes"])]
                for i, r in enumerate(results["runs"], 1)
            ],
            "rlrrrr",
        ),
        "",
        f"- Python process peak RSS: {h.mib(results['memory']['python_peak_rss_bytes'])} over the whole "
        f"benchmark; {h.mib(results['memory']['python_rss_after_generation_bytes'])} right after "
        "generating the events, which it holds throughout (the same for every variant). "
        "*Python RSS growth* is the increase over the RSS at the start of a run.",
        "- *Backend peak RSS* is the VmHWM of the server process serving the run's connection "
        "(it includes the shared buffers that process touched); *backend peak private* is its "
        "sampled peak of anonymous memory (work memory, caches, local buffers for the staging table).",
        "- *Server peak PSS* is the sampled peak of the proportional set size summed over the "
        "postmaster and all its children (shared memory counted once).",
        "",
        "## Set-up",
        "",
        f"- PostgreSQL: {srv['version']}",
        f"- Machine: {m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model']}, "
        f"{h.mib(m['memory_bytes'])} RAM; {m['platform']}; Python {m['python']}, psycopg {m['psycopg']}",
        f"- Server: {results['server_kind']}. Settings: "
        + ", ".join(f"{k}={v}" for k, v in srv["settings"].items()),
        f"- Partitioning: {results['partitioning']}.",
        f"- Where the subject's rows landed (last run): {describe_leaves(results['subject_leaves'])}.",
        "- Indexes of the flat table (identical to usage_events_mt's partitioned indexes): "
        + "; ".join(f"`{i}`" for i in results["flat_indexes"]),
        f"- Events: generated before timing ({p['events']:,} in {results['generation_seconds']:.1f}s, "
        f"not part of the runs), timestamps spread over {results['events_day_utc']} (UTC, the day "
        f"of the run); seed {p['seed']}; the tenants' tiers rotate free/starter/growth/enterprise.",
        f"- Each run waited for the machine to go idle (fewer than {IDLE_LOAD} cores busy) before "
        f"starting. Disturbed runs: {_disturbed(results['runs'])}.",
        f"- Warm-up: one round ({results['warmup_batches']} batches) per variant before the measured "
        "runs, not reported.",
    ]
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/ingest.py",
        description=(
            "Ingestion benchmark: time-ordered usage events written through the application path "
            "(ingest_usage_events: billing_app, tenant context, RLS forced) into usage_events_mt, "
            "against a flat unpartitioned table with the same indexes and policy written the same "
            "way (A) and a plain superuser COPY into it (B, reference only). Reports rows/s, their "
            "ratio and peak memory in bench/results/ingest.json and docs/benchmarks/ingest.md. "
            f"Targets: subject >= {TARGET_RPS:,.0f} rows/s ({TARGET_MULTIPLE}x the seed's "
            f"{REFERENCE_EVENTS_PER_MIN:,} events/min) and >= {TARGET_PARITY}x A."
        ),
    )
    parser.add_argument("--events", type=int, default=2_000_000, metavar="N",
                        help="usage events written by each run (default: 2,000,000)")
    parser.add_argument("--tenants", type=int, default=10, metavar="T",
                        help="tenants the events are spread over (default: 10)")
    parser.add_argument("--batch", type=int, default=10_000, metavar="B",
                        help="rows per batch, i.e. per ingest_usage_events() call and transaction "
                             "(default: 10,000); a batch must finish within its tenant's tier "
                             "statement_timeout (free tier: 10s)")
    parser.add_argument("--repeat", type=int, default=3, metavar="R",
                        help="runs per variant, order alternated between rounds (default: 3)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated events and tenants")
    parser.add_argument("--dsn", metavar="DSN",
                        help="a superuser DSN of a PostgreSQL 15+ server to use: the benchmark creates "
                             "a scratch database there and drops it afterwards (default: start a "
                             "throwaway cluster in /tmp with durable settings)")
    parser.add_argument("--synchronous-commit", choices=("off", "on"), default="off",
                        help="synchronous_commit of every benchmark connection, the same for all "
                             "variants (default: off)")
    parser.add_argument("--no-tenant-partitions", action="store_true",
                        help="leave the tenants in the DEFAULT partition even when "
                             "tenant_pipelines.core.partitions can give them partitions of their own")
    parser.add_argument("--no-docs", action="store_true",
                        help="write only bench/results/ingest.json, not docs/benchmarks/ingest.md "
                             "(for smoke runs that should not replace the committed figures)")
    args = parser.parse_args(argv)
    for name in ("events", "tenants", "batch", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def command_line(args: argparse.Namespace) -> str:
    parts = ["python bench/ingest.py", f"--events {args.events}", f"--tenants {args.tenants}",
             f"--batch {args.batch}", f"--repeat {args.repeat}"]
    if args.seed != 42:
        parts.append(f"--seed {args.seed}")
    if args.no_tenant_partitions:
        parts.append("--no-tenant-partitions")
    if args.synchronous_commit != "off":
        parts.append(f"--synchronous-commit {args.synchronous_commit}")
    if args.dsn:
        parts.append("--dsn <admin DSN>")
    return " ".join(parts)


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    with connect(dsn, args.synchronous_commit) as admin:
        if not admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            raise SystemExit("the DSN must be a superuser's: the benchmark migrates, checkpoints and "
                             "runs baseline B as the superuser")
        h.log("migrating the scratch database")
        migrate(admin)
        # The events are today's (UTC, by the server's clock), as a live ingest's would be: a
        # tenant split into months gets them in its current month's partition.
        day = admin.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'").fetchone()[0]
        h.log(f"onboarding {args.tenants} tenants")
        seed_demo(admin, tenants=args.tenants, events_per_tenant=0, seed=args.seed, as_of=day.date())
        tenants = [t.organization_id for t in list_tenants(admin)]
        onboard, partitioning = find_partition_onboarding(not args.no_tenant_partitions)
        if onboard is not None:
            for tenant in tenants:
                onboard(admin, tenant)
        h.log(partitioning)
        create_flat_table(admin)
        check_flat_matches(admin)
        server = h.server_info(admin)
        h.log(f"server: {server['version']}")

        h.log(f"generating {args.events:,} events")
        started = time.perf_counter()
        batches = generate_batches(tenants, args.events, args.batch, args.seed, day)
        generation_seconds = time.perf_counter() - started
        gc.collect()
        gc.freeze()  # the events live until the end: keep the collector from rescanning them
        rss_after_generation = h.python_peak_rss()
        h.log(f"generated {args.events:,} events in {generation_seconds:.1f}s "
              f"({args.events / generation_seconds:,.0f} rows/s), python RSS {h.mib(rss_after_generation)}")

        warmup = batches[: len(tenants)]
        for variant in VARIANTS:
            run_once(variant, warmup, admin, dsn, args.synchronous_commit, "warm-up")

        runs = []
        for round_ in range(args.repeat):
            order = VARIANTS if round_ % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                runs.append(run_once(variant, batches, admin, dsn, args.synchronous_commit,
                                     f"round {round_ + 1}/{args.repeat}"))

        subject_leaves = next(r["leaves"] for r in reversed(runs) if r["variant"] == "subject")
        return {
            "benchmark": NAME,
            "command": command_line(args),
            "parameters": {"events": args.events, "tenants": args.tenants, "batch": args.batch,
                           "repeat": args.repeat, "seed": args.seed,
                           "synchronous_commit": args.synchronous_commit},
            "reference": {"events_per_minute": REFERENCE_EVENTS_PER_MIN, "rows_per_second": REFERENCE_RPS,
                          "target_multiple": TARGET_MULTIPLE, "target_rows_per_second": TARGET_RPS,
                          "target_parity_with_flat_rls": TARGET_PARITY},
            "machine": h.machine_info(),
            "server": server,
            "server_kind": server_kind,
            "partitioning": partitioning,
            "subject_leaves": subject_leaves,
            "flat_indexes": index_shapes(admin, FLAT_TABLE),
            "events_day_utc": day.astimezone(timezone.utc).date().isoformat(),
            "generation_seconds": generation_seconds,
            "warmup_batches": len(warmup),
            "runs": runs,
            "summary": summarize(runs),
            "memory": {"python_peak_rss_bytes": h.python_peak_rss(),
                       "python_rss_after_generation_bytes": rss_after_generation},
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.dsn:
            with h.scratch_database(args.dsn, "bench_ingest") as dsn:
                results = benchmark(args, dsn, f"the server at {h.describe_dsn(args.dsn)}, scratch database")
        else:
            with h.throwaway_cluster() as admin_dsn:
                with h.scratch_database(admin_dsn, "bench_ingest") as dsn:
                    results = benchmark(args, dsn, "throwaway cluster started by the benchmark (initdb "
                                                   "defaults plus the project's BASE_SETTINGS)")
    except psycopg.errors.QueryCanceled as exc:
        raise SystemExit(f"a batch was cancelled ({exc.diag.message_primary}): the free tier's "
                         "statement_timeout is 10s; lower --batch") from None
    written = h.write_results(NAME, results, render_markdown(results), docs=not args.no_docs)
    s = results["summary"]
    for entry in s["variants"].values():
        h.log(f"{entry['label']}: median {entry['median_rows_per_second']:,.0f} rows/s "
              f"({entry['reference_multiple']:.1f}x reference)")
    tp, par = s["targets"]["throughput"], s["targets"]["parity_with_flat_rls"]
    h.log(f"throughput target {TARGET_RPS:,.0f} rows/s: {'PASS' if tp['pass'] else 'FAIL'} "
          f"({tp['measured_rows_per_second']:,.0f}); parity >= {TARGET_PARITY}: "
          f"{'PASS' if par['pass'] else 'FAIL'} ({_ratio(par['measured_ratio'])})")
    for path in written:
        h.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
