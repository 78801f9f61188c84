#!/usr/bin/env python
"""Benchmark: usage-event ingestion through the application path.

The subject is ``ingest_usage_events()`` writing into ``usage_events_mt`` (partitioned by
tenant, RLS forced) as billing_app in a tenant context: the batch as one array per column,
sent in binary, and one INSERT ... SELECT unnest(...) per 5,000 rows (billing_app may not
create the temporary staging table that earlier versions COPYed into). It is measured against, in the same run and on
the same pre-generated events:

* flat_rls  (baseline A): a flat, unpartitioned ``usage_events_flat`` with the same columns,
  primary key and two indexes, RLS forced with the same tenant_isolation policy, written by a
  function that mirrors ingest_usage_events() line for line;
* flat_copy (baseline B, reference only): plain COPY into the same flat table as the
  superuser, which bypasses RLS.

Every variant runs with the same number of concurrent writers (--writers, default: the
usable cores): one connection and one thread each, the tenants split between them so that
each tenant is written by exactly one writer, in time order. A run's rate is all its rows over
the wall time from the start of the first writer to the end of the last. By default each
variant also runs with one writer, in the same rounds, for comparison (--compare-writers).

The reference is the seed's 850K events/min on a single primary; the targets are a subject
rate of at least 10x that (141,667 rows/s) on one node, and at least 0.9x flat_rls, both
judged at --writers.

Optional experiments (--experiment), measured in the same rounds and reported apart:
ordered-ids (caller-supplied, time-ordered UUIDv7-style ids instead of the column's
gen_random_uuid() default) and wal-compression (wal_compression=on for the throwaway cluster).

Run on demand:  python bench/ingest.py [--events N] [--tenants T] [--batch B] [--writers W] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.local.demo import METRICS, seed_demo  # noqa: E402
from tenant_pipelines.core.ingest import UsageEvent, ingest_usage_events, insert_usage_events  # noqa: E402
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.core.tenants import list_tenants  # noqa: E402
from tenant_pipelines.db.session import tenant_session  # noqa: E402

NAME = "ingest"
REFERENCE_EVENTS_PER_MIN = 850_000
REFERENCE_RPS = REFERENCE_EVENTS_PER_MIN / 60
TARGET_MULTIPLE = 10
TARGET_RPS = TARGET_MULTIPLE * REFERENCE_RPS  # 141,666.7 rows/s
TARGET_PARITY = 0.9
IDLE_WAIT = 20.0  # seconds a run waits at most for the machine to go idle (h.IDLE_LOAD)
DISTURBED_LOAD = 0.25  # other work beyond this many cores on average during a run marks it disturbed
USABLE_CORES = len(os.sched_getaffinity(0))  # the default number of concurrent writers

SUBJECT_TABLE = "usage_events_mt"
FLAT_TABLE = "usage_events_flat"
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
SDKS = ("python", "node", "go")

Batch = tuple[uuid.UUID, list[UsageEvent]]


# -- the three ways of writing a batch ------------------------------------------------------------

_FLAT_COPY = sql.SQL(
    'COPY {} (organization_id, metric_name, quantity, "timestamp", properties) FROM STDIN'
).format(sql.Identifier(FLAT_TABLE))


def ingest_flat_usage_events(
    conn: psycopg.Connection, tenant_id: uuid.UUID, events: Iterable[UsageEvent]
) -> int:
    """Baseline A: ingest_usage_events() step for step, into the flat table. Same session
    (billing_app, tenant context, tier limits), same column arrays and INSERT ... SELECT
    unnest(...); only the target differs."""
    with tenant_session(conn, tenant_id) as tx:
        return insert_usage_events(tx, events, table=FLAT_TABLE)


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
    ids: str = ""  # "ordered" or "random": its rows carry a caller-supplied id first, (id, *UsageEvent); see with_ids()


VARIANTS = (
    Variant("subject", "subject: usage_events_mt, app path", SUBJECT_TABLE, ingest_usage_events,
            "ingest_usage_events() into usage_events_mt: billing_app, tenant context, RLS forced, "
            "column arrays + INSERT ... SELECT unnest()"),
    Variant("flat_rls", "A: flat table, app path + RLS", FLAT_TABLE, ingest_flat_usage_events,
            "the same path into usage_events_flat (unpartitioned, same key and indexes, same policy)"),
    Variant("flat_copy", "B: flat table, superuser COPY", FLAT_TABLE, copy_flat_as_superuser,
            "plain COPY into usage_events_flat as the superuser (reference only: no RLS, no arrays)"),
)


# -- experiment: caller-supplied, time-ordered ids ---------------------------------------------------
#
# ingest_usage_events() lets the column default (gen_random_uuid()) pick each row's id: random
# UUIDs land all over the primary key (organization_id, id, "timestamp"), so every batch dirties
# leaf pages across the tenant's whole key range, and each page's first change after a
# checkpoint writes a full-page image to WAL. These writers are the same path with one change:
# the staging table has an id column and the caller supplies time-ordered (UUIDv7-style) ids,
# so a tenant's new keys go to the right edge of its key range. Nothing in the schema changes.

_INSERT_WITH_IDS = """INSERT INTO {} (id, organization_id, metric_name, quantity, "timestamp", properties)
       SELECT e.id, fn_current_tenant_id(), e.metric_name, e.quantity, e.ts, e.properties::jsonb
         FROM unnest(%b::uuid[], %b::text[], %b::numeric[], %b::timestamptz[], %b::text[])
              AS e(id, metric_name, quantity, ts, properties)"""


def _ingest_with_ids(table: str) -> Callable[[psycopg.Connection, uuid.UUID, Sequence[tuple]], int]:
    insert = sql.SQL(_INSERT_WITH_IDS).format(sql.Identifier(table))

    def write(conn: psycopg.Connection, tenant_id: uuid.UUID, events: Iterable[tuple]) -> int:
        with tenant_session(conn, tenant_id) as tx:
            columns = [list(column) for column in zip(*events)]
            return tx.execute(insert, columns).rowcount if columns else 0

    write.__name__ = f"ingest_with_ids_{table}"
    return write


def uuid7(when: datetime, rng: random.Random) -> uuid.UUID:
    """A UUIDv7-style id (RFC 9562 layout): 48 bits of Unix milliseconds, version 7, random rest."""
    millis = int(when.timestamp() * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return uuid.UUID(int=value)


def uuid4(rng: random.Random) -> uuid.UUID:
    """A random (version 4) UUID, as gen_random_uuid() makes, from ``rng``."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def with_ids(batches: Sequence[Batch], seed: int, kind: str) -> list[Batch]:
    """The same batches, each row prefixed with an id: time-ordered (``kind`` "ordered", taken
    from the row's timestamp) or random ("random"). Pre-generated like the events, and as
    text, which is what COPY sends: not part of the runs."""
    rng = random.Random(f"{seed}-{kind}-ids")
    if kind == "ordered":
        return [(tenant, [(str(uuid7(row[2], rng)), *row) for row in rows]) for tenant, rows in batches]
    if kind == "random":
        return [(tenant, [(str(uuid4(rng)), *row) for row in rows]) for tenant, rows in batches]
    raise ValueError(f"ids: {kind!r}")


