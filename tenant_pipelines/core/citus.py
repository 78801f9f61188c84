"""A tenant's place on a Citus cluster (issue 19), done by Citus: no sharding of our own.

On a coordinator (sql/citus/), organizations and every tenant table are distributed on the
tenant and colocated: a tenant's rows of every table are in one shard group, on one worker.
Three places:

* ``shared``: its shard group holds other tenants too (where every tenant starts);
* ``isolated``: a shard group of its own, made by ``isolate_tenant_to_new_shard(...,
  'CASCADE')`` (every colocated table at once), online (logical replication: writers go on);
* ``node``: isolated, then its shard group moved online to a named worker with
  ``citus_move_shard_placement`` (logical replication; ``wal_level = logical`` on every node).

``tenant_placement_on_citus`` says where a tenant is; ``isolate_tenant`` and
``move_tenant_to_node`` change it, each idempotent (a tenant already isolated, or already on
the worker, is left as it is) and safe to re-run after a failure (Citus cleans up a failed
split or move itself). Functions over an autocommit connection to the coordinator, as a
superuser: Citus refuses shard moves inside a transaction block. Citus connects to the workers
as the tables' owner, billing_owner, for both (sql/citus/migrations/0004 lets it log in there).

FORCE ROW LEVEL SECURITY and online moves. Both copy the rows and then stream the changes made
meanwhile with logical replication, whose apply worker runs as a role Citus makes a member of
the tables' owner; PostgreSQL refuses to apply changes into a table whose row-level security
applies to that role ("cannot replicate into relation with row-level security enabled"), which
FORCE makes it do. So for the time of a split or move, the tables of the tenants' colocation
group (and the months of usage_events_mt) lose FORCE: billing_owner, which no application uses
or is a member of, is then exempt from the policies it owns; billing_app is not, and every
policy still applies to it. FORCE is put back at the end, whatever happened; a process killed
in between leaves it off, which the next call here (and the isolation audit, which reports it)
puts right. Each ALTER takes its table's lock briefly, with partition_config.lock_timeout and
retries (db/locks.py), so writers wait milliseconds, not for the move.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import psycopg
from psycopg import sql

from tenant_pipelines.core.findings import Finding
from tenant_pipelines.db.citus import citus_loaded
from tenant_pipelines.db.locks import run_with_lock_timeout
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError, UnknownTenant

ANCHOR = "public.organizations"  # every tenant table is colocated with it
_MiB = 1024 * 1024
TRANSFER_MODE = "force_logical"  # online: writers of the tenant go on during a split or move


class NotCitus(TenantPipelinesError):
    exit_code = 4


@dataclass(frozen=True)
class CitusPlacement:
    tenant: uuid.UUID
    kind: str            # shared | isolated
    shard_id: int        # its shard of organizations (the shard group's anchor)
    node_id: int
    node: str            # host:port of the worker holding it
    tenants_in_shard: int  # organizations in its shard group, itself included

    def describe(self) -> str:
        return (f"tenant {self.tenant}: {self.kind} (shard {self.shard_id} on node {self.node_id}, {self.node}"
                f"{'' if self.kind == 'isolated' else f', with {self.tenants_in_shard - 1} other tenants'})")


@dataclass(frozen=True)
class PlacementChange:
    tenant: uuid.UUID
    before: CitusPlacement
    after: CitusPlacement
    steps: dict[str, float]  # step -> seconds; empty when nothing had to change


def _require_citus(conn: psycopg.Connection) -> None:
    if not citus_loaded(conn):
        raise NotCitus("this database is not a Citus coordinator (no extension citus): start one with "
                       "'tenant-pipelines db up --citus' and run 'tenant-pipelines db migrate'")
    if conn.execute("SELECT to_regclass(%s) IS NULL OR NOT EXISTS (SELECT FROM pg_dist_partition "
                    "WHERE logicalrelid = to_regclass(%s))", (ANCHOR, ANCHOR)).fetchone()[0]:
        raise NotCitus("organizations is not distributed here: run 'tenant-pipelines db migrate' on the coordinator")


def tenant_placement_on_citus(conn: psycopg.Connection, tenant_id: object) -> CitusPlacement:
    """Where ``tenant_id`` lives: its shard group, the worker holding it, how many tenants share it."""
    tenant = parse_tenant_id(tenant_id)
    _require_citus(conn)
    if conn.execute("SELECT NOT EXISTS (SELECT FROM public.organizations WHERE id = %s)", (tenant,)).fetchone()[0]:
        raise UnknownTenant(f"tenant {tenant}: unknown tenant; onboard the organization first or check the id")
    row = conn.execute(
        """SELECT s.shardid, n.nodeid, n.nodename || ':' || n.nodeport,
                  s.shardminvalue::bigint = s.shardmaxvalue::bigint
             FROM pg_dist_shard s
             JOIN pg_dist_placement p ON p.shardid = s.shardid
             JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
            WHERE s.shardid = get_shard_id_for_distribution_column(%s, %s)""", (ANCHOR, tenant)).fetchone()
    shard_id, node_id, node, single_hash = row
    sharing = conn.execute(
        "SELECT count(*) FROM public.organizations WHERE get_shard_id_for_distribution_column(%s, id) = %s",
        (ANCHOR, shard_id)).fetchone()[0]
    return CitusPlacement(tenant, "isolated" if single_hash else "shared", shard_id, node_id, node, sharing)


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    role: str       # coordinator | worker
    node: str       # host:port as Citus knows it (the embedded cluster's nodes: socket folder:port)
    active: bool
    shard_groups: int  # shard groups of the tenants' colocation group placed there
    tenants: int       # organizations whose rows it holds


def citus_nodes(conn: psycopg.Connection) -> list[NodeInfo]:
    """Every node of the cluster, with the tenants' shard groups and tenants on it."""
    _require_citus(conn)
    counts = dict(conn.execute(
        """SELECT p.groupid, count(*) FROM pg_dist_shard s JOIN pg_dist_placement p ON p.shardid = s.shardid
            WHERE s.logicalrelid = %s::regclass GROUP BY 1""", (ANCHOR,)).fetchall())
    tenants = dict(conn.execute(
        """SELECT p.groupid, count(*) FROM public.organizations o
             JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column(%s, o.id)
            GROUP BY 1""", (ANCHOR,)).fetchall())
    return [NodeInfo(node_id, "coordinator" if group == 0 else "worker", node, active,
                     counts.get(group, 0), tenants.get(group, 0))
            for node_id, group, node, active in conn.execute(
                "SELECT nodeid, groupid, nodename || ':' || nodeport, isactive FROM pg_dist_node "
                "WHERE noderole = 'primary' ORDER BY groupid, nodeid").fetchall()]


