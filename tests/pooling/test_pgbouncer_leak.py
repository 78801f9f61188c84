"""No tenant context, row or tier limit crosses clients through a real PgBouncer in
transaction mode (SEED-REVIEW items 2 and 19).

Twenty client threads of four tenants (two free, two enterprise) log in as billing_app to a
PgBouncer pool of two server connections, so every server connection serves many clients and
tenants in turn. Each client runs a bounded number of transactions of three kinds, in turn:

* **in context**: sets its tenant with fn_set_tenant_context + fn_set_tenant_resources, then
  reads usage_events, organizations, subscriptions and invoices: it must see its own rows, all
  of them, and only them, with its own tier's work_mem and statement_timeout;
* **without context**: sets nothing: it must see fn_current_tenant_id() IS NULL, no rows at
  all, and the role's default work_mem and statement_timeout;
* **failed**: sets its context, then fails (division by zero) and rolls back.

Careless clients that also leave session-level state behind (the seed's session-level
``set_config('app.current_tenant', x, false)``, session-level tier limits) leak nothing either:
the context is bound to its transaction (sql/0017) and PgBouncer resets every session
(``DISCARD ALL`` after each transaction). With those two defences taken away (the functions
of sql/0005, no reset), the same harness must report the leaks: that proves it can fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

from tenant_pipelines.core.pooling import connect_pooled, pooled_dsn
from tenant_pipelines.local.pgbouncer import PgBouncerProcess
from tests.conftest import APP_PASSWORD, app_dsn_for, make_tenant
from tests.pooling.conftest import UNBOUND_CONTEXT, start_bare_pgbouncer

CLIENTS = 20
ROUNDS = 15  # transactions per client: 300 in all, about a second
SERVER_CONNECTIONS = 2
TIERS = ("free", "enterprise", "free", "enterprise")

EnterContext = Callable[[psycopg.Connection, uuid.UUID], None]


def transaction_local_context(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """The project's way (sql/0005): everything set for this transaction only."""
    conn.execute("SELECT fn_set_tenant_resources(fn_set_tenant_context(%s))", (tenant,))


