"""Tenant isolation, probed as the application sees the database.

Every probe logs in as ``billing_app`` with its own login (``app_dsn``), never via SET ROLE,
against a fresh database holding three tenants with rows in every tenant table:

* A: free tier, pooled: its usage events are in the pool, usage_events_mt_default, split by month;
* B: enterprise tier, onboarded with fn_create_tenant_partition: a partition of its own,
  split into months;
* C: starter tier flagged dedicated_resources, onboarded the same way: a partition of its own,
  not split;
* D: free tier, pooled like A: its rows share the pool's leaves (the very same tables) with A's,
  and only row-level security keeps them apart;
* E: growth tier, in a schema of its own (tenant_<hex>, sql/functions/fn_create_tenant_schema.sql):
  its subscriptions, invoices, payment_methods and usage events are in that schema's tables,
  which fn_set_tenant_context routes the same names to.

The probes marked ``by_placement`` run three times, with A pooled (as above), in a dedicated
partition, and in a schema of its own: so every probe crosses pooled, partition and schema
tenants in both directions (A against E: pooled vs schema, partition vs schema, schema vs
schema; E's A against B, C, D: schema vs partition and pooled).

so probes through the parent cross every routing path of the partition layout.

The fixture data is written by the admin (a superuser, so RLS does not apply to it). After a
probe that must change nothing, the admin compares an md5 of every row's text, per table and
per tenant, with the snapshot taken right after seeding.

Docstrings name the item of /work/shared/SEED-REVIEW.md each test pins down.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from tenant_pipelines.core.security import audit_isolation
from tenant_pipelines.core.ingest import ingest_usage_events
from tenant_pipelines.db.session import tenant_session
from tenant_pipelines.errors import InvalidInput, UnknownTenant

# --------------------------------------------------------------------------------------
# The tenant tables, and what billing_app is granted on each (sql/0006).
# --------------------------------------------------------------------------------------

ALL = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
READ = frozenset({"SELECT"})


@dataclass(frozen=True)
class TenantTable:
    name: str  # the relation billing_app queries
    column: str  # its tenant column
    granted: frozenset[str]  # billing_app's privileges on it
    insert: str  # an INSERT for the tenant %(tenant)s
    assign: str  # a harmless SET clause for UPDATE probes
    data_table: str = ""  # where the rows live (for a view: its table)

    @property
    def stored_in(self) -> str:
        return self.data_table or self.name

    def __str__(self) -> str:
        return self.name


TABLES = [
    TenantTable("organizations", "id", frozenset({"SELECT", "UPDATE"}),
                "INSERT INTO organizations (id, name) VALUES (%(tenant)s, 'intruder')",
                "name = 'intruder'"),
    TenantTable("subscriptions", "organization_id", ALL,
                "INSERT INTO subscriptions (organization_id, plan, status) VALUES (%(tenant)s, 'pro', 'active')",
                "status = 'canceled'"),
    TenantTable("invoices", "organization_id", ALL,
                "INSERT INTO invoices (organization_id, amount, status) VALUES (%(tenant)s, 1, 'open')",
                "amount = 0"),
    TenantTable("payment_methods", "organization_id", ALL,
                "INSERT INTO payment_methods (organization_id, kind) VALUES (%(tenant)s, 'card')",
                "last4 = '0000'"),
    TenantTable("usage_events_mt", "organization_id", ALL,
                "INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
                " VALUES (%(tenant)s, 'api_calls', 1, now())",
                "quantity = 0"),
    TenantTable("usage_events", "organization_id", ALL,
                "INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\")"
                " VALUES (%(tenant)s, 'api_calls', 1, now())",
                "quantity = 0", data_table="usage_events_mt"),
    TenantTable("tenant_classifications", "organization_id", READ,
                "INSERT INTO tenant_classifications (organization_id, tier) VALUES (%(tenant)s, 'enterprise')",
                "tier = 'enterprise'"),
    TenantTable("tenant_schemas", "organization_id", READ,
                "INSERT INTO tenant_schemas (organization_id, schema_name) VALUES (%(tenant)s, 'intruder')",
                "schema_name = 'intruder'"),
    TenantTable("tenant_backup_config", "organization_id", READ,
                "INSERT INTO tenant_backup_config (organization_id) VALUES (%(tenant)s)",
                "retention_days = 1"),
]
TABLE = {t.name: t for t in TABLES}
DATA_TABLES = [t for t in TABLES if not t.data_table]

RLS_VIOLATION = "new row violates row-level security policy"
PERMISSION_DENIED = "permission denied for"
UNKNOWN_ID = uuid.UUID("5d1e1c3a-0b7e-4f3c-9a55-3c1b2f9d7e10")  # no organization has it

by_table = pytest.mark.parametrize("table", TABLES, ids=str)
# Where tenant A lives (the world fixture's parameter; 'pooled' when a test does not say).
PLACEMENTS = ("pooled", "partition", "schema")
by_placement = pytest.mark.parametrize("world", PLACEMENTS, indirect=True, ids=[f"A-{p}" for p in PLACEMENTS])
# The names a schema tenant's transaction is routed to: its schema's tables (sql/0020).
SCHEMA_TABLES = ("subscriptions", "invoices", "payment_methods", "usage_events")
DEFAULT_SEARCH_PATH = '"$user", public'


def refusal(table: TenantTable, privilege: str) -> str:
    """The message billing_app gets for a refused write: no privilege, or RLS's WITH CHECK."""
    return RLS_VIOLATION if privilege in table.granted else PERMISSION_DENIED


# --------------------------------------------------------------------------------------
# Fixture data, written by the admin.
# --------------------------------------------------------------------------------------


