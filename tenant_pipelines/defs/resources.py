"""The one resource every asset uses: the billing database."""


import threading
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import Field

from tenant_pipelines.settings import APP_DATABASE_URL_ENV, app_database_url_from_env
from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.session import tenant_session

def default_admin_dsn() -> str:
    """The billing database when no DSN is configured: $BILLING_DATABASE_URL, else the embedded
    cluster of `tenant-pipelines dev`. The Dagster layer's one composition point with the local
    development stack (tenant_pipelines.local)."""
    from tenant_pipelines.local.target import admin_dsn

    return admin_dsn()


def pgbouncer_ini_in_force() -> Path | None:
    """The pgbouncer.ini whose pool sizes the tier-limit check compares with tier_limits:
    $TENANT_PIPELINES_PGBOUNCER_INI, else the project's own PgBouncer's, else None."""
    from tenant_pipelines.local.pgbouncer import pgbouncer_ini_in_force as in_force

    return in_force()


_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


def _pool(dsn: str, *, pooler: bool = False) -> ConnectionPool:
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            # Autocommit: storage operations commit step by step (each attach, each move)
            # and need an idle connection, not one left inside an implicit transaction.
            # Through PgBouncer (transaction mode), no server-side prepared statements: the
            # next transaction may run on another server connection.
            kwargs = {"autocommit": True, **({"prepare_threshold": None} if pooler else {})}
            # Fail fast with a clear message if the server is unreachable.
            connect(dsn, **kwargs).close()
            pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True, name="billing_db", kwargs=kwargs)
            _pools[dsn] = pool
        return pool


class BillingDatabase(dg.ConfigurableResource):
    """The billing PostgreSQL database, through a psycopg connection pool.

    ``dsn`` is an admin DSN. Left empty, it comes from ``BILLING_DATABASE_URL`` or, when
    that is unset, from the embedded cluster.
    """

    dsn: str = Field(default="", description="Admin DSN; empty means BILLING_DATABASE_URL or the embedded cluster")
    app_dsn: str = Field(
        default="",
        description=f"billing_app's DSN through PgBouncer, for tenant sessions; empty means {APP_DATABASE_URL_ENV}, "
        "or, when that is unset, the admin DSN with SET LOCAL ROLE billing_app",
    )

    def resolved_dsn(self) -> str:
        return self.dsn or default_admin_dsn()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An admin connection from the pool, returned to it afterwards."""
        with _pool(self.resolved_dsn()).connection() as conn:
            yield conn

    @contextmanager
    def tenant_session(self, tenant_id: object) -> Iterator[psycopg.Connection]:
        """One transaction as billing_app in ``tenant_id``'s context (RLS applies): through
        PgBouncer when an app DSN is set (the transaction-local context is what makes that
        safe), else on an admin connection with SET LOCAL ROLE. Admin work (DDL, VACUUM,
        advisory locks held across transactions) always uses ``connection()``, never the pooler."""
        app_dsn = self.app_dsn or app_database_url_from_env()
        if app_dsn:
            with _pool(app_dsn, pooler=True).connection() as conn, tenant_session(conn, tenant_id) as tx:
                yield tx
        else:
            with self.connection() as conn, tenant_session(conn, tenant_id) as tx:
                yield tx
