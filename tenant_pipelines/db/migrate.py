"""Apply ``sql/``: the numbered migrations once each, and each function or view whenever its file changes.

``sql/migrations/NNNN_*.sql`` hold tables, types, policies, grants on tables and data changes.
Each is applied once, in order, and checksummed: an applied migration that was edited is
refused. ``sql/functions/<name>.sql`` hold one function or view each, as it is now (CREATE OR
REPLACE, with its owner and grants). A function file's first line, ``-- after: NNNN``, names
the migration after which it can be created (the one that created the last object it needs:
a role it is owned by or granted to, a table a view selects from); bodies are not checked
when a file is applied (``check_function_bodies = off``, as pg_dump does), so a function may
name tables that come later. A file is applied, and recorded in
``tenant_pipelines.schema_functions``, when its checksum differs from the one recorded: on a
fresh database right after migration ``after``, so that later migrations find it (0006's
policies use ``fn_current_tenant_id``); on an existing one, when it was edited.

Privileges are the runner's, not each file's: after a file is applied, its function (every
overload) or view is owned by ``billing_owner``, every privilege on it is revoked, and only
what the file's header grants is granted back: ``-- grant: EXECUTE TO billing_app`` (a
function), ``-- grant: SELECT, INSERT TO billing_app`` (a view), ``-- grant: EXECUTE TO
PUBLIC``. A file cannot forget its REVOKE, and a grant that a file no longer names is gone.

Each file runs in its own transaction together with the row that records it, so a crash
leaves every file either applied and recorded, or neither. A session advisory lock keeps two
runners from applying the same file at once.

Tenant tables (issue 17). A tenant may live in a schema of its own, ``tenant_<32 hex>``
(``fn_create_tenant_schema``), holding its own ``usage_events``, ``subscriptions``,
``invoices`` and ``payment_methods``. A migration whose first line is ``-- tenant tables``
changes those tables, by their unqualified names. It is applied to the shared tables like any
migration, with ``search_path = public``, and in the same transaction
``tenant_tables_version.version`` becomes its version (routing then refuses every tenant
schema behind it: ``fn_tenant_schema_route``). Then every tenant schema of ``tenant_schemas``
whose ``migrated_to`` is behind gets the tenant-tables migrations it lacks, each schema in one
transaction of its own with ``SET LOCAL search_path = <schema>, public`` and its new
``migrated_to``, on ``jobs`` connections at once: a kill at any point leaves every schema
migrated or not, and a re-run finishes. A schema that fails (or whose tables are gone) is
reported in one line, naming it and the migration; the others go on, and ``migrate()`` raises
``TenantSchemasFailed`` at the end. ``public.usage_events`` is a view over ``usage_events_mt``
while a schema's is a partitioned table: a tenant-tables migration that names either must
branch on ``current_schema()`` (``'public'`` for the shared run), else it is refused.
``migration_status()`` is ``db migrate --status``.

A database migrated before the split (issue 16: one folder of numbered files, each
redefining functions) has the checksums of those files recorded. They are known
(``LEGACY_CHECKSUMS``): such a record is re-baselined to the split layout's file, once, and
its functions are then applied from ``sql/functions/``; any other checksum is still refused.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psycopg
from psycopg import sql

from tenant_pipelines.settings import PROJECT_DIR
from tenant_pipelines.errors import MigrationError, TenantPipelinesError
from tenant_pipelines.db.locks import run_with_lock_timeout
from tenant_pipelines.db.names import APP_ROLE, OWNER_ROLE

if TYPE_CHECKING:
    from tenant_pipelines.db.citus import CitusReport

SQL_DIR = PROJECT_DIR / "sql"
MIGRATIONS_DIR = "migrations"
FUNCTIONS_DIR = "functions"
BOOKKEEPING_SCHEMA = "tenant_pipelines"
_LOCK_KEY = 0x7465_6E61_6E74  # "tenant": one advisory lock for the migration runner
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_FUNCTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.sql$")
_AFTER = re.compile(r"^-- after: (\d{4})[ \t]*$")
_GRANT = re.compile(r"^-- grant: ([A-Za-z, ]+?) TO ([a-z_][a-z0-9_]*|PUBLIC)[ \t]*$")
TENANT_TABLES_HEADER = "-- tenant tables"  # the first line of a migration of the tenant tables
_USAGE_EVENTS = re.compile(r"\busage_events(_mt)?\b", re.IGNORECASE)
_CURRENT_SCHEMA = re.compile(r"\bcurrent_schema\b", re.IGNORECASE)
_PRIVILEGES = {"function": {"EXECUTE"}, "view": {"SELECT", "INSERT", "UPDATE", "DELETE"}}
_CREATES = re.compile(
    r"^[ \t]*CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|VIEW|MATERIALIZED\s+VIEW)\s+(?:public\.)?\"?(\w+)",
    re.IGNORECASE | re.MULTILINE)

# The numbered files whose text the split changed (issue 16: their functions and views moved
# to sql/functions/): version -> (sha256 of the text main had before the split, kept in
# tests/fixtures/sql_legacy/; sha256 of its text in sql/migrations/). A database that recorded
# the first has that file's effect, and its functions as that main left them: the record is
# re-baselined to the second, and the functions are re-applied from sql/functions/. Only the
# exact pair is accepted, so an edit made after the split is refused like any other.
LEGACY_CHECKSUMS: dict[str, tuple[str, str]] = {
    "0003": ("11a7a8ff1c1a4a8c2f000ffd6e76ed86810dba87cdedcdc91af3925f2a0723ef",
             "e1cc3a7e7c726f29c6d5479de1aacb272ca8aa261251a85c709ec06b853df3ad"),
    "0005": ("e5309d3ba88ecbf56766ec63856565ca41857f41405c9ce918c439066b74be11",
             "e9eb924e508cb91038b2ba04f92019aca32c565209bbbba1b6d275763f870e2a"),
    "0006": ("231a680336ccbcdd39cb2c9ae09bfb4f4ceafdff444afb4f61abed980935cb58",
             "f14de87b871d92e64ebc194f72bebf0f044a21745e067c70454693bb84d42b00"),
    "0007": ("6b5844002c5ea760dba55f1b2a3ded21b9db56d3333f0285e9ca1bd77376277b",
             "f7b9dc8bad5641c1187a0b5902a422fe223c279bc11c85939db3cb47f455e7d9"),
    "0009": ("ec29f8ca122ace266b4a7cdf59ddab44cd59a05cfd07c2f7ca9d7d46850e8d5a",
             "d846650a40bdb7d85560ee34a5a4c6501de7fa771bdba9f8b5d82890b8ebe040"),
    "0011": ("7c4e52750c26ce3f8767b82597321f8e5b71c1670bc57caed6ce494ff5448d34",
             "c6790ad8e4f3363e2418e9916f3b4500c16fd84a527aafd77f63bbf2759fbe94"),
    "0014": ("a90e241f0e8db6171110f10592c1af933ede674932a1398b499bfc4c784aca6a",
             "c92da075a0624f47940782738c50c28ace28aee46028b2033664d00a0b153b2e"),
    "0015": ("084b7aac333bc8d97e5877998dd6a20d656690cd93725cb552100a711e7024a7",
             "6f22e15f10b428fe2465037edeb7333578e1073a0125304ce37e4b717ce706a0"),
    "0016": ("d64f0732665e647e88086e16a826f77c4e519c290635cc8bc1288030cd7aaeea",
             "30b58d9b0a0ec11e597454682fe5d48ecf054b7b6ff237f5b43a3870db7d2b34"),
    "0017": ("f426729a25cfc5c7c0fd5aa3eca194753a391858d2f291ca027ba0eacaa39884",
             "3bd84442ad9a18319883dbdc5fb18222dd5e1829af54fe565482e5b29129c690"),
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _SqlFile:
    """What a migration and a function file share: the checksum of their text, and the name
    messages give them (``where``, else ``<folder>/<filename>``)."""

    filename: str
    text: str
    where: str
    folder = "sql"

    @property
    def checksum(self) -> str:
        return _sha256(self.text)

    @property
    def label(self) -> str:
        return self.where or f"{self.folder}/{self.filename}"


@dataclass(frozen=True)
class Migration(_SqlFile):
    version: str
    filename: str
    text: str
    where: str = ""  # how messages name it: sql/migrations/0007_....sql

    @property
    def tenant_tables(self) -> bool:
        """A migration of the tenant tables: applied to the shared ones and to every tenant schema."""
        return self.text.split("\n", 1)[0].strip() == TENANT_TABLES_HEADER


@dataclass(frozen=True)
class FunctionFile(_SqlFile):
    name: str       # the function's or view's name, and the file's
    filename: str
    text: str
    after: str      # the migration after which it can be created
    kind: str       # "function" or "view"
    where: str = ""
    grants: tuple[tuple[tuple[str, ...], str], ...] = ()  # ((privileges, role), ...) from `-- grant:` lines
    folder = f"sql/{FUNCTIONS_DIR}"

    @property
    def order(self) -> tuple[str, int, str]:
        # Functions before views with the same `after`: a view may call a function, and a
        # function's body is not checked when it is created.
        return (self.after, 0 if self.kind == "function" else 1, self.name)


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]
    functions_applied: list[str] = field(default_factory=list)
    rebaselined: list[str] = field(default_factory=list)
    schemas: "SchemaReport | None" = None  # the tenant schemas' run
    citus: "CitusReport | None" = None  # sql/citus/ on a Citus coordinator (db/citus.py); None elsewhere


@dataclass(frozen=True)
class SchemaFailure:
    schema: str
    tenant: str
    migration: str  # the label of the migration that failed, "" when none was tried
    message: str

    def __str__(self) -> str:
        what = f"{self.migration} failed: " if self.migration else ""
        return f"tenant schema {self.schema} (tenant {self.tenant}): {what}{self.message}"


@dataclass
class SchemaReport:
    """What the tenant schemas' run did: how many were behind, migrated, and which failed."""
    target: str                       # the version they were brought to
    behind: int = 0
    migrated: list[str] = field(default_factory=list)
    failed: list[SchemaFailure] = field(default_factory=list)
    jobs: int = 1


