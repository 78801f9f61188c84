"""Storage tiering of a schema tenant's months (issue 17): tenant_<hex>.usage_events_pYYYYMM age
and move hot -> warm -> cold like a dedicated tenant's, by both methods (online copy-and-swap
with its capture, catch-up, swap and cold freeze; SET TABLESPACE), while the tenant reads its
rows through its routed names; the plan shows them; another schema's same-named months stay."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest

from tenant_pipelines.core import moves
from tenant_pipelines.core.security import audit_isolation
from tenant_pipelines.core.tiering import Pace, misplaced, plan, tier_tenant
from tests.conftest import make_tenant
from tests.core.test_tiering import AS_OF, index_tablespaces, month, moves_in_progress, tablespace_of

# Ten days into this month (AS_OF): months 0 and -1 are hot, -2 and -3 warm, -4 and -5 cold.
EXPECTED = {1: "hot_storage", 0: "hot_storage", -1: "hot_storage", -2: "warm_storage", -3: "warm_storage",
            -4: "cold_storage", -5: "cold_storage"}
MOVED = (-2, -3, -4, -5)


def schema_of(conn: psycopg.Connection, tenant: uuid.UUID) -> str:
    return conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]


def month_leaf(schema: str, offset: int) -> str:
    return f"{schema}.usage_events_p{month(offset):%Y%m}"


def fill_pooled(conn: psycopg.Connection, tenant: uuid.UUID, per_month: int = 200) -> None:
    with conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp") FROM STDIN') as copy:
        for offset in range(-5, 1):
            for i in range(per_month):
                copy.write_row((tenant, "api_calls", Decimal(i), month(offset) + timedelta(hours=i)))


def routed_rows(app_dsn: str, tenant: uuid.UUID) -> list[tuple]:
    """What the tenant sees through its routed name usage_events, as billing_app."""
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        return app.execute('SELECT id, "timestamp", quantity, metric_name FROM usage_events ORDER BY id').fetchall()


@pytest.fixture
def schema_tenant(admin_conn: psycopg.Connection) -> uuid.UUID:
    """An enterprise tenant filled while pooled (events this month and 1 to 5 months back),
    then moved into a schema of its own."""
    tenant = make_tenant(admin_conn, tier="enterprise")
    fill_pooled(admin_conn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema")
    schema = schema_of(admin_conn, tenant)
    for offset in range(-5, 1):
        assert admin_conn.execute(f"SELECT count(*) FROM {month_leaf(schema, offset)}").fetchone()[0] == 200, offset
    return tenant


@pytest.fixture
def other_schema_tenant(admin_conn: psycopg.Connection) -> uuid.UUID:
    """A second schema tenant, made empty and filled by the admin: its months have the same
    names as the first one's, in another schema."""
    tenant = make_tenant(admin_conn, tier="enterprise")
    schema = admin_conn.execute("SELECT fn_create_tenant_schema(%s, %s)", (tenant, month(-5).date())).fetchone()[0]
    admin_conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    admin_conn.execute(f'INSERT INTO {schema}.usage_events (organization_id, metric_name, quantity, "timestamp")'
                       " SELECT %s, 'api_calls', g, %s::timestamptz + g * interval '1 hour' FROM generate_series(1, 50) g",
                       (tenant, month(-5)))
    return tenant


def test_the_plan_lists_a_schema_tenants_months(admin_conn: psycopg.Connection, schema_tenant: uuid.UUID) -> None:
    schema = schema_of(admin_conn, schema_tenant)
    planned = plan(admin_conn, schema_tenant, AS_OF)
    assert {p.schema for p in planned} == {schema} and {p.tenant for p in planned} == {str(schema_tenant)}
    by_month = {p.month_start: p for p in planned}
    for offset, tablespace in EXPECTED.items():
        p = by_month[month(offset).date()]
        assert p.partition_name == f"usage_events_p{month(offset):%Y%m}"
        assert p.qualified_name == month_leaf(schema, offset)
        assert p.target_tablespace == tablespace and p.current_tablespace == "hot_storage", offset
        assert p.movable == (offset < 0) and p.misplaced == (offset in MOVED), offset
    assert not any(p.partition_name.endswith("_rest") for p in planned), "the DEFAULT partition never moves"
    # Asked for everything, the SQL function names the schema; nothing of the tenant is in public.
    rows = admin_conn.execute("SELECT partition_schema::text, partition_name, age, target_tier FROM fn_tier_plan(NULL, %s)"
                              " WHERE tenant = %s", (AS_OF, schema_tenant)).fetchall()
    assert {r[0] for r in rows} == {schema} and len(rows) == len(planned)
    assert {r[3] for r in rows if r[1] == f"usage_events_p{month(-5):%Y%m}"} == {"cold"}
    assert [p.qualified_name for p in misplaced(admin_conn, [str(schema_tenant)], AS_OF)] == [
        month_leaf(schema, o) for o in (-5, -4, -3, -2)]


