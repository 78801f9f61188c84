"""Every table that holds tenants' rows is carried by backups, restores and moves (issue 17): a
migration that adds a tenant table without adding it to core/placement.py TENANT_TABLES,
core/moves.py MOVED_TABLES and fn_create_tenant_schema is reported by the audit
(core/security.audit_tables_carried), by `db migrate` (a warning), by `db migrate --status`
(exit 1) and by the `tenant_tables_carried` check, instead of leaving those rows out of every
backup without a word."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from tenant_pipelines.cli import main as cli_main
from tenant_pipelines.core import moves, placement, security
from tenant_pipelines.core.security import audit_tables_carried
from tenant_pipelines.db.migrate import SQL_DIR, load_migrations, migrate
from tenant_pipelines.defs.resources import BillingDatabase
from tenant_pipelines.defs.tenants.assets import tenant_registry, tenant_tables_carried
from tests.conftest import make_tenant

NEXT = f"{int(load_migrations()[-1].version) + 1:04d}"
# A tenant table added the way sql/README.md says, but not yet taught to backups and moves.
ADD_CREDIT_NOTES = """-- tenant tables
CREATE TABLE credit_notes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    amount numeric(12, 2) NOT NULL
);
ALTER TABLE credit_notes OWNER TO billing_owner;
SELECT fn_protect_tenant_table('credit_notes'::regclass);
GRANT SELECT, INSERT, UPDATE, DELETE ON credit_notes TO billing_app;
"""


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    return tmp_path / "sql"


def schema_tenant(conn: psycopg.Connection, name: str) -> str:
    tenant = make_tenant(conn, name)
    with conn.transaction():
        schema = conn.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
        conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    return schema


def test_the_lists_of_tenant_tables_agree_with_each_other_and_with_a_new_schema(admin_conn: psycopg.Connection) -> None:
    """The tables a schema has, a move carries, the audit allows billing_app and the backups take
    are one set (the migration runner checks placement.SCHEMA_TABLES itself)."""
    in_schema = set(placement.SCHEMA_TABLES.values())
    assert set(moves.MOVED_TABLES) == in_schema == set(security.TENANT_SCHEMA_TABLES)
    assert set(placement.SCHEMA_TABLES) <= {name for name, _ in placement.TENANT_TABLES}
    schema = schema_tenant(admin_conn, "Lists")
    created = {name for (name,) in admin_conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind IN ('r', 'p') "
        "AND NOT relispartition", (schema,))}
    assert created == in_schema
    assert audit_tables_carried(admin_conn) == []


def test_a_shared_table_of_tenant_rows_that_nothing_carries_is_reported(admin_conn: psycopg.Connection,
                                                                         admin_dsn: str, monkeypatch, capsys) -> None:
    admin_conn.execute("CREATE TABLE public.loyalty_points (organization_id uuid NOT NULL, points integer)")
    admin_conn.execute("CREATE TABLE public.not_a_tenant_table (id integer)")
    (finding,) = audit_tables_carried(admin_conn)
    assert finding.obj == "table public.loyalty_points"
    assert "no backup, restore or move carries" in finding.problem
    assert "TENANT_TABLES" in finding.fix and "SCHEMA_TABLES" in finding.fix and "\n" not in str(finding)

    monkeypatch.setenv("BILLING_DATABASE_URL", admin_dsn)
    assert cli_main(["db", "migrate", "--status"]) == 1
    assert "not carried: table public.loyalty_points:" in capsys.readouterr().out
    assert cli_main(["db", "migrate"]) == 0, "a warning, not a failure: the migrations did apply"
    assert "warning: table public.loyalty_points:" in capsys.readouterr().err

    admin_conn.execute("DROP TABLE public.loyalty_points")
    assert cli_main(["db", "migrate", "--status"]) == 0
    assert "not carried" not in capsys.readouterr().out


def test_a_tenant_tables_migration_that_adds_a_table_turns_the_check_red(admin_dsn: str, sql_dir: Path) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        schemas = sorted(schema_tenant(conn, f"Carried {i}") for i in range(5))
        (migration := sql_dir / "migrations" / f"{NEXT}_add_credit_notes.sql").write_text(ADD_CREDIT_NOTES)
        report = migrate(conn, sql_dir)
        assert report.applied == [migration.name] and report.schemas is not None and not report.schemas.failed
        findings = {f.obj: f for f in audit_tables_carried(conn)}
    assert set(findings) == {"table public.credit_notes",
                             f"table credit_notes of 5 tenant schemas ({', '.join(schemas[:3])} and 2 more)"}
    assert "a move out of such a schema is refused" in findings[next(k for k in findings if "schemas" in k)].problem

    result = dg.materialize([tenant_registry, tenant_tables_carried],
                            resources={"billing_db": BillingDatabase(dsn=admin_dsn)}, raise_on_error=False)
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["findings"].value == 2
    assert "public.credit_notes" in check.metadata["details"].value


def test_the_check_passes_on_a_database_with_schema_tenants(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        schema_tenant(conn, "Green")
    result = dg.materialize([tenant_registry, tenant_tables_carried],
                            resources={"billing_db": BillingDatabase(dsn=admin_dsn)})
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["details"].value == "none"


def test_a_shared_schema_table_without_the_schema_tenant_write_policies_is_reported(
        admin_conn: psycopg.Connection) -> None:
    """A new table in SCHEMA_TABLES needs 0023's and 0025's policies on its shared copy, or a schema
    tenant's write by the qualified name lands there, outside its backups and moves."""
    admin_conn.execute("DROP POLICY schema_tenants_placed_in_a_schema_insert ON public.invoices")
    (finding,) = audit_tables_carried(admin_conn)
    assert finding.obj == "table public.invoices"
    assert "lacks the policies schema_tenants_placed_in_a_schema_insert:" in finding.problem
