"""Schema-per-tenant routing (issue 17): a schema tenant's transaction reaches its own tables
through the same names, only inside the transaction that set the context, and RLS still holds
on every table of every schema."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import make_tenant


def place_in_schema(admin: psycopg.Connection, tenant: uuid.UUID) -> str:
    """A new tenant with no rows yet, placed in a schema of its own (what a move does at
    cutover, without rows to copy)."""
    schema = admin.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
    admin.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    return schema


def insert_invoice(conn: psycopg.Connection, tenant: uuid.UUID, amount: str = "1.50") -> None:
    conn.execute("INSERT INTO invoices (organization_id, amount, status) VALUES (%s, %s, 'open')", (tenant, amount))


def test_schema_tenant_writes_land_in_its_schema_and_only_in_its_transaction(admin_conn, app_dsn) -> None:
    a, b = make_tenant(admin_conn, "A", "enterprise"), make_tenant(admin_conn, "B")
    schema = place_in_schema(admin_conn, a)
    with psycopg.connect(app_dsn) as app:
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            assert app.execute("SHOW search_path").fetchone()[0].startswith(f"{schema}, ")
            insert_invoice(app, a)
            app.execute("INSERT INTO usage_events (organization_id, metric_name, quantity, \"timestamp\") VALUES (%s, 'api', 1, now())", (a,))
            assert app.execute("SELECT count(*) FROM invoices").fetchone()[0] == 1
        assert app.execute("SHOW search_path").fetchone()[0] == '"$user", public'
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (b,))
            assert app.execute("SHOW search_path").fetchone()[0] == '"$user", public'
            insert_invoice(app, b)
            # B's context: A's schema by its qualified name shows nothing (RLS), and A's rows cannot be written there.
            assert app.execute(f"SELECT count(*) FROM {schema}.invoices").fetchone()[0] == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with app.transaction():
                    insert_invoice(app, a)  # into public.invoices: not B's row
        with app.transaction():
            # A then B in one transaction: the route follows the context.
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            app.execute("SELECT fn_set_tenant_context(%s)", (b,))
            assert app.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    assert admin_conn.execute(f"SELECT count(*) FROM {schema}.invoices").fetchone()[0] == 1
    assert admin_conn.execute(f"SELECT count(*) FROM {schema}.usage_events").fetchone()[0] == 1
    assert admin_conn.execute("SELECT count(*) FROM public.invoices WHERE organization_id = %s", (a,)).fetchone()[0] == 0
    assert admin_conn.execute("SELECT fn_get_tenant_schema(%s), fn_get_tenant_schema(%s)", (a, b)).fetchone() == (schema, None)


def test_schema_tables_refuse_other_tenants_rows_even_from_the_owner(admin_conn) -> None:
    a, b = make_tenant(admin_conn, "A"), make_tenant(admin_conn, "B")
    schema = place_in_schema(admin_conn, a)
    with pytest.raises(psycopg.errors.CheckViolation):
        admin_conn.execute(f"INSERT INTO {schema}.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (b,))


def test_app_has_no_create_and_no_month_access_in_a_tenant_schema(admin_conn, app_dsn) -> None:
    a = make_tenant(admin_conn, "A")
    schema = place_in_schema(admin_conn, a)
    month = admin_conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass LIMIT 1", (f"{schema}.usage_events",)).fetchone()[0]
    with psycopg.connect(app_dsn) as app:
        assert app.execute("SELECT has_schema_privilege(%s, 'CREATE')", (schema,)).fetchone()[0] is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(f"SELECT * FROM {schema}.{month}")


def test_schema_behind_the_tenant_tables_is_not_routed_to(admin_conn, app_dsn) -> None:
    a = make_tenant(admin_conn, "A")
    schema = place_in_schema(admin_conn, a)
    admin_conn.execute("UPDATE tenant_tables_version SET version = '9999'")
    with psycopg.connect(app_dsn) as app:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
    assert f"schema {schema} is at migration" in str(info.value) and "db migrate" in info.value.diag.message_hint


SHARED_WRITES = {
    "public.invoices": "INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')",
    "public.subscriptions": "INSERT INTO public.subscriptions (organization_id, plan, status) VALUES (%s, 'p', 'active')",
    "public.payment_methods": "INSERT INTO public.payment_methods (organization_id, kind) VALUES (%s, 'card')",
    "public.usage_events": "INSERT INTO public.usage_events (organization_id, metric_name, quantity, \"timestamp\")"
                           " VALUES (%s, 'api', 1, now())",
    "public.usage_events_mt": "INSERT INTO public.usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
                              " VALUES (%s, 'api', 1, now())",
}


@pytest.mark.parametrize("table", sorted(SHARED_WRITES))
def test_schema_tenant_cannot_write_the_shared_tables_by_their_qualified_names(admin_conn, app_dsn, table) -> None:
    """A row written there would be acknowledged and then never read by the tenant's routed
    queries, nor backed up or moved with it: the shared tables refuse it (migration 0023)."""
    a, b = make_tenant(admin_conn, "A", "enterprise"), make_tenant(admin_conn, "B")
    place_in_schema(admin_conn, a)
    with psycopg.connect(app_dsn) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            with app.transaction():
                app.execute("SELECT fn_set_tenant_context(%s)", (a,))
                app.execute(SHARED_WRITES[table], (a,))
        assert "schema_tenants_insert_into_their_schema" in str(info.value)
        with app.transaction():
            # A then B in one transaction: B is pooled, and writes the shared tables as ever.
            app.execute("SELECT fn_set_tenant_context(%s)", (a,))
            app.execute("SELECT fn_set_tenant_context(%s)", (b,))
            app.execute(SHARED_WRITES[table], (b,))
        # A route set by hand for the session is no route in a later transaction (it is stamped).
        app.execute("SELECT set_config('app.tenant_route', extract(epoch FROM transaction_timestamp())::text || 'x', false)")
        app.commit()
        with app.transaction():
            app.execute("SELECT fn_set_tenant_context(%s)", (b,))
            app.execute(SHARED_WRITES[table], (b,))
    table_name = table.split(".")[1].replace("usage_events_mt", "usage_events")
    counts = admin_conn.execute(
        f"SELECT count(*) FILTER (WHERE organization_id = %s), count(*) FILTER (WHERE organization_id = %s) FROM public.{table_name}",
        (a, b)).fetchone()
    assert counts == (0, 2)


@pytest.mark.parametrize("table", sorted(SHARED_WRITES))
@pytest.mark.parametrize("how", ["route cleared", "context by hand"])
def test_a_client_that_skips_the_route_is_refused_by_the_registry(admin_conn, app_dsn, table, how) -> None:
    """The route is a setting the client can write: cleared after fn_set_tenant_context, or
    never made (the stamped context written by hand: no route, no search_path, so even the
    unqualified name reaches the shared table). The registry says the tenant lives in a
    schema, and the shared tables refuse its rows (migration 0025)."""
    a = make_tenant(admin_conn, "A", "enterprise")
    place_in_schema(admin_conn, a)
    statement = SHARED_WRITES[table] if how == "route cleared" else SHARED_WRITES[table].replace("public.", "")
    with psycopg.connect(app_dsn) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            with app.transaction():
                if how == "route cleared":
                    app.execute("SELECT fn_set_tenant_context(%s)", (a,))
                    app.execute("SELECT set_config('app.tenant_route', '', true)")
                else:
                    app.execute("SELECT set_config('app.current_tenant',"
                                " extract(epoch FROM transaction_timestamp())::text || %s, true)", (str(a),))
                    assert app.execute("SELECT fn_current_tenant_id()").fetchone()[0] == a
                app.execute(statement, (a,))
        assert "schema_tenants_placed_in_a_schema_insert" in str(info.value)
    table_name = table.split(".")[1].replace("usage_events_mt", "usage_events")
    assert admin_conn.execute(f"SELECT count(*) FROM public.{table_name} WHERE organization_id = %s",
                              (a,)).fetchone()[0] == 0


def test_an_update_with_the_route_cleared_is_refused_by_the_registry(admin_conn, app_dsn) -> None:
    a = make_tenant(admin_conn, "A", "enterprise")
    admin_conn.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (a,))
    place_in_schema(admin_conn, a)
    with psycopg.connect(app_dsn) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            with app.transaction():
                app.execute("SELECT fn_set_tenant_context(%s)", (a,))
                app.execute("SELECT set_config('app.tenant_route', '', true)")
                app.execute("UPDATE public.invoices SET status = 'paid'")
        assert "schema_tenants_placed_in_a_schema_update" in str(info.value)
    assert admin_conn.execute("SELECT status FROM public.invoices WHERE organization_id = %s", (a,)).fetchone()[0] == "open"


def test_schema_tenant_cannot_update_its_rows_left_in_the_shared_tables(admin_conn, app_dsn) -> None:
    """Rows of the old copy (a move's cleanup not yet run) are not the tenant's to change."""
    a = make_tenant(admin_conn, "A", "enterprise")
    admin_conn.execute("INSERT INTO public.invoices (organization_id, amount, status) VALUES (%s, 1, 'open')", (a,))
    place_in_schema(admin_conn, a)
    with psycopg.connect(app_dsn) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            with app.transaction():
                app.execute("SELECT fn_set_tenant_context(%s)", (a,))
                app.execute("UPDATE public.invoices SET status = 'paid'")
        # Both restrictive policies refuse it (0023 by the route, 0025 by the registry); the
        # message names the first by name.
        assert ("schema_tenants_update_in_their_schema" in str(info.value)
                or "schema_tenants_placed_in_a_schema_update" in str(info.value))
    assert admin_conn.execute("SELECT status FROM public.invoices WHERE organization_id = %s", (a,)).fetchone()[0] == "open"
