#!/usr/bin/env python
"""Benchmark: scale-out on Citus (issue 19), on one shared machine.

Every node of the Citus cluster this benchmark starts (a coordinator and ``--workers`` workers,
local/citus.py, in a /tmp folder of its own) shares this machine's cores with the others, so a
Citus cluster here cannot be faster than one server. What can be measured honestly is measured,
against a single-node cluster (bench/_harness.py's throwaway cluster) started by the same run on
the same machine; what cannot (the throughput of workers on machines of their own) is modelled
from the measured per-node costs, on paper:

1. **Routing.** ``EXPLAIN`` of every statement shape of the application path (ingest, the
   tenant's reads of each tenant table with the explicit ``organization_id`` predicate, the
   usage and metrics reads of a tenant session, the queries inside the context functions) as
   billing_app in the tenant's context on the coordinator: the share with ``Task Count: 1``.
2. **Ingest.** The same pre-generated events (bench/ingest.py's generator) written by
   ``ingest_usage_events()`` (billing_app, tenant context, RLS; on a coordinator its Citus
   path: multi-row ``INSERT ... VALUES`` into ``usage_events_mt`` naming the tenant) into the
   single node and through the coordinator, alternating, same writers: rows/s and the ratio;
   where the time goes: CPU seconds of each node's PostgreSQL processes and of the client per
   million rows (/proc), and pg_stat_statements' planning and execution time per statement on
   the coordinator and on the workers.
3. **Isolate and move under writes.** A tenant of ``--events`` usage events isolated to a shard
   group of its own (``core.citus.isolate_tenant``) and moved to another worker
   (``move_tenant_to_node``), both online, while a writer process writes 100 transactions a
   second for it as billing_app: failed inserts, the longest stall (from when each transaction
   was due), the total time.
4. **Backup and restore.** ``backup_tenant()`` and ``restore_tenant()`` of one tenant with the
   same rows on both clusters.
5. **A scaling model** for 2, 8 and 32 workers from the per-node figures of 2 and 4.

Run on demand:  python bench/citus.py [--events N] [--ingest-events N] [--backup-events N] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from ingest import generate_batches, split_by_writer  # noqa: E402  (bench/ingest.py's generator)
from tenant_pipelines.core.backups import backup_tenant, restore_tenant  # noqa: E402
from tenant_pipelines.core.citus import isolate_tenant, move_tenant_to_node, tenant_placement_on_citus  # noqa: E402
from tenant_pipelines.core.ingest import (  # noqa: E402
    CITUS_ROWS_PER_STATEMENT, ROWS_PER_STATEMENT, citus_insert_statement, ingest_usage_events)
from tenant_pipelines.core.partitions import ensure_tenant_partition  # noqa: E402
from tenant_pipelines.db.migrate import migrate  # noqa: E402
from tenant_pipelines.db.session import tenant_session  # noqa: E402
from tenant_pipelines.local.citus import CitusCluster, citus_installed  # noqa: E402

NAME = "citus"
ISSUE_EVENTS = 1_000_000
APP_PASSWORD = "bench-citus-app"  # billing_app's password on the throwaway coordinator only
BACKUP_KEY = bytes(range(32))  # the throwaway clusters' backup key
IDLE_WAIT = 20.0
DISTURBED_LOAD = 0.25  # cores of other work on average that mark an ingest run disturbed
WARMUP_S = 3.0
WORKER_COUNTS = (2, 8, 32)
PROPERTIES = '{"source": "bench", "region": "eu-west-1"}'
STATEMENTS_EXTENSION = "pg_stat_statements"
TIERS = ("enterprise", "growth", "starter", "free")


def code_measured() -> str:
    """Which code this run measured: the checkout's commit (and whether its tree had uncommitted
    changes), or, for a source export (git archive), the commit named in its EXPORTED_FROM file."""
    import subprocess

    project = Path(__file__).resolve().parent.parent
    marker = project / "EXPORTED_FROM"
    if marker.is_file():
        return f"an export of commit {marker.read_text().strip()} (git archive), with this bench/citus.py"
    try:
        head = subprocess.run(["git", "-C", str(project), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(project), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"checkout at {head}" + (" with uncommitted changes" if dirty else "")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the two clusters ----------------------------------------------------------------------------------


@dataclass
class Node:
    name: str          # single | coordinator | worker1 ...
    dsn: str           # its billing (or scratch) database, as the superuser
    postmaster: int    # pid, for its CPU time

    def cpu(self) -> float:
        return h.server_cpu_seconds(self.postmaster)


def postmaster_of(conn: psycopg.Connection) -> int:
    """The postmaster's pid of a server on this machine: the parent of this session's backend."""
    return h.proc_status(conn.execute("SELECT pg_backend_pid()").fetchone()[0])["PPid"]


def start_citus(stack: ExitStack, workers: int, shard_count: int) -> tuple[CitusCluster, list[Node]]:
    """A throwaway Citus cluster as tests/citus/conftest.py starts one, but durable (fsync,
    full_page_writes on, like the single node) and with pg_stat_statements loaded after Citus."""
    installed, hint = citus_installed()
    if not installed:
        raise SystemExit(f"Citus is not installed: {hint}")
    base = Path(tempfile.mkdtemp(prefix="tp-bench-citus-", dir="/tmp"))
    os.chmod(base, 0o755)  # the server's OS user must reach the nodes' folders
    cluster = CitusCluster(state_dir=base / "state", data_root=base / "data", workers=workers, log=h.log,
                           settings={"shared_preload_libraries": f"'citus,{STATEMENTS_EXTENSION}'",
                                     "pg_stat_statements.track_planning": "on",
                                     "citus.shard_count": str(shard_count)})

    def stop() -> None:
        h.log("stopping the throwaway Citus cluster")
        try:
            cluster.destroy()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    stack.callback(stop)
    h.log(f"starting a Citus cluster: a coordinator and {workers} workers in {base}")
    coordinator_dsn = cluster.up()
    nodes = []
    for node in cluster.nodes():
        dsn = node.cluster.dsn("billing")
        with psycopg.connect(dsn, autocommit=True) as conn:
            nodes.append(Node(node.name, dsn, postmaster_of(conn)))
    assert nodes[0].dsn == coordinator_dsn
    return cluster, nodes


def enable_statements(nodes: Sequence[Node]) -> None:
    for node in nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            if not conn.execute("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = %s)",
                                (STATEMENTS_EXTENSION,)).fetchone()[0]:
                if node.name.startswith("worker"):  # workers: without propagation, as the coordinator has it
                    conn.execute("SET citus.enable_ddl_propagation = off")
                conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(STATEMENTS_EXTENSION)))


def reset_statements(nodes: Sequence[Node]) -> None:
    for node in nodes:
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")


def statement_kind(query: str) -> str:
    q = " ".join(query.split()).lower()
    if q.startswith("insert into") and "usage_events" in q:
        return "INSERT of usage events"
    if "fn_set_tenant_context" in q or "fn_set_tenant_resources" in q:
        return "tenant context and limits"
    if q.startswith("set local role") or q.startswith("select current_user"):
        return "role switch"
    if q.startswith(("begin", "commit", "prepare transaction", "commit prepared", "rollback")):
        return "transaction control"
    if q.startswith("select") and "organizations" in q:
        return "context check (organizations)"
    if q.startswith("select") and ("tenant_classifications" in q or "tier_limits" in q):
        return "tier limits lookup"
    if "assign_distributed_transaction_id" in q or "citus_internal" in q or q.startswith("set "):
        return "Citus session plumbing"
    return "other"


def statements_by_kind(node: Node) -> dict[str, dict]:
    """pg_stat_statements of the benchmark's database on ``node`` since the last reset, by kind of
    statement: calls, rows, planning and execution milliseconds."""
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, rows, total_plan_time, total_exec_time FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
    out: dict[str, dict] = {}
    for query, calls, nrows, plan_ms, exec_ms in rows:
        if "pg_stat_statements" in query:
            continue
        k = out.setdefault(statement_kind(query), {"calls": 0, "rows": 0, "plan_ms": 0.0, "exec_ms": 0.0})
        k["calls"] += calls
        k["rows"] += nrows
        k["plan_ms"] += plan_ms
        k["exec_ms"] += exec_ms
    return out


# -- tenants and rows ----------------------------------------------------------------------------------


def create_tenants(conn: psycopg.Connection, ids: Sequence[uuid.UUID], tiers: Sequence[str], label: str) -> None:
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) SELECT * FROM unnest(%s::uuid[], %s::text[])",
                     (list(ids), [f"Citus bench {label} {i + 1}" for i in range(len(ids))]))
        conn.execute("INSERT INTO tenant_classifications (organization_id, tier) SELECT * FROM"
                     " unnest(%s::uuid[], %s::text[])", (list(ids), list(tiers)))


_GENERATE = h.GENERATE_EVENTS  # the server-generated events of bench/_harness.py


def load_events(conn: psycopg.Connection, tenant: uuid.UUID, rows: int, first: datetime, end: datetime) -> float:
    """``rows`` deterministic events of ``tenant`` over [first, end), generated by the server and
    streamed with COPY as the superuser, in slices of 500,000. Returns the seconds."""
    started = time.perf_counter()
    step = (end - first) / rows
    dsn = make_conninfo(conn.info.dsn, password=conn.info.password)
    with psycopg.connect(dsn, autocommit=True) as source:
        for lo in range(0, rows, 500_000):
            hi = min(rows, lo + 500_000) - 1
            h.copy_events(source, conn, sql.SQL(_GENERATE),
                          {"tenant": tenant, "first": first, "step": step, "properties": PROPERTIES, "lo": lo, "hi": hi})
    return time.perf_counter() - started


def tenant_summary(conn: psycopg.Connection, tenant: uuid.UUID) -> tuple[int, str]:
    """Count and sum(quantity) of the tenant's events (ids are generated by each server: not compared)."""
    count, total = conn.execute("SELECT count(*), COALESCE(sum(quantity), 0) FROM usage_events_mt"
                                " WHERE organization_id = %s", (tenant,)).fetchone()
    return count, str(total)