def _group_relations(conn: psycopg.Connection) -> list[tuple[str, bool]]:
    """(relation, FORCE ROW LEVEL SECURITY?) of every table colocated with organizations, the
    months of usage_events_mt included, that has row-level security enabled."""
    return conn.execute(
        """SELECT p.logicalrelid::regclass::text, c.relforcerowsecurity
             FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
            WHERE p.colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = %s::regclass)
              AND c.relrowsecurity
            ORDER BY 1""", (ANCHOR,)).fetchall()


def _set_force(conn: psycopg.Connection, relation: str, force: bool) -> None:
    statement = sql.SQL("ALTER TABLE {} {} ROW LEVEL SECURITY").format(
        sql.SQL(relation), sql.SQL("FORCE" if force else "NO FORCE"))  # relation: regclass text, quoted as needed
    run_with_lock_timeout(conn, f"{relation} ({'FORCE' if force else 'NO FORCE'} ROW LEVEL SECURITY)",
                          lambda c: c.execute(statement))


def restore_forced_rls(conn: psycopg.Connection) -> list[str]:
    """FORCE ROW LEVEL SECURITY again on every table of the tenants' colocation group that lost
    it (a split or move killed midway). Returns the relations changed."""
    restored = [relation for relation, forced in _group_relations(conn) if not forced]
    for relation in restored:
        _set_force(conn, relation, True)
    return restored


@contextmanager
def _owner_exempt_from_rls(conn: psycopg.Connection) -> Iterator[None]:
    relations = [relation for relation, _ in _group_relations(conn)]
    try:
        for relation in relations:
            _set_force(conn, relation, False)
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        restore_forced_rls(conn)


# The placement registry (tenant_placements) on Citus: the kind, shared or isolated
# (sql/citus/migrations/0009 and 0010), and the location usage_events_mt, the table that holds the
# tenant's events on every kind. The worker is not recorded: the rebalancer moves shared shard
# groups without telling anyone, so Citus's metadata stays the only word on it.
CITUS_LOCATION = "usage_events_mt"


def record_citus_placement(conn: psycopg.Connection, placement: CitusPlacement) -> bool:
    """Write the tenant's registry row from Citus's metadata, after the change that placed it:
    Citus splits and moves shards outside any transaction of ours, so a crash in between leaves
    the row behind, which the audit reports and a re-run of the (idempotent) change rewrites.
    'since' changes only when the kind does. Returns whether the row changed."""
    with conn.transaction():
        changed = conn.execute(
            """INSERT INTO public.tenant_placements AS p (organization_id, kind, location, state, since)
               VALUES (%(tenant)s, %(kind)s, %(location)s, 'placed', %(now)s)
               ON CONFLICT (organization_id) DO UPDATE
                  SET kind = EXCLUDED.kind, location = EXCLUDED.location, state = 'placed', since = EXCLUDED.since
                WHERE (p.kind, p.location, p.state) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.location, 'placed')""",
            {"tenant": placement.tenant, "kind": placement.kind, "location": CITUS_LOCATION,
             "now": datetime.now(timezone.utc)}).rowcount
    return changed > 0


def isolate_tenant(conn: psycopg.Connection, tenant_id: object) -> PlacementChange:
    """Give the tenant a shard group of its own (every colocated table), online, and record it
    in tenant_placements. Idempotent."""
    before = tenant_placement_on_citus(conn, tenant_id)
    restore_forced_rls(conn)
    if before.kind == "isolated":
        record_citus_placement(conn, before)
        return PlacementChange(before.tenant, before, before, {})
    started = time.monotonic()
    try:
        with _owner_exempt_from_rls(conn):
            conn.execute("SELECT isolate_tenant_to_new_shard(%s, %s, 'CASCADE', shard_transfer_mode => %s)",
                         (ANCHOR, before.tenant, TRANSFER_MODE))
    except psycopg.Error as exc:
        raise TenantPipelinesError(
            f"tenant {before.tenant}: isolating its shard {before.shard_id} failed: "
            f"{exc.diag.message_primary or exc}; Citus rolled it back, run it again") from None
    after = tenant_placement_on_citus(conn, before.tenant)
    record_citus_placement(conn, after)
    return PlacementChange(before.tenant, before, after, {"isolate": time.monotonic() - started})


