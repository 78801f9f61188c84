"""``tenant-pipelines backup`` and ``restore``: one tenant's Parquet backups (docs/backups.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tenant_pipelines.cli.common import admin_dsn, command, log, timestamp
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError


def cmd_backup(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.backups import backup_tenant, restore_drill
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.settings import default_backup_root
    from tenant_pipelines.db.connect import connect

    if args.root is not None and not args.root.strip():
        raise InvalidInput("--root is empty; pass a backup root folder, or leave it out for "
                           "$TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups")
    root = Path(args.root).resolve() if args.root else default_backup_root()
    key = load_master_key()
    with connect(admin_dsn(), autocommit=True) as conn:
        report = backup_tenant(conn, args.tenant, root, master_key=key, log=log)
        log(f"tenant {report.tenant}: backed up {report.total_rows} rows ({report.bytes} bytes, "
             f"{'encrypted' if report.encrypted else 'not encrypted'}) in {report.seconds:.2f}s")
        for removed in report.removed_by_retention:
            log(f"retention removed {removed}")
        if args.verify:
            drill = restore_drill(conn, report.path, master_key=key, log=log)
            if not drill.passed:
                raise TenantPipelinesError(f"tenant {report.tenant}: the restore drill of {report.path} failed: "
                                           + "; ".join(drill.mismatches))
            log(f"tenant {report.tenant}: restore drill passed; the backup is marked verified")
    print(report.path)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.backups import backup_as_of, check_target_dsn, restore_tenant
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.settings import default_backup_root
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.db.session import parse_tenant_id

    tenant = parse_tenant_id(args.tenant)
    if args.to_time is not None:
        if args.allow_cleartext:
            raise InvalidInput("--allow-cleartext is for a restore from a backup folder (--backup, --as-of); "
                               "leave it out with --to-time")
        return _restore_to_time(args, tenant)
    if args.force:
        raise InvalidInput("--force is for --to-time (a point-in-time restore of a tenant without "
                           "point_in_time_recovery); leave it out")
    if args.backup is not None and not args.backup.strip():
        raise InvalidInput("--backup is empty; pass a backup folder like <root>/tenant=<uuid>/backup=<id>")
    if args.into_database is not None:
        check_target_dsn(args.into_database)
    if args.backup is not None:
        path = Path(args.backup)
    else:
        root = Path(args.root).resolve() if args.root else default_backup_root()
        path = backup_as_of(root, tenant, args.as_of)
        log(f"tenant {tenant}: restoring {path.name}, the newest verified backup taken at or before "
             f"{args.as_of.isoformat()} (a backup, not point-in-time recovery: changes after it are not replayed; "
             "--to-time restores the tenant as it was at a time)")
    dsn = args.into_database if args.into_database is not None else admin_dsn()
    with connect(dsn, autocommit=True) as conn:
        report = restore_tenant(conn, tenant, path, master_key=load_master_key(generate_dev_key=False),
                                into_schema=args.into_schema, allow_cleartext=args.allow_cleartext, log=log)
    log(f"tenant {tenant}: restored {report.total_rows} rows from backup {report.backup_id} into "
         f"{report.target} in {report.seconds:.2f}s (checksums verified in {report.verify_seconds:.2f}s; manifest "
         f"{'authenticated by its MAC' if report.authentication == 'mac' else 'matched its restore drill' if report.authentication == 'drill digest' else 'NOT verified'})")
    print("table\trows")
    for table in report.tables:
        print(f"{table.table}\t{table.rows}")
    return 0


def _restore_to_time(args: argparse.Namespace, tenant) -> int:
    from tenant_pipelines.core.backups import check_target_dsn
    from tenant_pipelines.core.pitr import restore_tenant_to_time
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.local.pgbackrest import engine_for

    if args.root is not None:
        raise InvalidInput("--root is for --as-of (Parquet backups); --to-time restores from the WAL archive: leave it out")
    if args.into_database is not None:
        check_target_dsn(args.into_database)
    dsn = admin_dsn()
    engine = engine_for(dsn)
    key = load_master_key()
    with connect(dsn, autocommit=True) as conn:
        target = connect(args.into_database, autocommit=True) if args.into_database is not None else None
        try:
            report = restore_tenant_to_time(conn, tenant, args.to_time, engine, master_key=key, target_conn=target,
                                            into_schema=args.into_schema, force=args.force, log=log)
        finally:
            if target is not None:
                target.close()
    log(f"tenant {tenant}: restored as of {args.to_time.isoformat()} into {report.target} in "
        f"{report.seconds['total']:.1f}s (cluster backup {report.backup_label}, sandbox "
        f"{report.sandbox_bytes / 1e6:,.1f} MB, {report.wal_replayed_bytes / 1e6:,.1f} MB of WAL replayed)")
    print("table\trows")
    for table, rows in report.rows.items():
        print(f"{table}\t{rows}")
    return 0


def cmd_cluster_backup(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.pitr import take_cluster_backup
    from tenant_pipelines.db.connect import connect
    from tenant_pipelines.local.pgbackrest import engine_for

    dsn = admin_dsn()
    engine = engine_for(dsn)
    with connect(dsn, autocommit=True) as conn:
        backup, days = take_cluster_backup(conn, engine, args.type)
    log(f"cluster backup {backup.label} ({backup.type}): {backup.size / 1e6:,.1f} MB of cluster, "
        f"{backup.repo_size / 1e6:,.1f} MB in the repository, WAL {backup.wal_start} to {backup.wal_stop}, "
        f"{backup.seconds:.0f}s; full backups kept {days} days")
    print(backup.label)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "backup", cmd_backup, help="back one tenant up now (Parquet, encrypted when its config says so)",
        description="Back one tenant up from one consistent snapshot into "
        "<root>/tenant=<uuid>/backup=<id>/ (Parquet files and manifest.json), then apply its retention. "
        "Prints the backup folder. The key comes from $TENANT_PIPELINES_BACKUP_KEY or "
        "$TENANT_PIPELINES_BACKUP_KEY_FILE (the embedded cluster generates .tenant-pipelines/backup.key).",
    )
    p.add_argument("--tenant", required=True, help="organization UUID")
    p.add_argument("--root", default=None, help="backup root (default $TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups)")
    p.add_argument("--verify", action="store_true", help="run the restore drill on it afterwards and mark it verified")

    p = command(
        sub, "restore", cmd_restore, help="restore one tenant from a backup or to a point in time: live tables, a scratch schema or another database",
        description="With --to-time T: restore the cluster as of T into a temporary sandbox with pgBackRest, read the "
        "tenant from it as a backup, and restore that as below; the sandbox is removed afterwards (and a crashed "
        "run's by the next). Refused with nothing changed: T in the future, before the oldest cluster backup, "
        "after the newest archived WAL, a tenant that did not exist at T. With --backup or --as-of: verify a backup (every file's sha256, the tenant, the key) before writing anything, then "
        "restore the tenant in one transaction: into the live tables (its rows replaced, no other tenant "
        "touched), into a new scratch schema, or into another, migrated database. Progress on stderr; rows "
        "per table on stdout. Exit codes: 0 done, 1 failed (nothing committed), 2 bad input, 3 database "
        "unreachable, 4 the target database does not match this checkout's sql/ (not migrated), 5 backup damaged, incomplete or another tenant's, 6 backup key "
        "missing or wrong.",
    )
    p.add_argument("--tenant", required=True, help="organization UUID")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup", metavar="PATH", help="a backup folder, <root>/tenant=<uuid>/backup=<id>")
    which.add_argument("--as-of", type=timestamp, metavar="TIMESTAMP",
                       help="the newest verified Parquet backup taken at or before this time (ISO 8601; UTC if "
                       "no zone); changes made after that backup are NOT replayed: for the tenant exactly as at a "
                       "time, use --to-time")
    which.add_argument("--to-time", type=timestamp, metavar="TIMESTAMP",
                       help="point-in-time restore: the tenant exactly as it was at this time (ISO 8601; UTC if no "
                       "zone), from the cluster's pgBackRest backups and WAL archive (docs/pitr.md); only tenants "
                       "with tenant_backup_config.point_in_time_recovery, unless --force")
    p.add_argument("--force", action="store_true",
                   help="with --to-time: restore a tenant without point_in_time_recovery too")
    p.add_argument("--root", default=None, help="backup root searched by --as-of (default as for backup)")
    into = p.add_mutually_exclusive_group()
    p.add_argument("--allow-cleartext", action="store_true",
                   help="accept a cleartext backup of a tenant whose backups are encrypted (refused by default: "
                        "without the key, an encrypted backup can be rewritten as a cleartext one)")
    into.add_argument("--into-schema", metavar="S", help="a new scratch schema in the billing database")
    into.add_argument("--into-database", metavar="DSN", help="an admin DSN of another, migrated database")

    p = command(
        sub, "cluster-backup", cmd_cluster_backup,
        help="back the whole cluster up with pgBackRest (the base of point-in-time restores)",
        description="Take a pgBackRest backup of the cluster into its encrypted repository, as the cluster_backup "
        "asset does, then expire old ones: full backups are kept for the longest window a tenant with "
        "point_in_time_recovery is promised (tenant_backup_config.retention_days), at least 14 days. Prints the "
        "backup's label. The embedded cluster's stanza is set up by 'db up'; for your own server set "
        "TENANT_PIPELINES_PGBACKREST_CONFIG and TENANT_PIPELINES_PGBACKREST_STANZA (docs/pitr.md).",
    )
    p.add_argument("--type", choices=("full", "diff"), default="diff",
                   help="full, or differential against the newest full (default; the first backup is always full)")
