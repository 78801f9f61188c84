"""Tenant isolation on a Citus cluster (issue 19): the cross-tenant probes of
tests/security/test_isolation.py, against a coordinator and two workers, as billing_app with its
own login, and through PgBouncer in front of the coordinator.

Three tenants with rows in every tenant table, written by the admin: A (free), B (enterprise),
C (starter). Their rows live in shards on the workers; every probe below that reads or writes
runs its statement on a worker, where the policy of the shard decides with the context that
fn_set_tenant_context propagated there (SET LOCAL). After a probe that must change nothing, the
admin compares an md5 of every row of the three tenants with the snapshot taken after seeding.

What differs from a single node, and is pinned here: an INSERT through the view usage_events is
taken to usage_events_mt by an INSTEAD OF trigger (sql/citus/migrations/0007), where the policy
refuses another tenant's row as on a table; Citus refuses UPDATE and DELETE through the view,
and an UPDATE of the distribution column before any policy looks at it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.core.ingest import ingest_usage_events
from tenant_pipelines.core.security import audit_isolation
from tenant_pipelines.core.pooling import pooled_dsn
from tenant_pipelines.db.session import tenant_session
from tenant_pipelines.local.pgbouncer import start_pgbouncer_for, stop_pgbouncer
from tests.citus.conftest import CitusTarget
from tests.conftest import APP_PASSWORD
from tests.security.test_isolation import (
    HOSTILE_CONTEXTS, PERMISSION_DENIED, REFERENCE_PROBES, RLS_VIOLATION, TABLES, UNKNOWN_ID, TenantTable, refusal)

VIEW_WRITE_REFUSED = "cannot modify views when the query contains citus tables"
DISTRIBUTION_COLUMN = "modifying the partition value of rows is not allowed"
by_table = pytest.mark.parametrize("table", TABLES, ids=str)
DATA_TABLES = [t for t in TABLES if not t.data_table]


def seed(admin: psycopg.Connection, name: str, tier: str) -> uuid.UUID:
    tenant = uuid.uuid4()
    now = datetime.now(timezone.utc)
    with admin.transaction():
        admin.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, name))
        admin.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, %s)", (tenant, tier))
        admin.execute("INSERT INTO tenant_schemas (organization_id, schema_name) VALUES (%s, %s)",
                      (tenant, f"tenant_{tenant.hex}"))
        admin.execute("INSERT INTO tenant_backup_config (organization_id, last_backup_at) VALUES (%s, %s)", (tenant, now))
        for plan, status, amount in (("pro", "active", "120.50"), ("basic", "canceled", "9.990001")):
            subscription = admin.execute(
                "INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, %s, %s) RETURNING id",
                (tenant, plan, status)).fetchone()[0]
            admin.execute("INSERT INTO invoices (organization_id, subscription_id, amount, status)"
                          " VALUES (%s, %s, %s, 'paid')", (tenant, subscription, Decimal(amount)))
        admin.execute("INSERT INTO payment_methods (organization_id, kind, last4, is_default)"
                      " VALUES (%s, 'card', '4242', true), (%s, 'bank_account', '6789', false)", (tenant, tenant))
        for i in range(3):
            admin.execute('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties)'
                          " VALUES (%s, %s, %s, %s, %s)",
                          (tenant, f"metric_{i}", Decimal(i + 1), now - timedelta(hours=i), '{"region": "eu"}'))
    return tenant


def snapshot(admin: psycopg.Connection, tenants: list[uuid.UUID]) -> dict[tuple[str, uuid.UUID], tuple[int, str]]:
    digests = {}
    for table in DATA_TABLES:
        rows = admin.execute(sql.SQL(
            "SELECT t.{col}, count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {tbl} t"
            " WHERE t.{col} = ANY(%s) GROUP BY 1").format(col=sql.Identifier(table.column),
                                                           tbl=sql.Identifier(table.name)), (tenants,)).fetchall()
        for tenant, count, digest in rows:
            digests[(table.name, tenant)] = (count, digest)
    return digests


@dataclass
class World:
    admin: psycopg.Connection
    a: uuid.UUID
    b: uuid.UUID
    c: uuid.UUID
    seeded: dict

    @property
    def tenants(self) -> list[uuid.UUID]:
        return [self.a, self.b, self.c]

    @property
    def others(self) -> list[uuid.UUID]:
        return [self.b, self.c]

    def rows_of(self, table: TenantTable, tenant: uuid.UUID) -> int:
        return self.seeded.get((table.stored_in, tenant), (0, ""))[0]

    def assert_untouched(self) -> None:
        assert snapshot(self.admin, self.tenants) == self.seeded


@pytest.fixture
def world(citus_admin: psycopg.Connection) -> World:
    a, b, c = seed(citus_admin, "Tenant A", "free"), seed(citus_admin, "Tenant B", "enterprise"), \
        seed(citus_admin, "Tenant C", "starter")
    return World(citus_admin, a, b, c, snapshot(citus_admin, [a, b, c]))


@contextmanager
def in_tenant(conn: psycopg.Connection, tenant: uuid.UUID) -> Iterator[psycopg.Connection]:
    with conn.transaction():
        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        yield conn


def visible(conn: psycopg.Connection, table: TenantTable, world: World) -> dict[uuid.UUID, int]:
    """tenant -> rows of ``table`` the connection sees, of the world's tenants (other tests' tenants
    share this database)."""
    return dict(conn.execute(sql.SQL("SELECT {col}, count(*) FROM {tbl} WHERE {col} = ANY(%s) GROUP BY 1").format(
        col=sql.Identifier(table.column), tbl=sql.Identifier(table.name)), (world.tenants,)).fetchall())


def visible_anything(conn: psycopg.Connection) -> dict[str, int]:
    """table -> rows the connection sees at all, by a query with no tenant predicate (every shard)."""
    seen = {t.name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.name))).fetchone()[0]
            for t in TABLES}
    return {name: n for name, n in seen.items() if n}


def only(world: World, tenant: uuid.UUID, table: TenantTable) -> dict[uuid.UUID, int]:
    rows = world.rows_of(table, tenant)
    return {tenant: rows} if rows else {}


def current_tenant(conn: psycopg.Connection) -> uuid.UUID | None:
    return conn.execute("SELECT fn_current_tenant_id()").fetchone()[0]


def refused_in_a(world: World, app: psycopg.Connection, error: type[Exception], match: str, statement: str,
                 **params: object) -> None:
    with pytest.raises(error, match=match):
        with in_tenant(app, world.a):
            app.execute(statement, params)


# ======================================================================================
# 1. Cross-tenant reads and writes, table by table, inside tenant A's context.
# ======================================================================================


@by_table
def test_select_sees_only_own_rows(world: World, citus_app: psycopg.Connection, table: TenantTable) -> None:
    with in_tenant(citus_app, world.a):
        assert visible(citus_app, table, world) == only(world, world.a, table)
        for other in world.others:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(table.name), sql.Identifier(table.column))
            assert citus_app.execute(query, (other,)).fetchone()[0] == 0
    world.assert_untouched()


@by_table
def test_insert_for_other_tenant_is_refused(world: World, citus_app: psycopg.Connection, table: TenantTable) -> None:
    for other in world.others:
        # The view's INSTEAD OF trigger inserts into usage_events_mt as the caller: its policy refuses.
        refused_in_a(world, citus_app, errors.InsufficientPrivilege, refusal(table, "INSERT"), table.insert,
                     tenant=other)
    world.assert_untouched()


@by_table
@pytest.mark.parametrize("verb", ["UPDATE", "DELETE"])
def test_update_or_delete_of_other_tenant_changes_nothing(world: World, citus_app: psycopg.Connection,
                                                          table: TenantTable, verb: str) -> None:
    statement = (f"UPDATE {table.name} SET {table.assign} WHERE {table.column} = %(other)s" if verb == "UPDATE"
                 else f"DELETE FROM {table.name} WHERE {table.column} = %(other)s")
    for other in world.others:
        if table.data_table:
            refused_in_a(world, citus_app, errors.FeatureNotSupported, VIEW_WRITE_REFUSED, statement, other=other)
        elif verb in table.granted:
            with in_tenant(citus_app, world.a):
                assert citus_app.execute(statement, {"other": other}).rowcount == 0
        else:
            refused_in_a(world, citus_app, errors.InsufficientPrivilege, PERMISSION_DENIED, statement, other=other)
    world.assert_untouched()


@by_table
def test_update_cannot_move_row_to_other_tenant(world: World, citus_app: psycopg.Connection,
                                                table: TenantTable) -> None:
    """Citus refuses a change of the distribution column outright; without UPDATE, the privilege."""
    statement = f"UPDATE {table.name} SET {table.column} = %(other)s WHERE {table.column} = %(me)s"
    for other in world.others:
        with pytest.raises((errors.FeatureNotSupported, errors.InsufficientPrivilege)) as raised:
            with in_tenant(citus_app, world.a):
                citus_app.execute(statement, {"other": other, "me": world.a})
        message = raised.value.diag.message_primary or ""
        assert message.startswith(PERMISSION_DENIED) or message in (DISTRIBUTION_COLUMN, VIEW_WRITE_REFUSED), message
    world.assert_untouched()


@pytest.mark.parametrize("operation", REFERENCE_PROBES, ids=str)
def test_invoice_cannot_reference_another_tenants_subscription(world: World, citus_app: psycopg.Connection,
                                                               operation: str) -> None:
    """The key checked on A's shard holds the tenant: B's subscription is as unknown as an id that
    exists nowhere, with the same message (but for the shard's number)."""
    theirs = world.admin.execute("SELECT id FROM subscriptions WHERE organization_id = %s LIMIT 1",
                                 (world.b,)).fetchone()[0]
    messages = []
    for subscription in (theirs, UNKNOWN_ID):
        with pytest.raises(errors.ForeignKeyViolation) as raised:
            with in_tenant(citus_app, world.a):
                citus_app.execute(REFERENCE_PROBES[operation], {"me": world.a, "subscription": subscription})
        messages.append(raised.value.diag.message_primary)
    assert messages[0] == messages[1] and "invoices_organization_subscription_fkey" in messages[0]
    world.assert_untouched()


@pytest.mark.parametrize("operation", ["select", "insert", "update", "delete"])
def test_month_partitions_are_not_directly_accessible(world: World, citus_app: psycopg.Connection,
                                                      operation: str) -> None:
    probes = {
        "select": "SELECT count(*) FROM {p}",
        "insert": "INSERT INTO {p} (organization_id, metric_name, quantity, \"timestamp\") VALUES (%(me)s, 'x', 1, now())",
        "update": "UPDATE {p} SET quantity = 0", "delete": "DELETE FROM {p}",
    }
    months = [name for (name,) in world.admin.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'usage_events_mt'::regclass")]
    assert len(months) >= 5 and "usage_events_mt_outside" in months  # the months and the DEFAULT
    for month in months:
        refused_in_a(world, citus_app, errors.InsufficientPrivilege, PERMISSION_DENIED,
                     probes[operation].format(p=month), me=world.a)
    world.assert_untouched()


def test_cached_plans_do_not_carry_a_tenant(world: World, citus_app: psycopg.Connection) -> None:
    query = "SELECT DISTINCT organization_id FROM usage_events_mt WHERE organization_id = ANY(%s)"
    for _ in range(3):
        for tenant in world.tenants:
            with in_tenant(citus_app, tenant):
                assert citus_app.execute(query, (world.tenants,), prepare=True).fetchall() == [(tenant,)]


def test_row_security_off_raises_instead_of_showing_all(world: World, citus_app: psycopg.Connection) -> None:
    for table in DATA_TABLES:
        with pytest.raises(errors.InsufficientPrivilege, match="would be affected by row-level security policy"):
            with in_tenant(citus_app, world.a):
                citus_app.execute("SET LOCAL citus.propagate_set_commands = 'local'")
                citus_app.execute("SET LOCAL row_security = off")
                visible(citus_app, table, world)


# ======================================================================================
# 2. The context: only fn_set_tenant_context's, only in its transaction, on every node.
# ======================================================================================


def test_without_context_every_table_is_empty_and_inserts_are_refused(world: World,
                                                                      citus_app: psycopg.Connection) -> None:
    with citus_app.transaction():
        assert current_tenant(citus_app) is None
        assert visible_anything(citus_app) == {}
    for table in DATA_TABLES:
        with pytest.raises(errors.InsufficientPrivilege, match=refusal(table, "INSERT")):
            with citus_app.transaction():
                citus_app.execute(table.insert, {"tenant": world.a})
    world.assert_untouched()


@pytest.mark.parametrize("template", HOSTILE_CONTEXTS.values(), ids=HOSTILE_CONTEXTS.keys())
@pytest.mark.parametrize("how", ["set_config", "SET LOCAL propagated"])
def test_hostile_context_values_read_as_no_tenant(world: World, citus_app: psycopg.Connection, template: str,
                                                  how: str) -> None:
    """On the coordinator (set_config) and on the workers (a SET LOCAL that reaches them)."""
    value = template.format(a=world.a, b=world.b)
    with citus_app.transaction():
        if how == "set_config":
            citus_app.execute("SELECT set_config('app.current_tenant', %s, true)", (value,))
        else:
            citus_app.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            citus_app.execute(sql.SQL("SET LOCAL app.current_tenant = {}").format(sql.Literal(value)))
        assert current_tenant(citus_app) is None
        assert visible_anything(citus_app) == {}


def test_a_raw_tenant_id_is_no_context_on_any_node(world: World, citus_app: psycopg.Connection) -> None:
    for spelling in (str(world.b), "{%s}" % world.b, str(world.b).upper(), world.b.hex):
        with citus_app.transaction():
            citus_app.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            citus_app.execute(sql.SQL("SET LOCAL app.current_tenant = {}").format(sql.Literal(spelling)))
            assert current_tenant(citus_app) is None
            assert visible_anything(citus_app) == {}


def test_a_session_level_context_is_no_context_on_any_node(world: World, citus_app: psycopg.Connection) -> None:
    """The seed's mistake: a context written for the session, even stamped right for the
    transaction that wrote it, is no context later: the coordinator's stamp check says so, and
    a session-level setting never reaches a worker."""
    with citus_app.transaction():
        citus_app.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
        stamped = citus_app.execute("SELECT current_setting('app.current_tenant')").fetchone()[0]
        citus_app.execute("SELECT set_config('app.current_tenant', %s, false)", (stamped,))
    citus_app.execute("SET citus.propagate_set_commands = 'local'")
    citus_app.execute(sql.SQL("SET app.current_tenant = {}").format(sql.Literal(stamped)))
    for _ in range(3):
        with citus_app.transaction():
            assert current_tenant(citus_app) is None
            assert visible_anything(citus_app) == {}
    citus_app.execute("RESET app.current_tenant")
    citus_app.execute("RESET citus.propagate_set_commands")


def test_a_context_set_with_set_config_does_not_reach_the_workers(world: World,
                                                                  citus_app: psycopg.Connection) -> None:
    """On a single node a stamped value written by hand in its own transaction is that tenant's
    context. On Citus set_config() stays on the coordinator: the coordinator says B, the workers
    see no tenant, so no row of B shows."""
    forged = "SELECT set_config('app.current_tenant', extract(epoch FROM transaction_timestamp())::text || %s, true)"
    with citus_app.transaction():
        citus_app.execute(forged, (str(world.b),))
        assert current_tenant(citus_app) == world.b
        assert visible_anything(citus_app) == {}


@pytest.mark.parametrize("ending", ["commit", "rollback", "error"])
def test_context_ends_with_its_transaction_on_every_node(world: World, citus_app: psycopg.Connection,
                                                         ending: str) -> None:
    """The workers' connections are reused by the next transaction of the same session: the
    setting reads '' there, no tenant."""
    citus_app.execute("BEGIN")
    citus_app.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
    assert visible(citus_app, TABLES[0], world) == only(world, world.a, TABLES[0])
    assert citus_app.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0] == 3  # every shard: A's only
    if ending == "error":
        with pytest.raises(errors.DivisionByZero):
            citus_app.execute("SELECT 1/0")
    citus_app.execute("COMMIT" if ending == "commit" else "ROLLBACK")
    for _ in range(2):
        with citus_app.transaction():
            assert current_tenant(citus_app) is None
            assert visible_anything(citus_app) == {}


def test_set_context_refuses_null_and_unknown_tenants(world: World, citus_app: psycopg.Connection) -> None:
    with pytest.raises(errors.NullValueNotAllowed, match="tenant id is NULL"):
        with citus_app.transaction():
            citus_app.execute("SELECT fn_set_tenant_context(NULL)")
    with citus_app.transaction():
        with pytest.raises(errors.NoDataFound, match=f"unknown tenant {UNKNOWN_ID}"):
            with citus_app.transaction():
                citus_app.execute("SELECT fn_set_tenant_context(%s)", (UNKNOWN_ID,))
        assert current_tenant(citus_app) is None
        assert visible_anything(citus_app) == {}


def test_tenant_session_and_ingest_write_only_the_tenant_in_context(world: World,
                                                                   citus_app: psycopg.Connection) -> None:
    now = datetime.now(timezone.utc)
    events = [(f"ingested_{i}", Decimal(i), now - timedelta(minutes=i), '{"via": "ingest"}') for i in range(5)]
    assert ingest_usage_events(citus_app, str(world.a), events) == 5
    with tenant_session(citus_app, world.a, role=None) as tx:
        assert tx.execute("SELECT organization_id, count(*) FROM usage_events WHERE organization_id = %s GROUP BY 1",
                          (world.a,)).fetchall() == [(world.a, 8)]
    counts = dict(world.admin.execute(
        "SELECT organization_id, count(*) FROM usage_events_mt WHERE organization_id = ANY(%s) GROUP BY 1",
        (world.tenants,)).fetchall())
    assert counts == {world.a: 8, world.b: 3, world.c: 3}


def test_billing_app_cannot_log_in_to_a_worker(citus: CitusTarget, citus_admin: psycopg.Connection) -> None:
    """A worker cannot check a context's stamp, so applications reach the coordinator only: over
    TCP a worker refuses every role but its superuser (the Citus nodes meet on their sockets)."""
    ports = [port for (port,) in citus_admin.execute("SELECT nodeport FROM pg_dist_node WHERE groupid > 0")]
    assert len(ports) == 2
    for port in ports:
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
            psycopg.connect(host="127.0.0.1", port=port, user="billing_app", password=APP_PASSWORD,
                            dbname="billing", connect_timeout=5)


def test_the_isolation_audit_finds_nothing_on_the_coordinator(world: World) -> None:
    """core/security.py's catalog audit on the coordinator: no weakened isolation (Citus's own
    definer views in public are closed to applications: sql/citus/migrations/0003)."""
    assert audit_isolation(world.admin) == []


# ======================================================================================
# 3. Through PgBouncer in front of the coordinator (transaction pooling, one server connection).
# ======================================================================================


@pytest.fixture
def pooler(citus: CitusTarget) -> Iterator[str]:
    """PgBouncer in front of the coordinator, one server connection for billing_app's pool: every
    client shares it, and so the coordinator's connections to the workers."""
    home = Path(tempfile.mkdtemp(prefix="tp-citus-pgb-", dir="/tmp"))
    os.chmod(home, 0o755)
    try:
        dsn = start_pgbouncer_for(citus.admin_dsn, state_dir=home, default_pool_size=1)
        yield pooled_dsn(int(conninfo_to_dict(dsn)["port"]), password=APP_PASSWORD)
    finally:
        stop_pgbouncer(home, immediate=True)
        shutil.rmtree(home, ignore_errors=True)


def test_through_pgbouncer_each_client_sees_its_tenant_and_a_careless_one_leaks_nothing(
        world: World, pooler: str) -> None:
    def pooled() -> psycopg.Connection:
        return psycopg.connect(pooler, autocommit=True, prepare_threshold=None)

    with pooled() as careless:
        backend = careless.execute("SELECT pg_backend_pid()").fetchone()[0]
        with in_tenant(careless, world.a):
            stamped = careless.execute("SELECT current_setting('app.current_tenant')").fetchone()[0]
            assert visible(careless, TABLES[4], world) == only(world, world.a, TABLES[4])
        careless.execute(sql.SQL("SET app.current_tenant = {}").format(sql.Literal(stamped)))
        careless.execute("SET citus.propagate_set_commands = 'local'")
    for tenant in (None, world.b, world.c, None):
        with pooled() as client:
            assert client.execute("SELECT pg_backend_pid()").fetchone()[0] == backend  # the same server connection
            with client.transaction():
                if tenant is not None:
                    client.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
                assert current_tenant(client) == tenant
                for table in DATA_TABLES:
                    assert visible(client, table, world) == ({} if tenant is None else only(world, tenant, table))
                    for other in world.tenants:
                        if other != tenant:
                            assert client.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                                sql.Identifier(table.name), sql.Identifier(table.column)), (other,)).fetchone()[0] == 0
            if tenant is not None:
                with pytest.raises(errors.InsufficientPrivilege, match=RLS_VIOLATION):
                    with in_tenant(client, tenant):
                        client.execute(TABLES[4].insert, {"tenant": world.a})
    world.assert_untouched()
