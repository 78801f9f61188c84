#!/usr/bin/env python
"""Benchmark: transactions per second through PgBouncer against direct connections, and the
cost of the tenant context itself.

The workload is a pgbench custom script, one tenant per transaction, as bench_app (a login
role that is a member of billing_app: its grants, RLS applies; billing_app's own password is
left alone):

    BEGIN;
    SELECT fn_set_tenant_resources(fn_set_tenant_context(<tenant>));     -- context + tier limits
    SELECT count(*), sum(quantity) FROM usage_events                     -- RLS applies
     WHERE organization_id = <tenant> AND "timestamp" >= now() - interval '1 day';
    END;

and, for the cost of the context, the same query without it, by a role with BYPASSRLS (no
context call, no policy; the same explicit tenant predicate, so the same partition pruning).

Variants, each one pgbench run of --duration seconds:

* pooled_200:  200 clients through PgBouncer's `billing` pool of 20 server connections (transaction mode)
* direct_200:  200 clients straight to PostgreSQL (200 backends)
* direct_20:   20 clients straight to PostgreSQL: what 20 backends do without the extra hop
* direct_20_no_rls / pooled_200_no_rls: the query alone, by the BYPASSRLS role

pgbench runs with -M extended: unnamed statements, which transaction pooling allows. -M prepared
names its statements once per client connection, which PgBouncer 1.18 cannot carry across server
connections; a short run records that failure.

Run on demand:  python bench/pgbouncer.py [--duration S] [--clients N] [--server-connections N] [--dsn DSN]
(--from-results writes the page again from the last run's JSON, running nothing.)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.core.pooling import (  # noqa: E402
    RESET_QUERIES,
    PoolerConfig,
    ServerAddress,
    render_pgbouncer_ini,
    render_userlist,
    role_scram_secret,
)
from tenant_pipelines.local.cluster import find_bindir  # noqa: E402
from tenant_pipelines.local.pgbouncer import PgBouncerProcess, find_pgbouncer  # noqa: E402
from tenant_pipelines.db.names import APP_ROLE  # noqa: E402

NAME = "pgbouncer"
BENCH_APP = "bench_app"
BYPASS_ROLE = "bench_bypassrls"
TIERS = ("free", "starter", "growth", "enterprise")
IDLE_LOAD = 0.25
DISTURBED_SHARE = 0.10  # other programs' CPU beyond this share of the machine marks a run disturbed
TENANT = "lpad(to_hex(:t::int), 32, '0')::uuid"  # tenant n's id, computed in the script

QUERY = (
    'SELECT count(*), coalesce(sum(quantity), 0) FROM usage_events '
    f'WHERE organization_id = {TENANT} AND "timestamp" >= now() - interval \'1 day\';'
)


def script(tenants: int, with_context: bool) -> str:
    lines = [f"\\set t random(1, {tenants})", "BEGIN;"]
    if with_context:
        lines.append(f"SELECT fn_set_tenant_resources(fn_set_tenant_context({TENANT}));")
    lines += [QUERY, "END;"]
    return "\n".join(lines) + "\n"


# -- set-up ----------------------------------------------------------------------------------------


def load(admin: psycopg.Connection, tenants: int, events: int) -> None:
    h.log(f"loading {tenants} tenants x {events:,} usage events over 30 days")
    admin.execute(
        """INSERT INTO organizations (id, name)
           SELECT lpad(to_hex(n), 32, '0')::uuid, 'Bench ' || n FROM generate_series(1, %s) n""",
        (tenants,),
    )
    admin.execute(
        """INSERT INTO tenant_classifications (organization_id, tier)
           SELECT lpad(to_hex(n), 32, '0')::uuid, (%s::text[])[1 + n %% 4] FROM generate_series(1, %s) n""",
        (list(TIERS), tenants),
    )
    admin.execute(
        """INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")
           SELECT lpad(to_hex(n), 32, '0')::uuid, 'api_calls', (e %% 7) + 1,
                  now() - (e::double precision / %s) * interval '30 days'
             FROM generate_series(1, %s) n, generate_series(1, %s) e""",
        (events, tenants, events),
    )
    for (tenant,) in admin.execute("SELECT id FROM organizations ORDER BY id").fetchall():
        admin.execute("SELECT fn_create_tenant_partition(%s)", (tenant,))
    admin.execute("VACUUM (ANALYZE) usage_events_mt")


def roles(admin: psycopg.Connection) -> dict[str, str]:
    """Two login roles of the benchmark's own, dropped afterwards: BENCH_APP, a member of
    billing_app (its grants, no BYPASSRLS, not an owner: RLS applies exactly as to billing_app,
    whose own password is left alone), and BYPASS_ROLE, which bypasses RLS."""
    passwords = {BENCH_APP: secrets.token_urlsafe(18), BYPASS_ROLE: secrets.token_urlsafe(18)}
    drop_roles(admin)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {} PASSWORD {}").format(
        sql.Identifier(BENCH_APP), sql.Identifier(APP_ROLE), sql.Literal(passwords[BENCH_APP])))
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {}").format(
        sql.Identifier(BYPASS_ROLE), sql.Literal(passwords[BYPASS_ROLE])))
    admin.execute(sql.SQL("GRANT SELECT ON usage_events, usage_events_mt TO {}").format(sql.Identifier(BYPASS_ROLE)))
    return passwords


def drop_roles(admin: psycopg.Connection) -> None:
    for role in (BENCH_APP, BYPASS_ROLE):
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- one pgbench run -------------------------------------------------------------------------------


def parse_pgbench(out: str) -> dict:
    def number(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    statements = []
    block = out.split("statement latencies in milliseconds", 1)
    if len(block) == 2:
        for line in block[1].splitlines()[1:]:
            m = re.match(r"\s+([\d.]+)\s+(\d+)\s+(.*)", line)
            if m:
                statements.append({"latency_ms": float(m.group(1)), "failures": int(m.group(2)), "statement": m.group(3).strip()})
    return {
        "tps": number(r"tps = ([\d.]+) \(without initial connection time\)"),
        "latency_avg_ms": number(r"latency average = ([\d.]+) ms"),
        "latency_stddev_ms": number(r"latency stddev = ([\d.]+) ms"),
        "initial_connection_ms": number(r"initial connection time = ([\d.]+) ms"),
        "transactions": number(r"number of transactions actually processed: (\d+)"),
        "failed": number(r"number of failed transactions: (\d+)"),
        "statements": statements,
    }


def count_backends(admin_dsn: str, db: str, appname: str, stop: threading.Event, peak: list[int]) -> None:
    """Peak number of server backends that served this run: PgBouncer hands each server
    connection the application_name of the client it serves, so idle ones left over from
    another run do not count."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while not stop.wait(0.5):
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                             (db, appname)).fetchone()[0]
            peak[0] = max(peak[0], n)