def seed_tenant(admin: psycopg.Connection, name: str, tier: str, *, schema: bool = False) -> uuid.UUID:
    """An organization with rows in every tenant table (two or three where a tenant may have many).
    With ``schema``, the tenant is first placed in a schema of its own, and its rows of the
    schema's tables are written there (the admin's transaction routed like the tenant's)."""
    tenant = uuid.uuid4()
    now = datetime.now(timezone.utc)
    with admin.transaction():
        admin.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, name))
        admin.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, %s)", (tenant, tier))
        admin.execute("INSERT INTO tenant_schemas (organization_id, schema_name) VALUES (%s, %s)",
                      (tenant, f"tenant_{tenant.hex}"))
        if schema:
            own = place_in_schema(admin, tenant)
            admin.execute("SELECT set_config('search_path', %s, true)", (f"{own}, public",))
        admin.execute("INSERT INTO tenant_backup_config (organization_id, last_backup_at) VALUES (%s, %s)",
                      (tenant, now))
        for plan, status, amount in (("pro", "active", "120.50"), ("basic", "canceled", "9.990001")):
            subscription = admin.execute(
                "INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, %s, %s) RETURNING id",
                (tenant, plan, status),
            ).fetchone()[0]
            admin.execute(
                "INSERT INTO invoices (organization_id, subscription_id, amount, status) VALUES (%s, %s, %s, 'paid')",
                (tenant, subscription, Decimal(amount)),
            )
        admin.execute(
            "INSERT INTO payment_methods (organization_id, kind, last4, is_default)"
            " VALUES (%s, 'card', '4242', true), (%s, 'bank_account', '6789', false)",
            (tenant, tenant),
        )
        for i in range(3):
            admin.execute(
                'INSERT INTO usage_events (organization_id, metric_name, quantity, "timestamp", properties)'
                " VALUES (%s, %s, %s, %s, %s)",
                (tenant, f"metric_{i}", Decimal(i + 1), now - timedelta(hours=i), '{"region": "eu"}'),
            )
    return tenant


def place_in_schema(admin: psycopg.Connection, tenant: uuid.UUID) -> str:
    """Place the tenant in a schema of its own, as tests/core/test_schema_routing.py does (there
    are no rows to move yet). Returns the schema."""
    schema = admin.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
    admin.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    return schema


def tenant_schemas(admin: psycopg.Connection) -> dict[uuid.UUID, str]:
    """Every schema tenant's schema, from the registry."""
    return dict(admin.execute(
        "SELECT organization_id, location FROM tenant_placements WHERE kind = 'schema'").fetchall())


def onboard_partition(admin: psycopg.Connection, tenant: uuid.UUID) -> str:
    """Give the tenant its own partition the way operators do (sql/0007, sql/0016), moving its
    rows out of the pool. Returns the layout: 'single' or 'monthly'."""
    result = admin.execute("SELECT fn_create_tenant_partition(%s)", (tenant,)).fetchone()[0]
    return result["layout"]


def snapshot(admin: psycopg.Connection) -> dict[tuple[str, uuid.UUID], tuple[int, str]]:
    """(table, tenant) -> (row count, md5 of every row's text in a fixed order), seen by the admin;
    a tenant schema's tables as '<schema>.<table>'."""
    digests = {}
    relations = [(t.name, sql.Identifier(t.name), t.column) for t in DATA_TABLES]
    for schema in sorted(tenant_schemas(admin).values()):
        relations += [(f"{schema}.{name}", sql.Identifier(schema, name), "organization_id") for name in SCHEMA_TABLES]
    for key, relation, column in relations:
        rows = admin.execute(
            sql.SQL(
                "SELECT t.{col}, count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {tbl} t GROUP BY 1"
            ).format(col=sql.Identifier(column), tbl=relation)
        ).fetchall()
        for tenant, count, digest in rows:
            digests[(key, tenant)] = (count, digest)
    return digests


@dataclass
class World:
    admin: psycopg.Connection
    app_dsn: str
    a: uuid.UUID
    b: uuid.UUID
    c: uuid.UUID
    d: uuid.UUID
    e: uuid.UUID
    placement: str = "pooled"  # A's
    schemas: dict[uuid.UUID, str] = field(default_factory=dict)  # schema tenants' schemas
    seeded: dict = field(default_factory=dict)

    @property
    def others(self) -> list[uuid.UUID]:
        """The tenants A must never reach: B (monthly partitions), C (a single partition), D
        (pooled: in the same pool leaves as A when A is pooled) and E (a schema of its own)."""
        return [self.b, self.c, self.d, self.e]

    def stored_in(self, table: TenantTable | str, tenant: uuid.UUID) -> str:
        """The snapshot key of the relation that holds ``tenant``'s rows of ``table`` (as the
        tenant's routed transaction names it)."""
        table = TABLE[table] if isinstance(table, str) else table
        if tenant in self.schemas and table.name in SCHEMA_TABLES:
            return f"{self.schemas[tenant]}.{table.name}"
        return table.stored_in

    def rows_of(self, table: TenantTable | str, tenant: uuid.UUID) -> int:
        return self.seeded.get((self.stored_in(table, tenant), tenant), (0, ""))[0]

    def assert_untouched(self) -> None:
        """Every tenant's rows in every table are byte-for-byte what the admin seeded."""
        assert snapshot(self.admin) == self.seeded

    def connect_app(self, *, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.app_dsn, autocommit=autocommit)


@pytest.fixture
def world(request: pytest.FixtureRequest, admin_conn: psycopg.Connection, app_dsn: str) -> World:
    placement = getattr(request, "param", "pooled")
    a = seed_tenant(admin_conn, "Tenant A", "free", schema=placement == "schema")
    b = seed_tenant(admin_conn, "Tenant B", "enterprise")
    c = seed_tenant(admin_conn, "Tenant C", "starter")
    dedicated = [c, a] if placement == "partition" else [c]
    admin_conn.execute("UPDATE tenant_classifications SET dedicated_resources = true"
                       " WHERE organization_id = ANY(%s)", (dedicated,))
    d = seed_tenant(admin_conn, "Tenant D", "free")
    e = seed_tenant(admin_conn, "Tenant E", "growth", schema=True)
    assert (onboard_partition(admin_conn, b), onboard_partition(admin_conn, c)) == ("monthly", "single")
    assert onboard_partition(admin_conn, d) == "pooled"
    if placement != "schema":
        assert onboard_partition(admin_conn, a) == {"pooled": "pooled", "partition": "single"}[placement]
    if placement == "pooled":
        shared = admin_conn.execute(
            "SELECT count(DISTINCT organization_id) FROM usage_events_mt_default"
            " WHERE tableoid = (SELECT tableoid FROM usage_events_mt WHERE organization_id = %s LIMIT 1)", (a,))
        assert shared.fetchone()[0] == 2, "A and D share a leaf"
    schemas = tenant_schemas(admin_conn)
    assert set(schemas) == ({a, e} if placement == "schema" else {e})
    return World(admin_conn, app_dsn, a, b, c, d, e, placement, schemas, seeded=snapshot(admin_conn))


