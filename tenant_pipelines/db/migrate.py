"""Apply ``sql/`` in order, once each, refusing to run when an applied file was edited.

Each file runs in its own transaction together with the row that records it, so a crash
leaves every file either applied and recorded, or neither. A session advisory lock keeps two
runners from applying the same file at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from tenant_pipelines.settings import PROJECT_DIR
from tenant_pipelines.errors import MigrationError

SQL_DIR = PROJECT_DIR / "sql"
BOOKKEEPING_SCHEMA = "tenant_pipelines"
_LOCK_KEY = 0x7465_6E61_6E74  # "tenant": one advisory lock for the migration runner
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    filename: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already_applied: list[str]


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration names look like 0007_create_something.sql; rename it"
            )
        migrations.append(Migration(match.group(1), path.name, path.read_text()))
    versions = [m.version for m in migrations]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"two migrations share the number {duplicates[0]}: renumber one of them")
    return migrations


def _ensure_bookkeeping(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(BOOKKEEPING_SCHEMA))
        )
        conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {}.schema_migrations (
                    version     text PRIMARY KEY,
                    filename    text NOT NULL,
                    checksum    text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )"""
            ).format(sql.Identifier(BOOKKEEPING_SCHEMA))
        )


def applied_migrations(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """version -> (filename, checksum) of what the database has applied."""
    rows = conn.execute(
        sql.SQL("SELECT version, filename, checksum FROM {}.schema_migrations").format(
            sql.Identifier(BOOKKEEPING_SCHEMA)
        )
    ).fetchall()
    return {version: (filename, checksum) for version, filename, checksum in rows}


def migrate(
    conn: psycopg.Connection,
    sql_dir: Path = SQL_DIR,
    log: Callable[[str], None] = lambda message: None,
) -> MigrationReport:
    """Apply every migration not yet applied. ``conn`` must be in autocommit mode."""
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection: each file gets its own transaction")
    migrations = load_migrations(sql_dir)
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        _ensure_bookkeeping(conn)
        applied = applied_migrations(conn)
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded and recorded[1] != migration.checksum:
                raise MigrationError(
                    f"sql/{migration.filename} was edited after it was applied "
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
        done, skipped = [], []
        for migration in migrations:
            if migration.version in applied:
                skipped.append(migration.filename)
                continue
            log(f"applying sql/{migration.filename}")
            try:
                with conn.transaction():
                    conn.execute(migration.text.encode())
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (version, filename, checksum) "
                            "VALUES (%s, %s, %s)"
                        ).format(sql.Identifier(BOOKKEEPING_SCHEMA)),
                        (migration.version, migration.filename, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(_explain(migration, exc)) from None
            done.append(migration.filename)
        revoke_temporary_from_applications(conn, log)
        return MigrationReport(applied=done, already_applied=skipped)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


APP_ROLE = "billing_app"


def revoke_temporary_from_applications(conn: psycopg.Connection, log: Callable[[str], None]) -> None:
    """billing_app must not create temporary objects: a temp table named like a tenant table
    shadows it for every later client of a pooled server connection (sql/0017). TEMPORARY is
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


def _explain(migration: Migration, exc: psycopg.Error) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).splitlines()[0]
    if isinstance(exc, (psycopg.errors.DuplicateTable, psycopg.errors.DuplicateObject,
                        psycopg.errors.DuplicateFunction, psycopg.errors.DuplicateSchema)):
        return (
            f"sql/{migration.filename}: {message}: an object that tenant-pipelines did not create "
            "is in the way; rename or drop it, or point BILLING_DATABASE_URL at another database"
        )
    return f"sql/{migration.filename} failed: {message}"
