"""The migration runner: idempotent, checksummed, and clear about what is in the way."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.db.migrate import SQL_DIR, applied_migrations, load_migrations, migrate
from tenant_pipelines.errors import MigrationError


def test_migrations_apply_once_and_are_idempotent(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        first = migrate(conn)
        second = migrate(conn)
        applied = applied_migrations(conn)
    names = [m.filename for m in load_migrations()]
    assert first.applied == names and first.already_applied == []
    assert second.applied == [] and second.already_applied == names
    assert sorted(f for f, _ in applied.values()) == names


def test_edited_migration_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        edited = sorted((sql_dir / "migrations").glob("*.sql"))[1]
        edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError) as info:
            migrate(conn, sql_dir)
    message = str(info.value)
    assert edited.name in message and "edited after it was applied" in message
    assert "\n" not in message


def test_new_migration_is_applied_after_the_others(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        (sql_dir / "migrations" / "9999_create_extra.sql").write_text("CREATE TABLE extra_thing (id int);")
        report = migrate(conn, sql_dir)
        assert report.applied == ["9999_create_extra.sql"]
        assert conn.execute("SELECT to_regclass('extra_thing') IS NOT NULL").fetchone()[0]


def test_failed_migration_leaves_nothing_half_applied(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "migrations" / "9999_create_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1/0;")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        with pytest.raises(MigrationError, match="9999_create_broken.sql failed: division by zero"):
            migrate(conn, sql_dir)
        assert conn.execute("SELECT to_regclass('half_done') IS NULL").fetchone()[0]
        assert "9999" not in applied_migrations(conn)
        # Everything before it is applied and recorded; fixing the file lets the run finish.
        (sql_dir / "migrations" / "9999_create_broken.sql").write_text("CREATE TABLE half_done (id int);")
        assert migrate(conn, sql_dir).applied == ["9999_create_broken.sql"]


def test_object_in_the_way_is_named(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE organizations (id int)")
        with pytest.raises(MigrationError) as info:
            migrate(conn)
    message = str(info.value)
    assert 'relation "organizations" already exists' in message
    assert "0002_create_billing_tables.sql" in message and "\n" not in message


def test_database_newer_than_checkout_is_refused(empty_dsn: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "migrations" / "9999_create_extra.sql").write_text("SELECT 1;")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, sql_dir)
        with pytest.raises(MigrationError, match="older than the database"):
            migrate(conn)


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "create_things.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="rename it"):
        load_migrations(tmp_path)
