"""Online moves between placements (issue 17): every row arrives once, writes made during the
move are caught up, a crash at any step resumes, and the old copy is out of every route."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import psycopg
import pytest

from tenant_pipelines.core import moves, placement
from tenant_pipelines.db.pacing import Pace
from tests.conftest import make_tenant
from tests.waiting import wait_until


def fill(admin: psycopg.Connection, app_dsn: str, tenant: uuid.UUID, events: int = 300) -> None:
    """Rows in every moved table, written as the application writes them (routed names)."""
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        sub = app.execute("INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'pro', 'active')"
                          " RETURNING id", (tenant,)).fetchone()[0]
        for i in range(5):
            app.execute("INSERT INTO invoices (organization_id, subscription_id, amount, status) VALUES (%s, %s, %s, 'open')",
                        (tenant, sub, Decimal("10.000001") * (i + 1)))
        app.execute("INSERT INTO payment_methods (organization_id, kind, last4) VALUES (%s, 'card', '4242')", (tenant,))
        app.execute(
            "INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\")"
            " SELECT %s, 'api_calls', g, now() - g * interval '1 hour' FROM generate_series(1, %s) g", (tenant, events))


def snapshot(app_dsn: str, tenant: uuid.UUID) -> dict[str, list]:
    """What the tenant sees through the routed names."""
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        return {t: app.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in moves.MOVED_TABLES}


def write_during_move(app_dsn: str, tenant: uuid.UUID) -> None:
    with psycopg.connect(app_dsn) as app, app.transaction():
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        app.execute("UPDATE invoices SET status = 'paid' WHERE amount < 25")
        app.execute("DELETE FROM payment_methods")
        app.execute("DELETE FROM usage_events WHERE quantity <= 3")
        app.execute("UPDATE usage_events SET quantity = quantity + 1000 WHERE quantity BETWEEN 10 AND 12")
        app.execute("INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\")"
                    " VALUES (%s, 'late', 1, now())", (tenant,))


def rows_anywhere(admin: psycopg.Connection, tenant: uuid.UUID) -> dict[str, int]:
    """The tenant's rows in the shared tables and in every tenant schema: one live copy only."""
    counts = {f"public.{t}": admin.execute(f"SELECT count(*) FROM public.{t} WHERE organization_id = %s",
                                           (tenant,)).fetchone()[0]
              for t in ("subscriptions", "invoices", "payment_methods", "usage_events_mt")}
    for (schema,) in admin.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ '^tenant_[0-9a-f]{32}$'").fetchall():
        for t in moves.MOVED_TABLES:
            counts[f"{schema}.{t}"] = admin.execute(
                f"SELECT count(*) FROM {schema}.{t} WHERE organization_id = %s", (tenant,)).fetchone()[0]
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("path", [
    ("schema",),
    ("schema", "pooled"),
    ("schema", "partition"),
    ("partition", "schema"),
    ("partition", "pooled"),
])
def test_move_keeps_every_row_and_one_copy(admin_conn, app_dsn, path) -> None:
    tenant, other = make_tenant(admin_conn, "Mover", "growth"), make_tenant(admin_conn, "Other")
    admin_conn.execute("UPDATE tenant_classifications SET placement_override = 'pooled' WHERE organization_id = %s", (tenant,))
    fill(admin_conn, app_dsn, tenant)
    fill(admin_conn, app_dsn, other, events=50)
    other_before = snapshot(app_dsn, other)
    for kind in path:
        admin_conn.execute("UPDATE tenant_classifications SET placement_override = %s WHERE organization_id = %s",
                           (kind, tenant))
        before = snapshot(app_dsn, tenant)
        report = moves.move_tenant(admin_conn, tenant, kind, batch_rows=64)
        assert report.moved and placement.placement_of(admin_conn, tenant).kind == kind
        assert snapshot(app_dsn, tenant) == before
        copies = rows_anywhere(admin_conn, tenant)
        if kind == "schema":
            schema = admin_conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
            assert set(copies) == {f"{schema}.{t}" for t in moves.MOVED_TABLES}, copies
        else:
            assert all(k.startswith("public.") for k in copies), copies
    assert snapshot(app_dsn, other) == other_before
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.tenant_moves").fetchone()[0] == 0
    assert admin_conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tenant_move_%%'").fetchone()[0] == 0