class TenantSchemasFailed(MigrationError):
    """Some tenant schemas could not be migrated; the others were. ``report`` says which."""

    def __init__(self, report: SchemaReport) -> None:
        self.report = report
        first = report.failed[0]
        more = f" (and {len(report.failed) - 1} more, each in its own line above)" if len(report.failed) > 1 else ""
        super().__init__(
            f"{len(report.failed)} of {report.behind} tenant schemas behind could not be brought to "
            f"{report.target}: {first}{more}; they stay behind and are not routed to: fix them and run "
            "tenant-pipelines db migrate again")


def _migrations_dir(sql_dir: Path) -> Path:
    """``sql_dir/migrations`` in the split layout; a folder of numbered files alone (the layout
    before issue 16, which the upgrade test migrates with) is its own migrations folder."""
    nested = sql_dir / MIGRATIONS_DIR
    if nested.is_dir():
        strays = sorted(p.name for p in sql_dir.glob("*.sql"))
        if strays:
            raise MigrationError(
                f"sql/{strays[0]}: migrations go in sql/{MIGRATIONS_DIR}/, functions and views in "
                f"sql/{FUNCTIONS_DIR}/<name>.sql; move it")
        return nested
    return sql_dir


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    folder = _migrations_dir(sql_dir)
    prefix = f"sql/{MIGRATIONS_DIR}/" if folder != sql_dir else "sql/"
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration names look like 0007_create_something.sql; rename it"
            )
        migration = Migration(match.group(1), path.name, path.read_text(), prefix + path.name)
        if migration.tenant_tables and _USAGE_EVENTS.search(migration.text) and not _CURRENT_SCHEMA.search(migration.text):
            raise MigrationError(
                f"{migration.label}: a `{TENANT_TABLES_HEADER}` migration names usage_events, which is a view over "
                "usage_events_mt in public but a partitioned table in each tenant schema: branch on current_schema() "
                "('public' for the shared tables, the tenant's schema otherwise) so it works on both, or change "
                "usage events in a plain migration")
        migrations.append(migration)
    versions = [m.version for m in migrations]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"two migrations share the number {duplicates[0]}: renumber one of them")
    return migrations


