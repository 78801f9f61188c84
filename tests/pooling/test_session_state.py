"""Nothing one client leaves in its session reaches the next client of a pooled server
connection (issue 15, item 1), through a real PgBouncer in transaction mode.

Three layers, each tested on its own:

1. ``temp``: billing_app cannot create temporary objects (db migrate revokes TEMPORARY), so a
   temp table cannot shadow a tenant table;
2. ``binding``: the tenant context counts only in the transaction that set it
   (sql/0017): a session-level value reads as no context;
3. ``reset``: PgBouncer runs its session reset (SESSION_RESET_QUERY, or DISCARD ALL) after every client transaction
   (``server_reset_query_always = 1``), so temp tables, session settings and session advisory
   locks are gone before the next client gets the connection.

For every vector, every layer that covers it is switched on alone, and must stop it; with none of
its layers the same test must see the leak, which proves the probe can fail. The pool has one
server connection, so the hostile client and the victim provably share a server backend (the
victim checks the backend pid).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.core.pooling import (
    SERVER_RESET_QUERY,
    SESSION_RESET_QUERY,
    PoolerConfig,
    ServerAddress,
    connect_pooled,
    pooled_dsn,
    render_pgbouncer_ini,
)
from tenant_pipelines.local.pgbouncer import PgBouncerProcess
from tests.conftest import APP_PASSWORD, make_tenant
from tests.pooling.conftest import UNBOUND_CONTEXT, start_bare_pgbouncer

LAYERS = ("temp", "binding", "reset")

@dataclass(frozen=True)
class World:
    admin_dsn: str
    pooled: str  # billing_app through PgBouncer, one server connection
    a: uuid.UUID  # the hostile client's tenant (pooled in the shared partition)
    b: uuid.UUID  # the victim's tenant (a dedicated partition)
    b_events: int


@pytest.fixture
def world_with(admin_conn: psycopg.Connection, admin_dsn: str) -> Iterator[Callable[..., World]]:
    """``world_with(*layers)``: two tenants with rows, and only ``layers`` in force."""
    homes: list[Path] = []

    def make(*layers: str, reset_query: str = SESSION_RESET_QUERY) -> World:
        assert set(layers) <= set(LAYERS)
        database = sql.Identifier(admin_conn.execute("SELECT current_database()").fetchone()[0])
        if "temp" not in layers:
            admin_conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO billing_app").format(database))
        if "binding" not in layers:
            admin_conn.execute(UNBOUND_CONTEXT)
        a = make_tenant(admin_conn, "Hostile A", tier="free")
        b = make_tenant(admin_conn, "Victim B", tier="enterprise")
        for tenant, events in ((a, 5), (b, 3)):
            admin_conn.execute(
                """INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")
                   SELECT %s, 'api_calls', 1, now() - make_interval(mins => g) FROM generate_series(1, %s) g""",
                (tenant, events),
            )
        admin_conn.execute("SELECT fn_create_tenant_partition(%s)", (b,))
        home = Path(tempfile.mkdtemp(prefix="tp-pgb-state-", dir="/tmp"))
        os.chmod(home, 0o755)
        homes.append(home)
        port = start_bare_pgbouncer(admin_dsn, home, reset="reset" in layers, pool_size=1, reset_query=reset_query)
        return World(admin_dsn, pooled_dsn(port, password=APP_PASSWORD), a, b, 3)

    try:
        yield make
    finally:
        for home in homes:
            PgBouncerProcess(folder=home / "pgbouncer").destroy()
            shutil.rmtree(home, ignore_errors=True)


# -- what a hostile (or careless) client leaves behind ------------------------------------------


def _in_context(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))


def temp_table_shadow(conn: psycopg.Connection, w: World) -> None:
    with conn.transaction():
        _in_context(conn, w.a)
        conn.execute("CREATE TEMP TABLE usage_events AS SELECT * FROM public.usage_events LIMIT 5")


def session_set_config(conn: psycopg.Connection, w: World) -> None:
    """The seed's fn_set_tenant_context (SEED-REVIEW item 2): set_config(..., false)."""
    conn.execute("SELECT set_config('app.current_tenant', %s, false)", (str(w.a),))


