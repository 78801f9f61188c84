"""``tenant-pipelines placement status | move | abandon``: where tenants live (pooled, a dedicated
partition, a schema of their own) and their online moves."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import (
    add_pace_arguments, admin_dsn, bounded, command, command_group, log, log_pace, pace_from_args)

batch_rows = bounded(1, 1_000_000, " (rows copied per transaction)")


def _tenant(text: str):
    """A malformed UUID is refused before anything connects (exit 2, one line)."""
    from tenant_pipelines.db.session import parse_tenant_id
    from tenant_pipelines.errors import InvalidInput

    try:
        return parse_tenant_id(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S%z") if value is not None else "-"  # type: ignore[attr-defined]


def cmd_status(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.moves import placement_status
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.db.connect import connect

    from tenant_pipelines.core.citus import citus_placement_status, is_citus_coordinator

    with connect(admin_dsn()) as conn:
        tenants = None if args.tenant is None else [require_known_tenant(conn, args.tenant)]
        if is_citus_coordinator(conn):
            on_citus = citus_placement_status(conn, None if tenants is None else [str(t) for t in tenants])
            print("tenant\tkind\tnode\tsince\tpolicy\trecorded")
            for c in on_citus:
                recorded = "-" if c.recorded is None else c.recorded + (" (drift)" if c.registry_drift else "")
                print(f"{c.tenant}\t{c.kind}\t{c.node_id}\t{_when(c.since)}\t{c.policy or '-'}\t{recorded}")
            drift = sum(c.registry_drift for c in on_citus)
            log(f"{len(on_citus)} tenants on Citus, {sum(c.misplaced for c in on_citus)} not where their policy says"
                + (f", {drift} whose registry row disagrees with Citus (run 'placement move' for them again)"
                   if drift else ""))
            return 0
        statuses = placement_status(conn, tenants)
    print("tenant\tkind\tlocation\tsince\tpolicy\tmove")
    for s in statuses:
        move = f"to {s.move_to}, {s.move_step} since {_when(s.move_started_at)}" if s.move_step else "-"
        policy = (s.policy + (" (override)" if s.override else "")) if s.policy else "-"
        print(f"{s.tenant}\t{s.kind}\t{s.location}\t{_when(s.since)}\t{policy}\t{move}")
    misplaced = sum(s.misplaced for s in statuses)
    moving = sum(s.move_step is not None for s in statuses)
    log(f"{len(statuses)} tenants, {misplaced} not where their policy says, {moving} moves in progress")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.moves import FIXED_MAX_MB_PER_S, MoveRefused, move_tenant, placement_status, set_placement_override
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.db.connect import connect

    from tenant_pipelines.core.citus import CITUS_KINDS, is_citus_coordinator, place_tenant_on_citus
    from tenant_pipelines.errors import InvalidInput

    with connect(admin_dsn(), autocommit=True) as conn:
        tenant = require_known_tenant(conn, args.tenant)
        on_citus = is_citus_coordinator(conn)
        if on_citus != (args.to in CITUS_KINDS) or (args.node_id is not None and not on_citus):
            raise InvalidInput(
                f"placement {args.to}: " + ("on a Citus coordinator give shared, isolated or node (with --node-id)"
                                            if on_citus else "shared, isolated and node (--node-id) are Citus "
                                            "placements; this database is one server: give pooled, partition or schema"))
        if on_citus:
            change = place_tenant_on_citus(conn, tenant, args.to, args.node_id)
            for step, seconds in change.steps.items():
                log(f"tenant {tenant}: {step} took {seconds:.1f} s")
            if not change.steps:
                log(f"tenant {tenant}: already {change.after.kind} on node {change.after.node_id}; nothing to do")
            print(f"tenant\t{tenant}")
            print(f"from\t{change.before.kind}\tnode {change.before.node_id}")
            print(f"to\t{change.after.kind}\tnode {change.after.node_id}\tshard {change.after.shard_id}")
            return 0
        (status,) = placement_status(conn, [tenant])
        if status.move_to is not None and status.move_to != args.to:
            raise MoveRefused(f"tenant {tenant}: a move to {status.move_to} is in progress (step {status.move_step}); "
                              f"finish it with --to {status.move_to}, or abandon it first")
        if set_placement_override(conn, tenant, args.to):
            log(f"tenant {tenant}: placement override set to {args.to} (the placement sensor keeps it there)")
        else:
            log(f"tenant {tenant}: no classification; no override recorded")
        report = move_tenant(conn, tenant, args.to, batch_rows=args.batch_rows,
                             pace=pace_from_args(args, FIXED_MAX_MB_PER_S), log=log)
    log_pace(report.pace)
    if not report.moved:
        log(f"tenant {tenant}: already {report.to_kind} ({report.to_location}); nothing moved")
    copy_s = sum(s for step, s in report.steps.items() if step.split()[-1] in ("copy", "promote"))
    print(f"tenant\t{report.tenant}")
    print(f"from\t{report.from_kind}\t{report.from_location}")
    print(f"to\t{report.to_kind}\t{report.to_location}")
    print(f"moved\t{report.moved}")
    if report.resumed_from:
        print(f"resumed_from\t{report.resumed_from}")
    if report.hops:
        print(f"hops\t{'; '.join(report.hops)}")
    for step, seconds in report.steps.items():
        print(f"step\t{step}\t{seconds:.3f} s")
    for table, n in report.rows_copied.items():
        print(f"rows_copied\t{table}\t{n}")
    for table, (count, digest) in report.hashes.items():
        print(f"hash\t{table}\t{count} rows\t{digest}")
    print(f"keys_caught_up\t{report.keys_caught_up}")
    print(f"bytes_copied\t{report.bytes_copied}")
    print(f"mb_per_s\t{report.bytes_copied / 1048576 / copy_s:.2f}" if copy_s > 0 else "mb_per_s\t-")
    print(f"cutover\tlock waited {report.cutover_lock_wait_ms:.1f} ms\theld {report.cutover_ms:.1f} ms"
          f"\t{report.cutover_keys} keys")
    print(f"lock_retries\t{report.lock_retries}")
    print(f"duration_s\t{report.duration_s:.3f}")
    return 0


def cmd_abandon(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.moves import abandon_move, placement_status, set_placement_override
    from tenant_pipelines.core.partitions import require_known_tenant
    from tenant_pipelines.db.connect import connect

    with connect(admin_dsn(), autocommit=True) as conn:
        tenant = require_known_tenant(conn, args.tenant)
        (status,) = placement_status(conn, [tenant])
        if not abandon_move(conn, tenant):
            log(f"tenant {tenant}: no move in progress; it stays {status.kind} ({status.location})")
            return 0
        log(f"tenant {tenant}: its move to {status.move_to} (step {status.move_step}) was abandoned; "
            f"it stays {status.kind} ({status.location})")
        if status.policy is not None and status.policy != status.kind and set_placement_override(conn, tenant, status.kind):
            log(f"tenant {tenant}: placement override set to {status.kind}, so the placement sensor does not move it "
                "again (clear it, or move it, to follow its tier)")
    print(f"{tenant}\t{status.kind}\t{status.location}\tabandoned move to {status.move_to}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from tenant_pipelines.core.citus import CITUS_KINDS
    from tenant_pipelines.core.moves import ADAPTIVE_BATCH_ROWS, DEFAULT_BATCH_ROWS, FIXED_MAX_MB_PER_S, KINDS

    placement_sub = command_group(
        sub, "placement", help="where tenants live (pooled, partition, schema) and their online moves",
        description="A tenant lives pooled (the shared tables; its usage events in the shared partition), in a "
        "dedicated partition of usage_events_mt, or in a schema of its own. Policy: "
        "tenant_classifications.placement_override, else tier_limits.placement; none: the partition rule "
        "decides between pooled and partition. The tenant_placement asset and its sensor move tenants "
        "where policy says; these commands do it by hand.")
    p = command(
        placement_sub, "status", cmd_status, help="every tenant's placement, policy and move in progress",
        description="Print one line per tenant (tab-separated): tenant, kind, location, since, policy (override, "
        "else tenant tier's; '-' none), and its move in progress (target, step, since). Counts on stderr. "
        "Exit 0; 2 for a malformed or unknown tenant.")
    p.add_argument("--tenant", type=_tenant, default=None, metavar="UUID", help="only this organization")
    p = command(
        placement_sub, "move", cmd_move, help="move a tenant online to a placement, and keep it there",
        description="Move the tenant online to KIND (what the tenant_placement asset does with run config `to`): "
        "its rows copied in batches at the pace its writers allow while it writes, caught up, verified by counts and hashes, then a "
        "cutover of milliseconds under its own lock; the old copy removed. A move in progress (a crash, an "
        "interrupt) resumes. Records KIND as its placement override, so that the placement sensor does not "
        "move it back. Progress on stderr, the report on stdout. Exit 0 on success, 2 for bad input, an "
        "unknown tenant or a refused move, 1 when the move failed (re-run to resume).")
    p.add_argument("--tenant", type=_tenant, required=True, metavar="UUID", help="the organization UUID")
    p.add_argument("--to", required=True, choices=KINDS + CITUS_KINDS, metavar="KIND",
                   help="pooled, partition or schema; on a Citus coordinator shared, isolated or node")
    p.add_argument("--node-id", type=bounded(1, 2**31 - 1, " (a worker's pg_dist_node.nodeid)"), default=None,
                   metavar="ID", help="with --to node on Citus: the worker ('tenant-pipelines citus nodes' lists them)")
    add_pace_arguments(p, FIXED_MAX_MB_PER_S)
    p.add_argument("--batch-rows", type=batch_rows, default=None, metavar="N",
                   help=f"rows copied per transaction, at most (adaptive picks fewer while writers are active; "
                   f"fixed: this many), 1 to 1000000 (default: adaptive {ADAPTIVE_BATCH_ROWS}, fixed {DEFAULT_BATCH_ROWS})")
    p = command(
        placement_sub, "abandon", cmd_abandon, help="roll back a tenant's move that has not cut over",
        description="Abandon the tenant's move in progress: its capture triggers, its half-made copy and its "
        "records removed; the tenant stays where it was. A move that has cut over is refused (re-run "
        "`placement move` to finish it). When its policy would move it again, its placement override is set to "
        "where it stays. Exit 0 (also when there was no move), 2 for bad input, an unknown tenant or a "
        "move past its cutover.")
    p.add_argument("--tenant", type=_tenant, required=True, metavar="UUID", help="the organization UUID")
