"""``tenant-pipelines db up | down | migrate``."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, command, command_group, log
from tenant_pipelines.settings import DATABASE_URL_ENV, database_url_from_env


def cmd_up(args: argparse.Namespace) -> int:
    from tenant_pipelines.db.connect import connect, describe
    from tenant_pipelines.local.target import embedded_cluster

    url = database_url_from_env()
    if url:
        connect(url).close()
        log(f"{DATABASE_URL_ENV} is set: using your server at {describe(url)}; nothing to start")
        print(url)
        return 0
    cluster = embedded_cluster(log)
    dsn = cluster.up()
    if cluster.data_root != cluster.state_dir / "pg":
        log(f"the server's OS user cannot reach {cluster.state_dir}: its data lives in {cluster.data_root}")
    print(dsn)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import embedded_cluster

    if database_url_from_env():
        log(f"{DATABASE_URL_ENV} is set: the embedded cluster is not in use; nothing to stop")
        return 0
    stopped = embedded_cluster(log).down()
    log("stopped the embedded cluster" if stopped else "the embedded cluster was not running")
    return 0


def migrate_and_report(dsn: str) -> None:
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migrate

    with connect(dsn, autocommit=True) as conn:
        report = migrate(conn, log=log)
    log(f"{len(report.applied)} migrations applied, {len(report.already_applied)} already applied")


def cmd_migrate(args: argparse.Namespace) -> int:
    migrate_and_report(admin_dsn(start=not database_url_from_env()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    db_sub = command_group(sub, "db", help="the database: start, stop, migrate", description="Manage the database.")
    command(
        db_sub, "up", cmd_up, help="start the embedded cluster (or reuse it); prints its DSN last",
        description="Start the project-local PostgreSQL cluster, or reuse the one running. "
        "Idempotent. The last line on stdout is the DSN.",
    )
    command(db_sub, "down", cmd_down, help="stop the embedded cluster", description="Stop the embedded cluster.")
    command(
        db_sub, "migrate", cmd_migrate, help="apply sql/ in order",
        description="Apply the migrations in sql/migrations/ that the database has not applied yet, and "
        "re-apply each function or view in sql/functions/ whose text changed. Refuses to run when an "
        "applied migration was edited since.",
    )
