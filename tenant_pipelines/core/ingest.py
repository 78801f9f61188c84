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
import weakref
from datetime import datetime
from decimal import Decimal
from itertools import islice
from typing import Iterable

import psycopg
from psycopg import sql

from tenant_pipelines.db.citus import citus_loaded
from tenant_pipelines.db.session import parse_tenant_id, tenant_session

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


# Citus (issue 19). Citus refuses writes through a view over a distributed table, and turns an
# INSERT ... SELECT from unnest() into a pull to the coordinator and a COPY into the shards,
# which row-level security refuses. So on a coordinator each batch is a multi-row
# INSERT ... VALUES into usage_events_mt whose rows all name the tenant explicitly: Citus routes
# it to the tenant's one shard (Task Count: 1), and the shard's policy checks every row.
CITUS_TABLE = "usage_events_mt"
CITUS_ROWS_PER_STATEMENT = 1_000  # 5 parameters a row, under the protocol's 65,535
_citus_connections: "weakref.WeakKeyDictionary[psycopg.Connection, bool]" = weakref.WeakKeyDictionary()


def on_citus(conn: psycopg.Connection) -> bool:
    """Whether ``conn``'s database has the extension citus (asked once per connection)."""
    if conn not in _citus_connections:
        _citus_connections[conn] = citus_loaded(conn)
    return _citus_connections[conn]


def citus_insert_statement(rows: int, table: str = CITUS_TABLE) -> sql.Composed:
    """Citus: ``rows`` events of one tenant as one INSERT ... VALUES, the tenant id in every row."""
    return sql.SQL('INSERT INTO {} (organization_id, metric_name, quantity, "timestamp", properties) VALUES {}').format(
        sql.Identifier(table), sql.SQL(", ").join([sql.SQL("(%s, %s, %s, %s, %s::jsonb)")] * rows))


def insert_usage_events_citus(tx: psycopg.Connection, tenant_id: uuid.UUID, events: Iterable[UsageEvent]) -> int:
    """Insert ``events`` of ``tenant_id`` (the tenant in context) on a Citus coordinator, inside
    the caller's tenant transaction. Returns the rows inserted."""
    rows = iter(events)
    inserted = 0
    while chunk := list(islice(rows, CITUS_ROWS_PER_STATEMENT)):
        params = [value for metric, quantity, ts, properties in chunk
                  for value in (tenant_id, metric, quantity, ts, properties)]
        inserted += tx.execute(citus_insert_statement(len(chunk)), params).rowcount
    return inserted


def ingest_usage_events(
    conn: psycopg.Connection, tenant_id: uuid.UUID | str, events: Iterable[UsageEvent]
) -> int:
    """Insert ``events`` for ``tenant_id`` in one transaction. Returns the rows inserted."""
    with tenant_session(conn, tenant_id) as tx:
        if on_citus(tx):
            return insert_usage_events_citus(tx, parse_tenant_id(tenant_id), events)
        return insert_usage_events(tx, events)
