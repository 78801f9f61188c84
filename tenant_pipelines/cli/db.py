"""``tenant-pipelines db up | down | migrate``."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, command, command_group, log, positive_int
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


def migrate_and_report(dsn: str, jobs: int | None = None) -> None:
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migrate

    with connect(dsn, autocommit=True) as conn:
        report = migrate(conn, log=log, jobs=jobs)
    log(f"{len(report.applied)} migrations applied, {len(report.already_applied)} already applied")
    if report.schemas is not None and report.schemas.behind:
        log(f"{len(report.schemas.migrated)} tenant schemas brought to {report.schemas.target}")


def cmd_migrate(args: argparse.Namespace) -> int:
    dsn = admin_dsn(start=not database_url_from_env())
    if not args.status:
        migrate_and_report(dsn, args.jobs)
        return 0
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migration_status

    with connect(dsn, autocommit=True) as conn:
        status = migration_status(conn)
    for line in status.lines():
        print(line)
    return 1 if status.behind else 0


def register(sub: argparse._SubParsersAction) -> None:
    db_sub = command_group(sub, "db", help="the database: start, stop, migrate", description="Manage the database.")
    command(
        db_sub, "up", cmd_up, help="start the embedded cluster (or reuse it); prints its DSN last",
        description="Start the project-local PostgreSQL cluster, or reuse the one running. "
        "Idempotent. The last line on stdout is the DSN.",
    )
    command(db_sub, "down", cmd_down, help="stop the embedded cluster", description="Stop the embedded cluster.")
    p = command(
        db_sub, "migrate", cmd_migrate, help="apply sql/ in order, then bring every tenant schema up to date",
        description="Apply the migrations in sql/migrations/ that the database has not applied yet, and "
        "re-apply each function or view in sql/functions/ whose text changed. Refuses to run when an "
        "applied migration was edited since. Then apply the tenant-tables migrations (first line "
        "`-- tenant tables`) to every tenant schema behind, each schema in one transaction of its own: a "
        "schema that fails is named with the migration, the others still complete, and the exit code is 4; "
        "running it again finishes the rest.",
    )
    p.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                   help="tenant schemas migrated at once, one connection each (default: min(4, CPUs))")
    p.add_argument("--status", action="store_true",
                   help="change nothing: list the migrations applied and pending and every tenant schema behind "
                        "(schema, tenant, migrated_to, the version it should be at); exit 0 when no tenant schema "
                        "is behind, 1 when one is")