def seed_session_context(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """The seed's fn_set_tenant_context: set_config(..., false) lasts for the session."""
    conn.execute("SELECT set_config('app.current_tenant', %s, false)", (str(tenant),))
    conn.execute("SELECT fn_set_tenant_resources(%s)", (tenant,))


def careless_client(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """The project's way, after leaving session-level junk: the seed's context and tier limits
    for the session. The transaction-local values win in this transaction; nothing of the
    session-level ones may reach the next client."""
    conn.execute("SELECT set_config('app.current_tenant', %s, false)", (str(tenant),))
    conn.execute("SELECT set_config('work_mem', '77MB', false), set_config('statement_timeout', '7s', false)")
    transaction_local_context(conn, tenant)


def session_level_limits(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    """A transaction-local context, but tier limits set for the session (SET without LOCAL)."""
    conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
    conn.execute(
        """SELECT set_config('work_mem', tl.work_mem, false), set_config('statement_timeout', tl.statement_timeout, false)
             FROM tier_limits tl
            WHERE tl.tier = (SELECT tier FROM tenant_classifications WHERE organization_id = %s)""",
        (tenant,),
    )


@dataclass(frozen=True)
class Expected:
    tier: str
    work_mem: str
    statement_timeout: str
    events: int


@dataclass
class LeakReport:
    transactions: int = 0
    violations: list[str] = field(default_factory=list)
    # server backend pid -> the clients and tenants it served
    clients_by_backend: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    tenants_by_backend: dict[int, set[uuid.UUID]] = field(default_factory=lambda: defaultdict(set))
    kinds: Counter = field(default_factory=Counter)


def run_clients(
    dsn: str, tenants: dict[uuid.UUID, Expected], defaults: tuple[str, str], enter_context: EnterContext
) -> LeakReport:
    """CLIENTS threads, each ROUNDS transactions through ``dsn``; every finding is a violation."""
    report = LeakReport()
    lock = threading.Lock()
    order = list(tenants)
    start = threading.Barrier(CLIENTS)

    def client(number: int) -> None:
        tenant = order[number % len(order)]
        want = tenants[tenant]
        found: list[str] = []
        seen: list[tuple[int, str]] = []

        def check(label: str, got: object, expected: object) -> None:
            if got != expected:
                found.append(f"client {number} ({want.tier} {tenant}) {label}: saw {got!r}, expected {expected!r}")

        with connect_pooled(dsn, autocommit=True) as conn:
            start.wait(timeout=30)
            for i in range(ROUNDS):
                kind = ("context", "none", "failed")[(number + i) % 3]
                seen.append((0, kind))
                try:
                    with conn.transaction():
                        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                        seen[-1] = (pid, kind)
                        if kind == "none":
                            row = conn.execute(
                                """SELECT fn_current_tenant_id(), current_setting('work_mem'),
                                          current_setting('statement_timeout'),
                                          (SELECT count(*) FROM usage_events), (SELECT count(*) FROM organizations),
                                          (SELECT array_agg(DISTINCT organization_id::text) FROM usage_events)"""
                            ).fetchone()
                            check("tenant without a context", row[0], None)
                            check("work_mem without a context", row[1], defaults[0])
                            check("statement_timeout without a context", row[2], defaults[1])
                            check("usage_events rows without a context (tenants: %s)" % (row[5],), row[3], 0)
                            check("organizations without a context", row[4], 0)
                            continue
                        enter_context(conn, tenant)
                        if kind == "failed":
                            conn.execute("SELECT 1 / 0")
                        row = conn.execute(
                            """SELECT fn_current_tenant_id(), current_setting('work_mem'), current_setting('statement_timeout')"""
                        ).fetchone()
                        check("tenant in context", row[0], tenant)
                        check("work_mem", row[1], want.work_mem)
                        check("statement_timeout", row[2], want.statement_timeout)
                        events = conn.execute("SELECT organization_id, count(*) FROM usage_events GROUP BY 1").fetchall()
                        check("usage_events per tenant", dict(events), {tenant: want.events})
                        for table in ("organizations", "subscriptions", "invoices"):
                            column = "id" if table == "organizations" else "organization_id"
                            owners = {r[0] for r in conn.execute(f"SELECT {column} FROM {table}")}
                            check(f"{table} tenants", owners, {tenant})
                except psycopg.errors.DivisionByZero:
                    pass
        with lock:
            report.transactions += len(seen)
            report.violations.extend(found)
            for pid, kind in seen:
                report.clients_by_backend[pid].add(number)
                report.tenants_by_backend[pid].add(tenant)
                report.kinds[kind] += 1

    threads = [threading.Thread(target=client, args=(n,), name=f"leak-client-{n}") for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return report


@pytest.fixture
def leak_setup(admin_conn: psycopg.Connection, admin_dsn: str, start_pooler) -> tuple[str, dict[uuid.UUID, Expected], tuple[str, str]]:
    """Four tenants with rows in every table read, and PgBouncer (the project's config) with a
    pool of two server connections for the plain ``billing`` database."""
    return _leak_setup(admin_conn, admin_dsn, lambda: start_pooler(default_pool_size=SERVER_CONNECTIONS).dsn("billing"))


@pytest.fixture
def undefended_leak_setup(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path_factory) -> Iterator[tuple[str, dict[uuid.UUID, Expected], tuple[str, str]]]:
    """The same, without the two defences against session state: sql/0005's unbound context
    functions, and a PgBouncer that does not reset sessions in transaction mode."""
    admin_conn.execute(UNBOUND_CONTEXT)
    home = Path(tempfile.mkdtemp(prefix="tp-pgb-bare-", dir="/tmp"))
    os.chmod(home, 0o755)
    try:
        yield _leak_setup(admin_conn, admin_dsn, lambda: pooled_dsn(
            start_bare_pgbouncer(admin_dsn, home, reset=False, pool_size=SERVER_CONNECTIONS), password=APP_PASSWORD))
    finally:
        PgBouncerProcess(folder=home / "pgbouncer").destroy()
        shutil.rmtree(home, ignore_errors=True)


def _leak_setup(admin_conn: psycopg.Connection, admin_dsn: str,
                start: Callable[[], str]) -> tuple[str, dict[uuid.UUID, Expected], tuple[str, str]]:
    limits = {t: (w, s) for t, w, s in admin_conn.execute("SELECT tier, work_mem, statement_timeout FROM tier_limits")}
    tenants: dict[uuid.UUID, Expected] = {}
    for n, tier in enumerate(TIERS):
        tenant = make_tenant(admin_conn, f"Leak {n}", tier=tier)
        events = 3 + n  # a different count per tenant: mixing shows
        admin_conn.execute(
            """INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp")
               SELECT %s, 'api_calls', 1, now() - make_interval(mins => g) FROM generate_series(1, %s) g""",
            (tenant, events),
        )
        sub = admin_conn.execute(
            "INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'plan', 'active') RETURNING id", (tenant,)
        ).fetchone()[0]
        admin_conn.execute(
            "INSERT INTO invoices (organization_id, subscription_id, amount, status) VALUES (%s, %s, 10, 'open')",
            (tenant, sub),
        )
        if tier == "enterprise":  # a partition of its own, split by month: another routing path
            admin_conn.execute("SELECT fn_create_tenant_partition(%s)", (tenant,))
        work_mem, timeout = limits[tier]
        with admin_conn.transaction():  # the limits as the server reports them (60s -> 1min)
            admin_conn.execute("SELECT set_config('work_mem', %s, true), set_config('statement_timeout', %s, true)",
                               (work_mem, timeout))
            shown = admin_conn.execute("SELECT current_setting('work_mem'), current_setting('statement_timeout')").fetchone()
        tenants[tenant] = Expected(tier, shown[0], shown[1], events)
    with psycopg.connect(app_dsn_for(admin_dsn)) as direct:
        defaults = direct.execute("SELECT current_setting('work_mem'), current_setting('statement_timeout')").fetchone()
    return start(), tenants, defaults


def test_transaction_local_context_never_leaks_through_pgbouncer(leak_setup) -> None:
    dsn, tenants, defaults = leak_setup
    report = run_clients(dsn, tenants, defaults, transaction_local_context)

    assert report.violations == [], "\n".join(report.violations[:20])
    assert report.transactions == CLIENTS * ROUNDS
    assert report.kinds == {"context": 100, "none": 100, "failed": 100}
    # The pool really multiplexed: two server connections, each serving many clients and tenants.
    assert 1 <= len(report.clients_by_backend) <= SERVER_CONNECTIONS
    assert max(len(c) for c in report.clients_by_backend.values()) >= CLIENTS // SERVER_CONNECTIONS
    assert max(len(t) for t in report.tenants_by_backend.values()) == len(tenants)


def test_careless_clients_leave_nothing_to_the_next(leak_setup) -> None:
    """Every client also sets the seed's session-level context and session-level limits: no
    later client sees any of it."""
    dsn, tenants, defaults = leak_setup
    report = run_clients(dsn, tenants, defaults, careless_client)

    assert report.violations == [], "\n".join(report.violations[:20])
    assert report.kinds == {"context": 100, "none": 100, "failed": 100}
    assert max(len(t) for t in report.tenants_by_backend.values()) == len(tenants)


def test_the_harness_detects_the_seeds_session_level_context(undefended_leak_setup) -> None:
    """Without the defences, set_config('app.current_tenant', x, false) stays on the server
    connection: the next client there, which set nothing, runs as the previous tenant and
    reads its rows."""
    dsn, tenants, defaults = undefended_leak_setup
    report = run_clients(dsn, tenants, defaults, seed_session_context)

    leaks = [v for v in report.violations if "without a context" in v]
    assert any("tenant without a context" in v for v in leaks), report.violations[:5]
    assert any("usage_events rows without a context" in v for v in leaks), report.violations[:5]


def test_the_harness_detects_session_level_tier_limits(undefended_leak_setup) -> None:
    """Without the session reset, tier limits SET for the session outlive the transaction: the
    next client inherits them."""
    dsn, tenants, defaults = undefended_leak_setup
    report = run_clients(dsn, tenants, defaults, session_level_limits)

    assert any("work_mem without a context" in v for v in report.violations), report.violations[:5]
    assert any("statement_timeout without a context" in v for v in report.violations), report.violations[:5]
    assert not any("tenant without a context" in v for v in report.violations), "the context itself was local"
