"""A real, throwaway PostgreSQL server for the whole test session.

It is the same EmbeddedCluster the CLI uses, in a temporary folder outside /root that the
server's OS user can reach (as root, the server runs as ``postgres``), on a free loopback
port, with durability turned off for speed. Every test that changes the schema gets its own
database, cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines.settings import STATE_DIR_ENV
from tenant_pipelines.core.tiering import configure_tablespaces
from tenant_pipelines.local.cluster import FAST_UNSAFE_SETTINGS, TABLESPACES, EmbeddedCluster
from tenant_pipelines.local.pgbouncer import stop_pgbouncer
from tenant_pipelines.db.migrate import migrate, revoke_temporary_from_applications

APP_PASSWORD = "app-test-password"
TEMPLATE = "tp_template"
_counter = itertools.count()


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of this checkout's own .tenant-pipelines (README command 1 fills it: the demo's
    backup key, its cluster, its PgBouncer) reaches a test: each test gets an empty state folder
    of its own unless it sets TENANT_PIPELINES_HOME itself."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedCluster]:
    base = Path(tempfile.mkdtemp(prefix="tp-pg-", dir="/tmp"))
    os.chmod(base, 0o755)  # the server's OS user must be able to reach its data folder
    cluster = EmbeddedCluster(data_root=base / "pg", state_dir=base / "state", settings=dict(FAST_UNSAFE_SETTINGS))
    cluster.up()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    with psycopg.connect(cluster.dsn(TEMPLATE), autocommit=True) as conn:
        migrate(conn)
        configure_tablespaces(conn, TABLESPACES)  # created by cluster.up()
        conn.execute(sql.SQL("ALTER ROLE billing_app PASSWORD {}").format(sql.Literal(APP_PASSWORD)))
    try:
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _create_db(cluster: EmbeddedCluster, template: str = TEMPLATE) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    if template == TEMPLATE:  # a database's grants are not copied from its template: db migrate sets them
        with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
            revoke_temporary_from_applications(conn, lambda message: None)
    return name


def _drop_db(cluster: EmbeddedCluster, name: str) -> None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def admin_dsn(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """A fresh, migrated, empty billing database; the superuser's DSN to it."""
    name = _create_db(pg_cluster)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_db(pg_cluster, name)


@pytest.fixture
def empty_dsn(pg_cluster: EmbeddedCluster) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = _create_db(pg_cluster, template="template0")
    try:
        yield pg_cluster.dsn(name)
    finally:
        _drop_db(pg_cluster, name)


def app_dsn_for(admin: str) -> str:
    return make_conninfo(admin, user="billing_app", password=APP_PASSWORD)


@pytest.fixture
def app_dsn(admin_dsn: str) -> str:
    """billing_app's own login to the same database as ``admin_dsn``."""
    return app_dsn_for(admin_dsn)


@pytest.fixture
def admin_conn(admin_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def embedded_cli_env(prefix: str, *, archive: bool = False) -> Iterator[dict[str, str]]:
    """The environment for CLI runs on an embedded cluster and PgBouncer of their own: no
    database URL, TENANT_PIPELINES_HOME a new /tmp/<prefix>... folder the server's OS user can
    reach; WAL archiving into pgBackRest only with ``archive`` (tests/test_cli_pitr.py).
    Afterwards both are stopped and the folder removed."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("BILLING_DATABASE_URL", "BILLING_APP_DATABASE_URL")}
    env["TENANT_PIPELINES_HOME"] = str(home)
    env["TENANT_PIPELINES_WAL_ARCHIVE"] = "on" if archive else "off"
    try:
        yield env
    finally:
        stop_pgbouncer(home, immediate=True)
        EmbeddedCluster.in_state_dir(home).destroy()
        shutil.rmtree(home, ignore_errors=True)


def make_tenant(conn: psycopg.Connection, name: str = "Tenant", tier: str = "free") -> uuid.UUID:
    """An organization with a classification, created by the admin."""
    tenant = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, name))
        conn.execute(
            "INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, %s)", (tenant, tier)
        )
    return tenant
