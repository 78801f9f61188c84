"""``tenant-pipelines tiering configure | plan | run``: storage tiers (hot, warm, cold tablespaces)."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import (
    add_pace_arguments, admin_dsn, command, command_group, log, log_pace, pace_from_args, positive_int)


def cmd_configure(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.tiering import configure_tablespaces, storage_tier_tablespaces
    from tenant_pipelines.db.connect import connect

    wanted = {tier: getattr(args, tier) for tier in ("hot", "warm", "cold") if getattr(args, tier) is not None}
    with connect(admin_dsn()) as conn:
        if wanted:
            configure_tablespaces(conn, wanted)
        rows = storage_tier_tablespaces(conn)
    for tier, name in rows:
        print(f"{tier}\t{name}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.core.tiering import plan
    from tenant_pipelines.db.connect import connect

    with connect(admin_dsn()) as conn:
        tenant = require_known_tenant(conn, args.tenant) if args.tenant is not None else None
        parts = plan(conn, tenant)
    print("partition\tcurrent\ttarget\tbytes\tmove")
    for p in parts:
        move = "yes" if p.movable and p.misplaced else "no"
        print(f"{p.qualified_name}\t{p.current_tablespace}\t{p.target_tablespace}\t{p.bytes}\t{move}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.core.storage import tier_pool, tier_tenant
    from tenant_pipelines.core.tiering import DEFAULT_MAX_MB_PER_S
    from tenant_pipelines.db.connect import connect

    pace = pace_from_args(args, DEFAULT_MAX_MB_PER_S, args.batch_blocks)
    with connect(admin_dsn(), autocommit=True) as conn:
        if args.pool:
            report = tier_pool(conn, method=args.method, pace=pace, log=log)
        else:
            report = tier_tenant(conn, require_known_tenant(conn, args.tenant), method=args.method, pace=pace,
                                 log=log)
    for name in report.restarted:
        log(f"{name}: an unfinished move was found and started again")
    print("partition\tfrom\tto\tbytes\tseconds\tlock_ms")
    for m in report.moves:
        print(f"{m.partition}\t{m.from_tablespace}\t{m.to_tablespace}\t{m.bytes}\t{m.seconds:.2f}\t{m.lock_held_s * 1000:.1f}")
    log_pace(report.pace)
    log(f"{'the pool' if args.pool else 'tenant ' + report.tenant}: {len(report.moves)} partitions moved "
        f"({report.bytes_moved:,} bytes), {report.misplaced_left} still misplaced")
    return 0 if report.misplaced_left == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    from tenant_pipelines.db.pacing import MAX_BATCH_BLOCKS
    from tenant_pipelines.core.tiering import DEFAULT_BATCH_BLOCKS, DEFAULT_MAX_MB_PER_S, METHODS, ONLINE

    tiering_sub = command_group(sub, "tiering", help="storage tiers: tablespaces and placement",
                                description="Storage tiering: which tablespace serves each tier, and what would move.")
    p = command(
        tiering_sub, "configure", cmd_configure, help="name the tablespace of each tier",
        description="Point the hot, warm and cold tiers at existing tablespaces, then print the mapping. "
        "A tablespace that does not exist is refused with how to create it.",
    )
    for tier in ("hot", "warm", "cold"):
        p.add_argument(f"--{tier}", metavar="TABLESPACE", help=f"tablespace for the {tier} tier")
    p = command(
        tiering_sub, "plan", cmd_plan, help="show every month partition, where it is and where the policy wants it",
        description="List month partitions with their current and target tablespace (nothing is moved).",
    )
    p.add_argument("--tenant", default=None, help="only this tenant (organization UUID)")
    p = command(
        tiering_sub, "run", cmd_run, help="move one tenant's (or the pool's) month partitions to the tablespaces the policy says",
        description="What the tier_placement asset does, for one tenant, or pool_tier_placement for the "
        "pool that holds every pooled tenant's rows, from the shell: each month whose "
        "age puts it in another tier moves, online by default (a copy at the pace the writers allow, then a swap of "
        "milliseconds under lock). Progress on stderr; the moves as a table on stdout. Exit 0 when everything is in "
        "place, 1 when something is still misplaced, 2 for bad input.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant", help="the organization UUID (a tenant with a dedicated partition)")
    target.add_argument("--pool", action="store_true", help="the pool's months (pooled tenants), by the global policy")
    p.add_argument("--method", choices=METHODS, default=ONLINE,
                   help="online (default): paced copy-and-swap; set-tablespace: ALTER TABLE ... SET "
                   "TABLESPACE, fastest, but a burst of I/O that live writers wait behind")
    add_pace_arguments(p, DEFAULT_MAX_MB_PER_S)
    p.add_argument("--batch-blocks", type=positive_int, default=None, metavar="N",
                   help=f"online: 8 KiB blocks copied per transaction: adaptive, the largest batch (default: "
                   f"{MAX_BATCH_BLOCKS}); fixed, the batch (default: {DEFAULT_BATCH_BLOCKS})")