def _worker(conn: psycopg.Connection, node_id: int) -> tuple[int, str]:
    row = conn.execute("SELECT nodeid, nodename || ':' || nodeport FROM pg_dist_node WHERE nodeid = %s "
                       "AND noderole = 'primary' AND isactive AND shouldhaveshards", (node_id,)).fetchone()
    if row is None:
        known = ", ".join(f"{i} ({n})" for i, n in conn.execute(
            "SELECT nodeid, nodename || ':' || nodeport FROM pg_dist_node WHERE noderole = 'primary' AND isactive "
            "AND shouldhaveshards ORDER BY nodeid").fetchall())
        raise InvalidInput(f"node {node_id}: not an active worker that holds shards; pick one of: {known}")
    return row


def move_tenant_to_node(conn: psycopg.Connection, tenant_id: object, node_id: int) -> PlacementChange:
    """Isolate the tenant (if it is not), then move its shard group online to worker ``node_id``
    (a nodeid of pg_dist_node). Idempotent: a tenant already there is left as it is."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or not conn.autocommit:
        raise InvalidInput("move_tenant_to_node needs an autocommit connection: Citus moves shards outside a "
                           "transaction block")
    before = tenant_placement_on_citus(conn, tenant_id)
    restore_forced_rls(conn)
    target, target_name = _worker(conn, node_id)
    steps: dict[str, float] = {}
    isolated = before
    if before.kind != "isolated":
        change = isolate_tenant(conn, before.tenant)
        steps.update(change.steps)
        isolated = change.after
    if isolated.node_id != target:
        started = time.monotonic()
        try:
            with _owner_exempt_from_rls(conn):
                conn.execute("SELECT citus_move_shard_placement(%s, %s, %s, transfer_mode => %s)",
                             (isolated.shard_id, isolated.node_id, target, TRANSFER_MODE))
        except psycopg.Error as exc:
            raise TenantPipelinesError(
                f"tenant {before.tenant}: moving its shard {isolated.shard_id} to node {target} ({target_name}) "
                f"failed: {exc.diag.message_primary or exc}; it stays on node {isolated.node_id}, run it again"
            ) from None
        steps["move"] = time.monotonic() - started
    after = tenant_placement_on_citus(conn, before.tenant)
    record_citus_placement(conn, after)
    return PlacementChange(before.tenant, before, after, steps)


# -- the audit ----------------------------------------------------------------------------------

CONTEXT_FUNCTIONS = ("fn_current_tenant_id", "fn_set_tenant_context")
_SHARD_CHECK = (
    "SELECT c.relrowsecurity::int::text || c.relforcerowsecurity::int::text || (SELECT count(*) FROM pg_policy p"
    " WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'"
    " AND strpos(pg_get_expr(p.polqual, p.polrelid), 'fn_current_tenant_id()') > 0"
    " AND strpos(pg_get_expr(p.polwithcheck, p.polrelid), 'fn_current_tenant_id()') > 0)::text"
    " FROM pg_class c WHERE c.oid = '%s'::regclass")


def audit_citus(conn: psycopg.Connection) -> list[Finding]:
    """On a Citus coordinator, what the catalog audit (core/security.py) cannot see from there:
    every tenant table (a table of public with the tenant_isolation policy) distributed and
    colocated with organizations; on every worker, every shard of the tenants' colocation group
    with RLS enabled and forced, and the tenant table's policy on each of its shards; the
    context functions on every worker the same as the coordinator's; and no distributed or
    reference table keeping rows of its own on the coordinator. [] on a database without Citus."""
    if not citus_loaded(conn):
        return []
    findings: list[Finding] = []
    anchor = conn.execute("SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = to_regclass(%s)",
                          (ANCHOR,)).fetchone()
    tables = conn.execute(
        """SELECT c.oid::regclass::text, p.colocationid, p.partmethod
             FROM pg_class c JOIN pg_policy pol ON pol.polrelid = c.oid AND pol.polname = 'tenant_isolation'
             LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
            WHERE c.relnamespace = 'public'::regnamespace AND NOT c.relispartition
            ORDER BY 1""").fetchall()
    for table, colocation, method in tables:
        if colocation is None:
            findings.append(Finding(f"table {table}", "is a tenant table kept on the coordinator, not distributed",
                                    f"SELECT create_distributed_table('{table}', 'organization_id', "
                                    "colocate_with => 'organizations') (or 'tenant-pipelines db migrate')"))
        elif anchor is None or colocation != anchor[0] or method != "h":
            findings.append(Finding(f"table {table}", "is not hash-distributed in the colocation group of "
                                    "organizations: its rows and a tenant's other rows may be on different nodes",
                                    f"SELECT update_distributed_table_colocation('{table}', colocate_with => "
                                    "'organizations')"))
    with_policy = {table for table, colocation, _ in tables if colocation is not None}
    for table, size in conn.execute(
            """SELECT p.logicalrelid::regclass::text,
                      COALESCE((SELECT sum(pg_relation_size(t.relid)) FROM pg_partition_tree(p.logicalrelid) t),
                               pg_relation_size(p.logicalrelid))  -- the tree is empty for a plain table
                 FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
                WHERE NOT c.relispartition ORDER BY 1""").fetchall():
        if size:  # the rows create_distributed_table copied into the shards, left on the coordinator too
            findings.append(Finding(
                f"table {table}", f"keeps {size} bytes of rows on the coordinator from before it was distributed: "
                "no query reads them, but they are on its disk and in its backups, and not deleted with their tenant",
                f"SELECT truncate_local_data_after_distributing_table('{table}') (sql/citus/migrations/0008 did this "
                "for the tables it found)"))
    if anchor is not None:
        group = [r for (r,) in conn.execute(
            "SELECT logicalrelid::regclass::text FROM pg_dist_partition WHERE colocationid = %s ORDER BY 1",
            (anchor[0],)).fetchall()]
        for relation in group:
            for shard, node, ok, result in conn.execute(
                    """SELECT r.shardid, r.nodename || ':' || r.nodeport, r.success, r.result
                         FROM run_command_on_placements(%s, %s) r ORDER BY 1""", (relation, _SHARD_CHECK)).fetchall():
                what = f"shard {shard} of {relation} on {node}"
                if not ok:
                    findings.append(Finding(what, f"could not be checked: {result}", "check the node is up"))
                    continue
                if result[:2] != "11":
                    findings.append(Finding(what, "does not have row-level security enabled and forced",
                                            f"ALTER TABLE {relation} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL "
                                            "SECURITY on the coordinator (Citus propagates it to every shard)"))
                if relation in with_policy and result[2:] != "1":
                    qual, check = conn.execute(
                        "SELECT pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) FROM pg_policy"
                        " WHERE polrelid = %s::regclass AND polname = 'tenant_isolation'", (relation,)).fetchone()
                    findings.append(Finding(what, "lacks the tenant_isolation policy of its table",
                                            f"on the coordinator: SELECT * FROM run_command_on_placements('{relation}', "
                                            f"'CREATE POLICY tenant_isolation ON %s USING ({qual}) WITH CHECK ({check})')"
                                            " (the shards that have it refuse it, harmlessly)"))
    for function in CONTEXT_FUNCTIONS:
        here = conn.execute("SELECT md5(pg_get_functiondef(%s::regproc))", (function,)).fetchone()[0]
        command = f"SELECT md5(pg_get_functiondef('{function}'::regproc))"
        for node, ok, result in conn.execute(
                "SELECT nodename || ':' || nodeport, success, result FROM run_command_on_workers(%s) ORDER BY 1",
                (command,)).fetchall():
            if not ok or result != here:
                findings.append(Finding(
                    f"function {function} on {node}", "differs from the coordinator's (the tenant context on that "
                    "worker is not the one fn_set_tenant_context writes)",
                    f"on the coordinator: DELETE FROM tenant_pipelines.citus_functions WHERE name = '{function}', "
                    "then 'tenant-pipelines db migrate' (re-applies it on every node)"))
    return findings


# -- balance across workers ---------------------------------------------------------------------

# The largest worker may hold this many times the mean of the tenants' data before the
# workers_balanced check fails (a worker with 1.5x the mean fills its disk first).
SKEW_LIMIT = 1.5
# Citus's rebalancer strategies (pg_dist_rebalance_strategy): by_disk_size weighs shard groups
# by their bytes, by_shard_count by their number.
STRATEGIES = ("by_disk_size", "by_shard_count")


@dataclass(frozen=True)
class WorkerLoad:
    node_id: int
    node: str
    shard_groups: int  # of the tenants' colocation group
    bytes: int         # every shard of that group there (all colocated tables, usage event months too)
    tenants: int


@dataclass(frozen=True)
class Balance:
    workers: list[WorkerLoad]

    @property
    def skew(self) -> float:
        """The largest worker's bytes over the mean's (1.0: even; 0.0 with no data at all)."""
        total = sum(w.bytes for w in self.workers)
        if not self.workers or total == 0:
            return 0.0
        return max(w.bytes for w in self.workers) / (total / len(self.workers))


@dataclass(frozen=True)
class ShardMove:
    shard_id: int
    table: str
    bytes: int
    source: str
    target: str


@dataclass(frozen=True)
class RebalanceReport:
    strategy: str
    before: Balance
    after: Balance
    moves: list[ShardMove]  # the plan the rebalancer carried out
    pinned: list[int]       # shards of isolated tenants, left where they are
    seconds: float


def worker_balance(conn: psycopg.Connection) -> Balance:
    """Each worker that holds shards: the tenants' shard groups, bytes and tenants on it."""
    _require_citus(conn)
    rows = conn.execute(
        """WITH grp AS (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = %(anchor)s::regclass),
                nodes AS (SELECT nodeid, groupid, nodename || ':' || nodeport AS node FROM pg_dist_node
                           WHERE noderole = 'primary' AND isactive AND shouldhaveshards),
                sizes AS (SELECT s.nodename || ':' || s.nodeport AS node, sum(s.shard_size)::bigint AS bytes,
                                 count(*) FILTER (WHERE s.table_name = %(anchor)s::regclass) AS groups
                            FROM citus_shards s, grp WHERE s.colocation_id = grp.colocationid GROUP BY 1),
                tenants AS (SELECT p.groupid, count(*) AS n FROM public.organizations o
                              JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column(%(anchor)s, o.id)
                             GROUP BY 1)
           SELECT n.nodeid, n.node, COALESCE(s.groups, 0), COALESCE(s.bytes, 0), COALESCE(t.n, 0)
             FROM nodes n LEFT JOIN sizes s ON s.node = n.node LEFT JOIN tenants t ON t.groupid = n.groupid
            ORDER BY n.nodeid""", {"anchor": ANCHOR}).fetchall()
    return Balance([WorkerLoad(*row) for row in rows])


