#!/usr/bin/env python
"""Benchmark: a tenant-tables migration brought to every tenant schema by `db migrate`.

``--schemas`` tenants (default 1,000) each get a schema of their own (``fn_create_tenant_schema``,
placed there with ``fn_record_placement``) holding ``--invoices`` invoices. Then, for each of
``--jobs`` (default 1, 2, 4), a new migration whose first line is ``-- tenant tables`` adds a
column and an index to ``invoices``, and ``tenant_pipelines.db.migrate.migrate()`` applies it to
the shared tables and to every schema, ``jobs`` schemas at once (one transaction per schema).
Timed: the whole run, and the tenant schemas' part alone (from the runner's progress lines).
After each run every schema is checked: the column and the index present, ``migrated_to`` at
the new version.

Then a kill: one more such migration, applied by a subprocess (``--kill-jobs`` connections) that
is killed (SIGKILL) once half of the schemas are at the new version (found by polling
``tenant_schemas``), a check that every schema is either wholly migrated (column, index,
``migrated_to``) or untouched, and a re-run that finishes: every schema at one version.

Target: the tenant schemas' part under 60 s for 1,000 schemas.

Run on demand:  python bench/schema_migrations.py [--schemas N] [--jobs 1,2,4] [--invoices N]
                                                  [--kill-jobs N] [--dsn DSN] [--no-docs] [--from-results]
Writes bench/results/schema_migrations.json and docs/benchmarks/schema_migrations.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, not installed

import _harness as h  # noqa: E402  (bench/ is sys.path[0] when run as a script)
from tenant_pipelines.db.migrate import SQL_DIR, load_migrations, migrate  # noqa: E402

NAME = "schema_migrations"
DEFAULT_SCHEMAS = 1_000
DEFAULT_JOBS = "1,2,4"
DEFAULT_INVOICES = 100
DEFAULT_KILL_JOBS = 2
TARGET_S = 60.0
MET = ("MET", "MISSED")
PROGRESS_EVERY = 100
POLL_S = 0.02  # how often the kill phase reads tenant_schemas
DSN_ENV = "SCHEMA_MIGRATIONS_BENCH_DSN"  # the DSN for the subprocess that is killed (not on its command line)


# -- set-up --------------------------------------------------------------------------------------


def create_schemas(conn: psycopg.Connection, count: int, invoices: int) -> dict:
    """``count`` tenants in schemas of their own, each with ``invoices`` invoices; one
    transaction per tenant. Returns the seconds it took and the relations the database has."""
    started = time.perf_counter()
    for i in range(1, count + 1):
        tenant = uuid.uuid4()
        with conn.transaction():
            conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, f"Schema tenant {i:05d}"))
            conn.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, 'enterprise')",
                         (tenant,))
            schema = conn.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
            conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
            if invoices:
                conn.execute(
                    f'INSERT INTO "{schema}".invoices (organization_id, amount, status, issued_at) '
                    "SELECT %s, n * 1.5, 'paid', now() - n * interval '1 day' FROM generate_series(1, %s) n",
                    (tenant, invoices))
        if i % PROGRESS_EVERY == 0 or i == count:
            h.log(f"tenant schemas created: {i}/{count}")
    seconds = time.perf_counter() - started
    relations = conn.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    return {"seconds": seconds, "relations": relations}


def add_migration(sql_dir: Path, column: str) -> tuple[str, str]:
    """The next migration: a column ``column`` and an index on it for invoices, in every
    tenant schema. Returns (version, filename)."""
    version = f"{int(load_migrations(sql_dir)[-1].version) + 1:04d}"
    filename = f"{version}_bench_invoices_{column}.sql"
    (sql_dir / "migrations" / filename).write_text(
        "-- tenant tables\n"
        f"ALTER TABLE invoices ADD COLUMN {column} text;\n"
        f"CREATE INDEX invoices_{column}_idx ON invoices ({column});\n")
    return version, filename


def check(conn: psycopg.Connection, version: str, column: str) -> dict:
    """Per schema: at ``version`` or not, and whether it has the column and the index. A schema
    is consistent when all three agree."""
    rows = conn.execute(
        """SELECT ts.migrated_to = %(v)s,
                  EXISTS (SELECT 1 FROM pg_attribute a
                           WHERE a.attrelid = format('%%I.invoices', ts.schema_name)::regclass
                             AND a.attname = %(col)s AND NOT a.attisdropped),
                  to_regclass(format('%%I.%%I', ts.schema_name, 'invoices_' || %(col)s || '_idx')) IS NOT NULL
             FROM tenant_schemas ts""", {"v": version, "col": column}).fetchall()
    at = sum(1 for v, _, _ in rows if v)
    consistent = sum(1 for v, c, i in rows if v == c == i)
    versions = [v for v, in conn.execute("SELECT DISTINCT migrated_to FROM tenant_schemas ORDER BY 1").fetchall()]
    return {"schemas": len(rows), "at_version": at, "consistent": consistent, "versions": versions}


# -- runs ----------------------------------------------------------------------------------------


def timed_run(dsn: str, sql_dir: Path, jobs: int, column: str) -> dict:
    """One migration, timed, through migrate() as `db migrate --jobs N` runs it."""
    version, filename = add_migration(sql_dir, column)
    load = h.wait_until_idle(timeout=60.0)
    marks: dict[str, float] = {}

    def log(message: str) -> None:
        if message.startswith("tenant schemas:") and "behind" in message:
            marks["schemas_start"] = time.perf_counter()
        h.log(f"  {message}")

    with h.connect(dsn) as conn:
        started = time.perf_counter()
        report = migrate(conn, sql_dir, log=log, jobs=jobs)
        ended = time.perf_counter()
        result = check(conn, version, column)
    schemas_s = ended - marks.get("schemas_start", started)
    h.log(f"--jobs {jobs}: {ended - started:.1f} s in all, tenant schemas {schemas_s:.1f} s "
          f"({result['at_version']}/{result['schemas']} at {version})")
    return {"jobs": jobs, "migration": filename, "version": version, "seconds": ended - started,
            "schemas_seconds": schemas_s, "migrated": len(report.schemas.migrated) if report.schemas else 0,
            "failed": len(report.schemas.failed) if report.schemas else 0, "load_before": load, **result}


def kill_and_rerun(dsn: str, sql_dir: Path, jobs: int, column: str, count: int) -> dict:
    """The migration applied by a subprocess killed once half the schemas have it; then a re-run."""
    version, filename = add_migration(sql_dir, column)
    half = count // 2
    env = {**os.environ, DSN_ENV: dsn}
    proc = subprocess.Popen([sys.executable, __file__, "--migrate-only", str(sql_dir), "--jobs", str(jobs)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    polls = 0
    with h.connect(dsn) as conn:
        try:
            while True:
                polls += 1
                at = conn.execute("SELECT count(*) FROM tenant_schemas WHERE migrated_to = %s", (version,)).fetchone()[0]
                if at >= half or proc.poll() is not None:
                    break
                time.sleep(POLL_S)
            finished_first = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
        finally:
            _, stderr = proc.communicate()
        h.log(f"killed the migrating process with {at}/{count} schemas at {version}"
              + (" (it had finished first)" if finished_first else ""))
        # Its server sessions end once they notice their client is gone: wait for them, by name.
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (NAME + "-killed",)).fetchone()[0]:
            time.sleep(POLL_S)
        after_kill = check(conn, version, column)
        shared = conn.execute("SELECT version FROM tenant_tables_version").fetchone()[0]
        h.log(f"after the kill: {after_kill['at_version']}/{count} at {version}, "
              f"{after_kill['consistent']}/{count} consistent (migrated wholly or not at all)")
        messages: list[str] = []
        started = time.perf_counter()
        report = migrate(conn, sql_dir, log=messages.append, jobs=jobs)
        rerun_s = time.perf_counter() - started
        after_rerun = check(conn, version, column)
    h.log(f"re-run: {len(report.schemas.migrated) if report.schemas else 0} schemas in {rerun_s:.1f} s; "
          f"versions now {', '.join(after_rerun['versions'])}")
    return {"jobs": jobs, "migration": filename, "version": version, "kill_at": half, "polls": polls,
            "finished_before_kill": finished_first, "killed_stderr_tail": stderr.strip().splitlines()[-3:],
            "shared_version_after_kill": shared, "after_kill": after_kill,
            "rerun_seconds": rerun_s, "rerun_migrated": len(report.schemas.migrated) if report.schemas else 0,
            "rerun_applied": report.applied, "after_rerun": after_rerun}


def migrate_only(sql_dir: str, jobs: int) -> int:
    """The subprocess of the kill phase: migrate() and nothing else."""
    dsn = os.environ[DSN_ENV]
    with psycopg.connect(dsn, autocommit=True, application_name=NAME + "-killed") as conn:
        migrate(conn, Path(sql_dir), log=lambda m: print(m, file=sys.stderr, flush=True), jobs=jobs,
                connect=lambda: psycopg.connect(dsn, autocommit=True, application_name=NAME + "-killed"))
    return 0


def benchmark(args: argparse.Namespace, dsn: str, server_kind: str) -> dict:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tp-bench-sql-"))
    try:
        sql_dir = work / "sql"
        shutil.copytree(SQL_DIR, sql_dir)
        with h.connect(dsn) as conn:
            h.migrate_scratch(conn, superuser_for="it creates tenant schemas")
            server = h.server_info(conn)
            h.log(f"creating {args.schemas} tenant schemas with {args.invoices} invoices each")
            setup = create_schemas(conn, args.schemas, args.invoices)
        runs = [timed_run(dsn, sql_dir, jobs, f"note_j{jobs}") for jobs in args.job_counts]
        kill = kill_and_rerun(dsn, sql_dir, args.kill_jobs, "note_killed", args.schemas)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": NAME, "command": h.command(NAME, sys.argv[1:], args.dsn),
            "server_kind": server_kind, "server": server, "machine": h.machine_info(),
            "schemas": args.schemas, "invoices_per_schema": args.invoices, "setup": setup,
            "runs": runs, "kill": kill, "target_s": TARGET_S, "seconds": time.perf_counter() - started}


# -- the page ------------------------------------------------------------------------------------


def render_markdown(results: dict) -> str:
    n, kill = results["schemas"], results["kill"]
    rows = [[r["jobs"], f"{r['seconds']:.1f}", f"{r['schemas_seconds']:.1f}",
             f"{n / r['schemas_seconds']:,.0f}" if r["schemas_seconds"] else "n/a",
             f"{r['at_version']:,}/{r['schemas']:,}", f"{r['consistent']:,}", f"{r['load_before']:.2f}",
             f"{h.verdict(r['schemas_seconds'] < results['target_s'] and r['at_version'] == n, MET)} "
             f"({h.margin(r['schemas_seconds'], results['target_s'])})"]
            for r in results["runs"]]
    ak, ar = kill["after_kill"], kill["after_rerun"]
    all_one = ar["versions"] == [kill["version"]] and ar["consistent"] == n
    lines = [
        "# Tenant schemas follow a migration", "",
        *h.generated_by(NAME, results),
        f"{n:,} tenants each in a schema of their own ({results['invoices_per_schema']} invoices each). Each run adds "
        "a `-- tenant tables` migration (a text column and an index on it, on `invoices`) and runs "
        "`migrate()` as `tenant-pipelines db migrate --jobs N` does: the shared tables first, then every tenant "
        "schema, one transaction each (its migrations, `REVOKE CREATE` on it, its `migrated_to`), N schemas at "
        "once on N connections. \"Tenant schemas\" is that second part alone, from the runner's first progress "
        "line to its return; \"in all\" includes loading `sql/`, the bookkeeping and the shared tables.", "",
        h.markdown_table(["--jobs", "in all, s", "tenant schemas, s", "schemas/s", "at the new version",
                          "consistent", "cores busy before", f"target < {results['target_s']:.0f} s"], rows, "rrrrrrrl"),
        "",
        *([f"The machine was not idle for {busy} of these runs (other work kept up to "
           f"{max(r['load_before'] for r in results['runs']):.1f} cores busy): the runs competed with it for the "
           "cores, so the differences between --jobs values say little about parallelism here; the target holds "
           "regardless.", ""] if (busy := sum(r["load_before"] >= h.IDLE_LOAD for r in results["runs"])) else []),
        "\"Consistent\": the schema has the column and the index exactly when its `migrated_to` says so. "
        "\"Cores busy before\": the machine's load when the run started (each waits up to 60 s for it to fall "
        f"under {h.IDLE_LOAD}); other work on the machine competes for its {results['machine']['cores']} cores.", "",
        "## A kill halfway, then a re-run", "",
        f"The next such migration, run by a subprocess with `--jobs {kill['jobs']}`, killed with SIGKILL once "
        f"{kill['kill_at']:,} schemas were at {kill['version']} (polled from `tenant_schemas` every "
        f"{POLL_S * 1000:.0f} ms, {kill['polls']} polls)"
        + ("; it had already finished, so this run shows nothing about a kill." if kill["finished_before_kill"] else "."),
        "",
        h.markdown_table(["", "schemas at the new version", "consistent (wholly migrated or untouched)",
                          "versions present", "shared tables at"],
                         [["after the kill", f"{ak['at_version']:,}/{n:,}", f"{ak['consistent']:,}/{n:,}",
                           ", ".join(ak["versions"]), kill["shared_version_after_kill"]],
                          [f"after the re-run ({kill['rerun_seconds']:.1f} s, {kill['rerun_migrated']:,} schemas)",
                           f"{ar['at_version']:,}/{n:,}", f"{ar['consistent']:,}/{n:,}", ", ".join(ar["versions"]),
                           kill["version"]]], "lrrll"),
        "",
        f"Every schema at one version after the re-run: {h.verdict(all_one, ('YES', 'NO'))}.", "",
        "## Set-up", "",
        *h.server_lines(results["server"], results["machine"], results["server_kind"]),
        f"- {n:,} tenant schemas created in {results['setup']['seconds']:.0f} s "
        f"({n / results['setup']['seconds']:.0f}/s, one transaction each); the database then has "
        f"{results['setup']['relations']:,} relations.",
        f"- Whole run: {results['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = h.parser(NAME, __doc__.split("\n\n")[0], raw=True)
    h.add_numbers(parser,
                  ("--schemas", int, DEFAULT_SCHEMAS, "N", "tenant schemas (default: %(default)s)"),
                  ("--invoices", int, DEFAULT_INVOICES, "N", "invoices in each schema (default: %(default)s)"),
                  ("--kill-jobs", int, DEFAULT_KILL_JOBS, "N", "--jobs of the run that is killed (default: %(default)s)"))
    parser.add_argument("--jobs", default=DEFAULT_JOBS,
                        help="the --jobs values to time, one migration each (default: %(default)s)")
    parser.add_argument("--migrate-only", metavar="SQL_DIR", help=argparse.SUPPRESS)
    h.add_output_options(parser, NAME, from_results=True)
    args = parser.parse_args(argv)
    if args.migrate_only or args.from_results:
        return args
    try:
        args.job_counts = h.parse_counts(args.jobs)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--jobs: {exc}")
    h.positive(parser, args, ["schemas", "kill_jobs"])
    if args.schemas < 2:
        parser.error("--schemas must be at least 2 (the kill comes at half)")
    if args.invoices < 0:
        parser.error("--invoices must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.migrate_only:
        return migrate_only(args.migrate_only, int(args.jobs))
    if args.from_results:
        return h.rewrite_page(NAME, render_markdown)
    results = h.on_server(args.dsn, lambda dsn, kind, _: benchmark(args, dsn, kind), scratch="bench_schema_migrations",
                          throwaway_kind="throwaway cluster started by the benchmark (initdb defaults, the "
                                         "project's BASE_SETTINGS, durable)")
    runs = results["runs"]
    return h.finish(NAME, results, render_markdown(results), docs=not args.no_docs, summary=[
        *(f"--jobs {r['jobs']}: tenant schemas {r['schemas_seconds']:.1f} s" for r in runs),
        f"kill at half, re-run: versions {', '.join(results['kill']['after_rerun']['versions'])}"])


if __name__ == "__main__":
    sys.exit(main())
