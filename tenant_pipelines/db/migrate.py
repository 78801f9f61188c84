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

A database migrated before the split (issue 16: one folder of numbered files, each
redefining functions) has the checksums of those files recorded. They are known
(``LEGACY_CHECKSUMS``): such a record is re-baselined to the split layout's file, once, and
its functions are then applied from ``sql/functions/``; any other checksum is still refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from tenant_pipelines.settings import PROJECT_DIR
from tenant_pipelines.errors import MigrationError
from tenant_pipelines.db.names import APP_ROLE, OWNER_ROLE

SQL_DIR = PROJECT_DIR / "sql"
MIGRATIONS_DIR = "migrations"
FUNCTIONS_DIR = "functions"
BOOKKEEPING_SCHEMA = "tenant_pipelines"
_LOCK_KEY = 0x7465_6E61_6E74  # "tenant": one advisory lock for the migration runner
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_FUNCTION_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.sql$")
_AFTER = re.compile(r"^-- after: (\d{4})[ \t]*$")
_GRANT = re.compile(r"^-- grant: ([A-Za-z, ]+?) TO ([a-z_][a-z0-9_]*|PUBLIC)[ \t]*$")
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
        migrations.append(Migration(match.group(1), path.name, path.read_text(), prefix + path.name))
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


def migrate(
    conn: psycopg.Connection,
    sql_dir: Path = SQL_DIR,
    log: Callable[[str], None] = lambda message: None,
) -> MigrationReport:
    """Apply every migration not yet applied, and every function file not applied as it is now:
    in order, each function file right after the migration its ``-- after:`` names. ``conn``
    must be in autocommit mode."""
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection: each file gets its own transaction")
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
                log(f"applying {migration.label}")
                _apply(conn, migration.label, migration.text,
                       sql.SQL("INSERT INTO {}.schema_migrations (version, filename, checksum) VALUES (%s, %s, %s)"),
                       (migration.version, migration.filename, migration.checksum))
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
        return MigrationReport(applied=done, already_applied=skipped, functions_applied=functions_done,
                               rebaselined=[m.filename for m in legacy])
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
           function: FunctionFile | None = None) -> None:
    try:
        with conn.transaction():
            if function is not None:
                # As pg_dump does: a body may name objects that later migrations create.
                conn.execute("SET LOCAL check_function_bodies = off")
            conn.execute(text.encode())
            if function is not None:
                _set_privileges(conn, function)
            conn.execute(record.format(sql.Identifier(BOOKKEEPING_SCHEMA)), values)
    except psycopg.Error as exc:
        raise MigrationError(_explain(label, exc, function is not None)) from None


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