def session_set(conn: psycopg.Connection, w: World) -> None:
    conn.execute(sql.SQL("SET app.current_tenant = {}").format(sql.Literal(str(w.a))))


def session_stamped_context(conn: psycopg.Connection, w: World) -> None:
    """A forger who knows the stamp's format writes a correctly stamped value for the session:
    it is stamped with its own transaction, so no later transaction matches it."""
    conn.execute(
        "SELECT set_config('app.current_tenant', extract(epoch FROM transaction_timestamp())::text || %s, false)",
        (str(w.a),),
    )


def session_row_security_off(conn: psycopg.Connection, w: World) -> None:
    conn.execute("SET SESSION row_security = off")


def session_read_only(conn: psycopg.Connection, w: World) -> None:
    conn.execute("SET SESSION default_transaction_read_only = on")


def session_advisory_lock(conn: psycopg.Connection, w: World) -> None:
    """Holds tenant B's lock for the session: B's writers on other connections, and B's
    promotions, would wait on it."""
    conn.execute("SELECT pg_advisory_lock(fn_tenant_lock_key(%s))", (w.b,))


Vector = Callable[[psycopg.Connection, World], None]
VECTORS: dict[str, tuple[Vector, tuple[str, ...]]] = {
    # vector: (what the hostile client does, the layers that each stop it alone)
    "temp-table-shadow": (temp_table_shadow, ("temp", "reset")),
    "session-set_config": (session_set_config, ("binding", "reset")),
    "session-SET": (session_set, ("binding", "reset")),
    "session-stamped-context": (session_stamped_context, ("binding", "reset")),
    "session-row_security-off": (session_row_security_off, ("reset",)),
    "session-read-only": (session_read_only, ("reset",)),
    "session-advisory-lock": (session_advisory_lock, ("reset",)),
}


