"""``db migrate`` on a Citus coordinator (issue 19): sql/citus/, after sql/migrations/ and sql/functions/.

The single-node migrations and functions are applied on a coordinator as they are everywhere
(plain local tables there; Citus propagates roles and functions to the workers). Then, only
where the extension ``citus`` is in the database, the runner applies ``sql/citus/``:

* ``sql/citus/functions/<name>.sql``: a function that must differ on Citus (the tenant context,
  which must reach the workers), or exists only there. Same rules as ``sql/functions/``
  (CREATE OR REPLACE of the one function it is named after; ``-- grant:`` lines; privileges
  are the runner's) but no ``-- after:`` line: they are applied before the Citus migrations.
  A file is applied when its text, or the text of the ``sql/functions/`` file of the same name
  (whose re-application would replace the Citus version), changed since it was applied.
* ``sql/citus/migrations/NNNN_*.sql``: applied once each, in order, checksummed (an applied one
  that was edited is refused), in one transaction with its record. A first line
  ``-- reapply: name, ...`` re-applies those ``sql/functions/`` views or functions in the same
  transaction (a view over a table the migration replaced).

Records: ``tenant_pipelines.citus_migrations`` and ``tenant_pipelines.citus_functions``. On a
database without Citus nothing here runs and nothing is created.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from tenant_pipelines.errors import MigrationError

CITUS_DIR = "citus"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_REAPPLY = re.compile(r"^-- reapply: ([a-z_][a-z0-9_]*(?:, *[a-z_][a-z0-9_]*)*)[ \t]*$")


def citus_loaded(conn: psycopg.Connection) -> bool:
    """Whether the extension citus is in the connection's database."""
    return conn.execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus'").fetchone() is not None


@dataclass(frozen=True)
class CitusMigration:
    version: str
    filename: str
    text: str
    reapply: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"sql/{CITUS_DIR}/migrations/{self.filename}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class CitusReport:
    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    functions_applied: list[str] = field(default_factory=list)


def load_citus_migrations(sql_dir: Path) -> list[CitusMigration]:
    folder = sql_dir / CITUS_DIR / "migrations"
    migrations = []
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"sql/{CITUS_DIR}/migrations/{path.name}: migration names look like "
                                 "0002_distribute_something.sql; rename it")
        text = path.read_text()
        header = _REAPPLY.match(text.split("\n", 1)[0])
        reapply = tuple(n.strip() for n in header.group(1).split(",")) if header else ()
        migrations.append(CitusMigration(match.group(1), path.name, text, reapply))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations of sql/{CITUS_DIR}/migrations/ share a number: renumber one of them")
    return migrations


def load_citus_functions(sql_dir: Path) -> list["FunctionFile"]:
    """Every file of ``sql/citus/functions``, as FunctionFiles (``after`` is '0000': before the
    Citus migrations), checked like ``sql/functions/`` files but for the ``-- after:`` line."""
    from tenant_pipelines.db.migrate import _CREATES, _FUNCTION_NAME, FunctionFile, _grants

    folder = sql_dir / CITUS_DIR / "functions"
    files = []
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        where = f"sql/{CITUS_DIR}/functions/{path.name}"
        if not _FUNCTION_NAME.match(path.name):
            raise MigrationError(f"{where}: a function file is named after its function; rename it")
        name, text = path.stem, path.read_text()
        creates = _CREATES.findall(text)
        if not creates or any(created.lower() != name or not or_replace for or_replace, _, created in creates):
            raise MigrationError(f"{where}: must hold CREATE OR REPLACE of {name} and nothing else")
        kind = "view" if {k.upper().split()[-1] for _, k, _ in creates} == {"VIEW"} else "function"
        # _grants reads the lines after the first: the first line of a Citus file is a grant too.
        files.append(FunctionFile(name, path.name, text, "0000", kind, where, _grants(where, "\n" + text, kind)))
    return files


def _ensure_bookkeeping(conn: psycopg.Connection, schema: str) -> None:
    with conn.transaction():
        for table, key in (("citus_migrations", "version"), ("citus_functions", "name")):
            conn.execute(sql.SQL(
                """CREATE TABLE IF NOT EXISTS {}.{} (
                    {}          text PRIMARY KEY,
                    filename    text NOT NULL,
                    checksum    text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )""").format(sql.Identifier(schema), sql.Identifier(table), sql.Identifier(key)))


def citus_status(conn: psycopg.Connection, sql_dir: Path) -> tuple[list[str], list[str]] | None:
    """(applied, pending) sql/citus/migrations filenames on a Citus database; None elsewhere."""
    if not citus_loaded(conn):
        return None
    from tenant_pipelines.db.migrate import BOOKKEEPING_SCHEMA

    applied: set[str] = set()
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{BOOKKEEPING_SCHEMA}.citus_migrations",)).fetchone()[0]:
        applied = {v for (v,) in conn.execute(sql.SQL("SELECT version FROM {}.citus_migrations").format(
            sql.Identifier(BOOKKEEPING_SCHEMA))).fetchall()}
    migrations = load_citus_migrations(sql_dir)
    return ([m.filename for m in migrations if m.version in applied],
            [m.filename for m in migrations if m.version not in applied])


