"""Tenant schemas follow every migration (issue 17): a `-- tenant tables` migration reaches the
shared tables and every tenant schema, each schema in its own transaction; a schema that fails is
named and stays behind (and unrouted) while the others complete; a re-run finishes; --status
lists what is behind."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.cli import main as cli_main
from tenant_pipelines.db import migrate as migrate_module
from tenant_pipelines.db.migrate import (
    SQL_DIR, TenantSchemasFailed, load_migrations, migrate, migration_status,
)
from tenant_pipelines.errors import MigrationError
from tests.conftest import app_dsn_for, make_tenant

SCHEMAS = 30
NEXT = f"{int(load_migrations()[-1].version) + 1:04d}"  # the next migration number
ADD_TO_INVOICES = f"""-- tenant tables
-- Invoices get a note and an index on it.
ALTER TABLE invoices ADD COLUMN note text;
CREATE INDEX invoices_note_idx ON invoices (note);
"""


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    """A copy of this checkout's sql/ to add migrations to."""
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    return tmp_path / "sql"


def add_migration(sql_dir: Path, version: str, text: str, name: str = "tenant_change") -> Path:
    path = sql_dir / "migrations" / f"{version}_{name}.sql"
    path.write_text(text)
    return path


def make_schema_tenants(conn: psycopg.Connection, count: int) -> dict[uuid.UUID, str]:
    """``count`` tenants, each in a schema of its own (placed there): tenant -> schema."""
    tenants = {}
    for i in range(count):
        tenant = make_tenant(conn, f"Schema tenant {i}")
        with conn.transaction():
            schema = conn.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
            conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
        tenants[tenant] = schema
    return tenants


def versions(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT schema_name::text, migrated_to FROM tenant_schemas").fetchall())


def has_note(conn: psycopg.Connection, schema: str) -> tuple[bool, bool]:
    """(invoices has the column note, the index invoices_note_idx exists) in ``schema``."""
    column = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'invoices' AND column_name = 'note')", (schema,)).fetchone()[0]
    index = conn.execute("SELECT to_regclass(format('%%I.invoices_note_idx', %s::text)) IS NOT NULL",
                         (schema,)).fetchone()[0]
    return column, index


def route(app_dsn: str, tenant: uuid.UUID) -> str:
    """As billing_app: enter the tenant's context and say which schema `invoices` resolves to."""
    with psycopg.connect(app_dsn) as conn:
        conn.execute("SELECT fn_set_tenant_context(%s)", (tenant,))
        return conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class "
                            "WHERE oid = 'invoices'::regclass").fetchone()[0]


def test_tenant_tables_migration_reaches_every_schema(admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, SCHEMAS)
        add_migration(sql_dir, NEXT, ADD_TO_INVOICES)
        messages: list[str] = []
        report = migrate(conn, sql_dir, log=messages.append, jobs=4)
        assert report.applied == [f"{NEXT}_tenant_change.sql"]
        assert report.schemas is not None and report.schemas.failed == []
        assert sorted(report.schemas.migrated) == sorted(tenants.values()) and report.schemas.jobs == 4
        assert conn.execute("SELECT version FROM tenant_tables_version").fetchone()[0] == NEXT
        assert has_note(conn, "public") == (True, True), "the shared tables first"
        for schema in tenants.values():
            assert has_note(conn, schema) == (True, True), schema
            assert not conn.execute("SELECT has_schema_privilege('billing_app', %s, 'CREATE')",
                                    (schema,)).fetchone()[0], "billing_app never creates in a tenant schema"
        assert set(versions(conn).values()) == {NEXT}
        assert f"tenant schemas: {SCHEMAS}/{SCHEMAS} at {NEXT}" in messages
        assert any(m.startswith("tenant schemas: 3/30 at ") for m in messages), "progress as it goes"
        # Nothing left to do: a second run changes nothing.
        again = migrate(conn, sql_dir, jobs=4)
        assert again.applied == [] and again.schemas is not None and again.schemas.behind == 0
        # A schema created now is LIKE the migrated shared tables, recorded at their version.
        late = make_schema_tenants(conn, 1)
        (schema,) = late.values()
        assert has_note(conn, schema) == (True, True) and versions(conn)[schema] == NEXT