def with_ordered_ids(batches: Sequence[Batch], seed: int) -> list[Batch]:
    return with_ids(batches, seed, "ordered")


@dataclass(frozen=True)
class Experiment:
    key: str
    title: str
    variants: tuple[Variant, ...]
    baseline: dict[str, str]  # experiment variant key -> the VARIANTS key it is compared with
    setting: tuple[str, str] | None  # (name, value) set with ALTER SYSTEM for its runs
    description: str


EXPERIMENTS = {
    "ordered-ids": Experiment(
        "ordered-ids", "time-ordered ids",
        (
            Variant("subject_ordered_ids", "subject + time-ordered ids", SUBJECT_TABLE,
                    _ingest_with_ids(SUBJECT_TABLE),
                    "the subject's path (billing_app, tenant context, RLS, column arrays + "
                    "INSERT ... SELECT unnest()) with caller-supplied UUIDv7-style ids", ids="ordered"),
            Variant("flat_rls_ordered_ids", "A + time-ordered ids", FLAT_TABLE,
                    _ingest_with_ids(FLAT_TABLE),
                    "baseline A's path with caller-supplied UUIDv7-style ids", ids="ordered"),
            Variant("subject_random_ids", "subject + caller's random ids (control)", SUBJECT_TABLE,
                    _ingest_with_ids(SUBJECT_TABLE),
                    "the same path as subject + time-ordered ids, with caller-supplied random "
                    "(version 4) ids: what supplying ids costs or saves by itself", ids="random"),
        ),
        {"subject_ordered_ids": "subject", "flat_rls_ordered_ids": "flat_rls", "subject_random_ids": "subject"},
        None,
        "the batch gets an id column and the caller supplies UUIDv7-style ids (48-bit "
        "millisecond timestamp, then random bits), pre-generated with the events, instead of "
        "the column default gen_random_uuid(): each tenant's new primary-key entries go to the "
        "right edge of its key range instead of all over it. The control supplies random ids "
        "through the same path, so that the difference between the two is the ordering alone",
    ),
    "wal-compression": Experiment(
        "wal-compression", "wal_compression=on",
        VARIANTS,
        {v.key: v.key for v in VARIANTS},
        ("wal_compression", "on"),
        "ALTER SYSTEM SET wal_compression = on and a reload before each of its runs (RESET "
        "after): full-page images in WAL are compressed (pglz); the same variants and events",
    ),
}


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


def find_partition_onboarding(enabled: bool = True) -> tuple[Callable | None, str]:
    """The project's function that gives a tenant its own partition (or its place in the pool)."""
    if not enabled:
        return None, ("tenants not partitioned (--no-tenant-partitions): rows land in the "
                      "DEFAULT partition")
    return ensure_tenant_partition, "tenants onboarded with partitions.ensure_tenant_partition(conn, tenant) first"


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
    flags = "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = %s::regclass"
    if not all(conn.execute(flags, (table,)).fetchone()[0] for table in (SUBJECT_TABLE, FLAT_TABLE)):
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


def reset(admin: psycopg.Connection, table: str) -> None:
    """Empty ``table`` and checkpoint, so each run starts from the same state."""
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    admin.execute("CHECKPOINT")


# -- runs ---------------------------------------------------------------------------------------------


def split_by_writer(batches: Sequence[Batch], writers: int) -> list[list[Batch]]:
    """The batches of each writer: tenants in order of first appearance go to writers 1..W in
    turn, and a writer gets all of its tenants' batches in their original order, so every
    tenant is written by exactly one writer, in time order. Never more writers than tenants."""
    owner: dict[uuid.UUID, int] = {}
    for tenant, _ in batches:
        owner.setdefault(tenant, len(owner) % writers)
    parts: list[list[Batch]] = [[] for _ in range(min(writers, len(owner)))]
    for batch in batches:
        parts[owner[batch[0]]].append(batch)
    return parts


