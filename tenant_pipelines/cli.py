"""The ``tenant-pipelines`` command.

Exit codes (README.md says the same): 0 success, 1 operation failed, 2 bad input, 3 database
unreachable, 4 the database does not match this checkout's sql/ (db migrate refused or failed,
or a restore target is not migrated), 5 backup damaged, incomplete or another tenant's, 6 backup
key missing or wrong, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from tenant_pipelines import __version__
from tenant_pipelines.settings import DATABASE_URL_ENV, PROJECT_DIR, dagster_home, database_url_from_env
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError


def _log(message: str) -> None:
    print(f"tenant-pipelines: {message}", file=sys.stderr, flush=True)


# -- commands ---------------------------------------------------------------------------


def cmd_db_up(args: argparse.Namespace) -> int:
    from tenant_pipelines.db.connect import connect, describe
    from tenant_pipelines.local.target import embedded_cluster

    url = database_url_from_env()
    if url:
        connect(url).close()
        _log(f"{DATABASE_URL_ENV} is set: using your server at {describe(url)}; nothing to start")
        print(url)
        return 0
    cluster = embedded_cluster(_log)
    dsn = cluster.up()
    if cluster.data_root != cluster.state_dir / "pg":
        _log(
            f"the server's OS user cannot reach {cluster.state_dir}: its data lives in {cluster.data_root}"
        )
    print(dsn)
    return 0


def cmd_db_down(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import embedded_cluster

    if database_url_from_env():
        _log(f"{DATABASE_URL_ENV} is set: the embedded cluster is not in use; nothing to stop")
        return 0
    stopped = embedded_cluster(_log).down()
    _log("stopped the embedded cluster" if stopped else "the embedded cluster was not running")
    return 0


def _migrate(dsn: str) -> None:
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migrate

    with connect(dsn, autocommit=True) as conn:
        report = migrate(conn, log=_log)
    _log(f"{len(report.applied)} migrations applied, {len(report.already_applied)} already applied")


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import admin_dsn

    _migrate(admin_dsn(start=not database_url_from_env(), log=_log))
    return 0


def _use_embedded_tablespaces(dsn: str) -> None:
    """The embedded cluster made hot_storage, warm_storage and cold_storage: use them."""
    from tenant_pipelines.core.tiering import configure_tablespaces
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.cluster import TABLESPACES

    with connect(dsn) as conn:
        configure_tablespaces(conn, TABLESPACES)


def cmd_tiering_configure(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.tiering import configure_tablespaces
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    wanted = {tier: getattr(args, tier) for tier in ("hot", "warm", "cold") if getattr(args, tier) is not None}
    with connect(admin_dsn()) as conn:
        if wanted:
            configure_tablespaces(conn, wanted)
        rows = conn.execute("SELECT storage_tier, tablespace FROM storage_tiers ORDER BY rank").fetchall()
    for tier, name in rows:
        print(f"{tier}\t{name}")
    return 0


def cmd_tiering_plan(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.core.tiering import plan
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    with connect(admin_dsn()) as conn:
        tenant = require_known_tenant(conn, args.tenant) if args.tenant is not None else None
        parts = plan(conn, tenant)
    print("partition\tcurrent\ttarget\tbytes\tmove")
    for p in parts:
        move = "yes" if p.movable and p.misplaced else "no"
        print(f"{p.partition_name}\t{p.current_tablespace}\t{p.target_tablespace}\t{p.bytes}\t{move}")
    return 0


def cmd_tiering_run(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.core.tiering import Pace, tier_pool, tier_tenant
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    pace = Pace(None if args.max_mb_per_s == 0 else args.max_mb_per_s, args.batch_blocks)
    with connect(admin_dsn(), autocommit=True) as conn:
        if args.pool:
            report = tier_pool(conn, method=args.method, pace=pace, log=_log)
        else:
            report = tier_tenant(conn, require_known_tenant(conn, args.tenant), method=args.method, pace=pace,
                                 log=_log)
    for name in report.restarted:
        _log(f"{name}: an unfinished move was found and started again")
    print("partition\tfrom\tto\tbytes\tseconds\tlock_ms")
    for m in report.moves:
        print(f"{m.partition}\t{m.from_tablespace}\t{m.to_tablespace}\t{m.bytes}\t{m.seconds:.2f}\t{m.lock_held_s * 1000:.1f}")
    _log(f"{'the pool' if args.pool else 'tenant ' + report.tenant}: {len(report.moves)} partitions moved ({report.bytes_moved:,} bytes), "
         f"{report.misplaced_left} still misplaced")
    return 0 if report.misplaced_left == 0 else 1


def cmd_partitions_status(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import audit_tenant_partitions, storage_status
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    with connect(admin_dsn()) as conn:
        status = storage_status(conn)
        findings = audit_tenant_partitions(conn)
    print(f"leaves\t{status['leaves']}\tof a budget of {status['leaf_budget']}")
    print(f"dedicated tenants\t{status['dedicated_tenants']}")
    print(f"pool months\t{status['pool_months']}\t{status['first_pool_month'] or '-'} to {status['last_pool_month'] or '-'}")
    print(f"interrupted promotions\t{len(status['interrupted_promotions'])}")
    for finding in findings:
        _log(str(finding))
    _log(f"{len(findings)} findings" if findings else "the pool and every dedicated partition are complete")
    return 1 if findings or status["interrupted_promotions"] else 0


def cmd_partitions_ensure(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import ensure_tenant_partition, require_known_tenant
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    with connect(admin_dsn(), autocommit=True) as conn:
        tenant = require_known_tenant(conn, args.tenant)
        report = ensure_tenant_partition(conn, tenant, premake_months=args.premake_months)
    print("tenant\tlayout\tpartition\ttables_created\trows_moved\tattached_now")
    print(f"{report.tenant}\t{report.layout}\t{report.partition}\t{len(report.tables_created)}\t"
          f"{report.rows_moved}\t{report.attached_now}")
    if report.note:
        _log(f"tenant {report.tenant}: {report.note}")
    return 0


def _seed(dsn: str, tenants: int, events: int, seed: int, as_of: date | None) -> None:
    from tenant_pipelines.local.demo import seed_demo
    from tenant_pipelines.db.connect import connect

    with connect(dsn, autocommit=True) as conn:
        report = seed_demo(conn, tenants, events, seed=seed, as_of=as_of, log=_log)
    _log(
        f"demo seed: {report.tenants_created} tenants created, {report.tenants_existing} already there, "
        f"{report.events} usage events"
    )


def cmd_demo_seed(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import admin_dsn

    _seed(admin_dsn(), args.tenants, args.events_per_tenant, args.seed, args.as_of)
    return 0


def _run_main_job(dsn: str, env: dict[str, str]) -> None:
    os.environ.update(env)
    import dagster as dg

    from tenant_pipelines.definitions import MAIN_JOB, defs

    with dg.DagsterInstance.get() as instance:
        _log(f"running {MAIN_JOB} (stored in Dagster's instance at {dagster_home()})")
        result = defs.resolve_job_def(MAIN_JOB).execute_in_process(instance=instance, raise_on_error=False)
        if not result.success:
            raise TenantPipelinesError(f"{MAIN_JOB} failed: open the run in the Dagster UI for its logs")


def cmd_dev(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.demo import database_is_empty
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn, dagster_storage_env, with_database

    embedded = not database_url_from_env()
    dsn = admin_dsn(start=embedded, log=_log)
    _ensure_database(dsn, "dagster")
    _migrate(dsn)
    if embedded:
        _use_embedded_tablespaces(dsn)
    with connect(dsn) as conn:
        empty = database_is_empty(conn)
    if empty:
        _seed(dsn, args.tenants, args.events_per_tenant, args.seed, None)
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "DAGSTER_HOME": str(home),
        DATABASE_URL_ENV: dsn,
        **{k: v for k, v in dagster_storage_env(with_database(dsn, "dagster")).items() if k not in os.environ},
    }
    if embedded:
        # Tenant sessions of the code location go through a real PgBouncer (transaction
        # pooling, per-tier pools); DDL and Dagster's own storage connect directly.
        from tenant_pipelines.settings import APP_DATABASE_URL_ENV
        from tenant_pipelines.local.pgbouncer import start_pgbouncer_for

        env[APP_DATABASE_URL_ENV] = start_pgbouncer_for(dsn, manage_app_password=True, log=_log)
    _run_main_job(dsn, env)
    if args.no_ui:
        return 0
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "dagster"), "dev",
        "-w", str(PROJECT_DIR / "workspace.yaml"), "-h", args.host, "-p", str(args.port),
    ]
    _log(f"opening the Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it)")
    os.chdir(PROJECT_DIR)
    os.execve(cmd[0], cmd, {**os.environ, **env})


def _ensure_database(dsn: str, name: str) -> None:
    from psycopg import sql

    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import with_database

    with connect(with_database(dsn, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            _log(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# -- backups and restore ------------------------------------------------------------------


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2026-11-30T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def cmd_backup(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.backups import backup_tenant, restore_drill
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.settings import default_backup_root
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.target import admin_dsn

    if args.root is not None and not args.root.strip():
        raise InvalidInput("--root is empty; pass a backup root folder, or leave it out for "
                           "$TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups")
    root = Path(args.root).resolve() if args.root else default_backup_root()
    key = load_master_key()
    with connect(admin_dsn(), autocommit=True) as conn:
        report = backup_tenant(conn, args.tenant, root, master_key=key, log=_log)
        _log(f"tenant {report.tenant}: backed up {report.total_rows} rows ({report.bytes} bytes, "
             f"{'encrypted' if report.encrypted else 'not encrypted'}) in {report.seconds:.2f}s")
        for removed in report.removed_by_retention:
            _log(f"retention removed {removed}")
        if args.verify:
            drill = restore_drill(conn, report.path, master_key=key, log=_log)
            if not drill.passed:
                raise TenantPipelinesError(f"tenant {report.tenant}: the restore drill of {report.path} failed: "
                                           + "; ".join(drill.mismatches))
            _log(f"tenant {report.tenant}: restore drill passed; the backup is marked verified")
    print(report.path)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.backups import backup_as_of, check_target_dsn, restore_tenant
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.settings import default_backup_root
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.session import parse_tenant_id
    from tenant_pipelines.local.target import admin_dsn

    tenant = parse_tenant_id(args.tenant)
    if args.backup is not None and not args.backup.strip():
        raise InvalidInput("--backup is empty; pass a backup folder like <root>/tenant=<uuid>/backup=<id>")
    if args.into_database is not None:
        check_target_dsn(args.into_database)
    if args.backup is not None:
        path = Path(args.backup)
    else:
        root = Path(args.root).resolve() if args.root else default_backup_root()
        path = backup_as_of(root, tenant, args.as_of)
        _log(f"tenant {tenant}: restoring {path.name}, the newest verified backup taken at or before "
             f"{args.as_of.isoformat()} (a backup, not point-in-time recovery: changes after it are not replayed)")
    dsn = args.into_database if args.into_database is not None else admin_dsn()
    with connect(dsn, autocommit=True) as conn:
        report = restore_tenant(conn, tenant, path, master_key=load_master_key(generate_dev_key=False),
                                into_schema=args.into_schema, log=_log)
    _log(f"tenant {tenant}: restored {report.total_rows} rows from backup {report.backup_id} into "
         f"{report.target} in {report.seconds:.2f}s (checksums verified in {report.verify_seconds:.2f}s; manifest "
         f"{'authenticated by its MAC' if report.authentication == 'mac' else 'matched its restore drill' if report.authentication == 'drill digest' else 'NOT verified'})")
    print("table\trows")
    for table in report.tables:
        print(f"{table.table}\t{table.rows}")
    return 0


# -- pgbouncer ------------------------------------------------------------------------------


def cmd_pgbouncer_up(args: argparse.Namespace) -> int:
    from tenant_pipelines.settings import writable_state_dir
    from tenant_pipelines.core.pooling import parse_pool_sizes
    from tenant_pipelines.local.pgbouncer import start_pgbouncer_for
    from tenant_pipelines.local.target import admin_dsn

    embedded = not database_url_from_env()
    overrides = parse_pool_sizes(args.pool_size)
    writable_state_dir()  # PgBouncer's files and state go there: refuse before anything starts
    dsn = admin_dsn(start=embedded, log=_log)
    print(start_pgbouncer_for(dsn, pool_overrides=overrides, default_pool_size=args.default_pool_size,
                              manage_app_password=embedded, log=_log))
    return 0


def cmd_pgbouncer_down(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.pgbouncer import stop_pgbouncer

    _log("stopped PgBouncer" if stop_pgbouncer(log=_log) else "PgBouncer was not running")
    return 0


def cmd_pgbouncer_config(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.pooling import parse_pool_sizes
    from tenant_pipelines.local.pgbouncer import pgbouncer_config_text
    from tenant_pipelines.local.target import admin_dsn

    overrides = parse_pool_sizes(args.pool_size)
    print(pgbouncer_config_text(admin_dsn(), listen_port=args.port, userlist=args.userlist,
                                pool_overrides=overrides, default_pool_size=args.default_pool_size), end="")
    if args.userlist:
        _log(f"wrote the auth file {args.userlist} (mode 0600): it holds billing_app's SCRAM verifier")
    return 0


def _add_pgbouncer_parser(sub: argparse._SubParsersAction) -> None:
    from tenant_pipelines.core.pooling import DEFAULT_POOL_SIZE

    pgb = sub.add_parser(
        "pgbouncer", help="PgBouncer in front of the billing database: start, stop, print its config",
        description="PgBouncer in transaction pooling mode, with one pool per tier (billing_enterprise, "
        "billing_growth, billing_starter, billing_free) sized from tier_limits.pool_size, plus billing.",
    )
    pgb_sub = pgb.add_subparsers(dest="pgbouncer_command", required=True, metavar="ACTION")

    def pool_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pool-size", action="append", default=[], metavar="TIER=N",
                       help="override one tier's pool size (repeatable); default: tier_limits.pool_size")
        p.add_argument("--default-pool-size", type=_pool_size_arg, default=DEFAULT_POOL_SIZE, metavar="N",
                       help=f"server connections of the plain billing pool (default {DEFAULT_POOL_SIZE})")

    p = pgb_sub.add_parser(
        "up", help="start PgBouncer (or reuse and reload it); prints billing_app's DSN last",
        description="Start PgBouncer on a free loopback port in front of the billing database, or reuse "
        "the one running (reloading it when its configuration changed). Idempotent. The last line on "
        "stdout is billing_app's DSN to the plain billing pool; use the database billing_<tier> for a tier's pool.",
    )
    pool_options(p)
    p.set_defaults(func=cmd_pgbouncer_up)
    p = pgb_sub.add_parser("down", help="stop PgBouncer", description="Stop the project's PgBouncer.")
    p.set_defaults(func=cmd_pgbouncer_down)
    p = pgb_sub.add_parser(
        "config", help="print pgbouncer.ini for a PgBouncer of your own",
        description="Print the pgbouncer.ini the project generates for the billing database (without log "
        "and pid files), for a PgBouncer you run yourself.",
    )
    p.add_argument("--port", type=_port, default=None, help="listen_port, 1 to 65535 (default: the project's PgBouncer's, else 6432)")
    p.add_argument("--userlist", type=Path, default=None, metavar="PATH",
                   help="also write the auth file there (mode 0600) and name it in the config")
    pool_options(p)
    p.set_defaults(func=cmd_pgbouncer_config)


# -- parsing ------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0: give 1 or more")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-30") from None


def _figure(n: int) -> str:
    return f"{n:,}" if n >= 100_000 else str(n)


def _bounded(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, else one line with the range
    (and ``why``, the reason for the bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {low} to {_figure(high)}") from None
        if not low <= value <= high:
            shown = text if len(text) <= 30 else text[:27] + "..."
            wrong = "is negative" if value < 0 <= low else "is out of range"
            raise argparse.ArgumentTypeError(f"{shown} {wrong}; give {low} to {_figure(high)}{why}")
        return value
    return parse


_port = _bounded(1, 65535, " (a TCP port)")
_premake_months = _bounded(0, 36, " (partition_config allows 36 months ahead; each premade month is a leaf "
                                  "under the leaf budget)")


def _pool_size_arg(text: str) -> int:
    from tenant_pipelines.core.pooling import MAX_POOL_SIZE

    return _bounded(1, MAX_POOL_SIZE, " (server connections)")(text)


def _demo_tenants(text: str) -> int:
    from tenant_pipelines.local.demo import MAX_TENANTS

    return _bounded(0, MAX_TENANTS, " (the demo numbers its tenants with five digits)")(text)


def _demo_events(text: str) -> int:
    from tenant_pipelines.local.demo import MAX_EVENTS_PER_TENANT

    return _bounded(0, MAX_EVENTS_PER_TENANT, " (each tenant's events are written in one transaction)")(text)


def _demo_day(text: str) -> date:
    from tenant_pipelines.local.demo import check_as_of

    day = _day(text)
    try:
        check_as_of(day)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
    return day


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage stays in --help), exit 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        command = self.prog.removeprefix("tenant-pipelines").strip()
        self.exit(2, f"tenant-pipelines: error: {command + ': ' if command else ''}{message} "
                     f"(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tenant-pipelines",
        description="Run the multi-tenant storage layer of the billing database. "
        f"Uses ${DATABASE_URL_ENV} (an admin DSN) when set, else a project-local PostgreSQL cluster.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = sub.add_parser("db", help="the database: start, stop, migrate", description="Manage the database.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = db_sub.add_parser(
        "up", help="start the embedded cluster (or reuse it); prints its DSN last",
        description="Start the project-local PostgreSQL cluster, or reuse the one running. "
        "Idempotent. The last line on stdout is the DSN.",
    )
    p.set_defaults(func=cmd_db_up)
    p = db_sub.add_parser("down", help="stop the embedded cluster", description="Stop the embedded cluster.")
    p.set_defaults(func=cmd_db_down)
    p = db_sub.add_parser(
        "migrate", help="apply sql/ in order",
        description="Apply the migrations in sql/ that the database has not applied yet. Refuses to run "
        "when an applied file was edited since.",
    )
    p.set_defaults(func=cmd_db_migrate)

    tiering = sub.add_parser("tiering", help="storage tiers: tablespaces and placement",
                             description="Storage tiering: which tablespace serves each tier, and what would move.")
    tiering_sub = tiering.add_subparsers(dest="tiering_command", required=True, metavar="ACTION")
    p = tiering_sub.add_parser(
        "configure", help="name the tablespace of each tier",
        description="Point the hot, warm and cold tiers at existing tablespaces, then print the mapping. "
        "A tablespace that does not exist is refused with how to create it.",
    )
    for tier in ("hot", "warm", "cold"):
        p.add_argument(f"--{tier}", metavar="TABLESPACE", help=f"tablespace for the {tier} tier")
    p.set_defaults(func=cmd_tiering_configure)
    p = tiering_sub.add_parser(
        "plan", help="show every month partition, where it is and where the policy wants it",
        description="List month partitions with their current and target tablespace (nothing is moved).",
    )
    p.add_argument("--tenant", default=None, help="only this tenant (organization UUID)")
    p.set_defaults(func=cmd_tiering_plan)
    from tenant_pipelines.core.tiering import DEFAULT_BATCH_BLOCKS, DEFAULT_MAX_MB_PER_S, METHODS, ONLINE

    p = tiering_sub.add_parser(
        "run", help="move one tenant's (or the pool's) month partitions to the tablespaces the policy says",
        description="What the tier_placement asset does, for one tenant, or pool_tier_placement for the "
        "pool that holds every pooled tenant's rows, from the shell: each month whose "
        "age puts it in another tier moves, online by default (a paced copy, then a swap of milliseconds "
        "under lock). Progress on stderr; the moves as a table on stdout. Exit 0 when everything is in "
        "place, 1 when something is still misplaced, 2 for bad input.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant", help="the organization UUID (a tenant with a dedicated partition)")
    target.add_argument("--pool", action="store_true", help="the pool's months (pooled tenants), by the global policy")
    p.add_argument("--method", choices=METHODS, default=ONLINE,
                   help="online (default): paced copy-and-swap; set-tablespace: ALTER TABLE ... SET "
                   "TABLESPACE, fastest, but a burst of I/O that live writers wait behind")
    p.add_argument("--max-mb-per-s", type=_non_negative_float, default=DEFAULT_MAX_MB_PER_S, metavar="MB",
                   help=f"online: the most MB per second copied (default: {DEFAULT_MAX_MB_PER_S:g}; 0: no limit)")
    p.add_argument("--batch-blocks", type=_positive_int, default=DEFAULT_BATCH_BLOCKS, metavar="N",
                   help=f"online: 8 KiB blocks copied per transaction (default: {DEFAULT_BATCH_BLOCKS})")
    p.set_defaults(func=cmd_tiering_run)

    partitions = sub.add_parser(
        "partitions", help="where tenants' usage events live: the pool and dedicated partitions",
        description="Tenant storage in usage_events_mt: most tenants share the month-split pool (the DEFAULT "
        "partition); those whose tier, flag or size asks for it get a partition of their own, within "
        "partition_config.leaf_budget.")
    partitions_sub = partitions.add_subparsers(dest="partitions_command", required=True, metavar="ACTION")
    p = partitions_sub.add_parser(
        "status", help="leaves against the budget, dedicated tenants, the pool's months, and what is wrong",
        description="Print the leaves under usage_events_mt against partition_config.leaf_budget, the dedicated "
        "tenants, the pool's months and interrupted promotions; findings (what tenant_partitions_complete "
        "checks) go to stderr. Exit 0 when all is complete, 1 when something is wrong.")
    p.set_defaults(func=cmd_partitions_status)
    p = partitions_sub.add_parser(
        "ensure", help="what the tenant_partition asset does, for one tenant",
        description="Make sure the tenant has its storage: the pool's months, and a dedicated partition (attached "
        "online, with its months) when its tier, flag or size asks for one and the leaf budget allows. "
        "Idempotent. Exit 0 on success, 2 for a malformed tenant id, 1 when a lock could not be had.")
    p.add_argument("--tenant", required=True, help="the organization UUID")
    p.add_argument("--premake-months", type=_premake_months, default=None, metavar="N",
                   help="months to premake ahead, 0 to 36 (default: partition_config.premake_months)")
    p.set_defaults(func=cmd_partitions_ensure)

    p = sub.add_parser(
        "backup", help="back one tenant up now (Parquet, encrypted when its config says so)",
        description="Back one tenant up from one consistent snapshot into "
        "<root>/tenant=<uuid>/backup=<id>/ (Parquet files and manifest.json), then apply its retention. "
        "Prints the backup folder. The key comes from $TENANT_PIPELINES_BACKUP_KEY or "
        "$TENANT_PIPELINES_BACKUP_KEY_FILE (the embedded cluster generates .tenant-pipelines/backup.key).",
    )
    p.add_argument("--tenant", required=True, help="organization UUID")
    p.add_argument("--root", default=None, help="backup root (default $TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups)")
    p.add_argument("--verify", action="store_true", help="run the restore drill on it afterwards and mark it verified")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="restore one tenant from a backup: live tables, a scratch schema or another database",
        description="Verify a backup (every file's sha256, the tenant, the key) before writing anything, then "
        "restore the tenant in one transaction: into the live tables (its rows replaced, no other tenant "
        "touched), into a new scratch schema, or into another, migrated database. Progress on stderr; rows "
        "per table on stdout. Exit codes: 0 done, 1 failed (nothing committed), 2 bad input, 3 database "
        "unreachable, 4 the target database does not match this checkout's sql/ (not migrated), 5 backup damaged, incomplete or another tenant's, 6 backup key "
        "missing or wrong.",
    )
    p.add_argument("--tenant", required=True, help="organization UUID")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup", metavar="PATH", help="a backup folder, <root>/tenant=<uuid>/backup=<id>")
    which.add_argument("--as-of", type=_timestamp, metavar="TIMESTAMP",
                       help="the newest verified backup taken at or before this time (ISO 8601; UTC if no zone)")
    p.add_argument("--root", default=None, help="backup root searched by --as-of (default as for backup)")
    into = p.add_mutually_exclusive_group()
    into.add_argument("--into-schema", metavar="S", help="a new scratch schema in the billing database")
    into.add_argument("--into-database", metavar="DSN", help="an admin DSN of another, migrated database")
    p.set_defaults(func=cmd_restore)

    demo = sub.add_parser("demo", help="demo data", description="Demo data.")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    p = demo_sub.add_parser(
        "seed", help="create deterministic demo tenants and usage events",
        description="Create demo organizations across the four tiers, with subscriptions, invoices, "
        "payment methods and time-ordered usage events. The same --seed gives the same data; "
        "existing tenants are left alone.",
    )
    p.add_argument("--tenants", type=_demo_tenants, default=12, help="how many tenants, 0 to 99,999 (default 12)")
    p.add_argument("--events-per-tenant", type=_demo_events, default=2000,
                   help="usage events each, 0 to 1,000,000 (default 2000)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--as-of", type=_demo_day, default=None, help="last day of the event history (default today, UTC)")
    p.set_defaults(func=cmd_demo_seed)

    p = sub.add_parser(
        "dev", help="up, migrate, seed if empty, run the main job, open the Dagster UI",
        description="Bring up the embedded cluster (or use $BILLING_DATABASE_URL), apply migrations, seed "
        "demo data into an empty database, run the main job, then start `dagster dev`.",
    )
    p.add_argument("--tenants", type=_demo_tenants, default=12, help="demo tenants when seeding (default 12)")
    p.add_argument("--events-per-tenant", type=_demo_events, default=2000, help="demo events each (default 2000)")
    p.add_argument("--seed", type=int, default=42, help="demo random seed (default 42)")
    p.add_argument("--host", default="127.0.0.1", help="UI host (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=3000, help="UI port (default 3000)")
    p.add_argument("--no-ui", action="store_true", help="stop after the main job; do not start the UI")
    p.set_defaults(func=cmd_dev)
    _add_pgbouncer_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TenantPipelinesError as exc:
        _log(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