# -- part 1: routing -----------------------------------------------------------------------------------

# Every statement shape of the application path, each naming the tenant (%(t)s) explicitly.
ROUTED_STATEMENTS: dict[str, str] = {
    "context check inside fn_set_tenant_context (organizations by id)":
        "SELECT 1 FROM public.organizations o WHERE o.id = %(t)s",
    "tier lookup inside fn_set_tenant_resources (tenant_classifications)":
        "SELECT tc.tier FROM public.tenant_classifications tc WHERE tc.organization_id = %(t)s",
    "organizations: the tenant's row": "SELECT name, created_at FROM organizations WHERE id = %(t)s",
    "subscriptions": "SELECT id, plan, status FROM subscriptions WHERE organization_id = %(t)s",
    "active subscriptions count (metrics)":
        "SELECT count(*) FROM subscriptions WHERE organization_id = %(t)s AND status = 'active'",
    "invoices": "SELECT id, amount, status FROM invoices WHERE organization_id = %(t)s ORDER BY id LIMIT 50",
    "subscriptions joined to invoices": "SELECT s.plan, sum(i.amount) FROM subscriptions s JOIN invoices i"
                                        " ON i.organization_id = s.organization_id AND i.subscription_id = s.id"
                                        " WHERE s.organization_id = %(t)s GROUP BY 1",
    "payment_methods": "SELECT kind, last4 FROM payment_methods WHERE organization_id = %(t)s",
    "tenant_classifications joined to tier_limits (quota)":
        "SELECT tc.tier, tl.monthly_events_limit, tl.storage_quota_gb FROM tenant_classifications tc"
        " JOIN tier_limits tl USING (tier) WHERE tc.organization_id = %(t)s",
    "tenant_schemas": "SELECT schema_name FROM tenant_schemas WHERE organization_id = %(t)s",
    "tenant_backup_config": "SELECT backup_frequency, last_backup_at FROM tenant_backup_config"
                            " WHERE organization_id = %(t)s",
    "tenant_metrics_history (last 30 days)": "SELECT day, events_this_month, storage_bytes FROM tenant_metrics_history"
                                             " WHERE organization_id = %(t)s AND day >= current_date - 30",
    "tenant_placements": "SELECT kind, location FROM tenant_placements WHERE organization_id = %(t)s",
    "usage_events (view): usage by metric, 30 days":
        "SELECT metric_name, sum(quantity) FROM usage_events WHERE organization_id = %(t)s"
        " AND \"timestamp\" >= now() - interval '30 days' GROUP BY 1",
    "usage_events_mt: events in the last 24 h (metrics)":
        "SELECT count(*) FROM usage_events_mt WHERE organization_id = %(t)s"
        " AND \"timestamp\" > now() - interval '24 hours'",
    "usage_events_mt: events this month (quota)":
        "SELECT count(*) FROM usage_events_mt WHERE organization_id = %(t)s"
        " AND \"timestamp\" >= date_trunc('month', now())",
    "usage_events_mt: last activity (metrics)":
        "SELECT max(\"timestamp\") FROM usage_events_mt WHERE organization_id = %(t)s",
    "usage_events_mt: point lookup by id": "SELECT * FROM usage_events_mt WHERE organization_id = %(t)s"
                                          " AND id = '00000000-0000-0000-0000-000000000000'",
    "UPDATE invoices (void drafts)": "UPDATE invoices SET status = 'void' WHERE organization_id = %(t)s"
                                     " AND status = 'draft'",
    "DELETE usage events (one metric)": "DELETE FROM usage_events_mt WHERE organization_id = %(t)s"
                                        " AND metric_name = 'none'",
}
# Shown beside, not in the share: what a statement without the predicate does.
POLICY_ONLY = {"usage_events, the policy alone (no predicate)": "SELECT count(*) FROM usage_events"}


def task_count(tx: psycopg.Connection, statement: sql.Composable | str, params: object) -> int | None:
    query = sql.SQL("EXPLAIN ") + (sql.SQL(statement) if isinstance(statement, str) else statement)
    plan = "\n".join(row[0] for row in tx.execute(query, params).fetchall())
    counts = [int(n) for n in re.findall(r"Task Count: (\d+)", plan)]
    return max(counts) if counts else None


def run_routing(admin: psycopg.Connection) -> dict:
    tenant = uuid.uuid4()
    create_tenants(admin, [tenant], ["growth"], "routing")
    with admin.transaction():
        admin.execute("INSERT INTO tenant_backup_config (organization_id) VALUES (%s)", (tenant,))
        admin.execute("INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'pro', 'active')", (tenant,))
        admin.execute("INSERT INTO payment_methods (organization_id, kind, last4) VALUES (%s, 'card', '4242')", (tenant,))
    now = datetime.now(timezone.utc)
    statements = []
    with tenant_session(admin, tenant) as tx:  # billing_app, the tenant's context and limits
        for rows, label in ((1, "ingest: INSERT of 1 row (the writer's transaction)"),
                            (CITUS_ROWS_PER_STATEMENT, f"ingest: INSERT of {CITUS_ROWS_PER_STATEMENT:,} rows "
                                                       "(ingest_usage_events' statement)")):
            params = [v for _ in range(rows) for v in (tenant, "api_calls", Decimal(1), now, "{}")]
            statements.append({"statement": label, "tasks": task_count(tx, citus_insert_statement(rows), params),
                               "counted": True})
        for label, query in ROUTED_STATEMENTS.items():
            statements.append({"statement": label, "sql": query, "tasks": task_count(tx, query, {"t": tenant}),
                               "counted": True})
        for label, query in POLICY_ONLY.items():
            statements.append({"statement": label, "sql": query, "tasks": task_count(tx, query, None),
                               "counted": False})
    counted = [s for s in statements if s["counted"]]
    single = [s for s in counted if s["tasks"] == 1]
    shards = admin.execute("SELECT shard_count FROM citus_tables WHERE table_name = 'organizations'::regclass"
                           ).fetchone()[0]
    h.log(f"routing: {len(single)}/{len(counted)} application statements on one shard")
    return {"statements": statements, "counted": len(counted), "single_shard": len(single),
            "share": len(single) / len(counted), "shard_count": shards,
            "not_single": [s["statement"] for s in counted if s["tasks"] != 1]}


# -- part 2: ingest ------------------------------------------------------------------------------------


def reset_events(admin: psycopg.Connection) -> None:
    admin.execute("TRUNCATE usage_events_mt")
    admin.execute("CHECKPOINT")