def _pinned_shards(conn: psycopg.Connection) -> list[int]:
    """The shard of organizations of every isolated tenant: placed where `citus move` put it."""
    return [r[0] for r in conn.execute(
        "SELECT shardid FROM pg_dist_shard WHERE logicalrelid = %s::regclass"
        " AND shardminvalue::bigint = shardmaxvalue::bigint ORDER BY 1", (ANCHOR,)).fetchall()]


def rebalance_shards(conn: psycopg.Connection, strategy: str = "by_disk_size") -> RebalanceReport:
    """Citus's rebalancer over the tenants' colocation group, online (logical replication),
    with ``strategy``. Isolated tenants' shard groups are excluded: they stay on the worker a
    `citus move` chose. Needs an autocommit connection, as a superuser. Idempotent: a balanced
    cluster has an empty plan and nothing moves."""
    if strategy not in STRATEGIES:
        raise InvalidInput(f"rebalance strategy {strategy!r}: give one of {', '.join(STRATEGIES)}")
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or not conn.autocommit:
        raise InvalidInput("rebalance_shards needs an autocommit connection: Citus moves shards outside a "
                           "transaction block")
    before = worker_balance(conn)
    restore_forced_rls(conn)
    started = time.monotonic()
    pinned = _pinned_shards(conn)
    plan = [ShardMove(shard, str(table), int(size or 0), f"{sname}:{sport}", f"{tname}:{tport}")
            for table, shard, size, sname, sport, tname, tport in conn.execute(
                "SELECT table_name::text, shardid, shard_size, sourcename, sourceport, targetname, targetport"
                " FROM get_rebalance_table_shards_plan(%s::regclass, excluded_shard_list => %s::bigint[],"
                " rebalance_strategy => %s)", (ANCHOR, pinned, strategy)).fetchall()]
    if plan:
        try:
            with _owner_exempt_from_rls(conn):
                conn.execute("SELECT rebalance_table_shards(%s::regclass, excluded_shard_list => %s::bigint[],"
                             " shard_transfer_mode => %s, rebalance_strategy => %s)",
                             (ANCHOR, pinned, TRANSFER_MODE, strategy))
        except psycopg.Error as exc:
            raise TenantPipelinesError(
                f"rebalancing the tenants' shards failed: {exc.diag.message_primary or exc}; the moves done so far "
                "stay (each is online and whole), run it again") from None
    return RebalanceReport(strategy, before, worker_balance(conn), plan, pinned, time.monotonic() - started)


