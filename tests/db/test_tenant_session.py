"""tenant_session: one transaction, one tenant, that tenant's tier limits; nothing outlives it."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tenant_pipelines.db.session import parse_tenant_id, tenant_session
from tenant_pipelines.errors import InvalidInput, UnknownTenant
from tests.conftest import make_tenant

TIER_LIMITS = {
    "free": ("32MB", "10s"),
    "starter": ("64MB", "15s"),
    "growth": ("128MB", "30s"),
    "enterprise": ("256MB", "1min"),
}


@pytest.mark.parametrize("tier", sorted(TIER_LIMITS))
def test_tier_limits_are_in_force_inside_and_gone_after(admin_conn: psycopg.Connection, tier: str) -> None:
    tenant = make_tenant(admin_conn, tier=tier)
    with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password) as conn:
        defaults = (conn.execute("SHOW work_mem").fetchone()[0], conn.execute("SHOW statement_timeout").fetchone()[0])
        conn.commit()
        with tenant_session(conn, tenant) as tx:
            assert tx.execute("SELECT current_user").fetchone()[0] == "billing_app"
            assert tx.execute("SELECT fn_current_tenant_id()").fetchone()[0] == tenant
            inside = (tx.execute("SHOW work_mem").fetchone()[0], tx.execute("SHOW statement_timeout").fetchone()[0])
        assert inside == TIER_LIMITS[tier]
        after = (conn.execute("SHOW work_mem").fetchone()[0], conn.execute("SHOW statement_timeout").fetchone()[0])
        assert after == defaults
        assert conn.execute("SELECT current_user, fn_current_tenant_id()").fetchone() == ("postgres", None)


def test_unclassified_tenant_gets_free_limits(admin_conn: psycopg.Connection) -> None:
    tenant = uuid.uuid4()
    admin_conn.execute("INSERT INTO organizations (id, name) VALUES (%s, 'No tier')", (tenant,))
    with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password) as conn:
        with tenant_session(conn, tenant) as tx:
            assert tx.execute("SHOW statement_timeout").fetchone()[0] == "10s"


def test_free_tier_statement_is_cancelled_at_its_limit(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn, tier="free")
    admin_conn.execute("UPDATE tier_limits SET statement_timeout = '200ms' WHERE tier = 'free'")
    with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            with tenant_session(conn, tenant) as tx:
                tx.execute("SELECT pg_sleep(2)")
        # The connection is usable again, with no context left over.
        assert conn.execute("SELECT fn_current_tenant_id()").fetchone()[0] is None


def test_context_is_gone_after_an_error(admin_conn: psycopg.Connection) -> None:
    tenant = make_tenant(admin_conn)
    with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password) as conn:
        with pytest.raises(ZeroDivisionError):
            with tenant_session(conn, tenant):
                raise ZeroDivisionError
        assert conn.execute("SELECT fn_current_tenant_id(), current_user").fetchone() == (None, "postgres")


def test_unknown_tenant_is_a_clear_error(admin_conn: psycopg.Connection) -> None:
    missing = uuid.uuid4()
    with psycopg.connect(admin_conn.info.dsn, password=admin_conn.info.password) as conn:
        with pytest.raises(UnknownTenant) as info:
            with tenant_session(conn, missing):
                pass
    assert str(missing) in str(info.value) and "onboard" in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["", "x", "not-a-uuid", "'; DROP TABLE organizations; --", "a" * 500, None,
     "{12345678-1234-5678-1234-567812345678}", "12345678123456781234567812345678",
     "urn:uuid:12345678-1234-5678-1234-567812345678"],
)
def test_malformed_tenant_ids_are_refused_in_one_line(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_tenant_id(value)
    message = str(info.value)
    assert "\n" not in message and len(message) < 200
    assert message.startswith("tenant ")


def test_canonical_uuid_is_accepted() -> None:
    value = "3f2b1c9e-8d4a-4f6b-9c1e-2a7d5e8f0b13"
    assert parse_tenant_id(value) == uuid.UUID(value)
    assert parse_tenant_id(value.upper()) == uuid.UUID(value)