def ingest_run(target: str, nodes: Sequence[Node], batches, writers: int, label: str) -> dict:
    """All ``batches`` through ingest_usage_events() by ``writers`` threads (one connection each,
    each tenant written by one of them, in order) into an emptied usage_events_mt; timed, with
    the CPU seconds of each node and of this process."""
    expected = sum(len(rows) for _, rows in batches)
    parts = split_by_writer(batches, writers)
    with h.connect(nodes[0].dsn) as admin:
        reset_events(admin)
        for node in nodes[1:]:
            with h.connect(node.dsn) as worker:
                worker.execute("CHECKPOINT")
    reset_statements(nodes)
    load = h.wait_until_idle(timeout=IDLE_WAIT)
    conns = [h.connect(nodes[0].dsn, "on") for _ in parts]
    errors: list[BaseException] = []
    starts, ends, done = [0.0] * len(parts), [0.0] * len(parts), [0] * len(parts)
    go = threading.Event()

    def writer(i: int) -> None:
        go.wait()
        starts[i] = time.perf_counter()
        try:
            for tenant, rows in parts[i]:
                done[i] += ingest_usage_events(conns[i], tenant, rows)
        except BaseException as exc:  # re-raised below
            errors.append(exc)
        finally:
            ends[i] = time.perf_counter()

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(len(parts))]
    for t in threads:
        t.start()
    cpu0 = {n.name: n.cpu() for n in nodes}
    client0, machine0 = client_cpu_seconds(), h.machine_cpu_busy_seconds()
    go.set()
    for t in threads:
        t.join()
    cpu = {n.name: n.cpu() - cpu0[n.name] for n in nodes}
    client, machine = client_cpu_seconds() - client0, h.machine_cpu_busy_seconds() - machine0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    seconds = max(ends) - min(starts)
    if sum(done) != expected:
        raise SystemExit(f"{target}: wrote {sum(done):,} rows, expected {expected:,}")
    other = machine - client - sum(cpu.values())
    run = {"target": target, "rows": expected, "writers": len(parts), "seconds": seconds,
           "rows_per_second": expected / seconds, "node_cpu_seconds": cpu, "client_cpu_seconds": client,
           "machine_cpu_seconds": machine, "other_cpu_seconds": other, "load_before_cores": load,
           "disturbed": load >= h.IDLE_LOAD or other / seconds > DISTURBED_LOAD,
           "statements": {n.name: statements_by_kind(n) for n in nodes}}
    h.log(f"{label}: {target}: {expected:,} rows in {seconds:.1f}s = {run['rows_per_second']:,.0f} rows/s; CPU s "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()) + f", client {client:.1f}, other {other:.1f}"
          + (" (disturbed)" if run["disturbed"] else ""))
    return run


def storage(nodes: Sequence[Node], citus: bool) -> dict:
    """Bytes of usage_events_mt (heap, indexes, TOAST) and its rows, per node."""
    with h.connect(nodes[0].dsn) as admin:
        rows = admin.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0]
        if not citus:
            size = admin.execute("SELECT sum(pg_total_relation_size(relid))::bigint FROM"
                                 " pg_partition_tree('usage_events_mt')").fetchone()[0]
            return {"rows": rows, "bytes": size, "per_node": {"single": size}}
        per = dict(admin.execute(
            "SELECT nodename, sum(shard_size)::bigint FROM citus_shards"
            " WHERE table_name::text LIKE 'usage_events_mt%%' GROUP BY 1").fetchall())
    names = {}
    for node in nodes[1:]:
        names[node.name] = next((v for k, v in per.items() if f"/{node.name}/" in k), 0)
    return {"rows": rows, "bytes": sum(per.values()), "per_node": names}


def run_ingest(args: argparse.Namespace, single: list[Node], citus: list[Node]) -> dict:
    tenants = [uuid.uuid4() for _ in range(args.tenants)]
    tiers = [TIERS[i % len(TIERS)] for i in range(args.tenants)]
    with h.connect(single[0].dsn) as admin:
        create_tenants(admin, tenants, tiers, "ingest")
        layouts = [ensure_tenant_partition(admin, t).layout for t in tenants]
        day = admin.execute("SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'").fetchone()[0]
    with h.connect(citus[0].dsn) as admin:
        create_tenants(admin, tenants, tiers, "ingest")
    h.log(f"ingest: generating {args.ingest_events:,} events for {args.tenants} tenants")
    batches = generate_batches(tenants, args.ingest_events, args.batch, args.seed, day)
    targets = {"single": single, "citus": citus}
    for name, nodes in targets.items():
        ingest_run(name, nodes, batches[: len(tenants)], args.writers, "warm-up")
    runs = []
    for round_ in range(args.repeat):
        order = ("single", "citus") if round_ % 2 == 0 else ("citus", "single")
        for name in order:
            runs.append(ingest_run(name, targets[name], batches, args.writers, f"round {round_ + 1}/{args.repeat}"))
    sizes = {name: storage(nodes, name == "citus") for name, nodes in targets.items()}
    return {"tenants": args.tenants, "tiers": dict(zip(map(str, tenants), tiers)),
            "single_layouts": {layout: layouts.count(layout) for layout in set(layouts)},
            "events": args.ingest_events, "batch": args.batch, "writers": min(args.writers, args.tenants),
            "runs": runs, "storage": sizes, "summary": summarize_ingest(runs)}


def summarize_ingest(runs: list[dict]) -> dict:
    out = {}
    for target in ("single", "citus"):
        mine = [r for r in runs if r["target"] == target]
        clean = [r for r in mine if not r["disturbed"]]
        basis = clean or mine
        med = h.median(r["rows_per_second"] for r in basis)
        per_m = {}
        for node in basis[0]["node_cpu_seconds"]:
            per_m[node] = h.median(r["node_cpu_seconds"][node] / r["rows"] * 1e6 for r in basis)
        per_m["client"] = h.median(r["client_cpu_seconds"] / r["rows"] * 1e6 for r in basis)
        # Statement time per million rows, by node and kind, medians over the runs.
        stmts: dict = {}
        for node in basis[0]["statements"]:
            kinds = {k for r in basis for k in r["statements"][node]}
            stmts[node] = {k: {m: h.median(r["statements"][node].get(k, {}).get(m, 0.0) / r["rows"] * 1e6
                                           for r in basis) for m in ("plan_ms", "exec_ms", "calls")}
                           for k in kinds}
        out[target] = {"median_rows_per_second": med, "runs": len(mine), "clean_runs": len(clean),
                       "all_runs_used": not clean, "cpu_seconds_per_million_rows": per_m,
                       "statement_ms_per_million_rows": stmts}
    out["ratio"] = out["citus"]["median_rows_per_second"] / out["single"]["median_rows_per_second"]
    return out


# -- part 3: isolate and move under writes ---------------------------------------------------------------


Sample = h.Sample


class Writer(h.WriterProcess):
    def __init__(self, dsn: str, rate: float, tenant: uuid.UUID) -> None:
        super().__init__(_write_loop, (dsn, 1.0 / rate), tenant, Sample, "writer")


_WRITE = ('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)'
          " VALUES (%s, 'bench_writer', %s, %s, %s)")