def pgbench(
    pgbench_bin: Path, script_file: Path, label: str, *, host: str, port: int, db: str, user: str, password: str,
    clients: int, threads: int, duration: int, mode: str, admin_dsn: str, server_db: str,
    bouncer_pid: int | None, postmaster_pid: int | None, timeout: float | None = None,
) -> dict:
    appname = f"bench-{label}"
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "30", "PGAPPNAME": appname}
    cmd = [str(pgbench_bin), "-n", "-r", "-M", mode, "-c", str(clients), "-j", str(threads), "-T", str(duration),
           "-f", str(script_file), "-h", host, "-p", str(port), "-U", user, db]
    stop, peak = threading.Event(), [0]
    counter = threading.Thread(target=count_backends, args=(admin_dsn, server_db, appname, stop, peak), daemon=True)
    counter.start()
    machine0, fields0 = h.machine_cpu_busy_seconds(), h.machine_cpu_fields()
    server0 = h.server_cpu_seconds(postmaster_pid) if postmaster_pid else None
    bouncer0 = h.process_cpu_seconds(bouncer_pid) if bouncer_pid else None
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout or duration + 300)
        stdout, stderr, exit_code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # killed: clients stuck in PgBouncer's queue
        decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        stdout, stderr, exit_code = decode(exc.stdout), decode(exc.stderr), None
    wall = time.monotonic() - started
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # pgbench, once it has exited
    stop.set()
    counter.join()
    result = parse_pgbench(stdout)
    errors = [l for l in stderr.splitlines() if "error" in l.lower() or "FATAL" in l]
    result.update({
        "timed_out": exit_code is None,
        "exit_code": exit_code,
        "first_error": errors[0].strip() if errors else None,
        "wall_seconds": wall,
        "server_backends_peak": peak[0],
        "machine_cpu_seconds": h.machine_cpu_busy_seconds() - machine0,
        "machine_cpu_by_kind": {k: v - fields0[k] for k, v in h.machine_cpu_fields().items()},
        "server_cpu_seconds": None if server0 is None else h.server_cpu_seconds(postmaster_pid) - server0,
        "pgbouncer_cpu_seconds": None if bouncer0 is None else h.process_cpu_seconds(bouncer_pid) - bouncer0,
        "pgbench_cpu_seconds": (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime),
        "command": " ".join(cmd[:-1] + [db]),
    })
    return result