@pytest.mark.parametrize("stop", ["prepare", "copy", "verify", "cutover"])
def test_writes_during_a_crashed_move_arrive_after_the_resume(admin_conn, app_dsn, stop) -> None:
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=50, stop_after=stop)
    cut_over = stop == "cutover"
    assert placement.placement_of(admin_conn, tenant).kind == ("schema" if cut_over else "pooled")
    write_during_move(app_dsn, tenant)  # routed to wherever the registry says now
    expected = snapshot(app_dsn, tenant)
    report = moves.move_tenant(admin_conn, tenant, "schema", batch_rows=50)
    assert report.resumed_from == ("cut_over" if cut_over else "verified" if stop == "verify" else "copying")
    assert snapshot(app_dsn, tenant) == expected
    schema = admin_conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
    assert set(rows_anywhere(admin_conn, tenant)) == {f"{schema}.{t}" for t in moves.MOVED_TABLES} - {f"{schema}.payment_methods"}


def test_after_cutover_the_old_copy_refuses_writes(admin_conn, app_dsn) -> None:
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=100, stop_after="cutover")
    with psycopg.connect(app_dsn) as app:
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            # Routed to its schema: the shared tables' policies refuse the row (sql/0023).
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema_tenants_insert_into_their_schema"):
                app.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (tenant,))
        with app.transaction():
            # A client that dropped the route (taken out by hand): the registry says schema, and
            # the shared tables refuse billing_app the row (sql/0025).
            app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            app.execute("SELECT set_config('app.tenant_route', '', true)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema_tenants_placed_in_a_schema_insert"):
                app.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (tenant,))
    # A role that no policy stops (here the superuser) meets the capture trigger of the old copy,
    # until it is removed.
    with admin_conn.transaction():
        admin_conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        admin_conn.execute("SELECT set_config('app.tenant_route', '', true)")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
            admin_conn.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')",
                               (tenant,))
    assert "moved to its new placement" in str(info.value)


def test_a_writer_with_a_context_set_by_hand_holds_the_cutover_back(admin_conn, admin_dsn, app_dsn) -> None:
    """A stamped context written by hand takes no advisory lock: its transaction, open across the
    cutover, would commit its row in the source after the final catch-up, and the old copy's
    removal would delete it. The capture trigger takes the lock for it: the cutover waits for
    that transaction, and the row moves with the tenant."""
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant, events=20)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=100, stop_after="copy")
    outcome: dict[str, object] = {}
    with psycopg.connect(app_dsn) as app:
        app.execute("SELECT set_config('app.current_tenant', extract(epoch FROM transaction_timestamp())::text || %s,"
                    " true)", (str(tenant),))
        app.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 77, 'open')", (tenant,))

        def resume() -> None:
            with psycopg.connect(admin_dsn, autocommit=True) as mover:
                try:
                    outcome["report"] = moves.move_tenant(mover, tenant, "schema", batch_rows=100)
                except Exception as exc:  # reported below
                    outcome["error"] = exc

        thread = threading.Thread(target=resume)
        thread.start()
        try:
            wait_until(lambda: admin_conn.execute(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)").fetchone()[0],
                "the cutover queued behind the hand-set writer's lock")
        finally:
            app.commit()
            thread.join()
    assert "error" not in outcome, outcome
    assert placement.placement_of(admin_conn, tenant).kind == "schema"
    schema = admin_conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
    assert admin_conn.execute(f"SELECT count(*) FROM {schema}.invoices WHERE amount = 77").fetchone()[0] == 1
    assert all(k.startswith(f"{schema}.") for k in rows_anywhere(admin_conn, tenant))