class WritersProbe(h.ResourceProbe):
    """h.ResourceProbe over the server backends of several writer connections: backend CPU is
    their sum; backend peak RSS (VmHWM) and peak private memory are those of the largest one.
    The whole server's CPU and PSS, the machine's CPU and this process's are as in the base."""

    def __init__(self, backend_pids: Sequence[int | None], interval: float = 0.25) -> None:
        known = [pid for pid in backend_pids if pid is not None]
        complete = bool(known) and len(known) == len(backend_pids)
        super().__init__(known[0] if complete else None, interval)
        self.backend_pids = known if complete else []
        self._backends_cpu_start: float | None = None

    def _backends_cpu(self) -> float | None:
        try:
            return sum(h.process_cpu_seconds(pid) for pid in self.backend_pids)
        except OSError:
            return None

    def __enter__(self) -> "WritersProbe":
        super().__enter__()
        if self.backend_pids:
            self._backends_cpu_start = self._backends_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._backends_cpu() if self._backends_cpu_start is not None else None
        super().__exit__(*exc)
        if end is not None and self._backends_cpu_start is not None:
            self.backend_cpu_seconds = end - self._backends_cpu_start
        elif len(self.backend_pids) > 1:
            self.backend_cpu_seconds = None  # not one backend's figure passed off as all of them
        if len(self.backend_pids) > 1:
            try:
                self.backend_hwm = max(h.proc_status(pid).get("VmHWM", 0) for pid in self.backend_pids)
            except OSError:
                pass

    def _sample(self) -> None:
        super()._sample()
        for pid in self.backend_pids[1:]:
            try:
                anon = h.proc_status(pid).get("RssAnon", 0)
            except OSError:
                continue
            self.backend_anon_peak = max(self.backend_anon_peak or 0, anon)


def run_once(
    variant: Variant,
    batches: Sequence[Batch],
    admin: psycopg.Connection,
    dsn: str,
    synchronous_commit: str,
    label: str,
    writers: int = 1,
) -> dict:
    """Write ``batches`` with ``variant`` into an empty table; timed. ``writers`` concurrent
    connections (fresh ones, one thread each) share the work, each tenant's batches going to
    one writer (split_by_writer); the time runs from the start of the first writer to the end
    of the last."""
    expected = sum(len(rows) for _, rows in batches)
    parts = split_by_writer(batches, writers)
    reset(admin, variant.table)
    load = h.wait_until_idle(timeout=IDLE_WAIT)
    checkpoints = checkpoints_so_far(admin)
    conns = [h.connect(dsn, synchronous_commit) for _ in parts]
    try:
        backends = [h.local_backend_pid(conn) for conn in conns]
        wal_compression = conns[0].execute("SELECT current_setting('wal_compression')").fetchone()[0]
        lsn = h.wal_lsn(admin)
        quarter = max(1, expected // 4)
        go, stop, lock = threading.Event(), threading.Event(), threading.Lock()
        starts = [0.0] * len(parts)
        ends = [0.0] * len(parts)
        done = [0] * len(parts)
        errors: list[BaseException | None] = [None] * len(parts)
        progress = {"written": 0, "next": quarter}

        def writer(index: int) -> None:
            go.wait()
            starts[index] = time.perf_counter()
            try:
                for tenant, rows in parts[index]:
                    if stop.is_set():
                        break
                    n = variant.write(conns[index], tenant, rows)
                    done[index] += n
                    with lock:
                        progress["written"] += n
                        if progress["written"] >= progress["next"] and progress["written"] < expected:
                            progress["next"] += quarter
                            h.log(f"{label}: {variant.key} {progress['written']:,}/{expected:,} rows")
            except BaseException as exc:  # re-raised in the main thread
                errors[index] = exc
                stop.set()
            finally:
                ends[index] = time.perf_counter()

        threads = [threading.Thread(target=writer, args=(i,), name=f"writer-{i + 1}", daemon=True)
                   for i in range(len(parts))]
        for thread in threads:
            thread.start()
        h.log(f"{label}: {variant.key} starts ({expected:,} rows in {len(batches)} batches, "
              f"{_writers(len(parts))})")
        with WritersProbe(backends) as probe:
            go.set()
            for thread in threads:
                thread.join()
        for error in errors:
            if error is not None:
                raise error
        seconds = max(ends) - min(starts)
    finally:
        for conn in conns:
            conn.close()
    written = sum(done)
    end_lsn = h.wal_lsn(admin)
    stored = admin.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(variant.table))
    ).fetchone()[0]
    if written != expected or stored != expected:
        raise SystemExit(f"{variant.key}: wrote {written:,} and stored {stored:,} rows, expected {expected:,}")
    result = {
        "variant": variant.key,
        "writers": len(parts),
        "rows": expected,
        "seconds": seconds,
        "rows_per_second": expected / seconds,
        "writer_rows": list(done),
        "writer_seconds": [e - b for b, e in zip(starts, ends)],
        "wal_compression": wal_compression,
        "wal_bytes": h.wal_bytes(admin, lsn, end_lsn),
        "size_after_bytes": total_size(admin, variant.table),
        "checkpoints_during_run": checkpoints_so_far(admin) - checkpoints,
        "leaves": leaf_rows(admin, variant.table) if variant.table == SUBJECT_TABLE else None,
        "load_before_cores": load,
        **probe.as_dict(),
    }
    other = result["other_cpu_seconds"]
    result["disturbed"] = load >= h.IDLE_LOAD or (other is not None and other / seconds > DISTURBED_LOAD)
    h.log(f"{label}: {variant.key} done: {expected:,} rows in {seconds:.1f}s = {result['rows_per_second']:,.0f} rows/s"
          f" ({_writers(len(parts))})"
          + (f" (disturbed: other work took {other or 0:.1f} CPU-s)" if result["disturbed"] else ""))
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(variant.table)))
    return result


