"""Tiering wherever the billing database is: one server (core/tiering.py: tablespaces by age)
or a Citus coordinator (core/citus.py: cold months as columnar). The Dagster assets and the
CLI call these; core/tiering.py stays free of Citus (it imports nothing else of core)."""

from __future__ import annotations

from datetime import datetime
from typing import Unpack

import psycopg

from tenant_pipelines.core import citus, tiering
from tenant_pipelines.core.tiering import PlannedPartition, TieringOptions, TieringReport
from tenant_pipelines.db.session import parse_tenant_id


def tier_tenant(conn: psycopg.Connection, tenant: object, **options: Unpack[TieringOptions]) -> TieringReport:
    """core.tiering.tier_tenant; on Citus, nothing of the tenant's own to move."""
    if citus.is_citus_coordinator(conn):
        tiering.check_method(options.get("method", tiering.ONLINE))
        return citus.tier_on_citus(conn, str(parse_tenant_id(tenant)))
    return tiering.tier_tenant(conn, tenant, **options)


def tier_pool(conn: psycopg.Connection, **options: Unpack[TieringOptions]) -> TieringReport:
    """core.tiering.tier_pool; on Citus, the cold months of usage_events_mt made columnar."""
    if citus.is_citus_coordinator(conn):
        tiering.check_method(options.get("method", tiering.ONLINE))
        return citus.tier_on_citus(conn, None, options.get("log", lambda _: None))
    return tiering.tier_pool(conn, **options)


def misplaced(conn: psycopg.Connection, tenants: list[str] | None = None,
              as_of: datetime | None = None) -> list[PlannedPartition]:
    """core.tiering.misplaced; on Citus, the cold months not columnar yet, as the pool's (a
    tenant has no months of its own there)."""
    if citus.is_citus_coordinator(conn):
        if tenants is not None:
            return []
        return [PlannedPartition(month, None, None, "hot", "cold", "heap", citus.COLUMNAR, 0, 0, True)
                for month in citus.misplaced_on_citus(conn)]
    return tiering.misplaced(conn, tenants, as_of)