def test_target_schema_with_data_of_unknown_origin_is_refused(admin_conn, app_dsn) -> None:
    tenant = make_tenant(admin_conn, "Mover")
    fill(admin_conn, app_dsn, tenant, events=10)
    schema = admin_conn.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
    admin_conn.execute(f"INSERT INTO {schema}.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (tenant,))
    with pytest.raises(moves.MoveRefused, match=f"schema {schema} exists with rows in invoices"):
        moves.move_tenant(admin_conn, tenant, "schema")
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.tenant_moves").fetchone()[0] == 0
    assert placement.placement_of(admin_conn, tenant).kind == "pooled"


def test_a_schema_table_a_move_does_not_carry_is_never_dropped_with_its_rows(admin_conn, app_dsn) -> None:
    # A `-- tenant tables` migration created credit_notes in every schema, and nobody taught the
    # mover about it: moving the tenant out would drop the schema, and the rows with it.
    tenant = make_tenant(admin_conn, "Mover")
    fill(admin_conn, app_dsn, tenant, events=20)
    moves.move_tenant(admin_conn, tenant, "schema")
    schema = placement.placement_of(admin_conn, tenant).location
    admin_conn.execute(f"CREATE TABLE {schema}.credit_notes (organization_id uuid NOT NULL, amount numeric)")
    admin_conn.execute(f"INSERT INTO {schema}.credit_notes VALUES (%s, 5)", (tenant,))
    with pytest.raises(moves.MoveRefused, match=f"schema {schema} holds rows in credit_notes \\(1 rows\\)") as err:
        moves.move_tenant(admin_conn, tenant, "pooled")
    assert "\n" not in str(err.value) and "SCHEMA_TABLES" in str(err.value)
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.tenant_moves").fetchone()[0] == 0
    assert placement.placement_of(admin_conn, tenant).kind == "schema"

    # Rows that arrive after the move began: the cutover goes ahead (the tenant is in its new
    # place), the old schema stays, out of every route, until they are taken out.
    admin_conn.execute(f"DELETE FROM {schema}.credit_notes")
    moves.move_tenant(admin_conn, tenant, "pooled", stop_after="cutover")
    admin_conn.execute(f"INSERT INTO {schema}.credit_notes VALUES (%s, 7)", (tenant,))
    with pytest.raises(moves.MoveRefused, match="credit_notes"):
        moves.move_tenant(admin_conn, tenant, "pooled")
    assert placement.placement_of(admin_conn, tenant).kind == "pooled"
    assert admin_conn.execute(f"SELECT amount FROM {schema}.credit_notes").fetchone()[0] == 7
    admin_conn.execute(f"DROP TABLE {schema}.credit_notes")  # the operator took them elsewhere
    report = moves.move_tenant(admin_conn, tenant, "pooled")
    assert admin_conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None
    assert all(k.startswith("public.") for k in rows_anywhere(admin_conn, tenant)) and report is not None


def test_the_mover_holds_no_transaction_or_snapshot_while_it_waits(admin_conn, admin_dsn, app_dsn) -> None:
    # Every wait of the pacer (copy, verification, cleanup) comes between transactions: a
    # snapshot held through them would hold back vacuum in the whole database for the move.
    tenant = make_tenant(admin_conn, "Mover")
    fill(admin_conn, app_dsn, tenant, events=200)
    pid = admin_conn.info.backend_pid
    states: list[tuple] = []
    with psycopg.connect(admin_dsn, autocommit=True) as observer:
        def look(_seconds: float) -> None:
            states.append(observer.execute("SELECT state, backend_xmin IS NULL FROM pg_stat_activity WHERE pid = %s",
                                           (pid,)).fetchone())

        moves.move_tenant(admin_conn, tenant, "schema", batch_rows=50, pace=Pace.fixed(0.01), sleep=look)
    assert len(states) > moves.VERIFY_CHUNKS  # the copy's batches and each range verified waited
    assert set(states) == {("idle", True)}


def test_abandoned_move_leaves_the_tenant_where_it_was(admin_conn, app_dsn) -> None:
    tenant = make_tenant(admin_conn, "Mover")
    fill(admin_conn, app_dsn, tenant, events=40)
    before = snapshot(app_dsn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=10, stop_after="copy")
    assert moves.abandon_move(admin_conn, tenant) is True
    assert snapshot(app_dsn, tenant) == before
    assert all(k.startswith("public.") for k in rows_anywhere(admin_conn, tenant))
    assert admin_conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tenant_move_%%'").fetchone()[0] == 0
    assert admin_conn.execute("SELECT to_regnamespace(fn_tenant_schema_name(%s))", (tenant,)).fetchone()[0] is None


def test_a_move_in_progress_is_finished_before_another(admin_conn, app_dsn) -> None:
    tenant = make_tenant(admin_conn, "Mover")
    moves.move_tenant(admin_conn, tenant, "schema", stop_after="copy")
    with pytest.raises(moves.MoveRefused, match="a move to schema is in progress"):
        moves.move_tenant(admin_conn, tenant, "partition")


def test_cutover_waits_for_the_tenants_transaction_in_flight(admin_conn, app_dsn, admin_dsn) -> None:
    """A transaction of the tenant that set its context before the cutover holds its lock
    SHARED: the cutover waits (giving up and retrying every 100 ms), the transaction's write
    commits where it was routed, and the cutover's final catch-up brings it along."""
    import threading

    from tests.waiting import wait_until

    tenant = make_tenant(admin_conn, "Mover")
    fill(admin_conn, app_dsn, tenant, events=20)
    moves.move_tenant(admin_conn, tenant, "schema", stop_after="verify")
    with psycopg.connect(app_dsn) as app:
        app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))  # routed to the pool: the old place
        app.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 7, 'open')", (tenant,))
        result: dict = {}
        with psycopg.connect(admin_dsn, autocommit=True) as mover, psycopg.connect(admin_dsn, autocommit=True) as observer:
            pid = mover.execute("SELECT pg_backend_pid()").fetchone()[0]
            thread = threading.Thread(target=lambda: result.update(
                report=moves.move_tenant(mover, tenant, "schema")))
            thread.start()
            wait_until(lambda: observer.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND NOT granted",
                (pid,)).fetchone()[0] > 0, "the cutover to queue for the tenant's lock")
            assert placement.placement_of(observer, tenant).kind == "pooled"
            app.commit()
            thread.join()
    assert result["report"].moved and placement.placement_of(admin_conn, tenant).kind == "schema"
    assert 7 in [r[0] for r in admin_conn.execute(
        f"SELECT amount FROM {placement.schema_name(tenant)}.invoices WHERE organization_id = %s", (tenant,))]