def load_functions(sql_dir: Path = SQL_DIR, versions: set[str] | None = None) -> list[FunctionFile]:
    """Every file of ``sql_dir/functions``, in the order a fresh database gets them. Each must
    start with ``-- after: NNNN`` (a migration in ``versions``, when given) and create, with
    CREATE OR REPLACE, the one function or view it is named after."""
    folder = sql_dir / FUNCTIONS_DIR
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.glob("*.sql")):
        where = f"sql/{FUNCTIONS_DIR}/{path.name}"
        if not _FUNCTION_NAME.match(path.name):
            raise MigrationError(f"{where}: a function file is named after its function, like fn_do_something.sql; rename it")
        name, text = path.stem, path.read_text()
        header = _AFTER.match(text.split("\n", 1)[0])
        if not header:
            raise MigrationError(
                f"{where}: its first line must be `-- after: NNNN`, the migration after which it can be created")
        after = header.group(1)
        if versions is not None and after not in versions:
            raise MigrationError(f"{where}: `-- after: {after}` names no migration in sql/{MIGRATIONS_DIR}/; fix the number")
        creates = _CREATES.findall(text)
        if not creates:
            raise MigrationError(f"{where}: creates no function or view; it should hold CREATE OR REPLACE of {name}")
        for or_replace, kind, created in creates:
            if created.lower() != name:
                raise MigrationError(
                    f"{where}: creates {created} as well as {name}: one function or view a file, "
                    f"in sql/{FUNCTIONS_DIR}/{created.lower()}.sql")
            if not or_replace:
                raise MigrationError(f"{where}: write CREATE OR REPLACE {kind.upper()}: the file is re-applied when it changes")
        kinds = {kind.upper().split()[-1] for _, kind, _ in creates}
        kind = "view" if kinds == {"VIEW"} else "function"
        files.append(FunctionFile(name, path.name, text, after, kind, where, _grants(where, text, kind)))
    return sorted(files, key=lambda f: f.order)