def is_citus_coordinator(conn: psycopg.Connection) -> bool:
    """Whether this database is a migrated Citus coordinator (organizations distributed)."""
    try:
        _require_citus(conn)
    except NotCitus:
        return False
    return True


# Where the single-node placement policy (tier_limits.placement, tenant_classifications.
# placement_override) puts a tenant on Citus: in a shard group shared with others, or in one of
# its own (a schema tenant too, until Citus's schema-based sharding is built here).
POLICY_ON_CITUS = {"pooled": "shared", "partition": "isolated", "schema": "isolated"}
CITUS_KINDS = ("shared", "isolated", "node")


def citus_policy(conn: psycopg.Connection, tenant: uuid.UUID) -> str | None:
    """shared or isolated, from the tenant's override, else its tier's placement; None: no policy."""
    row = conn.execute(
        """SELECT COALESCE(c.placement_override, l.placement) FROM public.tenant_classifications c
             LEFT JOIN public.tier_limits l ON l.tier = c.tier WHERE c.organization_id = %s""", (tenant,)).fetchone()
    return POLICY_ON_CITUS.get(row[0]) if row and row[0] else None


def place_tenant_on_citus(conn: psycopg.Connection, tenant_id: object, to: str,
                          node_id: int | None = None) -> PlacementChange:
    """Bring the tenant to ``to``: shared (only where it is already: Citus cannot merge a shard
    group back), isolated, or node (isolated and on worker ``node_id``). Idempotent."""
    if to not in CITUS_KINDS:
        raise InvalidInput(f"placement {to!r} on Citus: give one of {', '.join(CITUS_KINDS)}")
    if (to == "node") != (node_id is not None):
        raise InvalidInput("placement node on Citus needs node_id (a worker's pg_dist_node.nodeid: "
                           "'tenant-pipelines citus nodes' lists them); the other placements take none")
    if to == "node":
        return move_tenant_to_node(conn, tenant_id, node_id)
    if to == "isolated":
        return isolate_tenant(conn, tenant_id)
    before = tenant_placement_on_citus(conn, tenant_id)
    if before.kind != "shared":
        raise InvalidInput(f"tenant {before.tenant}: isolated in shard {before.shard_id}; Citus cannot merge a shard "
                           "group back into a shared one, so it stays isolated")
    record_citus_placement(conn, before)
    return PlacementChange(before.tenant, before, before, {})


