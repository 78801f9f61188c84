"""Writing usage events through the application path: billing_app, tenant context, RLS on.

``COPY FROM`` is refused on tables with row-level security for roles subject to it, so the
batch is COPYed into a session-private staging table and moved with one
``INSERT ... SELECT``, which the policy's WITH CHECK guards. The tenant id of every row is
the tenant in context: a batch cannot name another tenant.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Iterable

import psycopg

from tenant_pipelines.db.session import tenant_session

UsageEvent = tuple[str, Decimal, datetime, str]  # metric_name, quantity, timestamp, properties JSON

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS usage_events_stage (
    metric_name  varchar(100) NOT NULL,
    quantity     numeric(20, 6) NOT NULL,
    "timestamp"  timestamptz NOT NULL,
    properties   jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""


def ingest_usage_events(
    conn: psycopg.Connection, tenant_id: uuid.UUID | str, events: Iterable[UsageEvent]
) -> int:
    """Insert ``events`` for ``tenant_id`` in one transaction. Returns the rows inserted."""
    with tenant_session(conn, tenant_id) as tx:
        tx.execute(_STAGE)
        with tx.cursor().copy(
            'COPY usage_events_stage (metric_name, quantity, "timestamp", properties) FROM STDIN'
        ) as copy:
            for event in events:
                copy.write_row(event)
        cur = tx.execute(
            """INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)
               SELECT fn_current_tenant_id(), metric_name, quantity, "timestamp", properties
                 FROM usage_events_stage"""
        )
        return cur.rowcount