def apply_setting(admin: psycopg.Connection, dsn: str, name: str, value: str | None, expect: str) -> None:
    """ALTER SYSTEM SET ``name`` = ``value`` (RESET when None), reload, and wait until a new
    connection sees ``expect``."""
    if value is None:
        admin.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
    else:
        admin.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    admin.execute("SELECT pg_reload_conf()")
    with admin.transaction():  # how the server shows the value: 'on' may read back as 'pglz'
        admin.execute("SELECT set_config(%s, %s, true)", (name, expect))
        want = admin.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seen = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
        if seen == want:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: set to {want!r} but new connections still see {seen!r}")
        time.sleep(0.1)


def _variant_stats(variant: Variant, mine: list[dict], clean_basis: bool) -> dict:
    counted = [r for r in mine if not r["disturbed"]] if clean_basis else mine
    rates = [r["rows_per_second"] for r in counted]
    return {
        "label": variant.label,
        "description": variant.description,
        "runs_rows_per_second": [r["rows_per_second"] for r in mine],
        "runs_disturbed": [r["disturbed"] for r in mine],
        "runs_counted": len(counted),
        "median_rows_per_second": statistics.median(rates),
        "best_rows_per_second": max(rates),
        "reference_multiple": statistics.median(rates) / REFERENCE_RPS,
        "median_wal_bytes": statistics.median(r["wal_bytes"] for r in counted),
        "median_server_cpu_seconds": (
            None if any(r["server_cpu_seconds"] is None for r in counted)
            else statistics.median(r["server_cpu_seconds"] for r in counted)),
        "median_checkpoints": statistics.median(r["checkpoints_during_run"] for r in counted),
    }