# -- per-tenant figures of Citus ----------------------------------------------------------------

@dataclass(frozen=True)
class CitusTenantStats:
    tenant: str
    kind: str            # shared | isolated
    shard_id: int
    node_id: int
    shard_group_bytes: int  # every colocated shard of its group (shared with others unless isolated)
    queries: int | None     # citus_stat_tenants, this period and the last (None: tracking is off)
    reads: int | None
    cpu_s: float | None


def citus_tenant_stats(conn: psycopg.Connection) -> tuple[list[CitusTenantStats], str]:
    """Each tenant's shard group, worker and group size, with its queries, reads and CPU from
    ``citus_stat_tenants`` (Citus tracks them when ``citus.stat_tenants_track = 'all'``), and a
    note about that setting."""
    _require_citus(conn)
    tracking = conn.execute("SELECT current_setting('citus.stat_tenants_track')").fetchone()[0]
    stats: dict[str, tuple] = {}
    if tracking == "all":
        stats = {t: (q, r, c) for t, q, r, c in conn.execute(
            """SELECT tenant_attribute, sum(query_count_in_this_period + query_count_in_last_period)::bigint,
                      sum(read_count_in_this_period + read_count_in_last_period)::bigint,
                      sum(cpu_usage_in_this_period + cpu_usage_in_last_period)::float8
                 FROM citus_stat_tenants GROUP BY 1""").fetchall()}
    rows = conn.execute(
        """WITH grp AS (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = %(anchor)s::regclass),
                sizes AS (SELECT s.shardid, sum(c.shard_size)::bigint AS bytes
                            FROM pg_dist_shard s
                            JOIN pg_dist_shard peer ON peer.shardminvalue = s.shardminvalue
                                                   AND peer.shardmaxvalue = s.shardmaxvalue
                            JOIN citus_shards c ON c.shardid = peer.shardid, grp
                           WHERE s.logicalrelid = %(anchor)s::regclass AND c.colocation_id = grp.colocationid
                           GROUP BY 1),
                tenants AS MATERIALIZED (SELECT id FROM public.organizations)
           SELECT t.id::text, s.shardid, s.shardminvalue::bigint = s.shardmaxvalue::bigint, n.nodeid, COALESCE(z.bytes, 0)
             FROM tenants t
             JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column(%(anchor)s, t.id)
             JOIN pg_dist_placement p ON p.shardid = s.shardid
             JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
             LEFT JOIN sizes z ON z.shardid = s.shardid
            ORDER BY 1""", {"anchor": ANCHOR}).fetchall()
    result = [CitusTenantStats(tenant, "isolated" if isolated else "shared", shard, node, size,
                               *(stats.get(tenant) or (None, None, None)))
              for tenant, shard, isolated, node, size in rows]
    note = ("citus_stat_tenants: queries, reads and CPU of this period and the last" if tracking == "all" else
            f"citus.stat_tenants_track is {tracking}: no per-tenant queries, reads or CPU; "
            "ALTER SYSTEM SET citus.stat_tenants_track = 'all' on every node to track them")
    return result, note


# -- usage event months on Citus (the tenant_partition asset and its checks) --------------------

EVENTS = "public.usage_events_mt"
OUTSIDE = "usage_events_mt_outside"  # its DEFAULT partition (sql/citus/migrations/0002)


def citus_months(conn: psycopg.Connection) -> list[str]:
    """The partitions of usage_events_mt but its DEFAULT, by name (Citus names them by month)."""
    return [m for m in _months(conn) if m != OUTSIDE]


