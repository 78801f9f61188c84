"""``tenant-pipelines pgbouncer up | down | config``: PgBouncer in front of the billing database."""

from __future__ import annotations

import argparse
from pathlib import Path

from tenant_pipelines.cli.common import admin_dsn, bounded, command, command_group, log, port
from tenant_pipelines.settings import database_url_from_env


def pool_size(text: str) -> int:
    from tenant_pipelines.core.pooling import MAX_POOL_SIZE

    return bounded(1, MAX_POOL_SIZE, " (server connections)")(text)


def cmd_up(args: argparse.Namespace) -> int:
    from tenant_pipelines.settings import writable_state_dir
    from tenant_pipelines.core.pooling import parse_pool_sizes
    from tenant_pipelines.local.pgbouncer import start_pgbouncer_for

    embedded = not database_url_from_env()
    overrides = parse_pool_sizes(args.pool_size)
    writable_state_dir()  # PgBouncer's files and state go there: refuse before anything starts
    dsn = admin_dsn(start=embedded)
    print(start_pgbouncer_for(dsn, pool_overrides=overrides, default_pool_size=args.default_pool_size,
                              manage_app_password=embedded, log=log))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.pgbouncer import stop_pgbouncer

    log("stopped PgBouncer" if stop_pgbouncer(log=log) else "PgBouncer was not running")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.pooling import parse_pool_sizes
    from tenant_pipelines.local.pgbouncer import pgbouncer_config_text

    overrides = parse_pool_sizes(args.pool_size)
    print(pgbouncer_config_text(admin_dsn(), listen_port=args.port, userlist=args.userlist,
                                pool_overrides=overrides, default_pool_size=args.default_pool_size), end="")
    if args.userlist:
        log(f"wrote the auth file {args.userlist} (mode 0600): it holds billing_app's SCRAM verifier")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tenant_pipelines.core.pooling import DEFAULT_POOL_SIZE

    pgb_sub = command_group(
        sub, "pgbouncer", help="PgBouncer in front of the billing database: start, stop, print its config",
        description="PgBouncer in transaction pooling mode, with one pool per tier (billing_enterprise, "
        "billing_growth, billing_starter, billing_free) sized from tier_limits.pool_size, plus billing.",
    )

    def pool_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pool-size", action="append", default=[], metavar="TIER=N",
                       help="override one tier's pool size (repeatable); default: tier_limits.pool_size")
        p.add_argument("--default-pool-size", type=pool_size, default=DEFAULT_POOL_SIZE, metavar="N",
                       help=f"server connections of the plain billing pool (default {DEFAULT_POOL_SIZE})")

    p = command(
        pgb_sub, "up", cmd_up, help="start PgBouncer (or reuse and reload it); prints billing_app's DSN last",
        description="Start PgBouncer on a free loopback port in front of the billing database, or reuse "
        "the one running (reloading it when its configuration changed). Idempotent. The last line on "
        "stdout is billing_app's DSN to the plain billing pool; use the database billing_<tier> for a tier's pool.",
    )
    pool_options(p)
    command(pgb_sub, "down", cmd_down, help="stop PgBouncer", description="Stop the project's PgBouncer.")
    p = command(
        pgb_sub, "config", cmd_config, help="print pgbouncer.ini for a PgBouncer of your own",
        description="Print the pgbouncer.ini the project generates for the billing database (without log "
        "and pid files), for a PgBouncer you run yourself.",
    )
    p.add_argument("--port", type=port, default=None, help="listen_port, 1 to 65535 (default: the project's PgBouncer's, else 6432)")
    p.add_argument("--userlist", type=Path, default=None, metavar="PATH",
                   help="also write the auth file there (mode 0600) and name it in the config")
    pool_options(p)
