"""Tenant partitions of ``usage_events_mt``: create, attach, premake, audit.

The SQL functions in ``sql/0007_create_tenant_partition_functions.sql`` hold the logic, so a
DBA in psql and the pipelines do exactly the same thing. This module runs them in short
transactions, with the ``lock_timeout`` from ``partition_config`` and a retry with backoff,
and reads the catalog for the sensor and the checks.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

import psycopg

from tenant_pipelines.core.conformance import Finding
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import TenantPipelinesError

DEFAULT_PARTITION = "usage_events_mt_default"
_RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)
T = TypeVar("T")


@dataclass
class PartitionReport:
    tenant: str
    partition: str
    layout: str
    tables_created: list[str] = field(default_factory=list)
    rows_moved: int = 0
    rows_split_into_months: int = 0
    attached_now: bool = False
    attempts: int = 0
    duration_s: float = 0.0


def partition_name(tenant: uuid.UUID) -> str:
    return "usage_events_mt_t_" + tenant.hex


def run_with_lock_retry(
    conn: psycopg.Connection,
    what: str,
    work: Callable[[psycopg.Connection], T],
    *,
    attempts: int = 5,
    backoff_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, int]:
    """Run ``work`` in its own transaction; on a lock timeout or deadlock, roll back, wait
    (exponential backoff with jitter) and try again. Returns the result and the tries used.
    ``conn`` must be idle, so that each call commits on its own."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise TenantPipelinesError(
            f"{what}: the connection is inside a transaction; use an autocommit connection so each step commits"
        )
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                return work(conn), attempt
        except _RETRYABLE as exc:
            if attempt == attempts:
                raise TenantPipelinesError(
                    f"{what}: still waiting for a lock after {attempts} tries "
                    f"({exc.diag.message_primary}); a long transaction holds it: find it in "
                    "pg_stat_activity, let it finish, and re-run"
                ) from None
            sleep(backoff_s * 2 ** (attempt - 1) * (1 + random.random()))
    raise AssertionError("unreachable")


def ensure_tenant_partition(
    conn: psycopg.Connection, tenant_id: object, *, premake_months: int | None = None, attempts: int = 5
) -> PartitionReport:
    """Make sure ``tenant_id`` has its partition, attached, with its month partitions premade.

    Two transactions, each safe to re-run after a crash: (1) create what is missing, standalone,
    and split months off the tenant's own ``_rest``; (2) move the tenant's rows out of the
    DEFAULT partition and ATTACH, together. Needs an admin connection.
    """
    tenant = parse_tenant_id(tenant_id)
    started = time.monotonic()
    prepared, tries_1 = run_with_lock_retry(
        conn,
        f"tenant {tenant}: preparing its partition",
        lambda c: c.execute("SELECT fn_prepare_tenant_partition(%s, %s)", (tenant, premake_months)).fetchone()[0],
        attempts=attempts,
    )
    attached, tries_2 = run_with_lock_retry(
        conn,
        f"tenant {tenant}: attaching its partition",
        lambda c: c.execute("SELECT fn_attach_tenant_partition(%s)", (tenant,)).fetchone()[0],
        attempts=attempts,
    )
    return PartitionReport(
        tenant=str(tenant),
        partition=prepared["partition"],
        layout=prepared["layout"],
        tables_created=list(prepared["tables_created"]),
        rows_moved=int(attached["rows_moved"]),
        rows_split_into_months=int(prepared["rows_split_into_months"]),
        attached_now=bool(attached["attached_now"]),
        attempts=tries_1 + tries_2,
        duration_s=time.monotonic() - started,
    )


def organization_ids(conn: psycopg.Connection) -> list[str]:
    """Every organization id (an index-only scan of the primary key)."""
    return [str(r[0]) for r in conn.execute("SELECT id FROM organizations ORDER BY id")]


def default_partition_tenants(conn: psycopg.Connection) -> dict[str, int]:
    """Tenants with rows in the DEFAULT partition, and how many. The DEFAULT partition is
    kept drained, so this reads little."""
    rows = conn.execute(
        "SELECT organization_id, count(*) FROM usage_events_mt_default GROUP BY organization_id ORDER BY 1"
    ).fetchall()
    return {str(tenant): count for tenant, count in rows}


def attached_tenant_partitions(conn: psycopg.Connection) -> set[str]:
    """Tenants whose partition is attached to usage_events_mt."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.usage_events_mt'::regclass AND c.relname LIKE 'usage\\_events\\_mt\\_t\\_%%'
        """
    ).fetchall()
    return {str(uuid.UUID(name.removeprefix("usage_events_mt_t_"))) for (name,) in rows}


def audit_tenant_partitions(conn: psycopg.Connection, tenants: Iterable[object] | None = None) -> list[Finding]:
    """What is missing or wrong in the tenants' partitions (all attached ones by default):
    not attached, no _rest, a gap in the months up to the premade horizon, an index missing,
    RLS not forced, the wrong owner, or privileges for billing_app."""
    attached = attached_tenant_partitions(conn)
    wanted = sorted(attached) if tenants is None else [str(parse_tenant_id(t)) for t in tenants]
    findings: list[Finding] = []
    premake = conn.execute("SELECT premake_months FROM partition_config").fetchone()[0]
    for tenant in wanted:
        part = partition_name(uuid.UUID(tenant))
        fix = f"materialise tenant_partition for {tenant} (or SELECT fn_create_tenant_partition('{tenant}'))"
        if tenant not in attached:
            findings.append(Finding(f"tenant {tenant}", "has no attached partition", fix))
            continue
        rows = conn.execute(
            """
            SELECT c.relname, t.isleaf, t.level, c.relrowsecurity, c.relforcerowsecurity,
                   pg_get_userbyid(c.relowner),
                   has_table_privilege('billing_app', c.oid, 'SELECT,INSERT,UPDATE,DELETE'),
                   (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid),
                   (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid AND NOT x.indisvalid),
                   pg_get_expr(c.relpartbound, c.oid)
              FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON c.oid = t.relid
             ORDER BY c.relname
            """,
            (f"public.{part}",),
        ).fetchall()
        names = {r[0] for r in rows}
        if f"{part}_rest" not in names:
            findings.append(Finding(f"partition {part}", "has no _rest (DEFAULT) partition", fix))
        for name, isleaf, level, rls, forced, owner, app_access, n_idx, n_invalid, _bound in rows:
            if not (rls and forced):
                findings.append(Finding(f"partition {name}", "does not force row-level security",
                                        f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"))
            if owner != "billing_owner":
                findings.append(Finding(f"partition {name}", f"is owned by {owner}",
                                        f"ALTER TABLE {name} OWNER TO billing_owner"))
            if app_access:
                findings.append(Finding(f"partition {name}", "billing_app can access it directly",
                                        f"REVOKE ALL ON {name} FROM billing_app, PUBLIC"))
            if n_idx < 3 or n_invalid:
                findings.append(Finding(f"partition {name}",
                                        f"has {n_idx - n_invalid} of its 3 indexes", fix))
        months = sorted(n.rsplit("_p", 1)[1] for n in names if n.startswith(part + "_p"))
        if months:
            expected = _month_range(months[0], _add_months(_this_month(conn), premake))
            missing = sorted(set(expected) - set(months))
            if missing:
                findings.append(Finding(f"partition {part}", f"is missing months {', '.join(missing)}", fix))
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