def test_a_failing_schema_is_named_the_others_complete_and_a_rerun_finishes(
        admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, SCHEMAS)
        broken = sorted(tenants.values())[7]
        conn.execute(f'ALTER TABLE "{broken}".invoices ADD COLUMN note integer')  # in the way
        migration = add_migration(sql_dir, NEXT, ADD_TO_INVOICES)
        messages: list[str] = []
        with pytest.raises(TenantSchemasFailed) as info:
            migrate(conn, sql_dir, log=messages.append, jobs=3)
        error = str(info.value)
        assert "\n" not in error and broken in error and migration.name in error
        assert f"1 of {SCHEMAS} tenant schemas" in error
        lines = [m for m in messages if broken in m]
        assert len(lines) == 1 and migration.name in lines[0] and 'column "note"' in lines[0] and "already exists" in lines[0]
        at = versions(conn)
        assert at.pop(broken) < NEXT and set(at.values()) == {NEXT}, "the others completed"
        assert has_note(conn, broken)[1] is False, "nothing of the migration in the failed schema"
        # Fixed by hand, the next run finishes.
        conn.execute(f'ALTER TABLE "{broken}".invoices DROP COLUMN note')
        report = migrate(conn, sql_dir, jobs=3)
        assert report.applied == [] and report.schemas is not None and report.schemas.migrated == [broken]
        assert set(versions(conn).values()) == {NEXT}
        assert all(has_note(conn, schema) == (True, True) for schema in tenants.values())


def test_a_schema_whose_tables_were_dropped_is_reported_not_migrated_through_public(
        admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, 4)
        gutted = sorted(tenants.values())[0]
        conn.execute(f'DROP TABLE "{gutted}".invoices')
        add_migration(sql_dir, NEXT, ADD_TO_INVOICES)
        messages: list[str] = []
        with pytest.raises(TenantSchemasFailed, match=f"{gutted}.*its table invoices does not exist"):
            migrate(conn, sql_dir, log=messages.append, jobs=2)
        assert sum(gutted in m for m in messages) == 1
        at = versions(conn)
        assert at.pop(gutted) < NEXT and set(at.values()) == {NEXT}
        # The shared invoices got the change once (the dropped table's name did not reach them again).
        assert has_note(conn, "public") == (True, True)


def test_status_lists_behind_schemas_and_routing_refuses_them_until_migrated(
        admin_dsn: str, sql_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    app_dsn = app_dsn_for(admin_dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, 5)
        first, schema = sorted(tenants.items(), key=lambda kv: kv[1])[0]
        assert route(app_dsn, first) == schema
        monkeypatch.setenv("BILLING_DATABASE_URL", admin_dsn)
        monkeypatch.setattr(migrate_module, "SQL_DIR", sql_dir)
        assert cli_main(["db", "migrate", "--status"]) == 0
        assert "tenant schemas: 5, 0 behind" in capsys.readouterr().out

        # The shared tables get the migration; the schemas do not yet (one of them fails).
        conn.execute(f'ALTER TABLE "{schema}".invoices ADD COLUMN note integer')
        add_migration(sql_dir, NEXT, ADD_TO_INVOICES)
        assert cli_main(["db", "migrate", "--jobs", "2"]) == 4
        err = capsys.readouterr().err
        assert err.count(schema) == 2, "its own line, and the error at the end"
        status = migration_status(conn, sql_dir)
        assert [b.schema for b in status.behind] == [schema]
        assert (status.behind[0].tenant, status.behind[0].should_be_at) == (str(first), NEXT)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="db migrate"):
            route(app_dsn, first)
        other = next(t for t, s in tenants.items() if s != schema)
        assert route(app_dsn, other) == tenants[other], "the migrated ones are routed"

        assert cli_main(["db", "migrate", "--status"]) == 1
        out = capsys.readouterr().out
        assert f"  applied  {NEXT}_tenant_change.sql  (tenant tables)" in out
        assert f"{schema}\t{first}\t0000\t{NEXT}" in out and "1 behind" in out

        conn.execute(f'ALTER TABLE "{schema}".invoices DROP COLUMN note')
        assert cli_main(["db", "migrate"]) == 0
        assert cli_main(["db", "migrate", "--status"]) == 0
        assert "0 behind" in capsys.readouterr().out
        assert route(app_dsn, first) == schema