def leave_behind(w: World, vector: Vector) -> tuple[int, str | None]:
    """The hostile client's turn, as billing_app through the pool. Returns its server backend
    and what refused it (when a layer did)."""
    with connect_pooled(w.pooled, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            vector(conn, w)
        except psycopg.errors.InsufficientPrivilege as exc:
            return pid, exc.diag.message_primary
    return pid, None


def victim(w: World, hostile_pid: int) -> list[str]:
    """The next client of the same server connection: one transaction without a context, one in
    tenant B's context that reads and writes. Every sign of the hostile client is a finding."""
    found: list[str] = []
    with connect_pooled(w.pooled, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert pid == hostile_pid, "the pool has one server connection: the victim must get the same backend"
        try:
            with conn.transaction():
                row = conn.execute(
                    """SELECT fn_current_tenant_id(), current_setting('row_security'), current_setting('transaction_read_only'),
                              to_regclass('pg_temp.usage_events') IS NOT NULL,
                              (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"""
                ).fetchone()
                if row[0] is not None:
                    found.append(f"without a context, fn_current_tenant_id() is {row[0]}")
                if row[1] != "on":
                    found.append(f"row_security is {row[1]}")
                if row[2] != "off":
                    found.append(f"transaction_read_only is {row[2]}")
                if row[3]:
                    found.append("a temp table usage_events is in the session")
                if row[4]:
                    found.append(f"{row[4]} advisory locks held before the transaction took any")
                seen = conn.execute("SELECT count(*) FROM usage_events").fetchone()[0]
                if seen:
                    found.append(f"without a context, {seen} rows of usage_events are visible")
        except psycopg.Error as exc:
            found.append(f"without a context: {type(exc).__name__}: {exc.diag.message_primary}")
        marker = f"victim-{uuid.uuid4()}"
        try:
            with conn.transaction():
                _in_context(conn, w.b)
                owners = {r[0]: r[1] for r in conn.execute(
                    "SELECT organization_id, count(*) FROM usage_events GROUP BY 1")}
                if owners != {w.b: w.b_events}:
                    found.append(f"in B's context, usage_events shows {owners}")
                conn.execute(
                    """INSERT INTO usage_events (organization_id, metric_name, quantity, "timestamp")
                       VALUES (%s, %s, 1, now())""",
                    (w.b, marker),
                )
        except psycopg.Error as exc:
            found.append(f"in B's context: {type(exc).__name__}: {exc.diag.message_primary}")
    with psycopg.connect(w.admin_dsn) as admin:
        stored = admin.execute("SELECT count(*) FROM usage_events_mt WHERE metric_name = %s", (marker,)).fetchone()[0]
    if stored != 1 and not any(f.startswith("in B's context: ") for f in found):
        found.append(f"B's committed insert is {stored} times in usage_events_mt (acknowledged, then lost)")
    return found


CASES = [
    pytest.param(name, layer, id=f"{name}-stopped-by-{layer}-alone")
    for name, (_, layers) in VECTORS.items() for layer in layers
]


@pytest.mark.parametrize(("name", "layer"), CASES)
def test_each_layer_alone_stops_the_vector(world_with, name: str, layer: str) -> None:
    vector, _ = VECTORS[name]
    w = world_with(layer)
    pid, refused = leave_behind(w, vector)
    assert victim(w, pid) == []
    if layer == "temp" and name == "temp-table-shadow":
        assert refused is not None and "temporary" in refused


@pytest.mark.parametrize("name", list(VECTORS))
def test_discard_all_alone_stops_every_vector(world_with, name: str) -> None:
    """DISCARD ALL, which the audit also accepts (the generated config uses SESSION_RESET_QUERY,
    DISCARD ALL's parts but DISCARD PLANS), stops every vector on its own too."""
    vector, _ = VECTORS[name]
    w = world_with("reset", reset_query=SERVER_RESET_QUERY)
    pid, _ = leave_behind(w, vector)
    assert victim(w, pid) == []


@pytest.mark.parametrize("name", list(VECTORS))
def test_all_layers_together_stop_every_vector(world_with, name: str) -> None:
    vector, _ = VECTORS[name]
    w = world_with(*LAYERS)
    pid, _ = leave_behind(w, vector)
    assert victim(w, pid) == []


@pytest.mark.parametrize("name", list(VECTORS))
def test_without_its_layers_the_probe_sees_the_leak(world_with, name: str) -> None:
    """The probe can fail: with every layer that covers the vector switched off (the others
    stay on), the victim sees what the hostile client left."""
    vector, covering = VECTORS[name]
    w = world_with(*(layer for layer in LAYERS if layer not in covering))
    pid, refused = leave_behind(w, vector)
    assert refused is None
    assert victim(w, pid) != []


@pytest.mark.parametrize("layers", [(), LAYERS], ids=["no-layer", "all-layers"])
def test_a_session_search_path_to_a_tenant_schema_routes_no_one(world_with, admin_conn, layers) -> None:
    """A careless client pins the session's search_path to a schema tenant's schema (its route,
    made permanent). The next client of the same server connection is not routed there: with
    no context it sees nothing, and in B's context fn_set_tenant_context takes the schema out
    of the path, so B reads and writes its own rows, even with no session reset at all."""
    w = world_with(*layers)
    c = make_tenant(admin_conn, "Schema C", tier="enterprise")
    schema = admin_conn.execute("SELECT fn_create_tenant_schema(%s)", (c,)).fetchone()[0]
    admin_conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (c, schema))
    admin_conn.execute(f"INSERT INTO {schema}.usage_events (organization_id, metric_name, quantity, \"timestamp\")"
                       " VALUES (%s, 'c', 1, now())", (c,))

    def pin_route(conn: psycopg.Connection, w: World) -> None:
        with conn.transaction():
            _in_context(conn, c)
            route = conn.execute("SHOW search_path").fetchone()[0]
        conn.execute("SELECT set_config('search_path', %s, false)", (route,))

    pid, refused = leave_behind(w, pin_route)
    assert refused is None
    assert victim(w, pid) == []


def test_generated_config_resets_every_session(admin_dsn: str) -> None:
    """What `pgbouncer up` and `pgbouncer config` write: the session reset after every transaction."""
    base = PoolerConfig(server=ServerAddress.from_dsn(admin_dsn), listen_port=6432, auth_file="/x/userlist.txt")
    text = render_pgbouncer_ini(base)
    assert f"server_reset_query = {SESSION_RESET_QUERY}" in text
    assert "server_reset_query_always = 1" in text
    assert conninfo_to_dict(admin_dsn)  # the DSN is a real one
