"""A real Citus cluster for the session: a coordinator and two workers (local/citus.py), each an
embedded cluster on a free loopback port run by the server's OS user (``postgres`` as root),
with durability off, in a throwaway folder under /tmp. One migrated ``billing`` database on the
coordinator serves every Citus test (Citus keeps its metadata per database, so databases are not
cloned from a template here); tests tell their data apart by their own tenants.

Without Citus installed the Citus tests skip, with one line saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.local.citus import CitusCluster, citus_installed
from tenant_pipelines.local.cluster import FAST_UNSAFE_SETTINGS
from tests.conftest import APP_PASSWORD

SHARD_COUNT = 8  # per distributed table; Citus's default is 32: fewer shards, a quicker session


@dataclass(frozen=True)
class CitusTarget:
    cluster: CitusCluster
    admin_dsn: str  # the coordinator's billing database, as its superuser

    @property
    def app_dsn(self) -> str:
        return make_conninfo(self.admin_dsn, user="billing_app", password=APP_PASSWORD)


def require_citus() -> None:
    installed, hint = citus_installed()
    if not installed:
        pytest.skip(f"Citus is not installed: {hint}")


@pytest.fixture(scope="session")
def citus() -> Iterator[CitusTarget]:
    require_citus()
    base = Path(tempfile.mkdtemp(prefix="tp-citus-", dir="/tmp"))
    os.chmod(base, 0o755)  # the server's OS user must reach the nodes' folders
    cluster = CitusCluster(state_dir=base / "state", data_root=base / "data", workers=2,
                           settings={**FAST_UNSAFE_SETTINGS, "citus.shard_count": str(SHARD_COUNT)})
    try:
        dsn = cluster.up()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            conn.execute(sql.SQL("ALTER ROLE billing_app PASSWORD {}").format(sql.Literal(APP_PASSWORD)))
        yield CitusTarget(cluster, dsn)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def citus_admin(citus: CitusTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def citus_app(citus: CitusTarget) -> Iterator[psycopg.Connection]:
    """billing_app's own login to the coordinator, in autocommit."""
    with psycopg.connect(citus.app_dsn, autocommit=True) as conn:
        yield conn


def make_citus_tenant(conn: psycopg.Connection, name: str = "Tenant", tier: str = "free") -> uuid.UUID:
    tenant = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, %s)", (tenant, name))
        conn.execute("INSERT INTO tenant_classifications (organization_id, tier) VALUES (%s, %s)", (tenant, tier))
    return tenant