def _write_loop(dsn: str, interval: float, tenant, stop, results) -> None:
    """billing_app's own login to the coordinator; per transaction fn_set_tenant_context and one
    INSERT into usage_events_mt naming the tenant (the Citus application path). Any error is a
    failed insert (no retry)."""
    samples: list[tuple] = []
    errors: list[dict] = []
    conn = psycopg.connect(dsn, autocommit=True)
    seq = 0
    try:
        for due in h.paced(interval, stop):
            started = time.perf_counter()
            seq += 1
            org = uuid.UUID(tenant.value.decode())
            ok = False
            try:
                with conn.transaction():
                    conn.execute("SELECT fn_set_tenant_context(%s)", (org,))
                    conn.execute(_WRITE, (org, Decimal(seq % 1000), datetime.now(timezone.utc), PROPERTIES))
                ok = True
            except psycopg.Error as exc:
                errors.append({"at": started, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
                if conn.broken or conn.closed:
                    conn = psycopg.connect(dsn, autocommit=True)
            samples.append((due, started, time.perf_counter(), ok))
    finally:
        conn.close()
        results.send((samples, errors))


def group_bytes(admin: psycopg.Connection, tenant: uuid.UUID) -> int:
    """Bytes of the shards of the tenant's shard group (every colocated table, its months included)."""
    return admin.execute(
        "SELECT COALESCE(sum(c.shard_size), 0)::bigint FROM citus_shards c JOIN pg_dist_shard s USING (shardid)"
        " WHERE c.colocation_id = (SELECT colocationid FROM pg_dist_partition"
        "                           WHERE logicalrelid = 'organizations'::regclass)"
        "   AND s.shardminvalue = (SELECT shardminvalue FROM pg_dist_shard"
        "                           WHERE shardid = get_shard_id_for_distribution_column('organizations', %s))",
        (tenant,)).fetchone()[0]


def window_stats(samples: Sequence[Sample], start: float, end: float) -> dict:
    mine = [s for s in samples if start <= s.scheduled < end]
    if not mine:
        return {"transactions": 0, "failed": 0}
    response = [(s.finished - s.scheduled) * 1000 for s in mine]
    service = [(s.finished - s.started) * 1000 for s in mine]
    return {"transactions": len(mine), "failed": sum(1 for s in mine if not s.ok),
            "p50_ms": h.percentile(response, 50), "p99_ms": h.percentile(response, 99), "max_ms": max(response),
            "longest_tx_ms": max(service), "seconds": end - start}


def run_move(args: argparse.Namespace, citus: list[Node]) -> dict:
    with h.connect(citus[0].dsn) as admin:
        now = admin.execute("SELECT date_trunc('second', now())").fetchone()[0]
        first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        mover = uuid.uuid4()
        neighbours = [uuid.uuid4() for _ in range(args.neighbours)]
        create_tenants(admin, [mover], ["enterprise"], "mover")
        create_tenants(admin, neighbours, [TIERS[i % len(TIERS)] for i in range(len(neighbours))], "neighbour")
        h.log(f"move: loading {args.events:,} events of tenant {mover} and {args.neighbour_events:,} of each of "
              f"{len(neighbours)} neighbours")
        load_seconds = load_events(admin, mover, args.events, first, now)
        for n in neighbours:
            load_events(admin, n, args.neighbour_events, first, now)
        admin.execute("VACUUM (ANALYZE) usage_events_mt")
        admin.execute("CHECKPOINT")
        before = tenant_placement_on_citus(admin, mover)
        shard_rows = admin.execute(
            "SELECT count(*) FROM usage_events_mt WHERE get_shard_id_for_distribution_column('usage_events_mt',"
            " organization_id) = get_shard_id_for_distribution_column('usage_events_mt', %s)", (mover,)).fetchone()[0]
        shard_bytes = group_bytes(admin, mover)
        h.log(f"move: loaded in {load_seconds:.1f}s; before: {before.describe()}; its shard group holds "
              f"{shard_rows:,} events")
        admin.execute("SET statement_timeout = 0")
        load_before = h.wait_until_idle(timeout=IDLE_WAIT)
        loadavg_before = loadavg()
        app_dsn = make_conninfo(citus[0].dsn, user="billing_app", password=APP_PASSWORD)
        writer = Writer(app_dsn, args.insert_rate, mover)
        windows: list[dict] = []
        steps: dict = {}
        writer.start()
        try:
            time.sleep(WARMUP_S)
            t0 = time.perf_counter()
            time.sleep(args.baseline_seconds)
            windows.append({"kind": "baseline before", "start": t0, "end": time.perf_counter()})
            h.log(f"move: isolating tenant {mover}; load average {loadavg()}")
            t0 = time.perf_counter()
            isolated = isolate_tenant(admin, mover)
            t1 = time.perf_counter()
            windows.append({"kind": "isolate", "start": t0, "end": t1})
            steps["isolate"] = t1 - t0
            isolated_bytes = group_bytes(admin, mover)
            target = admin.execute("SELECT nodeid FROM pg_dist_node WHERE groupid > 0 AND nodeid <> %s AND isactive"
                                   " AND shouldhaveshards ORDER BY nodeid LIMIT 1",
                                   (isolated.after.node_id,)).fetchone()[0]
            h.log(f"move: isolated in {t1 - t0:.1f}s ({isolated.after.describe()}); moving it to node {target}")
            t0 = time.perf_counter()
            moved = move_tenant_to_node(admin, mover, target)
            t1 = time.perf_counter()
            windows.append({"kind": "move", "start": t0, "end": t1})
            steps["move"] = t1 - t0
            h.log(f"move: moved in {t1 - t0:.1f}s ({moved.after.describe()})")
            t0 = time.perf_counter()
            time.sleep(args.baseline_seconds)
            windows.append({"kind": "baseline after", "start": t0, "end": time.perf_counter()})
        finally:
            writer.stop()
        written = sum(1 for s in writer.samples if s.ok)
        stored = admin.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s AND metric_name ="
                               " 'bench_writer'", (mover,)).fetchone()[0]
        total_rows = admin.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s",
                                   (mover,)).fetchone()[0]
        forced_off = admin.execute(
            "SELECT count(*) FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid"
            " WHERE c.relrowsecurity AND NOT c.relforcerowsecurity").fetchone()[0]
    stats = [{"kind": w["kind"], **window_stats(writer.samples, w["start"], w["end"])} for w in windows]
    during = [s for s in writer.samples if windows[1]["start"] <= s.scheduled < windows[2]["end"]]
    longest = max(((s.finished - s.scheduled) * 1000 for s in during), default=None)
    return {"tenant": str(mover), "events": args.events, "load_seconds": load_seconds,
            "neighbours": len(neighbours), "neighbour_events": args.neighbour_events,
            "shard_group_events_before": shard_rows, "shard_group_bytes_before": shard_bytes,
            "isolated_group_bytes": isolated_bytes,
            "before": before.describe(), "isolated": isolated.after.describe(), "after": moved.after.describe(),
            "after_node_changed": moved.after.node_id != isolated.after.node_id and moved.after.kind == "isolated",
            "steps": steps, "total_seconds": steps["isolate"] + steps["move"],
            "core_steps": {**isolated.steps, **moved.steps},
            "windows": stats, "writer_transactions": len(writer.samples),
            "failed": sum(1 for s in writer.samples if not s.ok),
            "errors": writer.errors[:5], "error_count": len(writer.errors),
            "written": written, "stored": stored, "tenant_rows_after": total_rows,
            "longest_stall_ms": longest,
            "longest_stall_baseline_ms": max((w.get("max_ms", 0) for w in stats if w["kind"].startswith("baseline")),
                                             default=None),
            "tables_without_force_after": forced_off,
            "insert_rate": args.insert_rate, "load_before_cores": load_before,
            "loadavg_before": loadavg_before, "loadavg_after": loadavg()}


# -- part 4: backup and restore ------------------------------------------------------------------------------


def make_backup_tenant(conn: psycopg.Connection, tenant: uuid.UUID, events: int, first: datetime, end: datetime,
                       single: bool) -> float:
    create_tenants(conn, [tenant], ["enterprise"], "backup")
    with conn.transaction():
        conn.execute("INSERT INTO tenant_backup_config (organization_id) VALUES (%s)", (tenant,))
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status) SELECT %s, 'pro', 'active'"
                     " FROM generate_series(1, 3)", (tenant,))
        conn.execute("INSERT INTO invoices (organization_id, amount, status) SELECT %s, g * 1234.567891, 'paid'"
                     " FROM generate_series(1, 100) g", (tenant,))
        conn.execute("INSERT INTO payment_methods (organization_id, kind, last4) VALUES (%s, 'card', '4242')",
                     (tenant,))
    if single:
        ensure_tenant_partition(conn, tenant)  # enterprise: a partition of its own, by month
    seconds = load_events(conn, tenant, events, first, end)
    conn.execute("VACUUM (ANALYZE) usage_events_mt")
    conn.execute("CHECKPOINT")
    return seconds


def run_backups(args: argparse.Namespace, single: list[Node], citus: list[Node], root: Path) -> dict:
    tenant = uuid.uuid4()
    targets = {"single": single[0].dsn, "citus": citus[0].dsn}
    with h.connect(single[0].dsn) as conn:
        now = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    loads, before = {}, {}
    for name, dsn in targets.items():
        with h.connect(dsn) as conn:
            h.log(f"backups: loading {args.backup_events:,} events of tenant {tenant} on {name}")
            loads[name] = make_backup_tenant(conn, tenant, args.backup_events, first, now, name == "single")
            before[name] = tenant_summary(conn, tenant)
    if before["single"] != before["citus"]:
        raise SystemExit(f"backups: the tenant's rows differ: {before}")
    runs, errors = [], {}
    for round_ in range(args.backup_repeat):
        order = ("single", "citus") if round_ % 2 == 0 else ("citus", "single")
        for name in order:
            if name in errors:
                continue
            load = h.wait_until_idle(timeout=IDLE_WAIT)
            with psycopg.connect(targets[name], autocommit=True) as conn:
                try:
                    t0 = time.perf_counter()
                    report = backup_tenant(conn, tenant, root / name, master_key=BACKUP_KEY, encrypt=True,
                                           apply_retention_after=False)
                    backup_s = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001  (the page reports it in one line)
                    errors[name] = f"backup: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    h.log(f"backups: {name}: {errors[name]}")
                    continue
                try:
                    t0 = time.perf_counter()
                    restored = restore_tenant(conn, tenant, report.path, master_key=BACKUP_KEY)
                    restore_s = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001
                    errors[name] = f"restore: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    h.log(f"backups: {name}: {errors[name]}")
                    continue
                after = tenant_summary(conn, tenant)
            rows = sum(report.rows.values())
            runs.append({"target": name, "round": round_ + 1, "backup_seconds": backup_s, "restore_seconds": restore_s,
                         "restore_verify_seconds": restored.verify_seconds,
                         "restore_table_seconds": {t.table: t.seconds for t in restored.tables},
                         "rows": rows, "event_rows": report.rows["usage_events_mt"], "bytes": report.bytes,
                         "same_after_restore": after == before[name], "load_before_cores": load})
            shutil.rmtree(report.path, ignore_errors=True)
            h.log(f"backups: {name}: backup {backup_s:.2f}s, restore {restore_s:.2f}s ({rows:,} rows, "
                  f"{'same rows after' if after == before[name] else 'ROWS DIFFER after'})")
    summary = {}
    for name in targets:
        mine = [r for r in runs if r["target"] == name]
        if mine:
            summary[name] = {"backup_median_s": h.median(r["backup_seconds"] for r in mine),
                             "restore_median_s": h.median(r["restore_seconds"] for r in mine)}
    if len(summary) == 2:
        summary["backup_ratio"] = summary["citus"]["backup_median_s"] / summary["single"]["backup_median_s"]
        summary["restore_ratio"] = summary["citus"]["restore_median_s"] / summary["single"]["restore_median_s"]
    return {"tenant": str(tenant), "events": args.backup_events, "load_seconds": loads, "rows_before": before,
            "runs": runs, "errors": errors, "summary": summary}