@pytest.fixture
def app(world: World) -> Iterator[psycopg.Connection]:
    """billing_app's own login, in autocommit: every probe states its transaction."""
    with world.connect_app() as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("billing_app", "billing_app")
        yield conn


# --------------------------------------------------------------------------------------
# Probing helpers, run as billing_app.
# --------------------------------------------------------------------------------------


@contextmanager
def in_tenant(conn: psycopg.Connection, tenant: uuid.UUID) -> Iterator[psycopg.Connection]:
    """One transaction in ``tenant``'s context, entered with fn_set_tenant_context."""
    with conn.transaction():
        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        yield conn


def visible(conn: psycopg.Connection, table: TenantTable) -> dict[uuid.UUID, int]:
    """tenant -> rows of ``table`` the connection can see."""
    rows = conn.execute(
        sql.SQL("SELECT {col}, count(*) FROM {tbl} GROUP BY 1").format(
            col=sql.Identifier(table.column), tbl=sql.Identifier(table.name)
        )
    ).fetchall()
    return dict(rows)


def visible_everywhere(conn: psycopg.Connection) -> dict[str, dict[uuid.UUID, int]]:
    """name -> tenant -> rows, for every relation where the connection sees a row: every tenant
    table by the name applications use (routed as the context says), and every tenant schema's
    tables by their qualified names ('<schema>.<table>'; the schemas are read from the catalog,
    which billing_app can read)."""
    seen = {table.name: visible(conn, table) for table in TABLES}
    for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ '^tenant_[0-9a-f]{32}$'"):
        for name in SCHEMA_TABLES:
            seen[f"{schema}.{name}"] = dict(conn.execute(sql.SQL("SELECT organization_id, count(*) FROM {} GROUP BY 1")
                                                         .format(sql.Identifier(schema, name))).fetchall())
    return {name: counts for name, counts in seen.items() if counts}


def nothing_visible() -> dict[str, dict]:
    return {}


def only(world: World, tenant: uuid.UUID) -> dict[str, dict[uuid.UUID, int]]:
    """What a connection in ``tenant``'s context must see: all of its rows and nobody else's
    (a schema tenant's also by its schema's qualified names)."""
    names = [table.name for table in TABLES]
    if tenant in world.schemas:
        names += [f"{world.schemas[tenant]}.{name}" for name in SCHEMA_TABLES]
    expected = {}
    for name in names:
        rows = (world.seeded.get((name, tenant), (0, ""))[0] if "." in name
                else world.rows_of(TABLE[name], tenant))
        if rows:
            expected[name] = {tenant: rows}
    return expected


def search_path(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_setting('search_path')").fetchone()[0]


def routes_to(conn: psycopg.Connection) -> dict[str, str]:
    """name -> the relation each routed name resolves to, schema-qualified."""
    rows = conn.execute(
        "SELECT n, to_regclass(n)::oid::regclass::text, (SELECT c.relnamespace::regnamespace::text FROM pg_class c"
        " WHERE c.oid = to_regclass(n)) FROM unnest(%s::text[]) n", (list(SCHEMA_TABLES),)).fetchall()
    return {name: f"{schema}.{name}" for name, _, schema in rows}


def expected_routes(world: World, tenant: uuid.UUID | None) -> dict[str, str]:
    schema = world.schemas.get(tenant, "public")
    return {name: f"{schema}.{name}" for name in SCHEMA_TABLES}


def current_tenant(conn: psycopg.Connection) -> uuid.UUID | None:
    return conn.execute("SELECT fn_current_tenant_id()").fetchone()[0]


def run(conn: psycopg.Connection, statement: str, **params: object) -> int:
    return conn.execute(statement, params).rowcount


def refused_in_a(world: World, app: psycopg.Connection, match: str, statement: str, **params: object) -> None:
    """``statement`` run in tenant A's context is refused (InsufficientPrivilege matching ``match``)."""
    with pytest.raises(errors.InsufficientPrivilege, match=match):
        with in_tenant(app, world.a):
            run(app, statement, **params)


def assert_reaches_no_other_tenant(world: World, app: psycopg.Connection, table: TenantTable, verb: str,
                                   statement: str) -> None:
    """``statement`` (an UPDATE or DELETE of ``table``'s rows of tenant %(other)s), run in A's
    context for each other tenant, matches no row, or is refused when ``verb`` is not granted on
    ``table``; no tenant's rows change."""
    for other in world.others:
        if verb in table.granted:
            with in_tenant(app, world.a):
                assert run(app, statement, other=other) == 0
        else:
            refused_in_a(world, app, PERMISSION_DENIED, statement, other=other)
    world.assert_untouched()


# ======================================================================================
# 1. Cross-tenant reads and writes, table by table, inside tenant A's context.
# ======================================================================================


@by_placement
@by_table
def test_select_sees_only_own_rows(world: World, app: psycopg.Connection, table: TenantTable) -> None:
    """Items 4, 5, 6: A sees every one of its rows (payment_methods included) and none of B's or C's."""
    with in_tenant(app, world.a):
        assert visible(app, table) == only(world, world.a).get(table.name, {})
        for other in world.others:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(table.name), sql.Identifier(table.column))
            assert app.execute(query, (other,)).fetchone()[0] == 0
    world.assert_untouched()