def summarize(runs: list[dict]) -> dict:
    """Per variant, the median and best of its undisturbed runs, then the ratios and the
    verdicts on the targets. When some variant has no undisturbed run, every variant's runs
    all count instead, so that the variants are always compared on the same basis. ``runs``
    are those of one configuration (one writer count, no experiment)."""
    summary: dict = {}
    clean_basis = all(any(not r["disturbed"] for r in runs if r["variant"] == v.key) for v in VARIANTS)
    for variant in VARIANTS:
        summary[variant.key] = _variant_stats(
            variant, [r for r in runs if r["variant"] == variant.key], clean_basis)
    subject = summary["subject"]["median_rows_per_second"]
    flat_rls = summary["flat_rls"]["median_rows_per_second"]
    for entry in summary.values():
        entry["ratio_to_flat_rls"] = entry["median_rows_per_second"] / flat_rls
    return {
        "basis": "undisturbed runs" if clean_basis else "all runs (some variant had no undisturbed run)",
        "writers": runs[0]["writers"],
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


def summarize_experiment(experiment: Experiment, runs: list[dict], baseline: dict) -> dict:
    """The experiment's variants (median and best of their undisturbed runs, or of all when one
    has none) against their baseline variants' figures in ``baseline`` (a summarize() result
    for the same writer count, measured in the same rounds)."""
    clean_basis = all(any(not r["disturbed"] for r in runs if r["variant"] == v.key)
                      for v in experiment.variants)
    variants = {}
    for variant in experiment.variants:
        entry = _variant_stats(variant, [r for r in runs if r["variant"] == variant.key], clean_basis)
        base = baseline["variants"][experiment.baseline[variant.key]]
        entry["baseline"] = experiment.baseline[variant.key]
        entry["baseline_label"] = base["label"]
        entry["baseline_median_rows_per_second"] = base["median_rows_per_second"]
        entry["ratio_to_baseline"] = entry["median_rows_per_second"] / base["median_rows_per_second"]
        entry["baseline_median_wal_bytes"] = base["median_wal_bytes"]
        variants[variant.key] = entry
    subject = next((e for e in variants.values() if e["baseline"] == "subject"), None)
    flat_rls = next((e for e in variants.values() if e["baseline"] == "flat_rls"), None)
    result = {
        "key": experiment.key,
        "title": experiment.title,
        "description": experiment.description,
        "setting": experiment.setting,
        "basis": "undisturbed runs" if clean_basis else "all runs (some variant had no undisturbed run)",
        "variants": variants,
    }
    if subject is not None:
        result["subject_rows_per_second"] = subject["median_rows_per_second"]
        result["subject_reference_multiple"] = subject["reference_multiple"]
        result["meets_throughput_target"] = subject["median_rows_per_second"] >= TARGET_RPS
        if flat_rls is not None:
            result["ratio_subject_to_flat_rls"] = (subject["median_rows_per_second"]
                                                   / flat_rls["median_rows_per_second"])
    return result


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


def _seconds(value: float | None) -> str:
    return h.fmt(value, ".1f")


def _disturbed(runs: list[dict]) -> str:
    numbers = [str(i) for i, r in enumerate(runs, 1) if r["disturbed"]]
    if not numbers:
        return "none"
    return (f"{', '.join(numbers)} of {len(runs)} (other work competed for the cores: their "
            "figures are low; for figures that use every run, re-run on an idle machine)")


def _writers(count: int) -> str:
    return f"{count} writer{'s' if count != 1 else ''}"


def _mib_or_na(value: float | None) -> str:
    return "n/a" if value is None else h.mib(int(value))


def _throughput_table(s: dict) -> str:
    return h.markdown_table(
        ["Variant", "Median rows/s", "Best rows/s", "× 850K/min", "vs A", "Runs counted",
         "All runs (rows/s)"],
        [
            [e["label"], h.rate(e["median_rows_per_second"]), h.rate(e["best_rows_per_second"]),
             f"{e['reference_multiple']:.1f}×", f"{_ratio(e['ratio_to_flat_rls'])}×",
             f"{e['runs_counted']} of {len(e['runs_rows_per_second'])}",
             ", ".join(h.rate(rate) + (" ⚠" if disturbed else "")
                       for rate, disturbed in zip(e["runs_rows_per_second"], e["runs_disturbed"]))]
            for e in s["variants"].values()
        ],
        "lrrrrrl",
    )


def _writers_section(results: dict) -> list[str]:
    by = {int(k): v for k, v in results["summaries_by_writers"].items()}
    if len(by) < 2:
        return []
    counts = sorted(by)
    headline = results["summary"]["writers"]
    rows = []
    for key in by[headline]["variants"]:
        rates = [by[c]["variants"][key]["median_rows_per_second"] for c in counts]
        rows.append([by[headline]["variants"][key]["label"], *[h.rate(r) for r in rates],
                     *[f"{r / rates[0]:.2f}×" for r in rates[1:]]])
    rows.append(["subject vs A", *[f"{_ratio(by[c]['ratio_subject_to_flat_rls'])}×" for c in counts],
                 *["" for _ in counts[1:]]])
    rows.append(["subject × 850K/min", *[f"{by[c]['reference_multiple']:.1f}×" for c in counts],
                 *["" for _ in counts[1:]]])
    bases = ", ".join(_writers(c) + ": " + by[c]["basis"] for c in counts)
    out = [
        "## Writers",
        "",
        "The same variants and events in the same rounds, with each writer count: median rows/s "
        f"(over {bases}).",
        "",
        h.markdown_table(
            ["Variant", *[_writers(c) for c in counts], *[f"{_writers(c)} vs {_writers(counts[0])}" for c in counts[1:]]],
            rows,
            "l" + "r" * (2 * len(counts) - 1),
        ),
        "",
    ]
    if counts[0] != headline:
        out += [f"Every run with {_writers(counts[0])} (rows/s):", ""]
        out += [f"- {e['label']}: " + ", ".join(h.rate(r) + (" ⚠" if d else "")
                                              for r, d in zip(e["runs_rows_per_second"], e["runs_disturbed"]))
                for e in by[counts[0]]["variants"].values()]
    out.append("")
    return out


def _experiments_section(results: dict) -> list[str]:
    experiments = results.get("experiments") or {}
    if not experiments:
        return []
    headline = results["summary"]
    out = [
        "## Experiments",
        "",
        f"Measured in the same rounds as the figures above, with {_writers(headline['writers'])}, on the "
        "same events, each against its baseline's median from the main table. Not part of the "
        "targets: neither changes `sql/` or `tenant_pipelines/`.",
        "",
    ]
    rows = []
    for exp in experiments.values():
        for e in exp["variants"].values():
            rows.append([
                exp["title"], e["label"], h.rate(e["median_rows_per_second"]),
                h.rate(e["baseline_median_rows_per_second"]), f"{e['ratio_to_baseline']:.3f}×",
                f"{e['reference_multiple']:.1f}×",
                f"{_mib_or_na(e['median_wal_bytes'])} (vs {_mib_or_na(e['baseline_median_wal_bytes'])})",
                f"{e['median_checkpoints']:g}",
                ", ".join(h.rate(r) + (" ⚠" if d else "") for r, d in zip(e["runs_rows_per_second"], e["runs_disturbed"])),
            ])
    out += [
        h.markdown_table(
            ["Experiment", "Variant", "Median rows/s", "Baseline median", "vs baseline", "× 850K/min",
             "WAL per run (baseline)", "Checkpoints", "All runs (rows/s)"],
            rows, "llrrrrrrl"),
        "",
    ]
    for exp in experiments.values():
        line = f"- **{exp['title']}**: {exp['description']}."
        if "subject_rows_per_second" in exp:
            line += (f" Subject: {h.rate(exp['subject_rows_per_second'])} rows/s "
                     f"({exp['subject_reference_multiple']:.1f}×, throughput target "
                     f"{'met' if exp['meets_throughput_target'] else 'not met'})")
            if "ratio_subject_to_flat_rls" in exp:
                line += f", {_ratio(exp['ratio_subject_to_flat_rls'])}× A under the same experiment"
            line += "."
        line += f" Median over {exp['basis']}."
        out.append(line)
    out.append("")
    return out


def render_markdown(results: dict) -> str:
    p, s, m, srv = results["parameters"], results["summary"], results["machine"], results["server"]
    tp, par = s["targets"]["throughput"], s["targets"]["parity_with_flat_rls"]
    exps = results.get("experiments") or {}
    short = {v.key: v.label for v in VARIANTS}
    short.update({v.key: v.label for e in EXPERIMENTS.values() for v in e.variants if v.key not in short})
    writers = s["writers"]

    def run_label(r: dict) -> str:
        label = short[r["variant"]]
        experiment = r.get("experiment")
        if experiment and EXPERIMENTS[experiment].setting:
            label += " [" + "=".join(EXPERIMENTS[experiment].setting) + "]"
        return label

    out = [
        "# Benchmark: usage-event ingestion",
        "",
        *h.generated_by(NAME, results),
        f"{p['events']:,} time-ordered usage events for {p['tenants']} tenants, in batches of "
        f"{p['batch']:,} rows sent to the tenants in turn, written by **{_writers(writers)}** at once "
        "(one connection and one thread each; the tenants split between them, each tenant written "
        "by one writer in time order; a run's rate is all its rows over the time from the start of "
        "the first writer to the end of the last)"
        + (f", and for comparison by {' and by '.join(_writers(c) for c in p['compare_writers'])}"
           if p.get("compare_writers") else "")
        + f". Each variant ran {p['repeat']} times per writer count "
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
                [f"Throughput of the subject on one node ({_writers(writers)})",
                 f"≥ {h.rate(tp['required_rows_per_second'])} rows/s "
                 f"({TARGET_MULTIPLE}× the seed's {REFERENCE_EVENTS_PER_MIN:,} events/min)",
                 f"{h.rate(tp['measured_rows_per_second'])} rows/s ({s['reference_multiple']:.1f}×)",
                 h.verdict(tp["pass"])],
                [f"Subject vs flat table with RLS (A), {_writers(writers)}",
                 f"≥ {par['required_ratio']:.2f}×",
                 f"{_ratio(par['measured_ratio'])}×",
                 h.verdict(par["pass"])],
            ],
            "llll",
        ),
        "",
        f"## Throughput, {_writers(writers)}",
        "",
        _throughput_table(s),
        "",
        *[f"- **{e['label']}**: {e['description']}." for e in s["variants"].values()],
        "",
        *_writers_section(results),
        *_experiments_section(results),
        "## Every run",
        "",
        "In the order they ran. CPU is user + system seconds: of the Python process (all its "
        "writer threads); of the server processes serving the run's writer connections (summed); "
        "of the whole server (those backends, the checkpointer, WAL writer, autovacuum); and "
        "*other*: the rest of the machine's busy time (kernel I/O threads, other programs). "
        f"{results['machine']['cores']} cores give {results['machine']['cores']} CPU-seconds per "
        "second. WAL is what the server wrote during the run. *Writer seconds* are each writer's "
        f"own time. ⚠ marks a disturbed run: other work averaged more than {DISTURBED_LOAD} of a "
        "core, or the machine was still busy when it started.",
        "",
        h.markdown_table(
            ["#", "Variant", "Writers", "Seconds", "Writer seconds", "Rows/s", "Python CPU s",
             "Backend CPU s", "Server CPU s", "Other CPU s", "WAL", "Table + indexes", "Checkpoints"],
            [
                [f"{i}{' ⚠' if r['disturbed'] else ''}", run_label(r), r["writers"], f"{r['seconds']:.1f}",
                 " / ".join(f"{w:.1f}" for w in r["writer_seconds"]),
                 h.rate(r["rows_per_second"]), f"{r['client_cpu_seconds']:.1f}",
                 _seconds(r["backend_cpu_seconds"]), _seconds(r["server_cpu_seconds"]),
                 _seconds(r["other_cpu_seconds"]), h.mib(r["wal_bytes"]), h.mib(r["size_after_bytes"]),
                 r["checkpoints_during_run"]]
                for i, r in enumerate(results["runs"], 1)
            ],
            "rlrrrrrrrrrrr",
        ),
        "",
        "## Memory",
        "",
        h.markdown_table(
            ["#", "Variant", "Writers", "Python RSS growth", "Backend peak RSS", "Backend peak private",
             "Server peak PSS"],
            [
                [i, run_label(r), r["writers"], h.mib(r["client_rss_growth_bytes"]),
                 h.mib(r["backend_peak_rss_bytes"]), h.mib(r["backend_peak_private_bytes"]),
                 h.mib(r["server_peak_pss_bytes"])]
                for i, r in enumerate(results["runs"], 1)
            ],
            "rlrrrrr",
        ),
        "",
        f"- Python process peak RSS: {h.mib(results['memory']['python_peak_rss_bytes'])} over the whole "
        f"benchmark; {h.mib(results['memory']['python_rss_after_generation_bytes'])} right after "
        "generating the events"
        + (" (and the experiments' ids)" if "ordered-ids" in exps else "")
        + ", which it holds throughout (the same for every variant). "
        "*Python RSS growth* is the increase over the RSS at the start of a run.",
        "- *Backend peak RSS* is the VmHWM of the server process serving a writer connection "
        "(it includes the shared buffers that process touched); *backend peak private* is its "
        "sampled peak of anonymous memory (work memory, caches, the batch's "
        "arrays). With several writers, both are those of the largest writer backend.",
        "- *Server peak PSS* is the sampled peak of the proportional set size summed over the "
        "postmaster and all its children (shared memory counted once).",
        "",
        "## Set-up",
        "",
        *h.server_lines(srv, m, results["server_kind"])[:-1],
        h.server_lines(srv, m, results["server_kind"])[-1]
        + (" (wal_compression changed only for the wal-compression experiment's runs)" if "wal-compression" in exps else ""),
        f"- Writers: {_writers(writers)}"
        + (f" (--writers {p['writers_requested']}, capped at the number of tenants)"
           if p.get("writers_requested", writers) != writers else "")
        + "; every variant used the same count. The benchmark's own Python process shares the "
        "machine with the server: its CPU (column *Python CPU s*) is time the server's backends "
        "could not use.",
        f"- Partitioning: {results['partitioning']}.",
        f"- Where the subject's rows landed (last run, {_writers(writers)}): {describe_leaves(results['subject_leaves'])}.",
        "- Indexes of the flat table (identical to usage_events_mt's partitioned indexes): "
        + "; ".join(f"`{i}`" for i in results["flat_indexes"]),
        f"- Events: generated before timing ({p['events']:,} in {results['generation_seconds']:.1f}s, "
        f"not part of the runs), timestamps spread over {results['events_day_utc']} (UTC, the day "
        f"of the run); seed {p['seed']}; the tenants' tiers rotate free/starter/growth/enterprise.",
        f"- Each run waited for the machine to go idle (fewer than {h.IDLE_LOAD} cores busy) before "
        f"starting. Disturbed runs: {_disturbed(results['runs'])}.",
        f"- Warm-up: one round ({results['warmup_batches']} batches) per variant before the measured "
        f"runs, with {_writers(writers)}, not reported.",
    ]
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(
        NAME, f"""Ingestion benchmark: time-ordered usage events written through the application path
(ingest_usage_events: billing_app, tenant context, RLS forced) into usage_events_mt, against a flat
unpartitioned table with the same indexes and policy written the same way (A) and a plain superuser
COPY into it (B, reference only). Reports rows/s, their ratio and peak memory in
bench/results/ingest.json and docs/benchmarks/ingest.md. Targets: subject >= {TARGET_RPS:,.0f}
rows/s ({TARGET_MULTIPLE}x the seed's {REFERENCE_EVENTS_PER_MIN:,} events/min) and >=
{TARGET_PARITY}x A, at --writers.""",
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
    parser.add_argument("--writers", type=int, default=USABLE_CORES, metavar="W",
                        help="concurrent writer connections (one thread each) of every variant; the "
                             "tenants are split between them, each tenant written by one writer in "
                             f"time order; the targets are judged at this count (default: the usable "
                             f"cores, {USABLE_CORES} here; at most the number of tenants)")
    parser.add_argument("--compare-writers", type=_writer_counts, default=[1], metavar="N[,N...]",
                        help="also run every variant with these writer counts, in the same rounds, for "
                             "comparison; 'none' for no comparison (default: 1; a count equal to "
                             "--writers is skipped)")
    parser.add_argument("--experiment", action="append", choices=sorted(EXPERIMENTS), default=[],
                        help="also measure an experiment at --writers, in the same rounds, reported "
                             "apart from the targets: ordered-ids (caller-supplied time-ordered ids "
                             "through the same path, subject and A), wal-compression (ALTER SYSTEM SET "
                             "wal_compression = on for its runs, all variants; throwaway cluster only). "
                             "Repeat the option for both")
    parser.add_argument("--seed", type=int, default=42, help="seed of the generated events and tenants")
    parser.add_argument("--synchronous-commit", choices=("off", "on"), default="off",
                        help="synchronous_commit of every benchmark connection, the same for all "
                             "variants (default: off)")
    parser.add_argument("--no-tenant-partitions", action="store_true",
                        help="leave the tenants in the DEFAULT partition even when "
                             "tenant_pipelines.core.partitions can give them partitions of their own")
    h.add_output_options(parser, NAME)
    args = parser.parse_args(argv)
    h.positive(parser, args, ("events", "tenants", "batch", "repeat", "writers"))
    args.experiment = list(dict.fromkeys(args.experiment))
    if args.dsn and any(EXPERIMENTS[key].setting for key in args.experiment):
        parser.error("--experiment wal-compression changes the server's configuration (ALTER SYSTEM): "
                     "only with the throwaway cluster, not with --dsn")
    return args


def _writer_counts(text: str) -> list[int]:
    if text.strip().lower() in ("none", ""):
        return []
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of writer counts, or 'none'") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: writer counts must be at least 1")
    return counts


