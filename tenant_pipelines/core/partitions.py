"""Tenant partitions of ``usage_events_mt``: create, attach, premake, audit.

The SQL functions in ``sql/0007_create_tenant_partition_functions.sql`` hold the logic, so a
DBA in psql and the pipelines do exactly the same thing. This module runs them in short
transactions, with the ``lock_timeout`` from ``partition_config`` and a retry with backoff,
and reads the catalog for the sensor and the checks.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable

import psycopg

from tenant_pipelines.core import citus
from tenant_pipelines.core.findings import Finding
from tenant_pipelines.core.placement import (SCHEMA, SCHEMA_TABLES, SHARED_PARTITION, SHARED_SCHEMA, USAGE_EVENTS,
                                             dedicated_tenants, placement_of, placements, registry_drift)
from tenant_pipelines.db.names import APP_ROLE, OWNER_ROLE
from tenant_pipelines.db.locks import LockRetries, run_with_lock_retry, run_with_lock_timeout
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import UnknownTenant


@dataclass
class PartitionReport:
    tenant: str
    partition: str | None  # None: the tenant is in a schema of its own, or moving
    layout: str
    tables_created: list[str] = field(default_factory=list)
    rows_moved: int = 0
    rows_split_into_months: int = 0
    attached_now: bool = False
    note: str = ""
    attempts: int = 0
    # Tries that followed a lock timeout or deadlock, over all of its steps (counted by
    # run_with_lock_retry as it retries): 0 when every step got its locks at once.
    lock_retries: int = 0
    duration_s: float = 0.0


def require_known_tenant(conn: psycopg.Connection, tenant_id: object) -> uuid.UUID:
    """``tenant_id`` as a UUID once the database knows it: an organization, or a tenant with
    usage events (which the onboarding sensor picks up before its organization exists). Else
    a one-line UnknownTenant, before anything is created for it."""
    tenant = parse_tenant_id(tenant_id)
    known = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM organizations WHERE id = %s)"
        " OR EXISTS (SELECT 1 FROM usage_events_mt WHERE organization_id = %s)",
        (tenant, tenant),
    ).fetchone()[0]
    if not known:
        raise UnknownTenant(f"tenant {tenant}: unknown tenant (no organization and no usage events with this id); "
                            "check the id, or onboard the organization first")
    return tenant


def ensure_tenant_partition(
    conn: psycopg.Connection, tenant_id: object, *, premake_months: int | None = None, attempts: int = 5
) -> PartitionReport:
    """Make sure ``tenant_id`` has its storage: the pool's months premade and, for a tenant
    that earns a dedicated partition (its tier, its ``dedicated_resources`` flag or its size,
    within ``partition_config.leaf_budget``), that partition, attached, with its months; for a
    tenant in a schema of its own, its schema's months (``fn_create_tenant_schema``, which makes
    what is missing). ``premake_months`` (default ``partition_config.premake_months``) is how far
    ahead months are made, for each kind. A tenant in an online move is left to core/moves.py.

    Each step is its own transaction, safe to re-run after a crash:

    1. create what is missing, standalone (the pool's months; the tenant's tables);
    2. for a tenant to promote, holding its advisory lock (its writers wait, no one else's):
       a NOT VALID exclusion CHECK on every pool leaf; then its rows moved out of the pool,
       the CHECKs validated and the partition ATTACHed, together; then the CHECKs dropped.

    Needs an admin connection in autocommit mode.
    """
    tenant = parse_tenant_id(tenant_id)
    started = time.monotonic()
    if citus.is_citus_coordinator(conn):
        # Citus: the distribution column separates tenants; the months are the only DDL.
        tenant = require_known_tenant(conn, tenant)
        created = citus.premake_citus_months(conn)
        citus.record_citus_placement(conn, citus.tenant_placement_on_citus(conn, tenant))
        return PartitionReport(str(tenant), None, "citus", created, note="Citus: no DDL per tenant; months premade",
                               duration_s=time.monotonic() - started)
    retries = LockRetries()
    prepared, tries = run_with_lock_retry(
        conn,
        f"tenant {tenant}: preparing its partition",
        lambda c: c.execute("SELECT fn_prepare_tenant_partition(%s, %s)", (tenant, premake_months)).fetchone()[0],
        attempts=attempts,
        retries=retries,
    )
    report = PartitionReport(
        tenant=str(tenant),
        partition=prepared["partition"],
        layout=prepared["layout"],
        tables_created=list(prepared["tables_created"]),
        rows_split_into_months=int(prepared["rows_split_into_months"]),
        note=prepared.get("note") or "",
        attempts=tries,
    )
    if report.layout == SCHEMA:
        created, more_tries = _premake_schema_months(conn, tenant, premake_months, attempts, retries)
        report.tables_created += created
        report.attempts += more_tries
    elif report.layout not in ("pooled", "moving"):  # moving: core/moves.py's
        attached, more_tries = _promote(conn, tenant, attempts, retries)
        report.rows_moved = int(attached["rows_moved"])
        report.attached_now = bool(attached["attached_now"])
        report.attempts += more_tries
    report.lock_retries = retries.count
    report.duration_s = time.monotonic() - started
    return report


def _schema_leaves(conn: psycopg.Connection, schema: str) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(format('%%I.%%I', %s::text, %s::text))",
        (schema, SCHEMA_TABLES[USAGE_EVENTS])).fetchall()}


def _premake_schema_months(conn: psycopg.Connection, tenant: uuid.UUID, premake_months: int | None,
                           attempts: int, retries: LockRetries) -> tuple[list[str], int]:
    """A schema tenant's missing months (and anything else of its schema that is missing), made
    by the idempotent ``fn_create_tenant_schema``; the months created, schema-qualified."""
    schema = placement_of(conn, tenant).location
    before = _schema_leaves(conn, schema)
    _, tries = run_with_lock_retry(
        conn, f"tenant {tenant}: premaking the months of schema {schema}",
        lambda c: c.execute("SELECT fn_create_tenant_schema(%s, NULL, %s)", (tenant, premake_months)),
        attempts=attempts, retries=retries)
    return [f"{schema}.{leaf}" for leaf in sorted(_schema_leaves(conn, schema) - before)], tries


def _promote(conn: psycopg.Connection, tenant: uuid.UUID, attempts: int, retries: LockRetries) -> tuple[dict, int]:
    """Move the tenant out of the pool into its partition, online (see ensure_tenant_partition).
    Every step's retries, the dropping of the exclusion CHECKs' too, are added to ``retries``."""
    if tenant_is_attached(conn, tenant):
        return {"rows_moved": 0, "attached_now": False}, 0
    what = f"tenant {tenant}: attaching its partition"
    # The tenant's advisory lock, EXCLUSIVE, for the session: its writers (which take it shared
    # in fn_set_tenant_context) wait until the promotion is over; nobody else does.
    _, tries = run_with_lock_timeout(
        conn, what, lambda c: c.execute("SELECT pg_advisory_lock(fn_tenant_lock_key(%s))", (tenant,)),
        attempts=attempts, retries=retries)
    try:
        _, t1 = run_with_lock_retry(
            conn, f"tenant {tenant}: excluding it from the pool",
            lambda c: c.execute("SELECT fn_pool_exclude_tenant(%s)", (tenant,)), attempts=max(attempts, 8),
            retries=retries)
        attached, t2 = run_with_lock_retry(
            conn, what, lambda c: c.execute("SELECT fn_attach_tenant_partition(%s)", (tenant,)).fetchone()[0],
            attempts=max(attempts, 8), retries=retries)
        return attached, tries + t1 + t2
    finally:
        # After a failure too: while the tenant is still pooled, the CHECKs would refuse its rows.
        try:
            run_with_lock_retry(
                conn, f"tenant {tenant}: dropping its pool exclusion checks",
                lambda c: c.execute("SELECT fn_pool_unexclude_tenant(%s)", (tenant,)), attempts=max(attempts, 8),
                retries=retries)
        finally:
            conn.execute("SELECT pg_advisory_unlock(fn_tenant_lock_key(%s))", (tenant,))


def tenant_is_attached(conn: psycopg.Connection, tenant: uuid.UUID) -> bool:
    return conn.execute(
        "SELECT fn_is_partition_of(fn_tenant_partition_name(%s), 'usage_events_mt')", (tenant,)
    ).fetchone()[0]


def organization_ids(conn: psycopg.Connection) -> list[str]:
    """Every organization id (an index-only scan of the primary key)."""
    return [str(r[0]) for r in conn.execute("SELECT id FROM organizations ORDER BY id")]


# The tenants with rows in {relation} from the start of last month on: a skip scan of its
# primary key (organization_id first), one index probe per tenant, not a scan of the events.
# On one server {relation} is the pool; on Citus each shard of usage_events_mt
# (citus.recent_event_tenants).
RECENT_TENANTS_SKIP_SCAN = """
WITH RECURSIVE bound AS (
    SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month') AT TIME ZONE 'UTC' AS since
), t(org) AS (
    (SELECT organization_id FROM {relation}, bound WHERE "timestamp" >= bound.since ORDER BY organization_id LIMIT 1)
    UNION ALL
    SELECT (SELECT p.organization_id FROM {relation} p, bound
             WHERE p."timestamp" >= bound.since AND p.organization_id > t.org ORDER BY p.organization_id LIMIT 1)
      FROM t WHERE t.org IS NOT NULL
)
SELECT org FROM t WHERE org IS NOT NULL
"""


def pool_tenants(conn: psycopg.Connection) -> list[str]:
    """Tenants with rows in the pool from the start of last month on (its newest months and
    _after): where the events of a tenant never seen before land. A skip scan of the pool's
    primary key (one index probe per tenant), not a scan of the events. On Citus (no pool): the
    tenants with events in those months, by the same skip scan on every shard
    (citus.recent_event_tenants)."""
    if citus.is_citus_coordinator(conn):
        return citus.recent_event_tenants(conn)
    rows = conn.execute(RECENT_TENANTS_SKIP_SCAN.format(relation="usage_events_mt_default") + "ORDER BY 1").fetchall()
    return [str(tenant) for (tenant,) in rows]


def pool_exclusions(conn: psycopg.Connection) -> list[str]:
    """Tenants with a promotion's exclusion CHECK (``pool_excludes_<hex>``) on the pool."""
    return [str(uuid.UUID(hex_)) for (hex_,) in conn.execute(
        "SELECT DISTINCT substr(conname, 15) FROM pg_constraint WHERE conname ~ '^pool_excludes_[0-9a-f]{32}$'"
        " ORDER BY 1")]


def interrupted_promotions(conn: psycopg.Connection) -> list[str]:
    """Tenants whose promotion stopped after its exclusion CHECKs went onto the pool (a killed
    process) and that nobody is promoting now: until it is re-run, the pool refuses their rows.
    "Nobody" means the tenant's advisory lock is free (tried shared, released at once)."""
    stuck = []
    for tenant in pool_exclusions(conn):
        with conn.transaction():
            if conn.execute("SELECT pg_try_advisory_xact_lock_shared(fn_tenant_lock_key(%s))", (tenant,)).fetchone()[0]:
                stuck.append(tenant)
    return stuck


def stranded_in_pool(conn: psycopg.Connection, tenants: Iterable[str]) -> dict[str, int]:
    """Tenants with a dedicated partition that still have rows in the pool, and how many.
    ATTACH refuses while any are left, so this holds by construction; the check proves it. On
    Citus (no pool): the tenants' rows in the DEFAULT partition, outside the premade months."""
    if citus.is_citus_coordinator(conn):
        return citus.rows_outside_the_months(conn, list(tenants))
    dedicated = sorted(attached_tenant_partitions(conn) & set(tenants))
    if not dedicated:
        return {}
    rows = conn.execute(
        "SELECT organization_id, count(*) FROM usage_events_mt_default WHERE organization_id = ANY(%s::uuid[])"
        " GROUP BY 1", (dedicated,)).fetchall()
    return {str(tenant): n for tenant, n in rows}


def attached_tenant_partitions(conn: psycopg.Connection) -> set[str]:
    """Tenants with a dedicated partition, as the placement registry records them."""
    return {str(tenant) for tenant in dedicated_tenants(conn)}


def audit_tenant_partitions(conn: psycopg.Connection, tenants: Iterable[object] | None = None) -> list[Finding]:
    """What is missing or wrong in the pool, in the tenants' dedicated partitions and in the
    usage_events of the tenants in schemas of their own (all of them by default): no _rest (the
    pool: _before or _after), a gap in the months up to the premade horizon (a schema tenant's
    from this month on at least), an index missing, RLS not forced, the wrong owner, privileges
    for billing_app (but on a schema's usage_events itself, which it writes through), or a
    promotion's exclusion CHECK left on the pool. Pooled tenants need nothing beyond the pool.
    On Citus: the months of usage_events_mt (core/citus.py's audit_citus_months)."""
    if citus.is_citus_coordinator(conn):
        return citus.audit_citus_months(conn)
    placed = placements(conn)
    dedicated = {str(t): p.location for t, p in placed.items() if p.dedicated}
    schemas = {str(t): p.location for t, p in placed.items() if p.kind == SCHEMA}
    attached = set(dedicated)
    wanted = sorted(attached | set(schemas)) if tenants is None else [str(parse_tenant_id(t)) for t in tenants]
    premake = conn.execute("SELECT premake_months FROM partition_config").fetchone()[0]
    horizon = _add_months(_this_month(conn), premake)
    findings = _audit_tree(conn, SHARED_PARTITION, "usage_events_mt_pool", horizon,
                           "materialise tenant_partition for any tenant (or SELECT fn_premake_pool_months())",
                           edges=("_before", "_after"))
    for tenant in pool_exclusions(conn):
        findings.append(Finding(
            "pool", f"still has pool_excludes_{uuid.UUID(tenant).hex} from an interrupted promotion of tenant "
            f"{tenant}: its rows are refused by the pool",
            f"materialise tenant_partition for {tenant} (or SELECT fn_pool_unexclude_tenant('{tenant}'))"))
    this_month = _this_month(conn)
    for tenant in wanted:
        if tenant in attached:
            fix = f"materialise tenant_partition for {tenant} (or SELECT fn_create_tenant_partition('{tenant}'))"
            findings += _audit_tree(conn, dedicated[tenant], dedicated[tenant], horizon, fix)
        elif tenant in schemas:
            schema, table = schemas[tenant], SCHEMA_TABLES[USAGE_EVENTS]
            fix = f"materialise tenant_partition for {tenant} (or SELECT fn_create_tenant_schema('{tenant}'))"
            if not conn.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text)) IS NOT NULL",
                                (schema, table)).fetchone()[0]:
                findings.append(Finding(f"tenant {tenant}", f"lives in schema {schema}, which has no {table}", fix))
                continue
            findings += _audit_tree(conn, table, table, horizon, fix, schema=schema, from_month=this_month)
    for tenant, registered, catalog in registry_drift(conn):
        if tenants is None or str(tenant) in wanted:
            findings.append(Finding(
                f"tenant {tenant}", f"the placement registry says {registered}, the catalog says {catalog}",
                f"materialise tenant_partition for {tenant} (or SELECT fn_create_tenant_partition('{tenant}')), "
                "which records where it lives"))
    return findings