def _grants(where: str, text: str, kind: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    """The ``-- grant: PRIVILEGES TO role`` lines that follow ``-- after:`` at the top of a file."""
    grants = []
    for line in text.split("\n")[1:]:
        if not line.startswith("-- grant:"):
            break
        match = _GRANT.match(line)
        privileges = tuple(p.strip().upper() for p in match.group(1).split(",")) if match else ()
        if not match or not set(privileges) <= _PRIVILEGES[kind]:
            raise MigrationError(
                f"{where}: `{line.strip()}` is not a grant this runner makes; write `-- grant: "
                f"{', '.join(sorted(_PRIVILEGES[kind]))} TO <role>` (privileges a {kind} has, to a role or PUBLIC)")
        grants.append((privileges, match.group(2)))
    return tuple(grants)


def _ensure_bookkeeping(conn: psycopg.Connection) -> None:
    """The two record tables: applied migrations by version, applied function files by name."""
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(BOOKKEEPING_SCHEMA))
        )
        for table, key in (("schema_migrations", "version"), ("schema_functions", "name")):
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {}.{} (
                        {}          text PRIMARY KEY,
                        filename    text NOT NULL,
                        checksum    text NOT NULL,
                        applied_at  timestamptz NOT NULL DEFAULT now()
                    )"""
                ).format(sql.Identifier(BOOKKEEPING_SCHEMA), sql.Identifier(table), sql.Identifier(key))
            )


def applied_migrations(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """version -> (filename, checksum) of what the database has applied."""
    rows = conn.execute(
        sql.SQL("SELECT version, filename, checksum FROM {}.schema_migrations").format(
            sql.Identifier(BOOKKEEPING_SCHEMA)
        )
    ).fetchall()
    return {version: (filename, checksum) for version, filename, checksum in rows}


def applied_functions(conn: psycopg.Connection) -> dict[str, str]:
    """name -> checksum of the function files the database has applied (none before the split)."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                          (f"{BOOKKEEPING_SCHEMA}.schema_functions",)).fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute(
        sql.SQL("SELECT name, checksum FROM {}.schema_functions").format(sql.Identifier(BOOKKEEPING_SCHEMA))
    ).fetchall()
    return dict(rows)


def default_jobs() -> int:
    """How many tenant schemas ``db migrate`` migrates at once by default: min(4, CPUs)."""
    return max(1, min(4, os.cpu_count() or 1))