def _refuse_schema_tenants(conn: psycopg.Connection, layout: CitusMigration) -> None:
    """The Citus layout carries over the shared tables' rows, not a tenant schema's: a database
    with a tenant placed in a schema of its own is refused before anything is applied."""
    row = conn.execute("SELECT organization_id, location FROM public.tenant_placements WHERE kind = 'schema' "
                       "ORDER BY organization_id LIMIT 1").fetchone()
    if row is not None:
        tenant, schema = row
        raise MigrationError(
            f"{layout.label}: tenant {tenant} lives in schema {schema} (placement 'schema'), whose rows the Citus "
            f"layout does not carry over: move it first with 'tenant-pipelines placement move --tenant {tenant} "
            "--to pooled' (and every other schema tenant), then run db migrate again")


# Before the Citus layout distributes the shared tables of a single-node database: the
# policies of sql/migrations/0025 hold a subquery on tenant_placements, which Citus cannot put
# on a shard ("cannot create policy"). They refuse schema tenants' rows, and a database with a
# schema tenant is refused anyway (_refuse_schema_tenants); a coordinator migrated from scratch
# never has them (0025 skips Citus). Dropped in 0001's transaction.
_SINGLE_NODE_ONLY_POLICIES = """
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_events_mt', 'subscriptions', 'invoices', 'payment_methods'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS schema_tenants_placed_in_a_schema_insert ON public.%I', t);
        EXECUTE format('DROP POLICY IF EXISTS schema_tenants_placed_in_a_schema_update ON public.%I', t);
    END LOOP;
END
$$;
"""


def migrate_citus(conn: psycopg.Connection, sql_dir: Path, main_functions: list,
                  log: Callable[[str], None] = lambda message: None) -> CitusReport | None:
    """Apply ``sql_dir/citus`` when the database has Citus; None (and nothing done) otherwise.
    ``main_functions``: the ``sql/functions/`` files (for ``-- reapply:`` and the checksums)."""
    from tenant_pipelines.db.migrate import BOOKKEEPING_SCHEMA, _apply, _explain, _set_privileges

    if not citus_loaded(conn):
        return None
    migrations = load_citus_migrations(sql_dir)
    functions = load_citus_functions(sql_dir)
    by_name = {f.name: f for f in main_functions}
    for migration in migrations:
        unknown = [n for n in migration.reapply if n not in by_name]
        if unknown:
            raise MigrationError(f"{migration.label}: `-- reapply: {unknown[0]}` names no file of sql/functions/; fix it")
    _ensure_bookkeeping(conn, BOOKKEEPING_SCHEMA)
    schema = sql.Identifier(BOOKKEEPING_SCHEMA)
    applied = {v: c for v, c in conn.execute(sql.SQL("SELECT version, checksum FROM {}.citus_migrations")
                                             .format(schema)).fetchall()}
    for migration in migrations:
        if migration.version in applied and applied[migration.version] != migration.checksum:
            raise MigrationError(
                f"{migration.label} was edited after it was applied (checksum {applied[migration.version][:12]} "
                f"in the database, {migration.checksum[:12]} on disk): restore the applied text and put the change "
                f"in a new migration of sql/{CITUS_DIR}/migrations/")
    if any(m.version == "0001" and m.version not in applied for m in migrations):
        _refuse_schema_tenants(conn, next(m for m in migrations if m.version == "0001"))
    recorded = dict(conn.execute(sql.SQL("SELECT name, checksum FROM {}.citus_functions").format(schema)).fetchall())
    report = CitusReport()

    def combined(function) -> str:
        main = by_name.get(function.name)
        return hashlib.sha256((function.text + "\0" + (main.text if main else "")).encode()).hexdigest()

    for function in functions:
        checksum = combined(function)
        if recorded.get(function.name) == checksum:
            continue
        log(f"applying {function.label}" + (f" (the Citus version of sql/functions/{function.filename})"
                                             if function.name in by_name else ""))
        _apply(conn, function.label, function.text,
               sql.SQL("INSERT INTO {}.citus_functions (name, filename, checksum) VALUES (%s, %s, %s) "
                       "ON CONFLICT (name) DO UPDATE SET filename = EXCLUDED.filename, "
                       "checksum = EXCLUDED.checksum, applied_at = now()"),
               (function.name, function.filename, checksum), function=function)
        report.functions_applied.append(function.filename)
    for migration in migrations:
        if migration.version in applied:
            report.already_applied.append(migration.filename)
            continue
        log(f"applying {migration.label}")
        try:
            with conn.transaction():
                if migration.version == "0001":
                    conn.execute(_SINGLE_NODE_ONLY_POLICIES)
                conn.execute(migration.text.encode())
                for name in migration.reapply:
                    function = by_name[name]
                    conn.execute("SET LOCAL check_function_bodies = off")
                    conn.execute(function.text.encode())
                    _set_privileges(conn, function)
                conn.execute(sql.SQL("INSERT INTO {}.citus_migrations (version, filename, checksum) "
                                     "VALUES (%s, %s, %s)").format(schema),
                             (migration.version, migration.filename, migration.checksum))
        except psycopg.Error as exc:
            raise MigrationError(_explain(migration.label, exc)) from None
        report.applied.append(migration.filename)
    return report