# -- part 5: the scaling model -------------------------------------------------------------------------


def scaling_model(results: dict) -> dict:
    """Per-node capacity from the measured CPU seconds per million rows, assuming each node has a
    machine like this one to itself (its usable cores) and that ingest is CPU-bound, as it was
    here (the single node used ``single_cores_used`` of them)."""
    s = results["ingest"]["summary"]
    cores = results["machine"]["cores_usable"]
    single_cpu = s["single"]["cpu_seconds_per_million_rows"]["single"]
    per = s["citus"]["cpu_seconds_per_million_rows"]
    coord = per["coordinator"]
    worker_names = [k for k in per if k.startswith("worker")]
    worker_total = sum(per[k] for k in worker_names)  # CPU seconds per million rows, all workers together
    single_rate = s["single"]["median_rows_per_second"]
    used = single_rate * single_cpu / 1e6  # cores the single server kept busy at its measured rate
    efficiency = min(1.0, used / cores)
    # A node that is CPU-bound on ``cores`` cores at the single server's efficiency.
    coord_cap = cores * efficiency / coord * 1e6
    worker_cap = cores * efficiency / worker_total * 1e6
    st = results["ingest"]["storage"]
    bytes_per_row_citus = st["citus"]["bytes"] / max(1, st["citus"]["rows"])
    bytes_per_row_single = st["single"]["bytes"] / max(1, st["single"]["rows"])
    rows = []
    for w in WORKER_COUNTS:
        workers_cap = w * worker_cap
        cluster = min(workers_cap, coord_cap)
        rows.append({"workers": w, "workers_rows_per_second": workers_cap, "coordinator_cap": coord_cap,
                     "cluster_rows_per_second": cluster, "bound": "coordinator" if coord_cap < workers_cap else "workers",
                     "per_worker_rows_per_second": cluster / w, "vs_single": cluster / single_rate,
                     "storage_gib_per_worker_per_billion": bytes_per_row_citus * 1e9 / w / 2**30,
                     "storage_gib_per_worker_per_day": cluster / w * 86400 * bytes_per_row_citus / 2**30})
    return {"cores_per_node": cores, "single_rows_per_second": single_rate, "single_cpu_per_million": single_cpu,
            "single_cores_used": used, "efficiency": efficiency, "coordinator_cpu_per_million": coord,
            "worker_cpu_per_million": worker_total, "coordinator_cap": coord_cap, "worker_cap": worker_cap,
            "bytes_per_row_citus": bytes_per_row_citus, "bytes_per_row_single": bytes_per_row_single,
            "rows": rows}


# -- the run ---------------------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    results: dict = {"benchmark": NAME, "command": command_line(args), "machine": h.machine_info(),
                     "code": code_measured(),
                     "loadavg_start": loadavg(), "load_start_cores": h.machine_load(2.0),
                     "parameters": {k: getattr(args, k) for k in (
                         "events", "neighbours", "neighbour_events", "ingest_events", "tenants", "batch", "writers",
                         "repeat", "backup_events", "backup_repeat", "insert_rate", "baseline_seconds", "workers",
                         "shard_count", "seed")}}
    h.log(f"load average at the start: {results['loadavg_start']}")
    with ExitStack() as stack:
        single_admin = stack.enter_context(h.throwaway_cluster({
            "shared_preload_libraries": f"'{STATEMENTS_EXTENSION}'", "pg_stat_statements.track_planning": "on"}))
        single_dsn = stack.enter_context(h.scratch_database(single_admin, "bench_citus"))
        cluster, citus = start_citus(stack, args.workers, args.shard_count)
        with h.connect(single_dsn) as conn:
            h.migrate_scratch(conn, "the benchmark loads and backs up as the superuser")
            results["server"] = h.server_info(conn)
            single = [Node("single", single_dsn, postmaster_of(conn))]
        with h.connect(citus[0].dsn) as conn:
            h.log("migrating the coordinator (the Citus layout)")
            migrate(conn)
            conn.execute(sql.SQL("ALTER ROLE billing_app PASSWORD {}").format(sql.Literal(APP_PASSWORD)))
            results["citus_server"] = h.server_info(conn)
            results["citus_version"] = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'"
                                                    ).fetchone()[0]
            results["citus_settings"] = dict(conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('citus.shard_count',"
                " 'shared_preload_libraries', 'max_prepared_transactions', 'citus.max_adaptive_executor_pool_size')"
                " ORDER BY 1").fetchall())
        enable_statements(single + citus)
        with h.connect(citus[0].dsn) as conn:
            results["routing"] = run_routing(conn)
        results["ingest"] = run_ingest(args, single, citus)
        results["loadavg_after_ingest"] = loadavg()
        results["move"] = run_move(args, citus)
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tp-bench-citus-backups-", dir="/tmp")))
        results["backups"] = run_backups(args, single, citus, root)
    results["scaling"] = scaling_model(results)
    results["loadavg_end"] = loadavg()
    results["load_end_cores"] = h.machine_load(2.0)
    results["targets"] = targets(results)
    results["python_peak_rss_bytes"] = h.python_peak_rss()
    results["seconds"] = time.perf_counter() - started
    return results


def targets(results: dict) -> list[dict]:
    r, s, m, b = results["routing"], results["ingest"]["summary"], results["move"], results["backups"]
    out = [{"target": "application-path statements routed to a single shard", "required": "100%",
            "measured": f"{r['single_shard']}/{r['counted']} = {r['share'] * 100:.0f}%", "met": r["share"] == 1.0},
           {"target": "ingest through the coordinator against the single node, same machine, same run",
            "required": "the ratio (no target: all nodes share 2 cores)",
            "measured": f"{s['citus']['median_rows_per_second']:,.0f} / {s['single']['median_rows_per_second']:,.0f}"
                        f" rows/s = {s['ratio']:.2f}x", "met": None},
           {"target": f"failed inserts while a tenant of {m['events']:,} events is isolated and moved "
                      f"({m['insert_rate']:g} tx/s)", "required": "0",
            "measured": f"{m['failed']} of {m['writer_transactions']:,}", "met": m["failed"] == 0},
           {"target": "every committed insert readable afterwards", "required": "all",
            "measured": f"{m['stored']:,} stored of {m['written']:,} committed", "met": m["stored"] == m["written"]},
           {"target": "longest write stall during isolate + move (from when the tx was due)", "required": "report it",
            "measured": f"{m['longest_stall_ms']:,.0f} ms from due (baseline windows' longest "
                        f"{m['longest_stall_baseline_ms']:,.0f} ms); longest single transaction "
                        f"{max(w.get('longest_tx_ms', 0) for w in m['windows'] if not w['kind'].startswith('baseline')):,.0f} ms",
            "met": None},
           {"target": "total time of isolate + move", "required": "report it",
            "measured": f"{m['total_seconds']:.1f} s (isolate {m['steps']['isolate']:.1f} s, move "
                        f"{m['steps']['move']:.1f} s)", "met": None}]
    if b["errors"].get("citus"):
        out.append({"target": "per-tenant backup and restore on Citus against single node",
                    "required": "the ratios", "measured": "not measured: " + b["errors"]["citus"], "met": False})
    elif "backup_ratio" in b["summary"]:
        bs = b["summary"]
        out.append({"target": "per-tenant backup on Citus against single node, same data", "required": "the ratio",
                    "measured": f"{bs['citus']['backup_median_s']:.2f} / {bs['single']['backup_median_s']:.2f} s = "
                                f"{bs['backup_ratio']:.2f}x", "met": None})
        out.append({"target": "per-tenant restore on Citus against single node, same data", "required": "the ratio",
                    "measured": f"{bs['citus']['restore_median_s']:.2f} / {bs['single']['restore_median_s']:.2f} s = "
                                f"{bs['restore_ratio']:.2f}x", "met": None})
        same = all(x["same_after_restore"] for x in b["runs"])
        out.append({"target": "the tenant's rows the same after every restore (count, sum of quantity)",
                    "required": "yes", "measured": "yes" if same else "no", "met": same})
    return out