def command_line(args: argparse.Namespace) -> str:
    parts = [f"--events {args.events}", f"--tenants {args.tenants}",
             f"--batch {args.batch}", f"--repeat {args.repeat}", f"--writers {args.writers}",
             "--compare-writers " + (",".join(map(str, args.compare_writers)) or "none")]
    parts += [f"--experiment {key}" for key in args.experiment]
    if args.seed != 42:
        parts.append(f"--seed {args.seed}")
    if args.no_tenant_partitions:
        parts.append("--no-tenant-partitions")
    if args.synchronous_commit != "off":
        parts.append(f"--synchronous-commit {args.synchronous_commit}")
    return h.command(NAME, parts, args.dsn)


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    with h.connect(dsn, args.synchronous_commit) as admin:
        h.migrate_scratch(admin, "the benchmark migrates, checkpoints and runs baseline B as the superuser")
        # The events are today's (UTC, by the server's clock), as a live ingest's would be: a
        # tenant split into months gets them in its current month's partition.
        day = admin.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'").fetchone()[0]
        h.log(f"onboarding {args.tenants} tenants")
        seed_demo(admin, tenants=args.tenants, events_per_tenant=0, seed=args.seed, as_of=day.date())
        tenants = [t.organization_id for t in list_tenants(admin)]
        onboard, partitioning = find_partition_onboarding(not args.no_tenant_partitions)
        if onboard is not None:
            layouts = Counter(getattr(onboard(admin, tenant), "layout", "partition") for tenant in tenants)
            partitioning += ": " + ", ".join(
                f"{n} {'pooled (rows in the month-split pool)' if layout == 'pooled' else layout + ' (own partition)'}"
                for layout, n in sorted(layouts.items()))
        h.log(partitioning)
        create_flat_table(admin)
        check_flat_matches(admin)
        server = h.server_info(admin)
        h.log(f"server: {server['version']}")

        h.log(f"generating {args.events:,} events")
        started = time.perf_counter()
        batches = generate_batches(tenants, args.events, args.batch, args.seed, day)
        generation_seconds = time.perf_counter() - started
        experiments = [EXPERIMENTS[key] for key in args.experiment]
        id_batches: dict[str, list[Batch]] = {}
        for kind in dict.fromkeys(v.ids for e in experiments for v in e.variants if v.ids):
            started = time.perf_counter()
            id_batches[kind] = with_ids(batches, args.seed, kind)
            h.log(f"generated {kind} ids for the experiments in {time.perf_counter() - started:.1f}s")
        gc.collect()
        gc.freeze()  # the events live until the end: keep the collector from rescanning them
        rss_after_generation = h.python_peak_rss()
        h.log(f"generated {args.events:,} events in {generation_seconds:.1f}s "
              f"({args.events / generation_seconds:,.0f} rows/s), python RSS {h.mib(rss_after_generation)}")

        # Every run's writer count, as run_once() will use it: never more writers than tenants.
        writers = min(args.writers, len(tenants))
        compared = sorted({min(w, len(tenants)) for w in args.compare_writers} - {writers})
        if writers != args.writers:
            h.log(f"--writers {args.writers}: only {len(tenants)} tenants, so {writers} writers")
        # (variant, writers, experiment): the headline configuration first, then the writer
        # counts compared, then the experiments, all at --writers.
        configs: list[tuple[Variant, int, Experiment | None]] = (
            [(v, writers, None) for v in VARIANTS]
            + [(v, w, None) for w in compared for v in VARIANTS]
            + [(v, writers, e) for e in experiments for v in e.variants]
        )

        warmup = batches[: len(tenants)]
        for variant in VARIANTS + tuple(v for e in experiments for v in e.variants if v.ids):
            run_once(variant, id_batches[variant.ids][: len(tenants)] if variant.ids else warmup, admin, dsn,
                     args.synchronous_commit, "warm-up", writers)

        settings_changed: dict[str, str] = {}  # name -> value before the benchmark changed it
        runs = []
        try:
            for round_ in range(args.repeat):
                order = configs if round_ % 2 == 0 else list(reversed(configs))
                for variant, count, experiment in order:
                    wanted = dict([experiment.setting]) if experiment and experiment.setting else {}
                    for name in [n for n in settings_changed if n not in wanted]:
                        apply_setting(admin, dsn, name, None, settings_changed.pop(name))
                    for name, value in wanted.items():
                        if name not in settings_changed:
                            settings_changed[name] = admin.execute(
                                "SELECT current_setting(%s)", (name,)).fetchone()[0]
                            apply_setting(admin, dsn, name, value, value)
                    label = f"round {round_ + 1}/{args.repeat}" + (f", {experiment.key}" if experiment else "")
                    run = run_once(variant, id_batches[variant.ids] if variant.ids else batches, admin, dsn,
                                   args.synchronous_commit, label, count)
                    run["experiment"] = experiment.key if experiment else None
                    runs.append(run)
        finally:
            for name, before in settings_changed.items():
                apply_setting(admin, dsn, name, None, before)

        def plain(count: int) -> list[dict]:
            return [r for r in runs if r["experiment"] is None and r["writers"] == count]

        by_writers = {count: summarize(plain(count)) for count in sorted({writers, *compared})}
        headline = by_writers[writers]
        subject_leaves = next(r["leaves"] for r in reversed(runs)
                              if r["variant"] == "subject" and r["experiment"] is None and r["writers"] == writers)
        return {
            "benchmark": NAME,
            "command": command_line(args),
            "parameters": {"events": args.events, "tenants": args.tenants, "batch": args.batch,
                           "repeat": args.repeat, "seed": args.seed,
                           "synchronous_commit": args.synchronous_commit,
                           "writers": writers, "writers_requested": args.writers,
                           "compare_writers": compared, "experiments": list(args.experiment)},
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
            "summary": headline,
            "summaries_by_writers": {str(count): summary for count, summary in by_writers.items()},
            "experiments": {e.key: summarize_experiment(e, [r for r in runs if r["experiment"] == e.key], headline)
                            for e in experiments},
            "memory": {"python_peak_rss_bytes": h.python_peak_rss(),
                       "python_rss_after_generation_bytes": rss_after_generation},
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind), scratch="bench_ingest",
                              throwaway_kind="throwaway cluster started by the benchmark (initdb "
                                             "defaults plus the project's BASE_SETTINGS)")
    except psycopg.errors.QueryCanceled as exc:
        raise SystemExit(f"a batch was cancelled ({exc.diag.message_primary}): the free tier's "
                         "statement_timeout is 10s; lower --batch") from None
    s = results["summary"]
    summary = [f"{_writers(int(count))}: {entry['label']}: median "
               f"{entry['median_rows_per_second']:,.0f} rows/s ({entry['reference_multiple']:.1f}x reference)"
               for count, by in results["summaries_by_writers"].items() for entry in by["variants"].values()]
    summary += [f"experiment {experiment['key']}: {entry['label']}: median {entry['median_rows_per_second']:,.0f} "
                f"rows/s ({entry['ratio_to_baseline']:.3f}x {entry['baseline']})"
                for experiment in results["experiments"].values() for entry in experiment["variants"].values()]
    tp, par = s["targets"]["throughput"], s["targets"]["parity_with_flat_rls"]
    summary += [f"targets judged at {_writers(s['writers'])}:",
                f"throughput target {TARGET_RPS:,.0f} rows/s: {'PASS' if tp['pass'] else 'FAIL'} "
                f"({tp['measured_rows_per_second']:,.0f}); parity >= {TARGET_PARITY}: "
                f"{'PASS' if par['pass'] else 'FAIL'} ({_ratio(par['measured_ratio'])})"]
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=summary)

if __name__ == "__main__":
    sys.exit(main())
