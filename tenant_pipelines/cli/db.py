"""``tenant-pipelines db up [--citus [--workers N]] | down | status | migrate``."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, command, command_group, log, positive_int
from tenant_pipelines.settings import DATABASE_URL_ENV, database_url_from_env


def cmd_up(args: argparse.Namespace) -> int:
    from tenant_pipelines.db.connect import connect, describe
    from tenant_pipelines.local.target import embedded_cluster

    from tenant_pipelines.errors import InvalidInput
    from tenant_pipelines.local.target import embedded_citus

    if args.workers is not None and not args.citus:
        raise InvalidInput(f"--workers {args.workers}: only with --citus (db up --citus --workers {args.workers})")
    url = database_url_from_env()
    if url:
        connect(url).close()
        log(f"{DATABASE_URL_ENV} is set: using your server at {describe(url)}; nothing to start"
            + (" (--citus: run db migrate there once the extension citus is in that database)" if args.citus else ""))
        print(url)
        return 0
    citus = embedded_citus(log)
    if args.citus or citus.exists():
        if not args.citus:
            log(f"a Citus cluster is set up in {citus.state_dir}: starting its coordinator and workers "
                f"(remove {citus.state_file} to use the single-node cluster again)")
        if args.workers is not None:
            citus.workers = args.workers
        dsn = citus.up()
        for name, role, port, data in citus.status():
            log(f"{role} {name}: 127.0.0.1:{port}, data in {data}")
        print(dsn)
        return 0
    cluster = embedded_cluster(log)
    dsn = cluster.up()
    if cluster.data_root != cluster.state_dir / "pg":
        log(f"the server's OS user cannot reach {cluster.state_dir}: its data lives in {cluster.data_root}")
    print(dsn)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import embedded_cluster

    from tenant_pipelines.local.target import embedded_citus

    if database_url_from_env():
        log(f"{DATABASE_URL_ENV} is set: the embedded cluster is not in use; nothing to stop")
        return 0
    citus = embedded_citus(log)
    if citus.exists():
        stopped_nodes = citus.down()
        log(f"stopped the Citus cluster's {', '.join(stopped_nodes)}" if stopped_nodes
            else "the Citus cluster was not running")
    stopped = embedded_cluster(log).down()
    if stopped or not citus.exists():
        log("stopped the embedded cluster" if stopped else "the embedded cluster was not running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tenant_pipelines.local.target import embedded_citus, embedded_cluster

    url = database_url_from_env()
    if url:
        from tenant_pipelines.db.connect import describe

        print(f"{DATABASE_URL_ENV}\t{describe(url)}")
        return 0
    cluster = embedded_cluster(log)
    rows = [("single-node", "server", cluster.running_port(), str(cluster.data_root))]
    citus = embedded_citus(log)
    if citus.exists():
        rows += citus.status()
    print("name\trole\tport\tdata")
    for name, role, port, data in rows:
        print(f"{name}\t{role}\t{port if port is not None else 'stopped'}\t{data}")
    return 0 if all(port is not None for _, _, port, _ in rows[1 if citus.exists() else 0:]) else 1


def migrate_and_report(dsn: str, jobs: int | None = None) -> None:
    from tenant_pipelines.core.security import audit_tables_carried
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migrate

    with connect(dsn, autocommit=True) as conn:
        report = migrate(conn, log=log, jobs=jobs)
        uncarried = audit_tables_carried(conn)
    log(f"{len(report.applied)} migrations applied, {len(report.already_applied)} already applied")
    for finding in uncarried:
        log(f"warning: {finding}")
    if report.citus is not None:
        log(f"a Citus coordinator: {len(report.citus.applied)} Citus migrations applied, "
            f"{len(report.citus.already_applied)} already applied (sql/citus/)")
    if report.schemas is not None and report.schemas.behind:
        log(f"{len(report.schemas.migrated)} tenant schemas brought to {report.schemas.target}")


def cmd_migrate(args: argparse.Namespace) -> int:
    dsn = admin_dsn(start=not database_url_from_env())
    if not args.status:
        migrate_and_report(dsn, args.jobs)
        return 0
    from tenant_pipelines.core.security import audit_tables_carried
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.migrate import migration_status

    with connect(dsn, autocommit=True) as conn:
        status = migration_status(conn)
        uncarried = audit_tables_carried(conn) if status.tenant_tables_version is not None else []
    for line in status.lines():
        print(line)
    for finding in uncarried:
        print(f"not carried: {finding}")
    return 1 if status.behind or uncarried else 0


def register(sub: argparse._SubParsersAction) -> None:
    db_sub = command_group(sub, "db", help="the database: start, stop, migrate", description="Manage the database.")
    p = command(
        db_sub, "up", cmd_up, help="start the embedded cluster (or reuse it); prints its DSN last",
        description="Start the project-local PostgreSQL cluster, or reuse the one running. "
        "Idempotent. The last line on stdout is the DSN. With --citus: a Citus coordinator and N workers "
        "instead, each a project-local cluster on loopback with Citus loaded and the workers registered "
        "(the DSN is the coordinator's); from then on every command's embedded database is the coordinator.",
    )
    p.add_argument("--citus", action="store_true",
                   help="a Citus cluster: a coordinator and --workers workers (docs/scale-out.md); needs Citus "
                        "installed (scripts/setup.sh builds it)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="with --citus: how many workers (default 2, or as many as the cluster has); more are "
                        "added, fewer are refused")
    command(db_sub, "down", cmd_down, help="stop the embedded cluster (every Citus node too)",
            description="Stop the embedded cluster, and every node of the embedded Citus cluster if there is one.")
    command(db_sub, "status", cmd_status, help="list the embedded servers, their ports and data folders",
            description="List the embedded single-node cluster and every node of the embedded Citus cluster: "
            "name, role, port (or 'stopped') and data folder. Exit 0 when the cluster in use runs, 1 when not.")
    p = command(
        db_sub, "migrate", cmd_migrate, help="apply sql/ in order, then bring every tenant schema up to date",
        description="Apply the migrations in sql/migrations/ that the database has not applied yet, and "
        "re-apply each function or view in sql/functions/ whose text changed. Refuses to run when an "
        "applied migration was edited since. Then apply the tenant-tables migrations (first line "
        "`-- tenant tables`) to every tenant schema behind, each schema in one transaction of its own: a "
        "schema that fails is named with the migration, the others still complete, and the exit code is 4; "
        "running it again finishes the rest. Last, a warning for every table that holds tenants' rows and "
        "that backups and moves do not carry (a new tenant table not yet added to them; sql/README.md).",
    )
    p.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                   help="tenant schemas migrated at once, one connection each (default: min(4, CPUs))")
    p.add_argument("--status", action="store_true",
                   help="change nothing: list the migrations applied and pending and every tenant schema behind "
                        "(schema, tenant, migrated_to, the version it should be at) and every table of tenants' "
                        "rows that backups and moves do not carry; exit 0 when none is, 1 otherwise")