# -- the page ---------------------------------------------------------------------------------------------


def _v(met: bool | None) -> str:
    return "measured" if met is None else h.verdict(met, ("MET", "MISSED"))


def render_markdown(results: dict) -> str:
    p, r, ing, m, b, sc = (results["parameters"], results["routing"], results["ingest"], results["move"],
                           results["backups"], results["scaling"])
    s = ing["summary"]
    workers = [k for k in s["citus"]["cpu_seconds_per_million_rows"] if k.startswith("worker")]
    out = ["# Scale-out on Citus: routing, ingest, online isolate and move, backups, a scaling model", "",
           *h.generated_by(NAME, results)]
    busy = max(results["loadavg_start"][0], results["loadavg_end"][0]) >= 0.5 or results["load_start_cores"] >= h.IDLE_LOAD
    out += [f"**{'Shared machine' if busy else 'Machine load'}.** Load average "
            f"{' / '.join(map(str, results['loadavg_start']))} (1/5/15 min) at the start, "
            f"{' / '.join(map(str, results['loadavg_end']))} at the end; {results['load_start_cores']:.2f} cores "
            f"busy over 2 s at the start, {results['load_end_cores']:.2f} at the end"
            + (". Other work ran on the machine during this run: figures are noisier than on an idle machine, and "
               "each timed section records what else was busy." if busy else ": the machine was otherwise idle."), "",
            f"**One machine.** The coordinator, the {p['workers']} workers and the single-node server all run on this "
            f"{results['machine']['cores_usable']}-core machine, each with the same settings (durable: fsync and "
            "full_page_writes on). A Citus cluster here cannot be faster than one server: it does the single "
            "node's work plus the coordinator's, on the same cores. The ratio below is what Citus costs per row; "
            "what it would gain, with workers on machines of their own, is the model in section 5, on paper.", ""]
    if p["events"] < ISSUE_EVENTS:
        out += [f"**Scaled down:** the moved tenant has {p['events']:,} usage events, not the issue's "
                f"{ISSUE_EVENTS:,} (`--events {ISSUE_EVENTS}` for the full size).", ""]
    else:
        out += [f"Full size: the moved tenant has {p['events']:,} usage events, as the issue asks.", ""]
    out += ["## Targets", "", h.markdown_table(
        ["Target", "Required", "Measured", "Verdict"],
        [[t["target"], t["required"], t["measured"], _v(t["met"])] for t in results["targets"]], "lllc"), ""]

    # 1. routing
    out += h.section(
        "1. Routing: the application path on one shard",
        f"`EXPLAIN` of each statement shape as billing_app in a tenant's context on the coordinator "
        f"(`tenant_session()`: `SET LOCAL ROLE billing_app`, `fn_set_tenant_context`, tier limits), each naming the "
        f"tenant explicitly (`organization_id = $1`, `id = $1` for organizations); `Task Count` read from the plan. "
        f"{r['shard_count']} shards per table at the start (`citus.shard_count`), Citus {results['citus_version']}. "
        "The two queries that run inside `fn_set_tenant_context` and `fn_set_tenant_resources` are explained on "
        "their own (an `EXPLAIN` of the function call shows no task). The policy-alone query is shown for "
        "contrast and is not counted: it is why the application path names the tenant.")
    out += [h.markdown_table(["Statement", "Task Count", "Single shard", "Counted"],
                             [[x["statement"], "none (coordinator only)" if x["tasks"] is None else x["tasks"],
                               "yes" if x["tasks"] == 1 else "**no**", "yes" if x["counted"] else "no (contrast)"]
                              for x in r["statements"]], "lrll"), "",
            f"Share: **{r['single_shard']}/{r['counted']} = {r['share'] * 100:.0f}%** single-shard"
            + ("." if not r["not_single"] else "; not single-shard: " + "; ".join(r["not_single"]) + "."), ""]

    # 2. ingest
    sn, ct = s["single"], s["citus"]
    out += h.section(
        "2. Ingest: through the coordinator against one server",
        f"The same {ing['events']:,} pre-generated events (bench/ingest.py's `generate_batches`, seed {p['seed']}: "
        f"today's timestamps, batches of {ing['batch']:,} rows going to {ing['tenants']} tenants in turn, tiers "
        + ", ".join(f"{t}" for t in TIERS) + " in turn) written by `ingest_usage_events()` with "
        f"{ing['writers']} writer threads (one connection each, each tenant by one writer), synchronous_commit on, "
        "into an emptied, checkpointed `usage_events_mt`, alternating single node and Citus round after round "
        f"after one warm-up each; {p['repeat']} rounds, medians"
        + (" (runs marked disturbed left out)" if sn["clean_runs"] and ct["clean_runs"] else
           " (every run: too few undisturbed ones)") + ". Single node: the application path as on one server "
        f"(`INSERT ... SELECT unnest(...)` of {ROWS_PER_STATEMENT:,} rows a statement into the partitioned "
        f"`usage_events` view's table; tenants onboarded by `ensure_tenant_partition()`: "
        + ", ".join(f"{n} {k}" for k, n in sorted(ing["single_layouts"].items())) + "). Citus: the same function's "
        f"Citus path (`INSERT ... VALUES` of {CITUS_ROWS_PER_STATEMENT:,} rows naming the tenant in every row, "
        "routed to the tenant's shard). Both with pg_stat_statements loaded (track_planning on), the same for both.")
    out += [h.markdown_table(
        ["Round", "Target", "Rows/s", "s", "CPU s: servers", "CPU s: client", "Other CPU s", "Disturbed"],
        [[i // 2 + 1, x["target"], h.rate(x["rows_per_second"]), f"{x['seconds']:.1f}",
          ", ".join(f"{k} {v:.1f}" for k, v in x["node_cpu_seconds"].items()), f"{x['client_cpu_seconds']:.1f}",
          f"{x['other_cpu_seconds']:.1f}", "⚠" if x["disturbed"] else ""] for i, x in enumerate(ing["runs"])],
        "rlrrlrrl"), "",
        f"Median: single node **{h.rate(sn['median_rows_per_second'])} rows/s**, through the coordinator "
        f"**{h.rate(ct['median_rows_per_second'])} rows/s**: **{s['ratio']:.2f}x**.", ""]
    out += ["### Where the time goes", "",
            "CPU seconds per million rows (medians), of each server's processes (postmaster and every child, "
            "from /proc) and of the benchmark's own process (the client: generating parameters, the protocol):", "",
            h.markdown_table(["Process", "Single node", "Citus"],
                             [["single server", f"{sn['cpu_seconds_per_million_rows']['single']:.1f}", ""],
                              ["coordinator", "", f"{ct['cpu_seconds_per_million_rows']['coordinator']:.1f}"],
                              *[[w, "", f"{ct['cpu_seconds_per_million_rows'][w]:.1f}"] for w in workers],
                              ["all servers", f"{sn['cpu_seconds_per_million_rows']['single']:.1f}",
                               f"{sum(v for k, v in ct['cpu_seconds_per_million_rows'].items() if k != 'client'):.1f}"],
                              ["client", f"{sn['cpu_seconds_per_million_rows']['client']:.1f}",
                               f"{ct['cpu_seconds_per_million_rows']['client']:.1f}"]], "lrr"), ""]
    rows = []
    for target, nodes in (("single", ["single"]), ("citus", ["coordinator", *workers])):
        for node in nodes:
            for kind, v in sorted(s[target]["statement_ms_per_million_rows"][node].items(),
                                  key=lambda kv: -(kv[1]["plan_ms"] + kv[1]["exec_ms"])):
                if v["plan_ms"] + v["exec_ms"] < 1 and v["calls"] < 1:
                    continue
                rows.append([target, node, kind, f"{v['calls']:,.0f}", f"{v['plan_ms'] / 1000:.2f}",
                             f"{v['exec_ms'] / 1000:.2f}"])
    out += ["pg_stat_statements per million rows (medians): calls, planning and execution seconds, by node and kind "
            "of statement. On the coordinator a statement's execution includes waiting for its worker; on a "
            "worker the statements are the ones Citus sent it (the shard's INSERT, the tenant context's SET LOCAL, "
            "transaction control).", "",
            h.markdown_table(["Target", "Node", "Statement", "Calls", "Planning s", "Execution s"], rows, "lllrrr"), ""]
    sc_cpu, cc_cpu = sn["cpu_seconds_per_million_rows"], ct["cpu_seconds_per_million_rows"]
    servers_citus = sum(v for k, v in cc_cpu.items() if k != "client")
    w_cpu = sum(cc_cpu[w] for w in workers)
    ins = lambda t, n: s[t]["statement_ms_per_million_rows"][n].get("INSERT of usage events", {})  # noqa: E731
    w_plan = sum(ins("citus", w).get("plan_ms", 0.0) for w in workers) / 1000
    w_exec = sum(ins("citus", w).get("exec_ms", 0.0) for w in workers) / 1000
    c_ins = ins("citus", "coordinator")
    out += ["In words: per row, the Citus cluster's servers spent "
            f"**{servers_citus / sc_cpu['single']:.1f}x** the single server's CPU ({servers_citus:.1f} against "
            f"{sc_cpu['single']:.1f} CPU s per million rows): the workers together {w_cpu:.1f} "
            f"({w_cpu / sc_cpu['single']:.1f}x a single server's whole work), the coordinator {cc_cpu['coordinator']:.1f}; "
            f"and the client {cc_cpu['client'] / max(sc_cpu['client'], 1e-9):.1f}x its single-node CPU "
            f"({cc_cpu['client']:.1f} against {sc_cpu['client']:.1f}: {CITUS_ROWS_PER_STATEMENT:,} rows of five "
            "parameters a statement, against one binary array per column). On the workers the shard INSERTs took "
            f"{w_plan:.1f} s planning and {w_exec:.1f} s executing per million rows against the single node's "
            f"{ins('single', 'single').get('plan_ms', 0.0) / 1000:.1f} s and "
            f"{ins('single', 'single').get('exec_ms', 0.0) / 1000:.1f} s: a multi-row VALUES statement arrives as "
            "text, is parsed, planned and checked row by row (RLS WITH CHECK) on the worker, where the single node "
            "inserts from unnest() of binary arrays. On the coordinator the INSERT statements took "
            f"{c_ins.get('plan_ms', 0.0) / 1000:.1f} s planning and {c_ins.get('exec_ms', 0.0) / 1000:.1f} s "
            "executing (waiting for the worker included). With every process on the same two cores, the rate "
            "follows the total CPU per row (servers and client): "
            f"{sc_cpu['single'] + sc_cpu['client']:.1f} against {servers_citus + cc_cpu['client']:.1f} CPU s per "
            f"million rows, {(sc_cpu['single'] + sc_cpu['client']) / (servers_citus + cc_cpu['client']):.2f}x, "
            f"against the measured {s['ratio']:.2f}x.", ""]
    st = ing["storage"]
    out += [f"Storage after a run ({st['single']['rows']:,} rows, heap + indexes + TOAST of `usage_events_mt`): "
            f"single node {h.mib(st['single']['bytes'])} ({sc['bytes_per_row_single']:.0f} bytes/row); Citus "
            f"{h.mib(st['citus']['bytes'])} ({sc['bytes_per_row_citus']:.0f} bytes/row), per worker "
            + ", ".join(f"{k} {h.mib(v)}" for k, v in st["citus"]["per_node"].items())
            + " (shard sizes from `citus_shards`).", ""]

    # 3. isolate and move
    out += h.section(
        "3. A tenant isolated and moved to another worker while it writes",
        f"An enterprise tenant of {m['events']:,} usage events (this month, COPY as the superuser: "
        f"{m['load_seconds']:.0f} s), among {m['neighbours']} other tenants of {m['neighbour_events']:,} events each; "
        f"its shard group held {m['shard_group_events_before']:,} events before the split. A writer process logs in "
        f"to the coordinator as billing_app and writes {m['insert_rate']:g} transactions a second for that tenant "
        "(per transaction `fn_set_tenant_context` and one INSERT into `usage_events_mt` naming the tenant; "
        "synchronous_commit on; no retries: any error is a failed insert) from a baseline window through "
        "`core.citus.isolate_tenant()` (`isolate_tenant_to_new_shard(..., 'CASCADE', shard_transfer_mode => "
        "'force_logical')`) and `move_tenant_to_node()` (`citus_move_shard_placement`, logical replication) "
        f"to a baseline window after ({p['baseline_seconds']:g} s each). Latency counts from when each transaction "
        "was due (fixed rate), so a stall counts for every transaction queued behind it.")
    out += [f"- Before: {m['before']}", f"- Isolated: {m['isolated']}", f"- After the move: {m['after']}",
            f"- Shard group sizes: {h.mib(m['shard_group_bytes_before'])} before the split (the tenant and the "
            f"tenants sharing its hash range), {h.mib(m['isolated_group_bytes'])} once isolated: the split at "
            f"{m['shard_group_bytes_before'] / h.MIB / m['steps']['isolate']:.1f} MiB/s, the move at "
            f"{m['isolated_group_bytes'] / h.MIB / m['steps']['move']:.1f} MiB/s (sizes from `citus_shards`).",
            f"- Isolate {m['steps']['isolate']:.1f} s, move {m['steps']['move']:.1f} s: **{m['total_seconds']:.1f} s** "
            f"in all; tables left without FORCE ROW LEVEL SECURITY afterwards: {m['tables_without_force_after']}.",
            f"- Writer: {m['writer_transactions']:,} transactions, **{m['failed']} failed**; {m['written']:,} "
            f"committed, {m['stored']:,} found afterwards; the tenant holds {m['tenant_rows_after']:,} events.",
            f"- Longest stall during isolate + move: **{m['longest_stall_ms']:,.0f} ms** (in the baseline windows: "
            f"{m['longest_stall_baseline_ms']:,.0f} ms). The longest single transaction (start to commit) took "
            f"{max(w.get('longest_tx_ms', 0) for w in m['windows'] if not w['kind'].startswith('baseline')):,.0f} ms: "
            "no single write was held longer than that. The stall from when each was due is mostly the writer's "
            "backlog: while the split and the move (copy, then logical replication catch-up) shared the machine's "
            "two cores, transactions took longer than the writer's 10 ms interval, so the fixed-rate writer fell "
            "behind and caught up afterwards.", "",
            h.markdown_table(["Window", "s", "Tx", "Failed", "p50 ms", "p99 ms", "Longest from due ms",
                              "Longest tx ms"],
                             [[w["kind"], f"{w.get('seconds', 0):.1f}", w["transactions"], w["failed"],
                               h.fmt(w.get("p50_ms"), ".1f"), h.fmt(w.get("p99_ms"), ".1f"),
                               h.fmt(w.get("max_ms"), ",.0f"), h.fmt(w.get("longest_tx_ms"), ",.0f")]
                              for w in m["windows"]], "lrrrrrrr"), ""]
    if m["errors"]:
        out += [f"Failed inserts ({m['error_count']}; first ones): " + "; ".join(e["error"] for e in m["errors"]), ""]
    out += [f"Load average before the writer started: {' / '.join(map(str, m['loadavg_before']))}; after: "
            f"{' / '.join(map(str, m['loadavg_after']))}.", ""]

    # 4. backups
    out += h.section("4. Per-tenant backup and restore")
    if b["errors"].get("citus") and not any(x["target"] == "citus" for x in b["runs"]):
        out += ["Not measured: per-tenant backups are not built on Citus yet: " + b["errors"]["citus"], ""]
    else:
        bs = b["summary"]
        out += [f"One enterprise tenant with the same rows on both (3 subscriptions, 100 invoices, a payment method, "
                f"{b['events']:,} usage events generated deterministically by the server), `backup_tenant()` "
                "(encrypted Parquet, manifest) then `restore_tenant()` into the live tables, in this process, "
                f"{p['backup_repeat']} rounds alternating; the tenant's event count and sum of quantity checked "
                "after every restore. The existing code runs unchanged against the coordinator: "
                "it reads through the coordinator (its exported snapshot is the coordinator's; the tenant's rows are "
                "on one worker, read in one distributed transaction) and restores with DELETE + COPY routed to the "
                "tenant's shards. Nothing Citus-specific is verified beyond the rows (see docs/scale-out.md).", "",
                h.markdown_table(["Round", "Target", "Backup s", "Restore s", "of which verify s", "Rows", "Bytes",
                                  "Same rows after"],
                                 [[x["round"], x["target"], f"{x['backup_seconds']:.2f}", f"{x['restore_seconds']:.2f}",
                                   f"{x['restore_verify_seconds']:.2f}", f"{x['rows']:,}", f"{x['bytes'] / h.MIB:,.1f} MiB",
                                   "yes" if x["same_after_restore"] else "**no**"] for x in b["runs"]], "rlrrrrrl"), ""]
        if "backup_ratio" in bs:
            out += [f"Medians: backup single {bs['single']['backup_median_s']:.2f} s, Citus "
                    f"{bs['citus']['backup_median_s']:.2f} s (**{bs['backup_ratio']:.2f}x**); restore single "
                    f"{bs['single']['restore_median_s']:.2f} s, Citus {bs['citus']['restore_median_s']:.2f} s "
                    f"(**{bs['restore_ratio']:.2f}x**).", ""]
        if b["errors"]:
            out += ["Errors: " + "; ".join(f"{k}: {v}" for k, v in b["errors"].items()), ""]

    # 5. model
    out += h.section(
        "5. A scaling model (on paper, from the figures above)",
        "Assumptions, plainly: (a) every node (the coordinator and each worker) gets a machine like this one "
        f"to itself ({sc['cores_per_node']} usable cores); (b) ingest stays CPU-bound, as it was here, and each "
        f"node keeps its cores as busy as the single server kept its own: {sc['single_cores_used']:.2f} of "
        f"{sc['cores_per_node']} cores at {h.rate(sc['single_rows_per_second'])} rows/s "
        f"({sc['single_cpu_per_million']:.1f} CPU s per million rows), i.e. {sc['efficiency'] * 100:.0f}% of them; "
        f"(c) a row costs a worker what the workers spent here together ({sc['worker_cpu_per_million']:.1f} CPU s "
        f"per million rows) and the coordinator what it spent here ({sc['coordinator_cpu_per_million']:.1f}); "
        "network latency between machines is not modelled (here the nodes talk over Unix sockets), nor disks, "
        "nor replicas; (d) tenants spread evenly over the workers (a tenant larger than one worker's share must "
        "be isolated and placed by hand, section 3); (e) clients run elsewhere; (f) **one coordinator takes every "
        "write**: applications may not log in to a worker (docs/scale-out.md), so Citus's routing through the "
        f"workers (metadata on every node) is not available. Storage: {sc['bytes_per_row_citus']:.0f} bytes per "
        f"event on Citus as measured in section 2 ({sc['bytes_per_row_single']:.0f} on the single node), spread "
        "evenly.",
        f"Per node: a worker takes about **{h.rate(sc['worker_cap'])} rows/s**; one coordinator routes at most about "
        f"**{h.rate(sc['coordinator_cap'])} rows/s**.")
    out += [h.markdown_table(
        ["Workers", "Workers' capacity rows/s", "Coordinator cap rows/s", "Cluster ingest rows/s", "Bound by",
         "Per worker rows/s", "vs one server", "GiB per worker per 10^9 events", "GiB per worker per day at that rate"],
        [[x["workers"], h.rate(x["workers_rows_per_second"]), h.rate(x["coordinator_cap"]),
          h.rate(x["cluster_rows_per_second"]), x["bound"], h.rate(x["per_worker_rows_per_second"]),
          f"{x['vs_single']:.1f}x", f"{x['storage_gib_per_worker_per_billion']:,.1f}",
          f"{x['storage_gib_per_worker_per_day']:,.1f}"] for x in sc["rows"]], "rrrrlrrrr"), "",
        "Read it as an upper bound of what the measured per-row costs allow, not as a measurement: beyond the "
        "coordinator's cap, more workers add storage and read capacity but no ingest, unless writes are spread over "
        "several coordinators or routed through the workers, which the tenant-isolation model here does not allow "
        "yet. The coordinator's cap grows with its own cores (about "
        f"{h.rate(sc['coordinator_cap'] / sc['cores_per_node'])} rows/s per core at the measured cost), so a larger "
        "coordinator moves the bound; the workers' storage per 10^9 events does not depend on it. Moving a tenant "
        f"between workers copies its shard group at the rate measured in section 3 ({m['events']:,} events: "
        f"{h.mib(m['isolated_group_bytes'])} in {m['steps']['move']:.0f} s here, with every node on the same "
        "cores), whatever the number of workers.", ""]

    srv = results["server"]
    out += ["## Set-up", "", *h.server_lines(srv, results["machine"], "two throwaway clusters started by the benchmark "
                                             "in /tmp: a single node (the bench harness's) and a Citus coordinator "
                                             f"with {p['workers']} workers (local/citus.py), same settings"),
            f"- Citus {results['citus_version']}: " + h.settings_text(results["citus_settings"]),
            f"- Code measured: {results.get('code', 'not recorded')}.",
            f"- Python process peak RSS: {h.mib(results['python_peak_rss_bytes'])}. Whole run: "
            f"{results['seconds'] / 60:.1f} min.", ""]
    return "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, """Scale-out on Citus (issue 19), on one machine: the share of application-path
