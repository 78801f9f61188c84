"""Writing usage events through the application path: billing_app, tenant context, RLS on.

``COPY FROM`` is refused on tables with row-level security for roles subject to it, and
billing_app may not create temporary tables (a temp table shadows a tenant table for every
later client of a pooled connection: sql/0017). So each batch goes in as columns: one array
per column, sent in binary, turned back into rows by ``unnest`` in one ``INSERT ... SELECT``
that the policy's WITH CHECK guards. Nothing is left in the session. The tenant id of every
row is the tenant in context: a batch cannot name another tenant.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from itertools import islice
from typing import Iterable

import psycopg
from psycopg import sql

from tenant_pipelines.db.session import tenant_session

UsageEvent = tuple[str, Decimal, datetime, str]  # metric_name, quantity, timestamp, properties JSON

# The name the application writes: the shared view over usage_events_mt, or, for a tenant in a
# schema of its own, that schema's table (fn_set_tenant_context routes the transaction).
USAGE_EVENTS_TABLE = "usage_events"
# Rows per statement: large enough that a statement's overhead vanishes, small enough that the
# four arrays of one statement stay a few MB.
ROWS_PER_STATEMENT = 5_000


def insert_statement(table: str = USAGE_EVENTS_TABLE) -> sql.Composed:
    """The statement that writes one batch of columns into ``table`` as the tenant in context."""
    return sql.SQL(
        """INSERT INTO {} (organization_id, metric_name, quantity, "timestamp", properties)
           SELECT public.fn_current_tenant_id(), e.metric_name, e.quantity, e.ts, e.properties::jsonb
             FROM unnest(%b::text[], %b::numeric[], %b::timestamptz[], %b::text[])
                  AS e(metric_name, quantity, ts, properties)"""
    ).format(sql.Identifier(table))


def insert_usage_events(
    tx: psycopg.Connection, events: Iterable[UsageEvent], table: str = USAGE_EVENTS_TABLE
) -> int:
    """Insert ``events`` into ``table`` inside the caller's tenant transaction. Returns the rows
    inserted."""
    statement = insert_statement(table)
    rows = iter(events)
    inserted = 0
    while chunk := list(islice(rows, ROWS_PER_STATEMENT)):
        columns = [list(column) for column in zip(*chunk)]
        inserted += tx.execute(statement, columns).rowcount
    return inserted


def ingest_usage_events(
    conn: psycopg.Connection, tenant_id: uuid.UUID | str, events: Iterable[UsageEvent]
) -> int:
    """Insert ``events`` for ``tenant_id`` in one transaction. Returns the rows inserted."""
    with tenant_session(conn, tenant_id) as tx:
        return insert_usage_events(tx, events)