def test_status_counts_a_tenant_tables_migration_not_yet_applied(admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, 2)
        add_migration(sql_dir, NEXT, ADD_TO_INVOICES)
        status = migration_status(conn, sql_dir)
    assert [m.filename for m in status.pending] == [f"{NEXT}_tenant_change.sql"]
    assert sorted(b.schema for b in status.behind) == sorted(tenants.values())


def test_the_runner_takes_back_create_on_a_schema(admin_dsn: str, sql_dir: Path) -> None:
    """A tenant-tables migration that adds a table protects it; one that grants CREATE on the
    schema (it must not) does not keep it: the runner revokes it in the same transaction."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, 3)
        add_migration(sql_dir, NEXT, """-- tenant tables
CREATE TABLE invoice_notes (organization_id uuid NOT NULL, invoice_id uuid NOT NULL, note text);
ALTER TABLE invoice_notes OWNER TO billing_owner;
SELECT fn_protect_tenant_table('invoice_notes'::regclass);
GRANT SELECT, INSERT, UPDATE, DELETE ON invoice_notes TO billing_app;
DO $$ BEGIN
    IF current_schema() <> 'public' THEN
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO billing_app', current_schema());
    END IF;
END $$;
""", "add_invoice_notes")
        migrate(conn, sql_dir, jobs=2)
        for schema in tenants.values():
            assert not conn.execute("SELECT has_schema_privilege('billing_app', %s, 'CREATE')", (schema,)).fetchone()[0]
            assert conn.execute(
                "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = format('%%I.invoice_notes', %s::text)::regclass",
                (schema,)).fetchone()[0]
        assert set(versions(conn).values()) == {NEXT}


def test_a_tenant_tables_migration_naming_usage_events_must_branch(sql_dir: Path) -> None:
    add_migration(sql_dir, NEXT, "-- tenant tables\nALTER TABLE usage_events ADD COLUMN source text;\n")
    with pytest.raises(MigrationError, match="usage_events.*current_schema"):
        load_migrations(sql_dir)
    add_migration(sql_dir, NEXT, """-- tenant tables
DO $$ BEGIN
    IF current_schema() = 'public' THEN ALTER TABLE usage_events_mt ADD COLUMN source text;
    ELSE ALTER TABLE usage_events ADD COLUMN source text; END IF;
END $$;
""")
    assert load_migrations(sql_dir)[-1].tenant_tables


def test_a_written_for_both_usage_events_migration_reaches_every_schema(admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenants = make_schema_tenants(conn, 2)
        add_migration(sql_dir, NEXT, """-- tenant tables
DO $$ BEGIN
    IF current_schema() = 'public' THEN ALTER TABLE usage_events_mt ADD COLUMN source text;
    ELSE ALTER TABLE usage_events ADD COLUMN source text; END IF;
END $$;
""")
        migrate(conn, sql_dir, jobs=2)
        for schema in ["public", *tenants.values()]:
            table = "usage_events_mt" if schema == "public" else "usage_events"
            assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                                "AND table_name = %s AND column_name = 'source'", (schema, table)).fetchone()[0] == 1