@pytest.mark.parametrize("method", ["online", "set-tablespace"])
def test_a_schema_tenants_old_months_land_in_warm_and_cold(
    admin_conn: psycopg.Connection, app_dsn: str, schema_tenant: uuid.UUID, other_schema_tenant: uuid.UUID,
    method: str,
) -> None:
    schema, other = schema_of(admin_conn, schema_tenant), schema_of(admin_conn, other_schema_tenant)
    before = routed_rows(app_dsn, schema_tenant)
    assert len(before) == 1200
    other_before = {o: tablespace_of(admin_conn, month_leaf(other, o)) for o in EXPECTED}

    report = tier_tenant(admin_conn, schema_tenant, as_of=AS_OF, method=method,
                         pace=Pace(batch_blocks=1))

    assert {m.method for m in report.moves} == {method}
    assert {m.partition for m in report.moves} == {month_leaf(schema, o) for o in MOVED}
    for offset, tablespace in EXPECTED.items():
        assert tablespace_of(admin_conn, month_leaf(schema, offset)) == tablespace, offset
        assert index_tablespaces(admin_conn, month_leaf(schema, offset)) == {tablespace}, offset
    assert all(m.frozen == (m.to_tablespace == "cold_storage") for m in report.moves)
    assert report.misplaced_left == 0 and report.placement["cold"]["partitions"] == 2
    frozen_age = admin_conn.execute("SELECT age(relfrozenxid) FROM pg_class WHERE oid = %s::regclass",
                                    (month_leaf(schema, -5),)).fetchone()[0]
    assert frozen_age < admin_conn.execute(
        "SELECT age(datfrozenxid) FROM pg_database WHERE datname = current_database()").fetchone()[0]
    # Same rows through the routed name; the months are still the schema's, bounds and all.
    assert routed_rows(app_dsn, schema_tenant) == before
    parents = admin_conn.execute(
        "SELECT DISTINCT i.inhparent::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' AND c.relname ~ '^usage_events_p'", (schema,)).fetchall()
    assert parents == [(f"{schema}.usage_events",)]
    # The other schema's months of the same names are where they were; nothing is left behind.
    assert {o: tablespace_of(admin_conn, month_leaf(other, o)) for o in EXPECTED} == other_before
    assert moves_in_progress(admin_conn) == 0
    assert audit_isolation(admin_conn) == []
    assert tier_tenant(admin_conn, schema_tenant, as_of=AS_OF, method=method).moves == [], "a second run moves nothing"
    # The other tenant's months move by its own run.
    tier_tenant(admin_conn, other_schema_tenant, as_of=AS_OF, method=method)
    assert tablespace_of(admin_conn, month_leaf(other, -5)) == "cold_storage"


