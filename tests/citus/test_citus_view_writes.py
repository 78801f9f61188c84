"""Applications keep writing INSERT INTO usage_events on Citus (issue 19). Citus refuses a write
through a simple view of a distributed table; the view's INSTEAD OF INSERT trigger
(sql/citus/migrations/0007) takes each row to usage_events_mt as the caller, so RLS decides as
on the table, RETURNING and COPY work, and the table's defaults apply. UPDATE and DELETE through
the view stay refused by Citus (they name usage_events_mt)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tenant_pipelines.db.session import tenant_session
from tests.citus.conftest import make_citus_tenant

VIEW_FILE = Path(__file__).resolve().parents[2] / "sql" / "functions" / "usage_events.sql"
INSERT = ('INSERT INTO usage_events (organization_id, metric_name, quantity, "timestamp")'
          " VALUES (%s, 'view_writes', %s, %s) RETURNING id, properties")


def rows_of(admin: psycopg.Connection, tenant: uuid.UUID) -> list[tuple]:
    return admin.execute("SELECT id, quantity FROM usage_events_mt WHERE organization_id = %s"
                         " AND metric_name = 'view_writes' ORDER BY quantity", (tenant,)).fetchall()


def test_insert_through_the_view_lands_in_the_table(citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin)
    now = datetime.now(timezone.utc)
    with tenant_session(citus_admin, tenant) as tx:  # billing_app, the tenant's context
        event_id, properties = tx.execute(INSERT, (tenant, Decimal("1.250000"), now)).fetchone()
        assert isinstance(event_id, uuid.UUID) and properties == {}  # the table's defaults
        with tx.cursor().copy('COPY usage_events (organization_id, metric_name, quantity, "timestamp") FROM STDIN'
                              ) as copy:
            for q in (2, 3):
                copy.write_row((tenant, "view_writes", Decimal(q), now))
        tx.execute("INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\")"
                   " SELECT %s, 'view_writes', g, %s FROM generate_series(4, 5) g", (tenant, now))
    rows = rows_of(citus_admin, tenant)
    assert [q for _, q in rows] == [Decimal("1.25"), 2, 3, 4, 5]
    assert rows[0][0] == event_id


def test_the_policy_refuses_another_tenants_row_and_a_row_without_context(
        citus_admin: psycopg.Connection, citus_app: psycopg.Connection) -> None:
    mine, other = make_citus_tenant(citus_admin), make_citus_tenant(citus_admin)
    now = datetime.now(timezone.utc)
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with tenant_session(citus_admin, mine) as tx:
            tx.execute(INSERT, (other, 1, now))
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with citus_app.transaction():  # no tenant context at all
            citus_app.execute(INSERT, (mine, 1, now))
    assert rows_of(citus_admin, mine) == [] and rows_of(citus_admin, other) == []


def test_update_and_delete_through_the_view_stay_refused(citus_admin: psycopg.Connection) -> None:
    tenant = make_citus_tenant(citus_admin)
    for statement in ("UPDATE usage_events SET quantity = 0 WHERE organization_id = %s",
                      "DELETE FROM usage_events WHERE organization_id = %s"):
        with pytest.raises(errors.FeatureNotSupported, match="cannot modify views"):
            with tenant_session(citus_admin, tenant) as tx:
                tx.execute(statement, (tenant,))


def test_reapplying_the_view_keeps_the_trigger_and_defaults(citus_admin: psycopg.Connection) -> None:
    """sql/functions/usage_events.sql is re-applied whenever it changes: CREATE OR REPLACE VIEW."""
    with citus_admin.transaction():
        citus_admin.execute(VIEW_FILE.read_text().encode())
    tenant = make_citus_tenant(citus_admin)
    with tenant_session(citus_admin, tenant) as tx:
        event_id, properties = tx.execute(INSERT, (tenant, 7, datetime.now(timezone.utc))).fetchone()
    assert event_id is not None and properties == {}
    assert [q for _, q in rows_of(citus_admin, tenant)] == [7]
