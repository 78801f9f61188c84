"""A real PgBouncer (Debian's package) in front of each test's fresh database.

It is the project's own PgBouncer code (core/pooling.py, db/pgbouncer.py) in a throwaway folder
under /tmp that the server's OS user can reach (as root, PgBouncer runs as ``postgres``), on a
free loopback port. When PgBouncer is not installed, the tests using it fail with the install
hint: CI installs it (scripts/setup.sh), so a silent skip would hide a broken set-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.core.pooling import (
    SESSION_RESET_QUERY,
    PoolerConfig,
    ServerAddress,
    pooled_dsn,
    render_pgbouncer_ini,
    render_userlist,
    role_scram_secret,
)
from tenant_pipelines.local.pgbouncer import start_pgbouncer_for, stop_pgbouncer
from tenant_pipelines.local.pgbouncer import PgBouncerProcess
from tests.conftest import APP_PASSWORD


@dataclass(frozen=True)
class Pooler:
    port: int
    state_dir: Path

    def dsn(self, database: str = "billing") -> str:
        """billing_app's DSN to one of the pools (``billing`` or ``billing_<tier>``)."""
        return pooled_dsn(self.port, database=database, password=APP_PASSWORD)


@pytest.fixture
def start_pooler(admin_dsn: str) -> Iterator[Callable[..., Pooler]]:
    """Start PgBouncer in front of ``admin_dsn``'s database: ``start_pooler(default_pool_size=2,
    pool_overrides={"free": 1})``. Stopped and removed after the test."""
    homes: list[Path] = []

    def start(**kwargs: object) -> Pooler:
        home = Path(tempfile.mkdtemp(prefix="tp-pgb-", dir="/tmp"))
        os.chmod(home, 0o755)
        homes.append(home)
        dsn = start_pgbouncer_for(admin_dsn, state_dir=home, **kwargs)
        return Pooler(port=int(conninfo_to_dict(dsn)["port"]), state_dir=home)

    try:
        yield start
    finally:
        for home in homes:
            stop_pgbouncer(home, immediate=True)
            shutil.rmtree(home, ignore_errors=True)


# sql/0005's context functions, before sql/0017 bound the context to its transaction: what the
# "binding" layer's absence looks like.
UNBOUND_CONTEXT = """
CREATE OR REPLACE FUNCTION fn_current_tenant_id() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(pg_catalog.current_setting('app.current_tenant', true), '')::pg_catalog.uuid $$;
CREATE OR REPLACE FUNCTION fn_set_tenant_context(p_tenant_id uuid) RETURNS uuid
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.set_config('app.current_tenant', p_tenant_id::text, true);
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(public.fn_tenant_lock_key(p_tenant_id));
    RETURN p_tenant_id;
END
$$;
"""


def start_bare_pgbouncer(admin_dsn: str, home: Path, *, reset: bool, pool_size: int,
                         reset_query: str = SESSION_RESET_QUERY) -> int:
    """A PgBouncer in ``home`` for billing_app with one pool, ``billing``, of ``pool_size``
    server connections, and the session reset on or off: for the tests that take the
    defences away one at a time. Returns its port; ``PgBouncerProcess(home / "pgbouncer")``
    stops it."""
    process = PgBouncerProcess(folder=home / "pgbouncer")
    with psycopg.connect(admin_dsn) as conn:
        userlist = render_userlist({"billing_app": role_scram_secret(conn, "billing_app")})
    base = PoolerConfig(
        server=ServerAddress.from_dsn(admin_dsn), listen_port=0, auth_file=str(process.auth_file),
        pool_sizes={}, default_pool_size=pool_size, logfile=str(process.logfile), pidfile=str(process.pidfile),
        server_reset_query=reset_query, server_reset_query_always=reset,
    )
    return process.up(lambda port: render_pgbouncer_ini(replace(base, listen_port=port)), userlist)