# -- the run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace, admin_root_dsn: str) -> dict:
    pgbench_bin = find_bindir() / "pgbench"
    if not pgbench_bin.exists():
        pgbench_bin = Path(shutil.which("pgbench") or "pgbench")
    find_pgbouncer()
    with h.scratch_database(admin_root_dsn, "bench_pgbouncer") as dsn:
        info = conninfo_to_dict(dsn)
        server_db = str(info["dbname"])
        with psycopg.connect(dsn, autocommit=True) as admin:
            h.migrate_scratch(admin)
            passwords = roles(admin)
            load(admin, args.tenants, args.events_per_tenant)
            server = h.server_info(admin)
            backend = h.local_backend_pid(admin)
            postmaster = h.proc_status(backend)["PPid"] if backend else None
            userlist = render_userlist({r: role_scram_secret(admin, r) for r in (BENCH_APP, BYPASS_ROLE)})
            max_connections = int(admin.execute("SHOW max_connections").fetchone()[0])
        if max_connections < args.clients + 10:
            raise SystemExit(f"max_connections is {max_connections}: the direct run needs {args.clients + 10}")

        home = Path(tempfile.mkdtemp(prefix="tp-bench-pgb-", dir="/tmp"))
        os.chmod(home, 0o755)
        bouncer = PgBouncerProcess(folder=home / "pgbouncer", log=h.log)
        try:
            def config_for(process: PgBouncerProcess, reset: bool, query: str = PoolerConfig.server_reset_query):
                def config(port: int) -> str:
                    return render_pgbouncer_ini(PoolerConfig(
                        server=ServerAddress.from_dsn(dsn), listen_port=port, auth_file=str(process.auth_file),
                        default_pool_size=args.server_connections, max_client_conn=args.clients + 50,
                        logfile=str(process.logfile), pidfile=str(process.pidfile),
                        server_reset_query=query, server_reset_query_always=reset,
                    ))
                return config

            # The project's config (DISCARD ALL after every transaction), and for comparison the
            # one before issue 15 (no reset in transaction mode), side by side.
            bouncer_port = bouncer.up(config_for(bouncer, True), userlist)
            bouncer_pid = bouncer.running_pid()
            bouncer_no_reset = PgBouncerProcess(folder=home / "pgbouncer_no_reset", log=h.log)
            no_reset_port = bouncer_no_reset.up(config_for(bouncer_no_reset, False), userlist)
            no_reset_pid = bouncer_no_reset.running_pid()
            # The other reset query of the two (RESET_QUERIES), to compare with the generated config's.
            other_query = next(q for q in RESET_QUERIES if q != PoolerConfig.server_reset_query)
            bouncer_session = PgBouncerProcess(folder=home / "pgbouncer_other_reset", log=h.log)
            session_port = bouncer_session.up(config_for(bouncer_session, True, other_query), userlist)
            session_pid = bouncer_session.running_pid()
            scripts = {}
            for with_context in (True, False):
                path = home / f"{'context' if with_context else 'no_rls'}.sql"
                path.write_text(script(args.tenants, with_context))
                scripts[with_context] = path
            direct = {"host": str(info.get("host") or "127.0.0.1"), "port": int(info.get("port") or 5432), "db": server_db}
            pooled = {"host": "127.0.0.1", "port": bouncer_port, "db": "billing"}
            pooled_no_reset = {"host": "127.0.0.1", "port": no_reset_port, "db": "billing"}
            pooled_session = {"host": "127.0.0.1", "port": session_port, "db": "billing"}
            variants = [
                ("pooled_200", pooled, BENCH_APP, True, args.clients),
                ("pooled_200_no_reset", pooled_no_reset, BENCH_APP, True, args.clients),
                ("pooled_200_other_reset", pooled_session, BENCH_APP, True, args.clients),
                ("direct_200", direct, BENCH_APP, True, args.clients),
                ("direct_20", direct, BENCH_APP, True, args.server_connections),
                ("direct_20_no_rls", direct, BYPASS_ROLE, False, args.server_connections),
                ("pooled_200_no_rls", pooled, BYPASS_ROLE, False, args.clients),
                ("pooled_200_other_reset_2", pooled_session, BENCH_APP, True, args.clients),
                ("pooled_200_no_reset_2", pooled_no_reset, BENCH_APP, True, args.clients),
                ("pooled_200_2", pooled, BENCH_APP, True, args.clients),
            ]
            pids = {id(pooled): bouncer_pid, id(pooled_no_reset): no_reset_pid, id(pooled_session): session_pid}
            common = dict(threads=args.threads, admin_dsn=dsn, server_db=server_db, postmaster_pid=postmaster)

            h.log("warm-up: 5 s direct, 20 clients (not measured)")
            pgbench(pgbench_bin, scripts[True], "warm-up", **direct, user=BENCH_APP, password=passwords[BENCH_APP],
                    clients=args.server_connections, duration=5, mode="extended", bouncer_pid=None, **common)

            results: dict[str, dict] = {}
            for name, target, role, with_context, clients in variants:
                load_now = h.wait_until_idle(IDLE_LOAD, timeout=120)
                h.log(f"{name}: {clients} clients, {args.duration} s (machine load before: {load_now:.2f} cores)")
                results[name] = pgbench(
                    pgbench_bin, scripts[with_context], name, **target, user=role, password=passwords[role],
                    clients=clients, duration=args.duration, mode="extended",
                    bouncer_pid=pids.get(id(target)), **common,
                )
                results[name].update({"clients": clients, "role": role, "context": with_context,
                                      "through": "pgbouncer" if id(target) in pids else "direct",
                                      "server_reset_query": ({id(pooled): PoolerConfig.server_reset_query,
                                                              id(pooled_session): other_query,
                                                              id(pooled_no_reset): None}.get(id(target))),
                                      "load_before": load_now})
                r = results[name]
                h.log(f"{name}: {r['tps']} tps, {r['latency_avg_ms']} ms average, "
                      f"{r['server_backends_peak']} server backends, exit {r['exit_code']}")

            h.log("-M prepared through PgBouncer, 3 s (expected to fail on PgBouncer < 1.21)")
            prepared = pgbench(pgbench_bin, scripts[True], "prepared", **pooled, user=BENCH_APP, password=passwords[BENCH_APP],
                               clients=args.clients, duration=3, mode="prepared",
                               bouncer_pid=bouncer_pid, timeout=20, **common)
            version = subprocess.run([str(find_pgbouncer()), "--version"], capture_output=True, text=True).stdout
        finally:
            bouncer.destroy()
            bouncer_no_reset.destroy()
            bouncer_session.destroy()
            shutil.rmtree(home, ignore_errors=True)
            with psycopg.connect(dsn, autocommit=True) as admin:
                drop_roles(admin)
    return {
        "variants": results,
        "prepared_through_pgbouncer": prepared,
        "pgbouncer_version": version.splitlines()[0] if version else None,
        "pgbench": subprocess.run([str(pgbench_bin), "--version"], capture_output=True, text=True).stdout.strip(),
        "server": server,
        "scripts": {"context": script(args.tenants, True), "no_rls": script(args.tenants, False)},
    }