@by_placement
@by_table
def test_insert_for_other_tenant_is_refused(world: World, app: psycopg.Connection, table: TenantTable) -> None:
    """Item 7: WITH CHECK (or the missing INSERT privilege) refuses a row for B or C; nothing is written."""
    for other in world.others:
        refused_in_a(world, app, refusal(table, "INSERT"), table.insert, tenant=other)
    world.assert_untouched()


@by_placement
@by_table
def test_update_of_other_tenant_changes_nothing(world: World, app: psycopg.Connection, table: TenantTable) -> None:
    """Items 4, 7: UPDATE ... WHERE tenant = B matches no row (or is not granted at all)."""
    statement = f"UPDATE {table.name} SET {table.assign} WHERE {table.column} = %(other)s"
    assert_reaches_no_other_tenant(world, app, table, "UPDATE", statement)


@by_placement
@by_table
def test_update_cannot_move_row_to_other_tenant(world: World, app: psycopg.Connection, table: TenantTable) -> None:
    """Item 7: SET tenant = B on A's own rows fails WITH CHECK; for usage events, moving to C would
    also route the row into C's partition."""
    statement = f"UPDATE {table.name} SET {table.column} = %(other)s WHERE {table.column} = %(me)s"
    for other in world.others:
        if world.rows_of(table, world.a) or "UPDATE" not in table.granted:
            refused_in_a(world, app, refusal(table, "UPDATE"), statement, other=other, me=world.a)
        else:  # a schema tenant has no rows in usage_events_mt: nothing to move
            with in_tenant(app, world.a):
                assert run(app, statement, other=other, me=world.a) == 0
    world.assert_untouched()


@by_placement
@by_table
def test_delete_of_other_tenant_deletes_nothing(world: World, app: psycopg.Connection, table: TenantTable) -> None:
    """Item 4: DELETE ... WHERE tenant = B matches no row (or is not granted at all)."""
    statement = f"DELETE FROM {table.name} WHERE {table.column} = %(other)s"
    assert_reaches_no_other_tenant(world, app, table, "DELETE", statement)


@by_placement
def test_cached_plans_do_not_carry_a_tenant(world: World, app: psycopg.Connection) -> None:
    """Item 7: the policy is evaluated per execution (pruning at executor start-up, never at plan
    time), so one prepared statement reused across tenants on one connection shows each its own."""
    for query in ("SELECT DISTINCT organization_id FROM usage_events_mt", "SELECT DISTINCT organization_id FROM usage_events"):
        for _ in range(3):
            for tenant in (world.a, world.b, world.c, world.d, world.e):
                with in_tenant(app, tenant):
                    own = world.rows_of(query.split()[-1], tenant) > 0
                    assert app.execute(query, prepare=True).fetchall() == ([(tenant,)] if own else [])


REFERENCE_PROBES = {
    "insert": "INSERT INTO invoices (organization_id, subscription_id, amount, status)"
              " VALUES (%(me)s, %(subscription)s, 1, 'open')",
    "update": "UPDATE invoices SET subscription_id = %(subscription)s WHERE organization_id = %(me)s",
}


@by_placement
@pytest.mark.parametrize("operation", REFERENCE_PROBES, ids=str)
def test_invoice_cannot_reference_another_tenants_subscription(
    world: World, app: psycopg.Connection, operation: str
) -> None:
    """Beyond items 1-7 (foreign-key checks bypass RLS, sql/0008): A's invoice cannot point at
    B's subscription, and the refusal is the same as for an id that exists nowhere, so it does
    not tell A that B's id exists."""
    theirs = world.admin.execute(
        "SELECT id FROM subscriptions WHERE organization_id = %s LIMIT 1", (world.b,)
    ).fetchone()[0]
    for subscription in (theirs, UNKNOWN_ID):
        with pytest.raises(errors.ForeignKeyViolation) as raised:
            with in_tenant(app, world.a):
                run(app, REFERENCE_PROBES[operation], me=world.a, subscription=subscription)
        assert raised.value.diag.message_primary == (
            'insert or update on table "invoices" violates foreign key constraint '
            '"invoices_organization_subscription_fkey"'
        )
    world.assert_untouched()


# ======================================================================================
# 2. Partitions are reached only through the parent.
# ======================================================================================


def every_partition(world: World) -> list[str]:
    """The partitions of usage_events_mt, and every tenant schema's months and DEFAULT partition."""
    parents = ["usage_events_mt"] + [f"{schema}.usage_events" for schema in sorted(world.schemas.values())]
    return [p for parent in parents for p in partitions_of(world.admin, parent)]


def partitions_of(admin: psycopg.Connection, parent: str) -> list[str]:
    """Every partition, at any depth (pg_partition_tree walks pg_inherits, skipping indexes)."""
    rows = admin.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) WHERE level > 0 ORDER BY 1", (parent,)
    ).fetchall()
    return [name for (name,) in rows]


PARTITION_PROBES = {
    "select": "SELECT count(*) FROM {p}",
    "insert": "INSERT INTO {p} (organization_id, metric_name, quantity, \"timestamp\") VALUES (%(me)s, 'x', 1, now())",
    "update": "UPDATE {p} SET quantity = 0",
    "delete": "DELETE FROM {p}",
}


@by_placement
@pytest.mark.parametrize("operation", PARTITION_PROBES, ids=str)
def test_partitions_are_not_directly_accessible(world: World, app: psycopg.Connection, operation: str) -> None:
    """Item 6: billing_app holds no privilege on any partition, so naming one is refused."""
    partitions = every_partition(world)
    assert len(partitions) >= 5 + 2 * len(world.schemas)  # default; C's and B's partitions; each schema's _rest, months
    assert any(p.endswith(".usage_events_rest") for p in partitions)
    for partition in partitions:
        with pytest.raises(errors.InsufficientPrivilege, match=PERMISSION_DENIED):
            with in_tenant(app, world.a):
                run(app, PARTITION_PROBES[operation].format(p=partition), me=world.a)
    world.assert_untouched()