def test_writes_to_a_schema_month_during_its_online_move_are_kept(
    admin_conn: psycopg.Connection, app_dsn: str, schema_tenant: uuid.UUID
) -> None:
    """The tenant inserts, updates and deletes rows of the moving month through its routed name
    while it is copied: the capture trigger logs them and the catch-up and swap bring them."""
    schema = schema_of(admin_conn, schema_tenant)
    old = month_leaf(schema, -5)
    calls = [0]

    def write_between_batches(_: float) -> None:
        moving = admin_conn.execute(
            "SELECT count(*) FROM tenant_pipelines.partition_moves WHERE partition_schema = %s AND partition_name = %s",
            (schema, old.split(".")[1])).fetchone()[0]
        calls[0] += moving
        if not moving or calls[0] not in (1, 3):
            return
        with psycopg.connect(app_dsn) as app, app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (schema_tenant,))
            app.execute('INSERT INTO usage_events (organization_id, metric_name, quantity, "timestamp")'
                        " SELECT %s, 'late', 7, %s::timestamptz + g * interval '1 minute' FROM generate_series(1, 5) g",
                        (schema_tenant, month(-5) + timedelta(days=20)))
            app.execute('UPDATE usage_events SET quantity = quantity + 1000 WHERE "timestamp" >= %s AND "timestamp" < %s',
                        (month(-5), month(-5) + timedelta(hours=10)))
            app.execute("DELETE FROM usage_events WHERE metric_name = 'api_calls' AND \"timestamp\" >= %s"
                        ' AND "timestamp" < %s', (month(-5) + timedelta(hours=100), month(-5) + timedelta(hours=103)))

    report = tier_tenant(admin_conn, schema_tenant, as_of=AS_OF, pace=Pace.fixed(0.001, 1),
                         sleep=write_between_batches)
    assert calls[0] >= 3
    assert sum(m.rows_caught_up for m in report.moves) > 0
    quantities = sorted(r[0] for r in admin_conn.execute(f"SELECT quantity FROM {old}").fetchall())
    assert quantities == sorted([Decimal(i + 2000) for i in range(10)]  # updated by both rounds
                                + [Decimal(i) for i in range(10, 200) if i not in (100, 101, 102)] + [Decimal(7)] * 10)
    assert tablespace_of(admin_conn, old) == "cold_storage" and moves_in_progress(admin_conn) == 0
    assert len(routed_rows(app_dsn, schema_tenant)) == 1200 + 10 - 3


def test_a_crashed_online_move_of_a_schema_month_is_started_again(
    admin_conn: psycopg.Connection, admin_dsn: str, schema_tenant: uuid.UUID
) -> None:
    schema = schema_of(admin_conn, schema_tenant)
    name = f"usage_events_p{month(-5):%Y%m}"
    before = admin_conn.execute(f"SELECT * FROM {schema}.{name} ORDER BY id").fetchall()
    with psycopg.connect(admin_dsn, autocommit=True) as crashed:  # began, copied a little, then died
        shadow = crashed.execute("SELECT shadow_name FROM fn_move_begin(%s, 'cold_storage', %s)",
                                 (name, schema)).fetchone()[0]
        crashed.execute(f'INSERT INTO tenant_pipelines."{shadow}" SELECT * FROM {schema}.{name} LIMIT 10')
    assert moves_in_progress(admin_conn) == 5  # the move's row, shadow, log and two triggers
    assert audit_isolation(admin_conn) == [], "the shadow is protected like the month"
    report = tier_tenant(admin_conn, schema_tenant, as_of=AS_OF)
    assert report.restarted == [f"{schema}.{name}"]
    assert admin_conn.execute(f"SELECT * FROM {schema}.{name} ORDER BY id").fetchall() == before
    assert tablespace_of(admin_conn, f"{schema}.{name}") == "cold_storage" and moves_in_progress(admin_conn) == 0


def test_the_dbas_function_moves_a_schema_tenants_months(
    admin_conn: psycopg.Connection, app_dsn: str, schema_tenant: uuid.UUID
) -> None:
    schema = schema_of(admin_conn, schema_tenant)
    before = routed_rows(app_dsn, schema_tenant)
    moved = admin_conn.execute("SELECT partition_schema::text, partition_name, to_tablespace::text"
                               " FROM fn_tier_usage_data(%s, %s)", (schema_tenant, AS_OF)).fetchall()
    assert {(s + "." + n, t) for s, n, t in moved} == {(month_leaf(schema, o), EXPECTED[o]) for o in MOVED}
    assert tablespace_of(admin_conn, month_leaf(schema, -4)) == "cold_storage"
    assert routed_rows(app_dsn, schema_tenant) == before
    assert tier_tenant(admin_conn, schema_tenant, as_of=AS_OF).moves == []
