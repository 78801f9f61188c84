"""``tenant-pipelines partitions status | ensure``: where tenants' usage events live."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, bounded, command, command_group, log

premake_months = bounded(0, 36, " (partition_config allows 36 months ahead; each premade month is a leaf "
                                "under the leaf budget)")


def cmd_status(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import audit_tenant_partitions, storage_status
    from tenant_pipelines.db.connect import connect

    with connect(admin_dsn()) as conn:
        status = storage_status(conn)
        findings = audit_tenant_partitions(conn)
    print(f"leaves\t{status['leaves']}\tof a budget of {status['leaf_budget']}")
    print(f"dedicated tenants\t{status['dedicated_tenants']}")
    print(f"pool months\t{status['pool_months']}\t{status['first_pool_month'] or '-'} to {status['last_pool_month'] or '-'}")
    print(f"interrupted promotions\t{len(status['interrupted_promotions'])}")
    for finding in findings:
        log(str(finding))
    log(f"{len(findings)} findings" if findings else "the pool and every dedicated partition are complete")
    return 1 if findings or status["interrupted_promotions"] else 0


def cmd_ensure(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import ensure_tenant_partition, require_known_tenant
    from tenant_pipelines.db.connect import connect

    with connect(admin_dsn(), autocommit=True) as conn:
        tenant = require_known_tenant(conn, args.tenant)
        report = ensure_tenant_partition(conn, tenant, premake_months=args.premake_months)
    print("tenant\tlayout\tpartition\ttables_created\trows_moved\tattached_now")
    print(f"{report.tenant}\t{report.layout}\t{report.partition}\t{len(report.tables_created)}\t"
          f"{report.rows_moved}\t{report.attached_now}")
    if report.note:
        log(f"tenant {report.tenant}: {report.note}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    partitions_sub = command_group(
        sub, "partitions", help="where tenants' usage events live: the pool and dedicated partitions",
        description="Tenant storage in usage_events_mt: most tenants share the month-split pool (the DEFAULT "
        "partition); those whose tier, flag or size asks for it get a partition of their own, within "
        "partition_config.leaf_budget.")
    command(
        partitions_sub, "status", cmd_status, help="leaves against the budget, dedicated tenants, the pool's months, and what is wrong",
        description="Print the leaves under usage_events_mt against partition_config.leaf_budget, the dedicated "
        "tenants, the pool's months and interrupted promotions; findings (what tenant_partitions_complete "
        "checks) go to stderr. Exit 0 when all is complete, 1 when something is wrong.")
    p = command(
        partitions_sub, "ensure", cmd_ensure, help="what the tenant_partition asset does, for one tenant",
        description="Make sure the tenant has its storage: the pool's months, and a dedicated partition (attached "
        "online, with its months) when its tier, flag or size asks for one and the leaf budget allows. "
        "Idempotent. Exit 0 on success, 2 for a malformed tenant id, 1 when a lock could not be had.")
    p.add_argument("--tenant", required=True, help="the organization UUID")
    p.add_argument("--premake-months", type=premake_months, default=None, metavar="N",
                   help="months to premake ahead, 0 to 36 (default: partition_config.premake_months)")