def test_partitions_granted_by_mistake_still_show_nothing(world: World, app: psycopg.Connection) -> None:
    """Item 6: every partition of usage_events_mt has RLS forced and no policy, so a mistaken
    GRANT exposes no row: each tenant, in its own context, sees, updates and deletes nothing by
    naming a partition. A tenant schema's months have RLS forced with the tenant policy (and the
    schema's CHECK): granted by mistake, they show no other tenant anything either."""
    partitions = every_partition(world)
    for partition in partitions:
        world.admin.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {partition} TO billing_app")
    holding = {p: world.admin.execute(f"SELECT count(*) FROM {p}").fetchone()[0] for p in partitions}
    assert holding["usage_events_mt_default"] > 0 and sum(holding.values()) > holding["usage_events_mt_default"]
    assert any(holding[p] for p in partitions if p.startswith(world.schemas[world.e]))
    for tenant in (world.a, world.b, world.c, world.d, world.e):
        with in_tenant(app, tenant):
            for partition in partitions:
                if partition.startswith(world.schemas.get(tenant, "-") + "."):
                    continue  # its own month: its own rows
                assert app.execute(f"SELECT count(*) FROM {partition}").fetchone()[0] == 0, partition
                assert run(app, f"UPDATE {partition} SET quantity = 0") == 0, partition
                assert run(app, f"DELETE FROM {partition}") == 0, partition
    with pytest.raises(errors.InsufficientPrivilege, match=RLS_VIOLATION):
        with in_tenant(app, world.a):
            run(app, PARTITION_PROBES["insert"].format(p="usage_events_mt_default"), me=world.a)
    world.assert_untouched()


# ======================================================================================
# 3. No context, empty context, hostile context.
# ======================================================================================


def test_without_context_every_table_is_empty(world: World, app: psycopg.Connection) -> None:
    """Items 1, 4: a connection that never set a tenant sees no row anywhere."""
    with app.transaction():
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()


def test_without_context_inserts_are_refused(world: World, app: psycopg.Connection) -> None:
    """Items 1, 7: with no tenant in context, WITH CHECK (or the missing privilege) refuses every
    row in every table, even a row of a real tenant."""
    for table in TABLES:
        for tenant in (world.a, world.b, world.e):
            with pytest.raises(errors.InsufficientPrivilege, match=refusal(table, "INSERT")):
                with app.transaction():
                    run(app, table.insert, tenant=tenant)
    world.assert_untouched()


def test_empty_context_reads_as_no_tenant(world: World, app: psycopg.Connection) -> None:
    """Item 1: app.current_tenant = '' is NULL to fn_current_tenant_id(), not a cast error."""
    with app.transaction():
        app.execute("SELECT set_config('app.current_tenant', '', true)")
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()


HOSTILE_CONTEXTS = {
    "sql-injection": "' OR 1=1 --",
    "not-a-uuid": "not-a-uuid",
    "blank": " ",
    "word-NULL": "NULL",
    "injection-after-A": "{a}' OR '1'='1",
    "two-tenants": "{a},{b}",
    "padded-B": " {b} ",
}


@pytest.mark.parametrize("template", HOSTILE_CONTEXTS.values(), ids=HOSTILE_CONTEXTS.keys())
def test_hostile_context_values_read_as_no_tenant(world: World, app: psycopg.Connection, template: str) -> None:
    """Items 1 and 2: a context value that fn_set_tenant_context did not write in this
    transaction is no context (sql/0017): NULL, every table empty, never a row of A or B and
    never a cast error."""
    value = template.format(a=world.a, b=world.b)
    with app.transaction():
        app.execute("SELECT set_config('app.current_tenant', %s, true)", (value,))
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()


def test_nil_uuid_context_shows_nothing(world: World, app: psycopg.Connection) -> None:
    """Item 1: a well-formed uuid that is no tenant's shows no row."""
    with app.transaction():
        app.execute("SELECT set_config('app.current_tenant', '00000000-0000-0000-0000-000000000000', true)")
        assert visible_everywhere(app) == nothing_visible()


def test_a_raw_tenant_id_is_no_context(world: World, app: psycopg.Connection) -> None:
    """Item 2: set_config('app.current_tenant', B) by hand, in any spelling PostgreSQL's uuid
    input reads, is not B's context: only fn_set_tenant_context's stamped value is. The Python
    layer accepts only the canonical form."""
    for spelling in (str(world.b), "{%s}" % world.b, str(world.b).upper(), world.b.hex):
        for local in (True, False):
            with app.transaction():
                app.execute("SELECT set_config('app.current_tenant', %s, %s)", (spelling, local))
                assert current_tenant(app) is None
                assert visible_everywhere(app) == nothing_visible()
            app.execute("RESET app.current_tenant")
        if spelling not in (str(world.b), str(world.b).upper()):
            with pytest.raises(InvalidInput, match="canonical form"):
                with tenant_session(app, spelling):
                    pass


def test_a_session_level_context_from_an_earlier_transaction_is_no_context(
    world: World, app: psycopg.Connection
) -> None:
    """Item 2, the seed's mistake: a context written for the session, even correctly stamped
    for the transaction that wrote it, is no context in any later transaction."""
    with app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
        stamped = app.execute("SELECT current_setting('app.current_tenant')").fetchone()[0]
        app.execute("SELECT set_config('app.current_tenant', %s, false)", (stamped,))
        assert current_tenant(app) == world.a
    assert app.execute("SELECT current_setting('app.current_tenant')").fetchone()[0] == stamped  # still set
    for _ in range(3):
        with app.transaction():
            assert current_tenant(app) is None
            assert visible_everywhere(app) == nothing_visible()
    app.execute("SELECT set_config('app.current_tenant', %s, false)", (str(world.a),))  # SET outside a transaction
    with app.transaction():
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()
    app.execute("RESET app.current_tenant")