def _months(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass ORDER BY 1", (EVENTS,)).fetchall()]


def premake_citus_months(conn: psycopg.Connection, since: datetime | None = None) -> list[str]:
    """The months of usage_events_mt to partition_config.premake_months ahead (from ``since``'s
    month when given, for events about to be loaded with older timestamps; else from this one),
    made with Citus's create_time_partitions and secured (fn_citus_premake_months). No tenant
    needs DDL of its own on Citus. Returns the months created."""
    _require_citus(conn)
    before = set(_months(conn))
    run_with_lock_timeout(conn, "usage_events_mt (premaking its months)",
                          lambda c: c.execute("SELECT fn_citus_premake_months(%s)", (since,)))
    return sorted(set(_months(conn)) - before)


def audit_citus_months(conn: psycopg.Connection) -> list[Finding]:
    """usage_events_mt on Citus: its DEFAULT partition, a month for every month from this one to
    partition_config.premake_months ahead, each month owned by billing_owner with RLS forced and
    no privilege for billing_app."""
    _require_citus(conn)
    fix = "materialise tenant_partition for any tenant (or SELECT fn_citus_premake_months())"
    findings: list[Finding] = []
    if conn.execute("SELECT to_regclass(%s) IS NULL", (f"public.{OUTSIDE}",)).fetchone()[0]:
        findings.append(Finding(f"table {EVENTS}", f"has no DEFAULT partition {OUTSIDE}: a row outside the months "
                                "is refused", "re-run 'tenant-pipelines db migrate' (sql/citus/migrations/0002)"))
    missing = [m for (m,) in conn.execute(
        """SELECT to_char(m, 'YYYY-MM') FROM generate_series(
                  date_trunc('month', now() AT TIME ZONE 'UTC'),
                  date_trunc('month', now() AT TIME ZONE 'UTC')
                    + make_interval(months => (SELECT premake_months FROM partition_config)),
                  interval '1 month') m
            WHERE NOT EXISTS (SELECT FROM time_partitions t WHERE t.parent_table = %s::regclass
                                 AND t.from_value::timestamptz <= (m AT TIME ZONE 'UTC')
                                 AND t.to_value::timestamptz > (m AT TIME ZONE 'UTC'))""", (EVENTS,)).fetchall()]
    if missing:
        findings.append(Finding(f"table {EVENTS}", f"is missing months {', '.join(missing)}", fix))
    for month, forced, owner, app in conn.execute(
            """SELECT c.relname, c.relforcerowsecurity, c.relowner = 'billing_owner'::regrole,
                      has_table_privilege('billing_app', c.oid, 'SELECT') OR has_table_privilege('billing_app', c.oid, 'INSERT')
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = %s::regclass ORDER BY 1""", (EVENTS,)).fetchall():
        if not (forced and owner) or app:
            findings.append(Finding(f"partition {month}", "is not secured (owner billing_owner, RLS forced, no "
                                    "privilege for billing_app)", f"SELECT fn_secure_partition('{month}')"))
    return findings


def rows_outside_the_months(conn: psycopg.Connection, tenants: list[str]) -> dict[str, int]:
    """The tenants' rows in usage_events_mt's DEFAULT partition: events older than the first
    month or beyond the last premade one."""
    _require_citus(conn)
    rows = conn.execute(
        "SELECT organization_id::text, count(*) FROM public.usage_events_mt_outside"
        " WHERE organization_id = ANY(%s::uuid[]) GROUP BY 1", (tenants,)).fetchall()
    return dict(rows)


def recent_event_tenants(conn: psycopg.Connection) -> list[str]:
    """Tenants with events from the start of last month on, organization row or not: what the
    onboarding sensor looks for on one server with a skip scan of the pool. Citus cannot push a
    recursive query down to the shards, and a DISTINCT over the events would read every recent
    event each tick; run_command_on_shards runs the skip scan on every shard instead (one index
    probe per tenant and shard). A shard that fails is an error naming it."""
    from tenant_pipelines.core.partitions import RECENT_TENANTS_SKIP_SCAN  # here: partitions imports this module

    _require_citus(conn)
    # Per shard (%1$s: its name, run_command_on_shards's format()), its tenants as one text.
    per_shard = ("SELECT coalesce(string_agg(org::text, ','), '') FROM ("
                 + RECENT_TENANTS_SKIP_SCAN.format(relation="%1$s") + ") recent")
    tenants: set[str] = set()
    for shard, ok, result in conn.execute(
            "SELECT shardid, success, result FROM run_command_on_shards('public.usage_events_mt', %s)",
            (per_shard,)).fetchall():
        if not ok:
            message = (result or "").strip()
            raise TenantPipelinesError(f"usage_events_mt shard {shard}: finding its tenants failed: "
                                       f"{message.splitlines()[0] if message else 'no message'}")
        tenants.update(t for t in (result or "").split(",") if t)
    return sorted(tenants)


@dataclass(frozen=True)
class CitusPlacementStatus:
    tenant: str
    tier: str | None
    kind: str           # shared | isolated
    node_id: int
    policy: str | None  # shared | isolated (POLICY_ON_CITUS), None: no policy
    recorded: str | None = None  # the registry's kind (tenant_placements); None: no row
    since: datetime | None = None  # the registry's since

    @property
    def registry_drift(self) -> bool:
        """The registry says another kind than Citus (a change killed between Citus's split and
        the record). No row is not drift: the onboarding writes it (ensure_tenant_partition),
        and until then the tenant is shared."""
        return self.recorded is not None and self.recorded != self.kind

    @property
    def misplaced(self) -> bool:
        """Only an isolation the policy asks for and Citus has not made: a shard group cannot be
        merged back, so an isolated tenant whose policy says shared is where it can be."""
        return self.policy == "isolated" and self.kind != "isolated"


def citus_placement_status(conn: psycopg.Connection, tenants: list[str] | None = None) -> list[CitusPlacementStatus]:
    """Every tenant (or those of ``tenants``) on Citus: its shard group's kind and worker, and
    where its policy puts it. One query, not one per tenant (the placement sensor runs it)."""
    _require_citus(conn)
    rows = conn.execute(
        """WITH t AS MATERIALIZED (
                SELECT o.id, c.tier, COALESCE(c.placement_override, l.placement) AS policy
                  FROM public.organizations o
                  LEFT JOIN public.tenant_classifications c ON c.organization_id = o.id
                  LEFT JOIN public.tier_limits l ON l.tier = c.tier
                 WHERE %(tenants)s::uuid[] IS NULL OR o.id = ANY(%(tenants)s::uuid[]))
           SELECT t.id::text, t.tier, s.shardminvalue::bigint = s.shardmaxvalue::bigint, n.nodeid, t.policy
             FROM t
             JOIN pg_dist_shard s ON s.shardid = get_shard_id_for_distribution_column(%(anchor)s, t.id)
             JOIN pg_dist_placement p ON p.shardid = s.shardid
             JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
            ORDER BY 1""", {"anchor": ANCHOR, "tenants": tenants}).fetchall()
    recorded = {str(t): (kind, since) for t, kind, since in conn.execute(
        """SELECT organization_id, kind, since FROM public.tenant_placements
            WHERE %(tenants)s::uuid[] IS NULL OR organization_id = ANY(%(tenants)s::uuid[])""",
        {"tenants": tenants}).fetchall()}
    return [CitusPlacementStatus(tenant, tier, "isolated" if isolated else "shared", node,
                                 POLICY_ON_CITUS.get(policy) if policy else None, *recorded.get(tenant, (None, None)))
            for tenant, tier, isolated, node, policy in rows]


# -- cold months as columnar (tiering on Citus) ------------------------------------------------

@dataclass(frozen=True)
class ColumnarMonth:
    partition: str
    bytes_before: int
    bytes_after: int
    seconds: float


def _cold_heap_months(conn: psycopg.Connection, as_of: str | None = None) -> list[str]:
    """Months of usage_events_mt that ended before the global policy's cold_after and are still
    heap (the current and future months never)."""
    return [r[0] for r in conn.execute(
        """SELECT t.partition::text FROM time_partitions t JOIN pg_class c ON c.oid = t.partition
             JOIN pg_am a ON a.oid = c.relam
            WHERE t.parent_table = %s::regclass AND a.amname = 'heap'
              AND t.to_value::timestamptz <= COALESCE(%s::timestamptz, now())
                    - (SELECT p.cold_after FROM public.tiering_policy p WHERE p.tenant_tier IS NULL)
            ORDER BY t.from_value::timestamptz""", (EVENTS, as_of)).fetchall()]


def misplaced_on_citus(conn: psycopg.Connection) -> list[str]:
    """Months the policy makes cold that are not columnar yet."""
    _require_citus(conn)
    return _cold_heap_months(conn)


COLUMNAR = "columnar"  # a tiering Move's method on Citus: the month rewritten as Citus columnar


def tier_on_citus(conn: psycopg.Connection, tenant_id: str | None, log=lambda _: None):
    """Tiering on Citus, as a core.tiering TieringReport: a month of usage_events_mt holds every
    tenant's rows of that month, so the pool's run (``tenant_id`` None) makes the cold ones
    columnar, and a tenant's run has nothing of its own to move."""
    from tenant_pipelines.core.tiering import Move, TieringReport

    if tenant_id is not None:
        return TieringReport(tenant_id)
    moves = [Move(m.partition, "heap", COLUMNAR, m.bytes_before, lock_held_s=m.seconds, attempts=1, frozen=False,
                  method=COLUMNAR, seconds=m.seconds, copy="rewrite")
             for m in compress_cold_months(conn, log)]
    return TieringReport(None, moves, misplaced_left=len(misplaced_on_citus(conn)))


def compress_cold_months(conn: psycopg.Connection, log=lambda _: None) -> list[ColumnarMonth]:
    """Tiering on Citus: every month of usage_events_mt older than the global tiering_policy's
    cold_after becomes Citus columnar (compressed, read-mostly), one month at a time with
    alter_table_set_access_method, then secured again like every month. Idempotent: columnar
    months are skipped. What it costs: columnar refuses UPDATE and DELETE, so a cold month's rows
    cannot be changed, and a per-tenant restore that must replace them is refused until the
    month is heap again (docs/scale-out.md)."""
    _require_citus(conn)
    if conn.execute("SELECT NOT EXISTS (SELECT FROM pg_am WHERE amname = 'columnar')").fetchone()[0]:
        raise TenantPipelinesError("Citus columnar is not installed in this database: CREATE EXTENSION citus_columnar "
                                   "(it comes with Citus), then run tiering again")
    done = []
    for month in _cold_heap_months(conn):
        started = time.monotonic()
        before = conn.execute("SELECT citus_total_relation_size(%s::regclass)", (month,)).fetchone()[0]
        log(f"{month}: heap -> columnar ({before / _MiB:.1f} MiB)")
        try:
            with _owner_exempt_from_rls(conn):
                conn.execute("SELECT alter_table_set_access_method(%s::regclass, 'columnar')", (month,))
        except psycopg.Error as exc:
            raise TenantPipelinesError(f"{month}: making it columnar failed: {exc.diag.message_primary or exc}; "
                                       "Citus rolled it back, run tiering again") from None
        conn.execute("SELECT fn_secure_partition(%s)", (month.split(".")[-1],))
        after = conn.execute("SELECT citus_total_relation_size(%s::regclass)", (month,)).fetchone()[0]
        done.append(ColumnarMonth(month, int(before), int(after), time.monotonic() - started))
    return done


def columnar_months_of(conn: psycopg.Connection, tenant: uuid.UUID) -> list[str]:
    """The columnar months holding rows of ``tenant``: rows there can be neither deleted nor
    updated."""
    if not is_citus_coordinator(conn):
        return []
    months = [r[0] for r in conn.execute(
        """SELECT t.partition::text FROM time_partitions t JOIN pg_class c ON c.oid = t.partition
             JOIN pg_am a ON a.oid = c.relam
            WHERE t.parent_table = %s::regclass AND a.amname = 'columnar' ORDER BY 1""", (EVENTS,)).fetchall()]
    return [m for m in months if conn.execute(
        sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE organization_id = %s)").format(sql.SQL(m)), (tenant,)
    ).fetchone()[0]]