def migrate(
    conn: psycopg.Connection,
    sql_dir: Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    jobs: int | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
) -> MigrationReport:
    """Apply every migration not yet applied, and every function file not applied as it is now:
    in order, each function file right after the migration its ``-- after:`` names. Then bring
    every tenant schema behind up to the tenant tables' version, ``jobs`` schemas at once
    (default: ``default_jobs()``) on connections from ``connect`` (default: new connections
    with ``conn``'s parameters); raises ``TenantSchemasFailed`` at the end if some could not
    be. ``conn`` must be in autocommit mode."""
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection: each file gets its own transaction")
    sql_dir = sql_dir or SQL_DIR  # read when called: the tests point it at a copy
    migrations = load_migrations(sql_dir)
    functions = load_functions(sql_dir, {m.version for m in migrations})
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        _ensure_bookkeeping(conn)
        applied = applied_migrations(conn)
        legacy = []
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded and recorded[1] != migration.checksum:
                if (recorded[1], migration.checksum) == LEGACY_CHECKSUMS.get(migration.version):
                    legacy.append(migration)
                    continue
                raise MigrationError(
                    f"{migration.label} was edited after it was applied "
                    f"(checksum {recorded[1][:12]} in the database, {migration.checksum[:12]} on disk): "
                    "restore the applied text and put the change in a new migration"
                )
        known = {m.version for m in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migration {applied[unknown[0]][0]} that sql/ does not: "
                "this checkout is older than the database; update it"
            )
        if legacy:
            _rebaseline(conn, legacy)
            log(f"re-baselined {len(legacy)} migrations to the split layout "
                f"({', '.join(m.version for m in legacy)}: recorded with their texts from before "
                f"sql/{FUNCTIONS_DIR}/; their functions and views are re-applied from there)")
        recorded_functions = applied_functions(conn)
        pending = [f for f in functions if recorded_functions.get(f.name) != f.checksum]
        done, skipped, functions_done = [], [], []
        for migration in migrations:
            if migration.version in applied:
                skipped.append(migration.filename)
            else:
                log(f"applying {migration.label}" + (" to the shared tenant tables" if migration.tenant_tables else ""))
                _apply(conn, migration.label, migration.text,
                       sql.SQL("INSERT INTO {}.schema_migrations (version, filename, checksum) VALUES (%s, %s, %s)"),
                       (migration.version, migration.filename, migration.checksum),
                       tenant_tables=migration.version if migration.tenant_tables else None)
                done.append(migration.filename)
            while pending and pending[0].after <= migration.version:
                function = pending.pop(0)
                if function.name in recorded_functions:
                    log(f"re-applying {function.label}: it changed since it was applied")
                else:
                    log(f"applying {function.label}")
                _apply(conn, function.label, function.text,
                       sql.SQL("INSERT INTO {}.schema_functions (name, filename, checksum) VALUES (%s, %s, %s) "
                               "ON CONFLICT (name) DO UPDATE SET filename = EXCLUDED.filename, "
                               "checksum = EXCLUDED.checksum, applied_at = now()"),
                       (function.name, function.filename, function.checksum),
                       function=function)
                functions_done.append(function.filename)
        revoke_temporary_from_applications(conn, log)
        from tenant_pipelines.db.citus import migrate_citus  # here: db/citus.py imports this module

        citus = migrate_citus(conn, sql_dir, functions, log)
        schemas = migrate_tenant_schemas(conn, migrations, log=log, jobs=jobs, connect=connect)
        report = MigrationReport(applied=done, already_applied=skipped, functions_applied=functions_done,
                                 rebaselined=[m.filename for m in legacy], schemas=schemas, citus=citus)
        if schemas is not None and schemas.failed:
            raise TenantSchemasFailed(schemas)
        return report
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _rebaseline(conn: psycopg.Connection, legacy: list[Migration]) -> None:
    """Record the split layout's text of migrations applied with their text from before it.
    Their effect is the same: what moved out of them is in sql/functions/, and every function
    file is applied to a database that has none recorded."""
    with conn.transaction():
        for migration in legacy:
            conn.execute(
                sql.SQL("UPDATE {}.schema_migrations SET filename = %s, checksum = %s "
                        "WHERE version = %s AND checksum = %s").format(sql.Identifier(BOOKKEEPING_SCHEMA)),
                (migration.filename, migration.checksum, migration.version, LEGACY_CHECKSUMS[migration.version][0]))


def _apply(conn: psycopg.Connection, label: str, text: str, record: sql.SQL, values: tuple,
           function: FunctionFile | None = None, tenant_tables: str | None = None) -> None:
    try:
        with conn.transaction():
            if function is not None:
                # As pg_dump does: a body may name objects that later migrations create.
                conn.execute("SET LOCAL check_function_bodies = off")
            if tenant_tables is not None:
                if not conn.execute("SELECT to_regclass('public.tenant_tables_version') IS NOT NULL").fetchone()[0]:
                    raise MigrationError(
                        f"{label}: a `{TENANT_TABLES_HEADER}` migration needs tenant_tables_version "
                        "(sql/migrations/0020); number it after 0020")
                conn.execute("SET LOCAL search_path = public")
            conn.execute(text.encode())
            if tenant_tables is not None:
                conn.execute("UPDATE public.tenant_tables_version SET version = %s", (tenant_tables,))
            if function is not None:
                _set_privileges(conn, function)
            conn.execute(record.format(sql.Identifier(BOOKKEEPING_SCHEMA)), values)
    except psycopg.Error as exc:
        raise MigrationError(_explain(label, exc, function is not None)) from None


# -- tenant schemas ---------------------------------------------------------------------------


def _tenant_tables_version(conn: psycopg.Connection) -> str | None:
    """The version the shared tenant tables are at; None before sql/migrations/0020."""
    if not conn.execute("SELECT to_regclass('public.tenant_tables_version') IS NOT NULL").fetchone()[0]:
        return None
    return conn.execute("SELECT version FROM public.tenant_tables_version").fetchone()[0]