@by_placement
def test_context_holds_through_the_transaction_whatever_the_client_sets(world: World, app: psycopg.Connection) -> None:
    """The stamp depends on no client setting: changing the time zone, date style or float
    output after entering the context keeps it, in every statement and savepoint."""
    with app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
        app.execute("SET LOCAL TIME ZONE 'Pacific/Chatham'")
        app.execute("SET LOCAL DateStyle = 'German, DMY'")
        app.execute("SET LOCAL extra_float_digits = -15")
        assert current_tenant(app) == world.a
        with app.transaction():  # a savepoint
            assert current_tenant(app) == world.a
            assert routes_to(app) == expected_routes(world, world.a)
        assert visible_everywhere(app) == only(world, world.a)


def test_a_stamped_value_written_by_hand_is_that_transactions_context(world: World, app: psycopg.Connection) -> None:
    """For the record: inside its own transaction, a client that writes the stamped form by
    hand gets that tenant, as it would by calling fn_set_tenant_context (billing_app may choose
    any tenant; the context is not an authentication). What is bound is that it ends with the
    transaction."""
    forged = "SELECT set_config('app.current_tenant', extract(epoch FROM transaction_timestamp())::text || %s, true)"
    with app.transaction():
        app.execute(forged, (str(world.b),))
        assert current_tenant(app) == world.b
    with app.transaction():
        assert current_tenant(app) is None


def test_set_context_refuses_null(world: World, app: psycopg.Connection) -> None:
    """fn_set_tenant_context(NULL) raises and sets nothing."""
    with pytest.raises(errors.NullValueNotAllowed, match="tenant id is NULL"):
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(NULL)")
    with app.transaction():
        assert current_tenant(app) is None


def test_set_context_refuses_unknown_tenant(world: World, app: psycopg.Connection) -> None:
    """fn_set_tenant_context(unknown) raises 'unknown tenant' and leaves no context behind,
    neither after the savepoint that caught it nor in the next transaction."""
    with app.transaction():
        with pytest.raises(errors.NoDataFound, match=f"unknown tenant {UNKNOWN_ID}"):
            with app.transaction():  # a savepoint
                app.execute("SELECT fn_set_tenant_context(%s)", (UNKNOWN_ID,))
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()
    with app.transaction():
        assert current_tenant(app) is None


# ======================================================================================
# 4. The context lives exactly as long as its transaction.
# ======================================================================================


class _Abort(Exception):
    pass


@by_placement
@pytest.mark.parametrize("ending", ["commit", "rollback", "error"])
def test_context_ends_with_transaction_block(world: World, app: psycopg.Connection, ending: str) -> None:
    """Items 1, 2: set in a transaction block, the context is gone from the next transaction on
    the same connection (which then reads '' and must see nothing)."""
    with pytest.raises(_Abort) if ending == "error" else nullcontext():
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
            assert visible_everywhere(app) == only(world, world.a)
            if ending == "rollback":
                raise psycopg.Rollback()
            if ending == "error":
                raise _Abort()
    with app.transaction():
        assert current_tenant(app) is None
        assert search_path(app) == DEFAULT_SEARCH_PATH and routes_to(app) == expected_routes(world, None)
        assert visible_everywhere(app) == nothing_visible()


@by_placement
@pytest.mark.parametrize("ending", ["commit", "rollback", "error"])
def test_context_ends_with_psycopg_default_transaction(world: World, ending: str) -> None:
    """Items 1, 2: the same with psycopg's implicit BEGIN (autocommit off) and commit()/rollback()."""
    with world.connect_app(autocommit=False) as conn:
        conn.execute("SELECT fn_set_tenant_context(%s)", (world.a,))
        assert visible_everywhere(conn) == only(world, world.a)
        if ending == "error":
            with pytest.raises(errors.DivisionByZero):
                conn.execute("SELECT 1 / 0")
            conn.rollback()
        else:
            getattr(conn, ending)()
        assert current_tenant(conn) is None
        assert search_path(conn) == DEFAULT_SEARCH_PATH
        assert visible_everywhere(conn) == nothing_visible()
        conn.rollback()


@by_placement
def test_context_ends_with_autocommit_statement(world: World, app: psycopg.Connection) -> None:
    """Items 1, 2: in autocommit each statement is its own transaction, so the context set by
    one statement is gone from the next."""
    assert app.execute("SELECT fn_set_tenant_context(%s)", (world.a,)).fetchone()[0] == world.a
    assert current_tenant(app) is None
    assert search_path(app) == DEFAULT_SEARCH_PATH
    assert visible_everywhere(app) == nothing_visible()


@by_placement
def test_session_level_context_is_no_context_and_tenant_session_overrides_it(
    world: World, app: psycopg.Connection
) -> None:
    """Item 2: a session-level SET by billing_app itself (never done by this code) is no
    context in any transaction (sql/0017), and tenant_session shows A and only A."""
    app.execute(sql.SQL("SET app.current_tenant = {}").format(sql.Literal(str(world.b))))
    with app.transaction():
        assert current_tenant(app) is None
        assert visible_everywhere(app) == nothing_visible()
    with tenant_session(app, world.a) as tx:
        assert current_tenant(tx) == world.a
        assert routes_to(tx) == expected_routes(world, world.a)
        assert visible_everywhere(tx) == only(world, world.a)
    with in_tenant(app, world.a):
        assert visible_everywhere(app) == only(world, world.a)
    with app.transaction():
        assert current_tenant(app) is None  # the session-level value is back, and still no context
        assert visible_everywhere(app) == nothing_visible()


# ======================================================================================
# 5. tenant_session and ingest, the Python path.
# ======================================================================================

MALFORMED_IDS = {
    "x": "x",
    "empty": "",
    "None": None,
    "sql-injection": "'; DROP TABLE organizations; --",
    "500-chars": "a" * 500,
    "braces": "{3f2b1c9e-8d4a-4f6b-9c1e-2a7d5e8f0b13}",
    "newline": "3f2b1c9e-8d4a-4f6b-9c1e-2a7d5e8f0b13\nSELECT 1",
}


