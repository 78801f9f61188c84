"""``tenant-pipelines citus nodes | placement | isolate | move``: a tenant's place on a Citus
cluster (core/citus.py; docs/scale-out.md)."""

from __future__ import annotations

import argparse

from tenant_pipelines.cli.common import admin_dsn, command, command_group, log, positive_int


def _connect():
    from tenant_pipelines.db.connect import connect

    return connect(admin_dsn(), autocommit=True)


def cmd_nodes(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.citus import citus_nodes

    with _connect() as conn:
        nodes = citus_nodes(conn)
    print("node_id\trole\tnode\tactive\tshard_groups\ttenants")
    for n in nodes:
        print(f"{n.node_id}\t{n.role}\t{n.node}\t{'yes' if n.active else 'no'}\t{n.shard_groups}\t{n.tenants}")
    return 0


def cmd_placement(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.citus import tenant_placement_on_citus

    with _connect() as conn:
        print(tenant_placement_on_citus(conn, args.tenant).describe())
    return 0


def _report(change) -> int:
    if not change.steps:
        log(f"nothing to do: {change.after.describe()}")
    for step, seconds in change.steps.items():
        log(f"{step}: {seconds:.2f} s")
    print(change.after.describe())
    return 0


def cmd_isolate(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.citus import isolate_tenant

    with _connect() as conn:
        return _report(isolate_tenant(conn, args.tenant))


def cmd_move(args: argparse.Namespace) -> int:
    from tenant_pipelines.core.citus import move_tenant_to_node

    with _connect() as conn:
        return _report(move_tenant_to_node(conn, args.tenant, args.to_node))


def register(sub: argparse._SubParsersAction) -> None:
    group = command_group(
        sub, "citus", help="a tenant's place on a Citus cluster: nodes, placement, isolate, move",
        description="On a Citus coordinator (db up --citus, then db migrate): list the nodes, say where a tenant "
        "lives, give it a shard group of its own, move it online to a worker. docs/scale-out.md.")
    command(group, "nodes", cmd_nodes, help="every node: id, role, host:port, active, shard groups and tenants on it",
            description="List the cluster's nodes with the tenants' shard groups and tenants each holds.")
    p = command(group, "placement", cmd_placement, help="where a tenant lives: shared or isolated, on which node",
                description="Print where the tenant lives: its shard group (shared with other tenants, or isolated), "
                "the node holding it.")
    p.add_argument("--tenant", required=True, metavar="UUID", help="the organization's id")
    p = command(group, "isolate", cmd_isolate, help="give a tenant a shard group of its own, online",
                description="isolate_tenant_to_new_shard (CASCADE to every tenant table), with logical replication: "
                "the tenant's writers go on. Idempotent. Prints where the tenant is afterwards.")
    p.add_argument("--tenant", required=True, metavar="UUID", help="the organization's id")
    p = command(group, "move", cmd_move, help="isolate a tenant, then move it online to a worker",
                description="Isolate the tenant if it is not, then citus_move_shard_placement of its shard group to "
                "the worker --to-node names (a node_id of 'citus nodes'), with logical replication. Idempotent.")
    p.add_argument("--tenant", required=True, metavar="UUID", help="the organization's id")
    p.add_argument("--to-node", required=True, type=positive_int, metavar="NODE_ID",
                   help="the worker's node_id, as 'tenant-pipelines citus nodes' lists it")
