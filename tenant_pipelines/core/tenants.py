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
            SELECT o.id AS organization_id,
                   o.name,
                   COALESCE(tc.tier, 'free') AS tier,
                   o.created_at,
                   (SELECT count(*) FROM subscriptions s
                     WHERE s.organization_id = o.id AND s.status = 'active')::int AS active_subscriptions
              FROM organizations o
              LEFT JOIN tenant_classifications tc ON tc.organization_id = o.id
             ORDER BY o.created_at, o.id
            """
        )
        return cur.fetchall()