@pytest.mark.parametrize("value", MALFORMED_IDS.values(), ids=MALFORMED_IDS.keys())
def test_tenant_session_refuses_malformed_id(world: World, app: psycopg.Connection, value: object) -> None:
    """A malformed tenant id raises InvalidInput with a one-line message that shows the value,
    before anything reaches the database."""
    with pytest.raises(InvalidInput) as raised:
        with tenant_session(app, value):
            pytest.fail("tenant_session entered with a malformed id")
    message = str(raised.value)
    assert "\n" not in message and "\r" not in message
    shown = "" if value is None else str(value).strip()
    assert repr(shown[:57])[:-1] in message  # the value (its first 57 characters when long)
    assert len(message) < 250
    assert app.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert app.execute("SELECT count(*) FROM organizations").fetchone()[0] == 0  # still no context
    world.assert_untouched()


def test_tenant_session_refuses_unknown_tenant(world: World, app: psycopg.Connection) -> None:
    """An unknown (well-formed) tenant id raises UnknownTenant and leaves no context."""
    with pytest.raises(UnknownTenant, match=str(UNKNOWN_ID)):
        with tenant_session(app, UNKNOWN_ID):
            pytest.fail("tenant_session entered for an unknown tenant")
    assert current_tenant(app) is None


@pytest.mark.parametrize("tenant", ["a", "b", "c"], ids=["default-partition", "monthly-partitions", "own-partition"])
def test_ingest_writes_only_the_tenant_in_context(world: World, app: psycopg.Connection, tenant: str) -> None:
    """Items 6, 7: ingest_usage_events as billing_app writes rows of that tenant and nobody else's,
    even when an event's properties name another tenant."""
    me = getattr(world, tenant)
    other = world.c if me == world.b else world.b
    at = datetime.now(timezone.utc)  # inside B's month partitions
    events = [(f"ingested_{i}", Decimal(i), at, f'{{"organization_id": "{other}"}}') for i in range(5)]
    assert ingest_usage_events(app, str(me), events) == 5
    written = world.admin.execute(
        "SELECT organization_id, count(*) FROM usage_events_mt WHERE metric_name LIKE 'ingested_%%' GROUP BY 1"
    ).fetchall()
    assert written == [(me, 5)]
    after = snapshot(world.admin)
    changed = {key for key in after if after[key] != world.seeded.get(key)}
    assert changed == {("usage_events_mt", me)}


@pytest.mark.parametrize(
    ("tenant", "timeout", "work_mem"),
    [("a", "10s", "32MB"), ("c", "15s", "64MB"), ("b", "1min", "256MB")],
    ids=["free", "starter", "enterprise"],
)
def test_tier_limits_last_exactly_one_transaction(
    world: World, app: psycopg.Connection, tenant: str, timeout: str, work_mem: str
) -> None:
    """Item 2 (for the limits): tenant_session applies the tier's statement_timeout and work_mem,
    and they are gone with the transaction. (PostgreSQL shows 60s as '1min'.)"""
    show = "SELECT current_setting('statement_timeout'), current_setting('work_mem')"
    assert app.execute(show).fetchone() == ("0", "4MB")
    with tenant_session(app, getattr(world, tenant)) as tx:
        assert tx.execute(show).fetchone() == (timeout, work_mem)
    assert app.execute(show).fetchone() == ("0", "4MB")


# ======================================================================================
# 6. billing_app cannot lift the policies.
# ======================================================================================

ESCAPES = {
    "set-role-owner": ("SET ROLE billing_owner", 'permission denied to set role "billing_owner"'),
    "set-role-superuser": ("SET ROLE postgres", 'permission denied to set role "postgres"'),
    "session-authorization": ("SET SESSION AUTHORIZATION postgres", "permission denied"),
    "disable-rls": ("ALTER TABLE organizations DISABLE ROW LEVEL SECURITY", "must be owner"),
    "no-force-rls": ("ALTER TABLE invoices NO FORCE ROW LEVEL SECURITY", "must be owner"),
    "create-policy": ("CREATE POLICY open_door ON invoices FOR ALL TO billing_app USING (true)", "must be owner"),
    "drop-policy": ("DROP POLICY tenant_isolation ON invoices", "must be owner"),
    "bypassrls": ("ALTER ROLE billing_app BYPASSRLS", "must be superuser to change bypassrls"),
    "join-owner": ("GRANT billing_owner TO billing_app", 'must have admin option on role "billing_owner"'),
    "replace-context-function": (
        "CREATE OR REPLACE FUNCTION public.fn_current_tenant_id() RETURNS uuid LANGUAGE sql STABLE"
        " AS $$ SELECT NULL::uuid $$",
        "permission denied for schema public",
    ),
    "run-partition-maintenance": ("SELECT fn_create_tenant_partition(fn_current_tenant_id())",
                                  "permission denied for function fn_create_tenant_partition"),
    "unsecure-a-partition": ("SELECT fn_secure_partition('usage_events_mt_default')",
                             "permission denied for function fn_secure_partition"),
}


@by_placement
@pytest.mark.parametrize(("statement", "message"), ESCAPES.values(), ids=ESCAPES.keys())
def test_app_cannot_escape_rls(world: World, app: psycopg.Connection, statement: str, message: str) -> None:
    """Items 3, 4: billing_app can neither become the owner or a superuser nor change a policy."""
    with pytest.raises(errors.InsufficientPrivilege, match=message):
        with in_tenant(app, world.a):
            app.execute(statement)
    with in_tenant(app, world.a):
        assert app.execute("SELECT current_user").fetchone()[0] == "billing_app"
        assert visible_everywhere(app) == only(world, world.a)


def test_row_security_off_raises_instead_of_showing_all(world: World, app: psycopg.Connection) -> None:
    """Item 4: with row_security = off, a query RLS would filter is an error, not a full view,
    on every tenant table."""
    for table in TABLES:
        with pytest.raises(errors.InsufficientPrivilege, match="would be affected by row-level security policy"):
            with in_tenant(app, world.a):
                app.execute("SET row_security = off")
                visible(app, table)