def markdown(args: argparse.Namespace, res: dict, machine: dict) -> str:
    v = res["variants"]

    fmt = h.fmt
    def per_tx_us(r: dict, key: str) -> float | None:
        return None if r[key] is None or not r["transactions"] else r[key] * 1e6 / r["transactions"]

    rows = []
    labels = {
        "pooled_200": "200 clients → PgBouncer → 20 server connections",
        "pooled_200_2": "the same, second round",
        "pooled_200_no_reset": "the same without the session reset (before issue 15)",
        "pooled_200_no_reset_2": "the same without the session reset, second round",
        "pooled_200_other_reset": "the same with the other reset query",
        "pooled_200_other_reset_2": "the same with the other reset query, second round",
        "direct_200": "200 clients → PostgreSQL (200 backends)",
        "direct_20": "20 clients → PostgreSQL (20 backends)",
        "pooled_200_no_rls": "200 clients → PgBouncer → 20, no context, no RLS",
        "direct_20_no_rls": "20 clients → PostgreSQL, no context, no RLS",
    }
    capacity = machine["cores_usable"] * args.duration

    def other_work(r: dict) -> float | None:
        """Busy time of the machine outside PostgreSQL, PgBouncer, pgbench and the kernel's
        softirq and steal: other programs that ran during the run."""
        kinds = r.get("machine_cpu_by_kind")
        if not kinds or r.get("pgbench_cpu_seconds") is None:
            return None
        known = sum(r[k] or 0 for k in ("server_cpu_seconds", "pgbouncer_cpu_seconds", "pgbench_cpu_seconds"))
        return r["machine_cpu_seconds"] - known - kinds["softirq"] - kinds["steal"]

    order = tuple(n for n in ("pooled_200", "pooled_200_2", "pooled_200_other_reset", "pooled_200_other_reset_2",
                              "pooled_200_no_reset", "pooled_200_no_reset_2",
                              "direct_200", "direct_20", "pooled_200_no_rls", "direct_20_no_rls") if n in v)
    disturbed = {n for n in order if (other_work(v[n]) or 0) > DISTURBED_SHARE * capacity}
    for name in order:
        r = v[name]
        rows.append([labels[name] + (" (disturbed)" if name in disturbed else ""), fmt(r["tps"]),
                     fmt(r["latency_avg_ms"], ".2f"), r["server_backends_peak"], fmt(r["failed"]),
                     fmt(other_work(r), ".1f")])
    table = h.markdown_table(["variant", "TPS", "latency avg (ms)", "server backends (peak)", "failed tx",
                              "other programs' CPU s"], rows, "lrrrrr")

    cpu_rows = []
    for name in order:
        r = v[name]
        kinds = r.get("machine_cpu_by_kind") or {}
        known = sum(r[k] or 0 for k in ("server_cpu_seconds", "pgbouncer_cpu_seconds", "pgbench_cpu_seconds"))
        cpu_rows.append([
            labels[name], fmt(per_tx_us(r, "server_cpu_seconds")), fmt(per_tx_us(r, "pgbouncer_cpu_seconds")),
            fmt(per_tx_us(r, "pgbench_cpu_seconds")), fmt(r["machine_cpu_seconds"], ".1f"),
            fmt(kinds.get("softirq"), ".1f"), fmt(kinds.get("steal"), ".1f"),
            fmt(r["machine_cpu_seconds"] - known, ".1f"),
        ])
    cpu_table = h.markdown_table(
        ["variant", "PostgreSQL µs/tx", "PgBouncer µs/tx", "pgbench µs/tx", "machine busy s",
         "of which softirq s", "steal s", "not in the three s"],
        cpu_rows, "lrrrrrrr",
    )

    def stmt_table(name: str) -> str:
        return h.markdown_table(["statement", "latency (ms)"],
                                [[s["statement"][:90], fmt(s["latency_ms"], ".3f")] for s in v[name]["statements"]], "lr")

    ratio = lambda a, b: (v[a]["tps"] / v[b]["tps"]) if v[a]["tps"] and v[b]["tps"] else None  # noqa: E731
    prepared = res["prepared_through_pgbouncer"]
    reset_line = ""
    if "pooled_200_no_reset" in v:
        def mean(names: tuple[str, ...], key: str) -> float | None:
            values = [v[n][key] for n in names if n in v and v[n][key] is not None]
            return sum(values) / len(values) if values else None

        def mean_us(names: tuple[str, ...]) -> float | None:
            values = [per_tx_us(v[n], "server_cpu_seconds") for n in names if n in v]
            values = [x for x in values if x is not None]
            return sum(values) / len(values) if values else None

        without = ("pooled_200_no_reset", "pooled_200_no_reset_2")
        tps_plain, us_plain = mean(without, "tps"), mean_us(without)
        queries = {"pooled_200": v["pooled_200"].get("server_reset_query"),
                   "pooled_200_other_reset": v.get("pooled_200_other_reset", {}).get("server_reset_query")}
        res["session_reset"] = {"tps_without_reset": tps_plain, "server_us_per_tx_without_reset": us_plain,
                                "resets": []}
        lines = []
        for first, label in (("pooled_200", "the generated config's"), ("pooled_200_other_reset", "the other")):
            if first not in v or not queries[first]:
                continue
            runs = (first, first + "_2")
            tps, us = mean(runs, "tps"), mean_us(runs)
            figure = {"query": queries[first], "tps": tps, "server_us_per_tx": us,
                      "ratio": tps / tps_plain if tps and tps_plain else None}
            res["session_reset"]["resets"].append(figure)
            lines.append(f"`{queries[first]}` ({label}): **{fmt(figure['ratio'], '.3f')}×** the TPS "
                         f"({fmt(tps)}; PostgreSQL {fmt(us)} µs per transaction)")
        reset_line = (
            "\n- **The session reset** (`server_reset_query` with `server_reset_query_always = 1`, run after every "
            f"transaction) against the same PgBouncer without it (the config before issue 15: {fmt(tps_plain)} TPS, "
            f"PostgreSQL {fmt(us_plain)} µs per transaction), each the mean of two runs, alternating: "
            + "; ".join(lines) + ". What it buys: nothing a client leaves in its session (temp tables, SET without "
            "LOCAL, session advisory locks) reaches the next client (tests/pooling/test_session_state.py).")
    return f"""# Benchmark: PgBouncer (transaction pooling) against direct connections

Run with `.venv/bin/python bench/pgbouncer.py{'' if args.duration == 30 else f' --duration {args.duration}'}` on
{machine['date_utc']}; {machine['cores_usable']} usable cores ({machine['cpu_model']}), {h.mib(machine['memory_bytes'])} RAM.
Server: {res['server']['version'].split(',')[0]}; {res['pgbouncer_version']}; {res['pgbench']}.
Server settings: max_connections {args.clients + 100}, shared_buffers {res['server']['settings'].get('shared_buffers')},
fsync {res['server']['settings'].get('fsync')}, synchronous_commit {res['server']['settings'].get('synchronous_commit')}.
Data: {args.tenants} tenants (the four tiers in turn), {args.events_per_tenant:,} usage events each over the last
30 days, every tenant onboarded to its own partition (growth and enterprise split by month).

Each variant is one pgbench run of {args.duration} s, `-M extended -j {args.threads}`, after a 5 s warm-up.
Pgbench, PgBouncer and PostgreSQL share the same {machine['cores_usable']} cores.

## Throughput

{table}

- Through PgBouncer against 200 direct connections: **{fmt(ratio('pooled_200', 'direct_200'), '.2f')}×** the TPS
  (same 200 clients, same script); against 20 direct clients: {fmt(ratio('pooled_200', 'direct_20'), '.2f')}×.
- The context itself (fn_set_tenant_context + fn_set_tenant_resources, and the RLS predicate) against the
  same query without them: direct, 20 clients, **{fmt(ratio('direct_20', 'direct_20_no_rls'), '.2f')}×** the TPS;
  through PgBouncer, 200 clients, {fmt(ratio('pooled_200', 'pooled_200_no_rls'), '.2f')}×.{reset_line}
- Server backends (peak): the run's backends in pg_stat_activity (by application_name), sampled
  every 0.5 s.
- Other programs' CPU: the machine's busy time during the run outside PostgreSQL, PgBouncer,
  pgbench, softirq and steal. A run where it exceeds {DISTURBED_SHARE:.0%} of the machine
  ({DISTURBED_SHARE * capacity:.0f} s) is marked disturbed: something else competed for the cores, and its
  TPS is low by roughly that share.{" Disturbed here: " + ", ".join(sorted(disturbed)) + "." if disturbed else ""}

## CPU

{cpu_table}

CPU time of the whole PostgreSQL server (postmaster, live and exited backends) and of the
PgBouncer process from /proc, of pgbench from its rusage, and of the whole machine from
/proc/stat ({machine['cores_usable']} cores × {args.duration} s = {machine['cores_usable'] * args.duration} s at most). "Not in the three" is
the machine's busy time outside those processes: kernel work not charged to a process (softirq,
much of it loopback TCP), steal, and any other program running at the time.

No target was set for these figures in the issue; what they are for is in [docs/pooling.md](../pooling.md).

## Where a transaction's time goes (pgbench -r, average per statement)

200 clients through PgBouncer, with the context:

{stmt_table('pooled_200')}

20 clients direct, with the context:

{stmt_table('direct_20')}

20 clients direct, no context, no RLS:

{stmt_table('direct_20_no_rls')}

## Prepared statements under transaction pooling

`pgbench -M prepared` through PgBouncer ({args.clients} clients, `-T 3`): {'still running after 20 s, killed' if prepared['timed_out'] else f"exit code {prepared['exit_code']}"};
{fmt(prepared['transactions'])} transactions; first error: `{prepared['first_error'] or 'none'}`.
A client that aborts inside its transaction leaves its server connection idle in transaction
until it disconnects, and the clients queued behind it wait (up to PgBouncer's
`query_wait_timeout`, 120 s).
{res['pgbouncer_version']} does not track named prepared statements across server connections
(PgBouncer 1.21 added `max_prepared_statements`), so clients use unnamed statements: pgbench
`-M extended`, psycopg `prepare_threshold=None` (`tenant_pipelines.core.pooling.connect_pooled`).

## The scripts

With the context (bench_app, a member of billing_app: RLS applies as to billing_app):

```
{res['scripts']['context']}```

Without (a role with BYPASSRLS, same explicit tenant predicate, so the same partition pruning):

```
{res['scripts']['no_rls']}```
"""


def main() -> int:
    parser = h.parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=30, help="seconds per pgbench run (default 30)")
    parser.add_argument("--clients", type=int, default=200, help="client connections (default 200)")
    parser.add_argument("--server-connections", type=int, default=20, help="PgBouncer pool size (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--tenants", type=int, default=20, help="tenants (default 20)")
    parser.add_argument("--events-per-tenant", type=int, default=20_000, help="usage events each (default 20,000)")
    h.add_output_options(parser, NAME, dsn_help="a superuser DSN of a PostgreSQL 15+ server; default: a throwaway "
                                                "cluster", from_results=True)
    args = parser.parse_args()
    if args.from_results:
        return h.rewrite_page(NAME, lambda res: markdown(argparse.Namespace(**res["args"]), res, res["machine"]))

    machine = h.machine_info()
    res = h.on_server(args.dsn, lambda admin, _kind, _throwaway: run(args, admin), throwaway_kind="",
                      settings={"max_connections": str(args.clients + 100)})
    res["machine"] = machine
    res["args"] = vars(args)
    return h.finish(NAME, res, markdown(args, res, machine), docs=not args.no_docs)


if __name__ == "__main__":
    sys.exit(main())
