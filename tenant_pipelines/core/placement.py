"""Where a tenant lives: the one answer to "which relations hold tenant X's rows".

A tenant has exactly one placement, recorded in the registry ``tenant_placements``
(sql/migrations/0018) by the same transaction that moves it (``fn_record_placement``, called
by ``fn_attach_tenant_partition`` and ``fn_prepare_tenant_partition``):

- ``pooled``: its usage events are in the shared partition, ``usage_events_mt_default`` (split
  by month, shared with every other pooled tenant);
- ``partition``: its usage events are in a dedicated partition of ``usage_events_mt``;
- ``schema``: a schema of its own, ``tenant_<32 hex>`` (the registry's location), holding its
  ``usage_events`` (by month), ``subscriptions``, ``invoices`` and ``payment_methods``
  (sql/functions/fn_create_tenant_schema.sql). Its organizations, classification and backup
  config rows stay shared.

Pooled and partition tenants' rows are in the shared tables, and every read or write goes
through the parent tables, where RLS applies; a schema tenant's go through its schema's
tables, where the same policy applies. Moves between them: core/moves.py. A tenant with no row is pooled (its events arrived before the
onboarding sensor saw it). Backups, restores, metrics and audits ask this module, so a new kind
of placement (a schema of its own, a node of its own) is added here and in the registry, not in
each of them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from tenant_pipelines.db.session import parse_tenant_id

POOLED = "pooled"
PARTITION = "partition"
SCHEMA = "schema"
KINDS = (POOLED, PARTITION, SCHEMA)

SHARED_SCHEMA = "public"
USAGE_EVENTS = "usage_events_mt"
SHARED_PARTITION = "usage_events_mt_default"  # the pool: every pooled tenant's usage events

# Every table that holds a tenant's rows, parents before children, with the column that names
# the tenant. Backups take them in this order; a restore deletes in the reverse order.
TENANT_TABLES: tuple[tuple[str, str], ...] = (
    ("organizations", "id"),
    ("tenant_classifications", "organization_id"),
    ("tenant_backup_config", "organization_id"),
    ("subscriptions", "organization_id"),
    ("invoices", "organization_id"),
    ("payment_methods", "organization_id"),
    (USAGE_EVENTS, "organization_id"),
)


# The tables a tenant schema has, by the shared name each stands for.
SCHEMA_TABLES = {"subscriptions": "subscriptions", "invoices": "invoices", "payment_methods": "payment_methods",
                 USAGE_EVENTS: "usage_events"}


def schema_name(tenant: uuid.UUID) -> str:
    """The name a tenant's own schema gets (``fn_tenant_schema_name`` in SQL)."""
    return "tenant_" + tenant.hex


def partition_name(tenant: uuid.UUID) -> str:
    """The name a dedicated partition gets (``fn_tenant_partition_name`` in SQL creates it; a
    test keeps the two equal). Where a tenant's partition *is* comes from the registry."""
    return "usage_events_mt_t_" + tenant.hex


@dataclass(frozen=True)
class Placement:
    tenant: uuid.UUID
    kind: str
    location: str  # the relation in SHARED_SCHEMA that holds its usage events; for a schema tenant, its schema
    state: str
    since: datetime | None  # None: not in the registry (pooled by default)

    @property
    def dedicated(self) -> bool:
        return self.kind == PARTITION

    def schema_of(self, name: str) -> str:
        """The schema of the relation through which the tenant's rows of table ``name`` go."""
        return self.location if self.kind == SCHEMA and name in SCHEMA_TABLES else SHARED_SCHEMA

    def name_of(self, name: str) -> str:
        """That relation's name: the shared name, or the schema's own (usage_events_mt is
        usage_events in a tenant schema)."""
        return SCHEMA_TABLES[name] if self.kind == SCHEMA and name in SCHEMA_TABLES else name

    def table(self, name: str) -> sql.Identifier:
        """The relation through which the tenant's rows of table ``name`` are read and written
        (the parent: RLS applies, and rows route to wherever the tenant lives)."""
        return sql.Identifier(self.schema_of(name), self.name_of(name))

    @property
    def usage_events_leaf(self) -> sql.Identifier:
        """The relation that stores its usage events: its partition, the shared partition, or
        its schema's usage_events."""
        if self.kind == SCHEMA:
            return sql.Identifier(self.location, SCHEMA_TABLES[USAGE_EVENTS])
        return sql.Identifier(SHARED_SCHEMA, self.location)


def _pooled(tenant: uuid.UUID) -> Placement:
    return Placement(tenant, POOLED, SHARED_PARTITION, "placed", None)


def placement_of(conn: psycopg.Connection, tenant_id: object) -> Placement:
    """Where ``tenant_id`` lives, from the registry (an admin connection: the registry has RLS)."""
    tenant = parse_tenant_id(tenant_id)
    row = conn.execute(
        "SELECT kind, location, state, since FROM public.tenant_placements WHERE organization_id = %s", (tenant,)
    ).fetchone()
    return Placement(tenant, *row) if row else _pooled(tenant)


def placements(conn: psycopg.Connection) -> dict[uuid.UUID, Placement]:
    """Every registered tenant's placement, by tenant."""
    rows = conn.execute(
        "SELECT organization_id, kind, location, state, since FROM public.tenant_placements ORDER BY 1"
    ).fetchall()
    return {r[0]: Placement(*r) for r in rows}


def dedicated_tenants(conn: psycopg.Connection) -> dict[uuid.UUID, str]:
    """Tenants with a dedicated partition, and its name."""
    return {t: p.location for t, p in placements(conn).items() if p.dedicated}


def registry_drift(conn: psycopg.Connection) -> list[tuple[uuid.UUID, str, str]]:
    """(tenant, what the registry says, what the catalog says) for each tenant where they
    disagree: a partition attached under usage_events_mt for a tenant the registry places
    elsewhere, or a registered partition that is not attached."""
    rows = conn.execute(
        """WITH attached AS (
               SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), '''([0-9a-f-]{36})'''))[1]::uuid AS tenant,
                      c.relname::text AS relname
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'public.usage_events_mt'::regclass
                  AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT')
           SELECT COALESCE(p.organization_id, a.tenant),
                  COALESCE(p.kind || ' ' || p.location, 'no row (pooled)'),
                  COALESCE('partition ' || a.relname, 'not attached')
             FROM public.tenant_placements p
             FULL JOIN attached a ON a.tenant = p.organization_id
            WHERE (p.kind = 'partition' AND (a.relname IS NULL OR a.relname <> p.location))
               OR (a.tenant IS NOT NULL AND (p.kind IS DISTINCT FROM 'partition'))
            ORDER BY 1"""
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]