def test_catalog_shows_no_weakened_isolation(world: World) -> None:
    """Items 3-7, from the catalog: billing_app is neither superuser, BYPASSRLS nor owner; every
    tenant table forces RLS with a policy that has both USING and WITH CHECK; no partition is
    granted; the context functions run as their caller, with a pinned search_path where they
    run statements."""
    admin = world.admin
    assert audit_isolation(admin) == []
    assert admin.execute(
        "SELECT rolsuper, rolbypassrls, pg_has_role('billing_app', 'billing_owner', 'MEMBER')"
        " FROM pg_roles WHERE rolname = 'billing_app'"
    ).fetchone() == (False, False, False)
    policies = admin.execute(
        "SELECT c.relname, p.polqual IS NOT NULL, p.polwithcheck IS NOT NULL"
        " FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid WHERE p.polpermissive ORDER BY 1"
    ).fetchall()
    assert {t.name for t in DATA_TABLES} <= {name for name, _, _ in policies}
    assert all(using and check for _, using, check in policies), policies
    # The only restrictive ones (AND-ed, so they can only refuse more): a schema tenant's writes
    # refused in the shared tables, by its route (sql/0023) and by the registry (sql/0025).
    assert {name for (name,) in admin.execute("SELECT DISTINCT polname FROM pg_policy WHERE NOT polpermissive")} == {
        "schema_tenants_insert_into_their_schema", "schema_tenants_update_in_their_schema",
        "schema_tenants_placed_in_a_schema_insert", "schema_tenants_placed_in_a_schema_update"}
    functions = {name: (definer, config) for name, definer, config in admin.execute(
        "SELECT proname, prosecdef, array_to_string(proconfig, ',') FROM pg_proc"
        " WHERE proname IN ('fn_current_tenant_id', 'fn_set_tenant_context', 'fn_set_tenant_resources')"
    )}
    assert functions == {
        "fn_current_tenant_id": (False, None),
        # No SET clause since sql/0020: it routes the caller's search_path; every name in it is qualified.
        "fn_set_tenant_context": (False, None),
        "fn_set_tenant_resources": (False, "search_path=pg_catalog, pg_temp"),
    }


# ======================================================================================
# 7. Schema tenants: other tenants' schemas by name, search_path set by hand, stale routes.
# ======================================================================================

SEARCH_PATH_SETTINGS = {
    "qualified": None,  # no setting: the other schema's tables by their qualified names
    "SET-LOCAL": "SET LOCAL search_path = {schema}, public",
    "SET": "SET search_path = {schema}, public",
    "set_config-session": "SELECT set_config('search_path', '{schema}, public', false)",
}


@by_placement
@pytest.mark.parametrize("how", SEARCH_PATH_SETTINGS, ids=str)
def test_another_tenants_schema_reached_by_hand_shows_and_takes_nothing(world: World, app: psycopg.Connection,
                                                                        how: str) -> None:
    """In A's context, E's schema, named by hand (qualified names, or a search_path that puts it
    first), shows no row; UPDATE and DELETE match none; an INSERT of E's row is refused by RLS
    and an INSERT of A's own row by E's tenant_only_check. A search_path left for the session
    does not route A's next transaction to E's schema: fn_set_tenant_context puts A's own place
    first."""
    schema = world.schemas[world.e]
    setting = SEARCH_PATH_SETTINGS[how]
    def named(name: str) -> str:
        return f"{schema}.{name}" if setting is None else name
    for name in SCHEMA_TABLES:
        table = TABLE[name]
        insert = table.insert.replace(f"INSERT INTO {name} ", f"INSERT INTO {named(name)} ", 1)
        for tenant, error, match in ((world.e, errors.InsufficientPrivilege, RLS_VIOLATION),
                                     (world.a, errors.CheckViolation, "tenant_only_check")):
            with pytest.raises(error, match=match):
                with in_tenant(app, world.a):
                    if setting:
                        app.execute(setting.format(schema=schema))
                    run(app, insert, tenant=tenant)
        with in_tenant(app, world.a):
            if setting:
                app.execute(setting.format(schema=schema))
                assert routes_to(app)[name] == f"{schema}.{name}"
            assert app.execute(f"SELECT count(*) FROM {named(name)}").fetchone()[0] == 0
            assert run(app, f"UPDATE {named(name)} SET {table.assign}") == 0
            assert run(app, f"DELETE FROM {named(name)}") == 0
            seen = visible_everywhere(app)
            assert all(set(counts) <= {world.a} for counts in seen.values()), seen
        with in_tenant(app, world.a):  # the next transaction, whatever the session kept
            assert routes_to(app) == expected_routes(world, world.a)
            assert visible_everywhere(app) == only(world, world.a)
        app.execute("RESET search_path")
    world.assert_untouched()


LEFTOVER_PATHS = {
    "schema-first": "{schema}, public",
    "no-space": "{schema},public",
    "quoted": '"{schema}", public',
    "upper-case": "{upper}, public",
    "before-user": '{schema}, "$user", public',
}


@by_placement
@pytest.mark.parametrize("spelling", list(LEFTOVER_PATHS.values()), ids=list(LEFTOVER_PATHS))
def test_a_careless_session_search_path_does_not_route_the_next_tenant(world: World, app: psycopg.Connection,
                                                                       spelling: str) -> None:
    """A careless client on the same connection leaves E's schema in the session's search_path
    (set_config(..., false), in any spelling PostgreSQL reads): A's next transaction is routed to
    A's own place, not to E's schema, and A's write lands there."""
    schema = world.schemas[world.e]
    with in_tenant(app, world.e):
        app.execute("SELECT set_config('search_path', %s, false)",
                    (spelling.format(schema=schema, upper=schema.upper()),))
    try:
        with in_tenant(app, world.a):
            assert routes_to(app) == expected_routes(world, world.a), search_path(app)
            assert visible_everywhere(app) == only(world, world.a)
            landed = app.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 1, 'open')"
                                 " RETURNING (SELECT c.relnamespace::regnamespace::text FROM pg_class c"
                                 " WHERE c.oid = invoices.tableoid) || '.invoices'", (world.a,)).fetchone()[0]
            assert landed == expected_routes(world, world.a)["invoices"]
            raise psycopg.Rollback()
    finally:
        app.execute("RESET search_path")
    world.assert_untouched()
