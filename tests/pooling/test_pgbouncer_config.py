"""Config generation for PgBouncer with hostile names and passwords: quoted or refused, and
what is quoted is read back by the real PgBouncer as it was meant."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines.core.pooling import (
    PoolerConfig,
    ServerAddress,
    auth_field,
    connect_pooled,
    connstr_value,
    parse_pool_sizes,
    pooled_dsn,
    pooler_config,
    render_pgbouncer_ini,
    render_userlist,
    tier_alias,
)
from tenant_pipelines.local.pgbouncer import start_pgbouncer_for
from tenant_pipelines.local.pgbouncer import PgBouncerProcess
from tenant_pipelines.errors import DatabaseUnreachable, InvalidInput
from tests.conftest import APP_PASSWORD, TEMPLATE

HOSTILE_TIERS = [
    "free tier", "free=1", "free;", "fr'ee", 'fr"ee', "free\nlisten_port = 1", "free\r", "",
    "Free", "1free", "free-tier", "x" * 41, "free\x00",
]
HOSTILE_PASSWORDS = ['pa"ss', '"', 'a "quoted" pass; x=y # \'single\'', "  spaces at both ends  "]


@pytest.mark.parametrize("tier", HOSTILE_TIERS)
def test_hostile_tier_names_are_refused(tier: str) -> None:
    with pytest.raises(InvalidInput, match="cannot name a PgBouncer pool"):
        tier_alias(tier)
    cfg = PoolerConfig(server=ServerAddress("127.0.0.1", 5432, "billing"), listen_port=6432,
                       auth_file="/tmp/userlist.txt", pool_sizes={"free": 5, tier: 5})
    with pytest.raises(InvalidInput):
        render_pgbouncer_ini(cfg)


def test_plain_tier_names_make_the_seeds_pools() -> None:
    cfg = PoolerConfig(server=ServerAddress("127.0.0.1", 5432, "billing"), listen_port=6432,
                       auth_file="/tmp/userlist.txt")
    text = render_pgbouncer_ini(cfg)
    databases = text.split("[databases]")[1].split("[pgbouncer]")[0]
    lines = [l for l in databases.splitlines() if l and not l.startswith(";")]
    assert lines == [
        "billing_enterprise = host=127.0.0.1 port=5432 dbname=billing pool_size=50",
        "billing_growth = host=127.0.0.1 port=5432 dbname=billing pool_size=25",
        "billing_starter = host=127.0.0.1 port=5432 dbname=billing pool_size=10",
        "billing_free = host=127.0.0.1 port=5432 dbname=billing pool_size=5",
        "billing = host=127.0.0.1 port=5432 dbname=billing pool_size=20",
    ]
    assert "pool_mode = transaction" in text and "auth_type = scram-sha-256" in text
    # Per-tier pools are [databases] entries, not lines in [pgbouncer] (SEED-REVIEW item 19).
    assert "pool_size=" not in text.split("[pgbouncer]")[1]


@pytest.mark.parametrize("item", ["free tier=5", "free", "free=abc", "free=0", "free=10001", "fr;ee=2", "=3"])
def test_bad_pool_size_overrides_are_refused(item: str) -> None:
    with pytest.raises(InvalidInput):
        parse_pool_sizes([item])


def test_pool_size_overrides_parse() -> None:
    assert parse_pool_sizes(["free=2", " enterprise = 80 "]) == {"free": 2, "enterprise": 80}


def test_connection_string_values_are_quoted_or_refused() -> None:
    assert connstr_value("billing", "db") == "billing"
    assert connstr_value("it's a db; pool_size=1", "db") == "'it''s a db; pool_size=1'"
    for bad in ("", "a\nb", "a\rb", "a\x00b"):
        with pytest.raises(InvalidInput):
            connstr_value(bad, "db")


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_auth_file_fields_double_their_quotes(password: str) -> None:
    assert auth_field(password, "password") == '"' + password.replace('"', '""') + '"'


@pytest.mark.parametrize("password", ["line\nbreak", "carriage\rreturn", "nul\x00", "x" * 1001])
def test_auth_file_fields_refuse_what_the_file_cannot_hold(password: str) -> None:
    with pytest.raises(InvalidInput):
        render_userlist({"billing_app": password})


def test_paths_must_be_one_absolute_line() -> None:
    base = dict(server=ServerAddress("127.0.0.1", 5432, "billing"), listen_port=6432)
    for bad in ("relative/userlist.txt", "/tmp/a\nlisten_port = 1", " /tmp/leading-blank"):
        with pytest.raises(InvalidInput):
            render_pgbouncer_ini(PoolerConfig(auth_file=bad, **base))


def test_a_hostile_override_is_refused_before_anything_starts(admin_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        start_pgbouncer_for(admin_dsn, state_dir=tmp_path, pool_overrides={"free tier": 1})
    assert not (tmp_path / "pgbouncer").exists()


@pytest.fixture
def throwaway_folder() -> Path:
    home = Path(tempfile.mkdtemp(prefix="tp-pgb-", dir="/tmp"))
    os.chmod(home, 0o755)
    process = PgBouncerProcess(folder=home / "pgbouncer")
    try:
        yield home
    finally:
        process.destroy()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_pgbouncer_reads_hostile_role_names_and_passwords_as_written(
    admin_conn: psycopg.Connection, admin_dsn: str, throwaway_folder: Path, password: str
) -> None:
    """A role whose name and password hold quotes, blanks, ';' and '=', in a plain-text auth
    file: PgBouncer lets it in with exactly that password, and not with a near miss."""
    role = f'tp "odd" role; x={secrets.token_hex(3)}'
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    try:
        process = PgBouncerProcess(folder=throwaway_folder / "pgbouncer")
        cfg = pooler_config(admin_conn, admin_dsn, listen_port=0, auth_file=str(process.auth_file),
                            logfile=str(process.logfile), pidfile=str(process.pidfile))
        port = process.up(lambda p: render_pgbouncer_ini(replace(cfg, listen_port=p)),
                          render_userlist({role: password}))
        with connect_pooled(pooled_dsn(port, user=role, password=password)) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == role
        with pytest.raises(DatabaseUnreachable, match="authentication failed"):
            connect_pooled(pooled_dsn(port, user=role, password=password + "x")).close()
    finally:
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_pgbouncer_reaches_a_database_with_a_hostile_name(pg_cluster, throwaway_folder: Path) -> None:
    name = f"tp's db; pool_size=1 {secrets.token_hex(3)}"
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    try:
        dsn = start_pgbouncer_for(make_conninfo(pg_cluster.dsn("postgres"), dbname=name), state_dir=throwaway_folder)
        with connect_pooled(make_conninfo(dsn, password=APP_PASSWORD, dbname="billing_free")) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == name
    finally:
        PgBouncerProcess.in_state_dir(throwaway_folder).down(immediate=True)
        with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