statements routed to one shard; ingest through the coordinator against a single node (same run, same rows),
with where the time goes; a tenant isolated and moved to another worker while it writes 100 tx/s (failed
inserts, longest stall, total time); per-tenant backup and restore on both; a scaling model for 2, 8 and 32
workers. Starts its own throwaway single node and Citus cluster in /tmp. Writes bench/results/citus.json and
docs/benchmarks/citus.md.""")
    h.add_numbers(
        parser,
        ("--events", int, 200_000, "N", f"usage events of the tenant isolated and moved (default: 200,000; the issue's "
                                        f"size is {ISSUE_EVENTS:,})"),
        ("--neighbours", int, 20, "N", "other tenants loaded beside it (default: 20)"),
        ("--neighbour-events", int, 2_000, "N", "usage events of each other tenant (default: 2,000)"),
        ("--ingest-events", int, 300_000, "N", "events written by each ingest run (default: 300,000)"),
        ("--tenants", int, 8, "N", "tenants the ingest events go to (default: 8)"),
        ("--batch", int, 5_000, "N", "events per ingest transaction (default: 5,000)"),
        ("--writers", int, len(os.sched_getaffinity(0)), "W", "concurrent ingest writers (default: usable cores)"),
        ("--repeat", int, 3, "R", "ingest rounds, each one run per target (default: 3)"),
        ("--backup-events", int, 200_000, "N", "usage events of the backed-up tenant (default: 200,000)"),
        ("--backup-repeat", int, 2, "R", "backup + restore rounds per target (default: 2)"),
        ("--insert-rate", float, 100.0, "TPS", "the moving tenant's writer, transactions/s (default: 100)"),
        ("--baseline-seconds", float, 10.0, "S", "writer windows before and after the move (default: 10)"),
        ("--workers", int, 2, "N", "Citus workers (default: 2)"),
        ("--shard-count", int, 32, "N", "citus.shard_count (default: Citus's 32)"),
        ("--seed", int, 42, "S", "seed of the ingest events (default: 42)"),
    )
    h.add_output_options(parser, NAME, dsn_help="", from_results=True)
    args = parser.parse_args(argv)
    if args.from_results:
        return args
    h.positive(parser, args, ("events", "neighbours", "neighbour_events", "ingest_events", "tenants", "batch",
                              "writers", "repeat", "backup_events", "backup_repeat", "workers", "shard_count"))
    if args.workers < 2:
        parser.error("--workers: at least 2 (the tenant moves to another worker)")
    return args


def command_line(args: argparse.Namespace) -> str:
    return h.command(NAME, [f"--events {args.events}", f"--ingest-events {args.ingest_events}",
                            f"--tenants {args.tenants}", f"--batch {args.batch}", f"--writers {args.writers}",
                            f"--repeat {args.repeat}", f"--backup-events {args.backup_events}",
                            f"--backup-repeat {args.backup_repeat}", f"--workers {args.workers}",
                            f"--shard-count {args.shard_count}"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return h.rewrite_page(NAME, lambda results: render_markdown({**results, "targets": targets(results)}))
    results = benchmark(args)
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        f"{'measured' if t['met'] is None else ('MET     ' if t['met'] else 'MISSED  ')} {t['target']}: "
        f"{t['measured']} (required {t['required']})" for t in results["targets"]])


if __name__ == "__main__":
    sys.exit(main())
