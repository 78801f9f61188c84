"""The tenant registry: organizations and their tiers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row


@dataclass(frozen=True)
class Tenant:
    organization_id: uuid.UUID
    name: str
    tier: str
    created_at: datetime
    active_subscriptions: int


def list_tenants(conn: psycopg.Connection) -> list[Tenant]:
    """Every organization with its tier (free when unclassified). Needs an admin connection:
    a tenant-scoped role sees only its own organization."""
    with conn.cursor(row_factory=class_row(Tenant)) as cur:
        cur.execute(
            """
            WITH tenants AS MATERIALIZED (  -- on Citus: read from the shards first (see vw_tenant_metrics)
                SELECT o.id, o.name, COALESCE(tc.tier, 'free') AS tier, o.created_at
                  FROM organizations o
                  LEFT JOIN tenant_classifications tc ON tc.organization_id = o.id)
            SELECT t.id AS organization_id,
                   t.name,
                   t.tier,
                   t.created_at,
                   fn_tenant_active_subscriptions(t.id)::int AS active_subscriptions  -- wherever it lives
              FROM tenants t
             ORDER BY t.created_at, t.id
            """
        )
        return cur.fetchall()


def tenant_tiers(conn: psycopg.Connection, tenants: list[str] | None = None) -> dict[str, str]:
    """The tenant tier of every classified tenant (or of those of ``tenants``), by tenant id as
    text. A tenant without a classification is missing: callers treat it as free tier."""
    if tenants is None:
        rows = conn.execute("SELECT organization_id::text, tier FROM tenant_classifications").fetchall()
    else:
        rows = conn.execute(
            "SELECT organization_id::text, tier FROM tenant_classifications WHERE organization_id = ANY(%s::uuid[])",
            (list(tenants),),
        ).fetchall()
    return dict(rows)


def tier_priorities(conn: psycopg.Connection) -> dict[str, int]:
    """tier_limits.priority of every tenant tier (1 is the most important)."""
    return dict(conn.execute("SELECT tier, priority FROM tier_limits").fetchall())


def tier_of(conn: psycopg.Connection, tenant: object, unclassified: str = "free") -> tuple[str, int] | None:
    """The tenant tier of ``tenant`` (``unclassified`` when it has no classification) and that
    tier's tier_limits.priority; None when tier_limits has no such tier."""
    row = conn.execute(
        """SELECT tl.tier, tl.priority
             FROM tier_limits tl
            WHERE tl.tier = COALESCE((SELECT tc.tier FROM tenant_classifications tc
                                       WHERE tc.organization_id = %s), %s)""",
        (tenant, unclassified),
    ).fetchone()
    return (row[0], row[1]) if row else None