def _schemas_behind(conn: psycopg.Connection, target: str) -> list[tuple[str, str, str]]:
    """(schema, tenant, migrated_to) of every tenant schema behind ``target``, by name."""
    return [(schema, str(tenant), at) for schema, tenant, at in conn.execute(
        "SELECT schema_name::text, organization_id, migrated_to FROM public.tenant_schemas "
        "WHERE migrated_to < %s ORDER BY schema_name", (target,)).fetchall()]


def _same_server(conn: psycopg.Connection) -> Callable[[], psycopg.Connection]:
    """New autocommit connections with ``conn``'s parameters, its password included (which
    ``conn.info.dsn`` leaves out)."""
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val}
    return lambda: psycopg.connect(**params, autocommit=True)


def migrate_tenant_schemas(
    conn: psycopg.Connection,
    migrations: list[Migration],
    log: Callable[[str], None] = lambda message: None,
    jobs: int | None = None,
    connect: Callable[[], psycopg.Connection] | None = None,
) -> SchemaReport | None:
    """Bring every tenant schema of ``tenant_schemas`` behind ``tenant_tables_version`` up to
    it: the tenant-tables migrations among ``migrations`` newer than its ``migrated_to``, in
    order, in one transaction per schema that also records its new ``migrated_to``; ``jobs``
    schemas at once. A schema that fails is reported (``log``, and in the report) and left as
    it was; the others go on. None before sql/migrations/0020."""
    target = _tenant_tables_version(conn)
    if target is None:
        return None
    behind = _schemas_behind(conn, target)
    jobs = max(1, jobs or default_jobs())
    report = SchemaReport(target=target, behind=len(behind), jobs=min(jobs, max(1, len(behind))))
    if not behind:
        return report
    pending = [m for m in migrations if m.tenant_tables and m.version <= target]
    log(f"tenant schemas: {len(behind)} behind {target}, migrating {report.jobs} at a time")
    work: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()
    for row in behind:
        work.put(row)
    lock = threading.Lock()
    step = max(1, len(behind) // 10)
    done = [0]

    def finished(schema: str, failure: SchemaFailure | None) -> None:
        with lock:
            done[0] += 1
            if failure is None:
                report.migrated.append(schema)
            else:
                report.failed.append(failure)
                log(str(failure))
            if done[0] % step == 0 or done[0] == len(behind):
                failed = f", {len(report.failed)} failed" if report.failed else ""
                log(f"tenant schemas: {done[0]}/{len(behind)} at {target}{failed}" if not failed else
                    f"tenant schemas: {done[0]}/{len(behind)} done, {len(report.migrated)} at {target}{failed}")

    def worker(worker_conn: psycopg.Connection) -> None:
        while True:
            try:
                schema, tenant, _ = work.get_nowait()
            except queue.Empty:
                return
            try:
                failure = _migrate_schema(worker_conn, schema, tenant, pending, target)
            except Exception as exc:  # noqa: BLE001  (a bug here must not hide the other schemas' results)
                failure = SchemaFailure(schema, tenant, "", f"{type(exc).__name__}: {exc}")
            finished(schema, failure)
            if worker_conn.broken:
                return  # the others take the rest; what is left at the end is reported

    if report.jobs == 1:
        worker(conn)
    else:
        opener = connect or _same_server(conn)
        connections: list[psycopg.Connection] = []
        try:
            for _ in range(report.jobs):
                connections.append(opener())
            threads = [threading.Thread(target=worker, args=(c,), name=f"tenant-schemas-{i}", daemon=True)
                       for i, c in enumerate(connections)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for c in connections:
                c.close()
    while True:
        try:
            schema, tenant, _ = work.get_nowait()
        except queue.Empty:
            break
        finished(schema, SchemaFailure(schema, tenant, "", "not tried: every worker connection was lost"))
    return report


def _migrate_schema(conn: psycopg.Connection, schema: str, tenant: str, pending: list[Migration],
                    target: str) -> SchemaFailure | None:
    """One schema, in one transaction (retried on a lock timeout): its pending migrations, then
    CREATE on it revoked from PUBLIC and billing_app again, then its migrated_to. None when done
    (or found done already), else what failed."""
    from tenant_pipelines.core.placement import SCHEMA_TABLES  # core imports db: not at module level

    schema_tables = list(SCHEMA_TABLES.values())  # the tables every tenant schema has
    current = [""]

    def work(c: psycopg.Connection) -> None:
        current[0] = ""
        row = c.execute("SELECT migrated_to FROM public.tenant_schemas WHERE schema_name = %s FOR UPDATE",
                        (schema,)).fetchone()
        if row is None or row[0] >= target:
            return  # removed, or migrated meanwhile
        missing = [t for t, present in c.execute(
            "SELECT t, to_regclass(format('%%I.%%I', %s::text, t)) IS NOT NULL FROM unnest(%s::text[]) t",
            (schema, schema_tables)).fetchall() if not present]
        if missing:
            # With search_path = <schema>, public, a missing table's name would reach the shared one.
            raise _SchemaBroken(f"{'its tables ' + ', '.join(missing) + ' do' if len(missing) > 1 else 'its table ' + missing[0] + ' does'} "
                                "not exist (dropped by hand?): not migrated; recreate the schema's tables, or drop "
                                "the schema and its tenant_schemas row")
        ident = sql.Identifier(schema)
        c.execute(sql.SQL("SET LOCAL search_path = {}, public").format(ident))
        for migration in pending:
            if migration.version > row[0]:
                current[0] = migration.label
                c.execute(migration.text.encode())
        current[0] = ""
        c.execute(sql.SQL("SET LOCAL search_path = pg_catalog, public"))
        # A tenant-tables migration grants nothing on the schema: billing_app uses it, never creates in it.
        c.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC, {}").format(ident, sql.Identifier(APP_ROLE)))
        if c.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", (APP_ROLE, schema)).fetchone()[0]:
            raise _SchemaBroken(f"{APP_ROLE} may still CREATE in it through a role it is a member of: "
                                f"revoke that, then run db migrate again")
        c.execute("UPDATE public.tenant_schemas SET migrated_to = %s WHERE schema_name = %s", (target, schema))

    try:
        run_with_lock_timeout(conn, f"tenant schema {schema}", work)
    except _SchemaBroken as exc:
        return SchemaFailure(schema, tenant, "", str(exc))
    except psycopg.Error as exc:
        message = exc.diag.message_primary or (str(exc).splitlines() or [type(exc).__name__])[0]
        return SchemaFailure(schema, tenant, current[0], message)
    except TenantPipelinesError as exc:  # still waiting for a lock after the retries
        return SchemaFailure(schema, tenant, current[0], str(exc).removeprefix(f"tenant schema {schema}: "))
    return None


class _SchemaBroken(Exception):
    """A tenant schema that cannot be migrated as it is (a table dropped by hand)."""


# -- status -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaBehind:
    schema: str
    tenant: str
    migrated_to: str
    should_be_at: str


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[Migration]
    pending: list[Migration]
    functions_pending: list[str]   # function files db migrate would (re-)apply
    tenant_tables_version: str | None
    should_be_at: str | None        # the version every tenant schema should be at
    schemas: int                    # tenant schemas in all
    behind: list[SchemaBehind]
    citus: tuple[list[str], list[str]] | None = None  # sql/citus/migrations (applied, pending) on a coordinator

    def lines(self) -> list[str]:
        """What ``db migrate --status`` prints."""
        out = [f"migrations: {len(self.applied)} applied, {len(self.pending)} pending"]
        for state, items in (("applied", self.applied), ("pending", self.pending)):
            out += [f"  {state:8} {m.filename}{'  (tenant tables)' if m.tenant_tables else ''}" for m in items]
        if self.citus is not None:
            out.append(f"citus migrations (a Citus coordinator): {len(self.citus[0])} applied, {len(self.citus[1])} pending")
            for state, names in (("applied", self.citus[0]), ("pending", self.citus[1])):
                out += [f"  {state:8} citus/{name}" for name in names]
        if self.functions_pending:
            out.append(f"functions and views to apply: {', '.join(self.functions_pending)}")
        if self.tenant_tables_version is None:
            out.append("tenant schemas: none (the database is before sql/migrations/0020)")
            return out
        out.append(f"tenant tables at {self.tenant_tables_version}; tenant schemas: {self.schemas}, "
                   f"{len(self.behind)} behind {self.should_be_at}")
        if self.behind:
            out.append("  schema	tenant	migrated_to	should_be_at")
            out += [f"  {b.schema}	{b.tenant}	{b.migrated_to}	{b.should_be_at}" for b in self.behind]
        return out


def migration_status(conn: psycopg.Connection, sql_dir: Path | None = None) -> MigrationStatus:
    """Change nothing: the migrations applied and pending, the function files that would be
    applied, and every tenant schema behind the version it should be at (the newest
    tenant-tables migration in ``sql_dir``, or the shared tables' version if newer)."""
    migrations = load_migrations(sql_dir or SQL_DIR)
    functions = load_functions(sql_dir or SQL_DIR, {m.version for m in migrations})
    has_bookkeeping = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                                   (f"{BOOKKEEPING_SCHEMA}.schema_migrations",)).fetchone()[0]
    applied = applied_migrations(conn) if has_bookkeeping else {}
    recorded = applied_functions(conn)
    version = _tenant_tables_version(conn)
    should_be_at = max([m.version for m in migrations if m.tenant_tables] + [version or "0000"])
    behind, count = [], 0
    if version is not None:
        count = conn.execute("SELECT count(*) FROM public.tenant_schemas").fetchone()[0]
        behind = [SchemaBehind(schema, tenant, at, should_be_at)
                  for schema, tenant, at in _schemas_behind(conn, should_be_at)]
    from tenant_pipelines.db.citus import citus_status  # here: db/citus.py imports this module

    return MigrationStatus(
        citus=citus_status(conn, sql_dir or SQL_DIR),
        applied=[m for m in migrations if m.version in applied],
        pending=[m for m in migrations if m.version not in applied],
        functions_pending=[f.name for f in functions if recorded.get(f.name) != f.checksum],
        tenant_tables_version=version, should_be_at=should_be_at if version is not None else None,
        schemas=count, behind=behind)


def _set_privileges(conn: psycopg.Connection, function: FunctionFile) -> None:
    """Owner billing_owner; every privilege revoked; the header's grants granted."""
    if function.kind == "view":
        kind = sql.SQL("TABLE")
        targets = [(oid, sql.Identifier("public", function.name)) for oid, in conn.execute(
            "SELECT oid FROM pg_class WHERE oid = to_regclass(%s)", (f"public.{function.name}",)).fetchall()]
        acl = ("SELECT DISTINCT r.rolname FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee "
               "WHERE c.oid = %s AND a.grantee <> c.relowner")
    else:
        kind = sql.SQL("ROUTINE")
        # Each overload, as the catalog renders it (regprocedure: quoted and qualified as needed).
        targets = [(oid, sql.SQL(signature)) for oid, signature in conn.execute(
            "SELECT p.oid, p.oid::regprocedure::text FROM pg_proc p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = %s ORDER BY p.oid", (function.name,)).fetchall()]
        acl = ("SELECT DISTINCT r.rolname FROM pg_proc p, aclexplode(p.proacl) a JOIN pg_roles r ON r.oid = a.grantee "
               "WHERE p.oid = %s AND a.grantee <> p.proowner")
    for oid, target in targets:
        conn.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL("VIEW") if function.kind == "view" else kind, target, sql.Identifier(OWNER_ROLE)))
        grantees = [sql.Identifier(g) for g, in conn.execute(acl, (oid,)).fetchall()]
        conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM {}").format(
            kind, target, sql.SQL(", ").join([sql.SQL("PUBLIC"), *grantees])))
        for privileges, role in function.grants:
            conn.execute(sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), kind, target,
                sql.SQL("PUBLIC") if role == "PUBLIC" else sql.Identifier(role)))