def _audit_tree(conn: psycopg.Connection, root: str, leaf_prefix: str, horizon: str, fix: str,
                edges: tuple[str, ...] = ("_rest",), *, schema: str = SHARED_SCHEMA,
                from_month: str | None = None) -> list[Finding]:
    """The partition tree of ``schema.root``. In a tenant schema, billing_app writes through the
    root (granted) but may not touch a month; its months are due from ``from_month`` on at least."""
    findings: list[Finding] = []

    def shown(name: str) -> str:
        return name if schema == SHARED_SCHEMA else f"{schema}.{name}"

    rows = conn.execute(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner),
               has_table_privilege(%s, c.oid, 'SELECT,INSERT,UPDATE,DELETE'),
               (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid),
               (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid AND NOT x.indisvalid)
          FROM pg_partition_tree(to_regclass(format('%%I.%%I', %s::text, %s::text))) t JOIN pg_class c ON c.oid = t.relid
         ORDER BY c.relname
        """,
        (APP_ROLE, schema, root),
    ).fetchall()
    names = {r[0] for r in rows}
    for edge in edges:
        if leaf_prefix + edge not in names:
            findings.append(Finding(f"partition {shown(root)}", f"has no {edge[1:]} partition (rows outside the months)", fix))
    for name, rls, forced, owner, app_access, n_idx, n_invalid in rows:
        if not (rls and forced):
            findings.append(Finding(f"partition {shown(name)}", "does not force row-level security",
                                    f"ALTER TABLE {shown(name)} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"))
        if owner != OWNER_ROLE:
            findings.append(Finding(f"partition {shown(name)}", f"is owned by {owner}",
                                    f"ALTER TABLE {shown(name)} OWNER TO {OWNER_ROLE}"))
        if app_access and not (schema != SHARED_SCHEMA and name == root):
            findings.append(Finding(f"partition {shown(name)}", f"{APP_ROLE} can access it directly",
                                    f"REVOKE ALL ON {shown(name)} FROM {APP_ROLE}, PUBLIC"))
        if n_idx < 3 or n_invalid:
            findings.append(Finding(f"partition {shown(name)}", f"has {n_idx - n_invalid} of its 3 indexes", fix))
    months = sorted(n.rsplit("_p", 1)[1] for n in names if n.startswith(leaf_prefix + "_p") and n[-6:].isdigit())
    first = min(months[:1] + ([from_month] if from_month else []), default=None)
    if first is not None:
        missing = sorted(set(_month_range(first, horizon)) - set(months))
        if missing:
            findings.append(Finding(f"partition {shown(root)}", f"is missing months {', '.join(missing)}", fix))
    return findings


def _this_month(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')").fetchone()[0]


def _add_months(yyyymm: str, n: int) -> str:
    index = int(yyyymm[:4]) * 12 + int(yyyymm[4:]) - 1 + n
    return f"{index // 12:04d}{index % 12 + 1:02d}"


def _month_range(first: str, last: str) -> list[str]:
    out, current = [], first
    while current <= last:
        out.append(current)
        current = _add_months(current, 1)
    return out


def storage_status(conn: psycopg.Connection) -> dict:
    """Leaves against the budget, dedicated tenants, the pool's months, interrupted promotions.
    On Citus: the months of usage_events_mt (no pool, no dedicated partitions)."""
    if citus.is_citus_coordinator(conn):
        months = citus.citus_months(conn)
        budget = conn.execute("SELECT leaf_budget FROM partition_config").fetchone()[0]
        return {"leaves": len(months), "leaf_budget": budget, "dedicated_tenants": 0, "pool_months": len(months),
                "first_pool_month": months[0] if months else None, "last_pool_month": months[-1] if months else None,
                "interrupted_promotions": []}
    leaves, budget = conn.execute("SELECT fn_leaf_count(), leaf_budget FROM partition_config").fetchone()
    months = sorted(name.rsplit("_p", 1)[1] for (name,) in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'public.usage_events_mt_default'::regclass AND c.relname ~ '_p[0-9]{6}$'"))
    return {"leaves": leaves, "leaf_budget": budget, "dedicated_tenants": len(attached_tenant_partitions(conn)),
            "pool_months": len(months), "first_pool_month": months[0] if months else None,
            "last_pool_month": months[-1] if months else None,
            "interrupted_promotions": interrupted_promotions(conn)}


def catalog_size(conn: psycopg.Connection) -> dict[str, int]:
    """Relations and catalog bytes: what 10,000 tenants cost the catalog."""
    relations, catalog_bytes = conn.execute(
        """
        SELECT (SELECT count(*) FROM pg_class),
               (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'pg_catalog' AND c.relkind = 'r')
        """
    ).fetchone()
    leaves = conn.execute(
        "SELECT count(*) FROM pg_partition_tree('public.usage_events_mt') WHERE isleaf"
    ).fetchone()[0]
    return {"relations": relations, "catalog_bytes": int(catalog_bytes), "usage_events_leaves": leaves}