def test_a_move_and_a_tiering_run_of_one_tenant_exclude_each_other(admin_conn, admin_dsn) -> None:
    """Tiering holds its lock on the tenant while it runs (core/tiering.py): the mover refuses to
    start meanwhile, and changes nothing."""
    tenant = make_tenant(admin_conn, "Mover")
    with psycopg.connect(admin_dsn, autocommit=True) as tiering:
        tiering.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (0x7469_6572, str(tenant)))
        with pytest.raises(moves.MoveRefused, match="a tiering run is moving its months"):
            moves.move_tenant(admin_conn, tenant, "schema")
    assert placement.placement_of(admin_conn, tenant).kind == "pooled"
    assert admin_conn.execute("SELECT count(*) FROM tenant_pipelines.tenant_moves").fetchone()[0] == 0
    assert moves.move_tenant(admin_conn, tenant, "schema").moved


@pytest.mark.parametrize("row_id", ["00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"])
def test_a_copy_changed_behind_the_movers_back_is_refused_at_verification(admin_conn, app_dsn, row_id) -> None:
    """The verification reads the usage events in ranges of ids; a row at either end of the
    uuid space is in one of them."""
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant, events=100)
    admin_conn.execute("INSERT INTO usage_events_mt (id, organization_id, metric_name, quantity, \"timestamp\")"
                       " VALUES (%s, %s, 'edge', 1, now())", (row_id, tenant))
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=40, stop_after="copy")
    schema = admin_conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
    # Not through the capture triggers (they are on the source): the mover cannot know.
    assert admin_conn.execute(f"UPDATE {schema}.usage_events SET quantity = 2 WHERE id = %s", (row_id,)).rowcount == 1
    with pytest.raises(moves.TenantPipelinesError, match="usage_events differs after the copy .* nothing was switched"):
        moves.move_tenant(admin_conn, tenant, "schema", batch_rows=40)
    assert placement.placement_of(admin_conn, tenant).kind == "pooled"


def test_a_repeatable_read_transaction_from_before_the_cutover_cannot_write_the_old_copy(admin_conn, app_dsn) -> None:
    """Its snapshot predates the cutover, so it reads the old registry row and the old move step:
    without a check it would route to the old copy and write there, acknowledged, and the move's
    clean-up would then remove the row. The context refuses it with a serialization failure, which
    a REPEATABLE READ client retries (in a new snapshot, routed to the new placement)."""
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=100, stop_after="verify")
    with psycopg.connect(app_dsn) as app:
        app.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with app.transaction():  # no cutover since its snapshot: an ordinary REPEATABLE READ transaction
            app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            app.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 6, 'open')", (tenant,))
        with app.transaction():
            app.execute("SELECT 1")  # the snapshot, before the cutover
            moves.move_tenant(admin_conn, tenant, "schema", batch_rows=100, stop_after="cutover")
            with pytest.raises(psycopg.errors.SerializationFailure) as info:
                app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        assert "placement" in str(info.value) or "concurrent update" in str(info.value)
        with app.transaction():  # the retry: a new snapshot, the new route
            app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
            app.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, 7, 'open')", (tenant,))
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=100)  # the clean-up
    schema = admin_conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
    assert admin_conn.execute(f"SELECT count(*) FROM {schema}.invoices WHERE amount IN (6, 7)").fetchone()[0] == 2
    with psycopg.connect(app_dsn) as app:  # after the clean-up too (the move's row deleted since the snapshot)
        app.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with app.transaction():
            app.execute("SELECT 1")
            moves.move_tenant(admin_conn, tenant, "pooled", batch_rows=100)
            with pytest.raises(psycopg.errors.SerializationFailure):
                app.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