def revoke_temporary_from_applications(conn: psycopg.Connection, log: Callable[[str], None]) -> None:
    """billing_app must not create temporary objects: a temp table named like a tenant table
    shadows it for every later client of a pooled server connection (sql/migrations/0017). TEMPORARY is
    PUBLIC's by default and CREATE DATABASE does not copy a template's grants, so this runs on
    every ``db migrate``, not once. The role running the migration keeps TEMPORARY (the
    pipelines' own moves and restores use temp tables); other roles that need it get it back
    by name."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
    if exists is None:
        return
    database = sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
    with conn.transaction():
        conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO CURRENT_USER").format(database))
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {}").format(
            database, sql.Identifier(APP_ROLE)))
    still = conn.execute("SELECT has_database_privilege(%s, current_database(), 'TEMPORARY')",
                         (APP_ROLE,)).fetchone()[0]
    if still:
        log(f"{APP_ROLE} can still create temporary tables in this database: as its owner, run "
            f"REVOKE TEMPORARY ON DATABASE {database.as_string(conn)} FROM PUBLIC, {APP_ROLE} "
            f"(and REVOKE the role that grants it from {APP_ROLE})")


def _explain(label: str, exc: psycopg.Error, function_file: bool = False) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).splitlines()[0]
    if function_file and isinstance(exc, psycopg.errors.InvalidFunctionDefinition):
        return (
            f"{label} failed: {message}: CREATE OR REPLACE cannot change a function's result or "
            "argument names; drop it in a new migration and name that migration in the file's `-- after:` line"
        )
    if isinstance(exc, (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject,
                        psycopg.errors.DuplicateFunction, psycopg.errors.DuplicateSchema)):
        return (
            f"{label}: {message}: an object that tenant-pipelines did not create "
            "is in the way; rename or drop it, or point BILLING_DATABASE_URL at another database"
        )
    return f"{label} failed: {message}"
