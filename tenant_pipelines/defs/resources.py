"""The one resource every asset uses: the billing database."""


import threading
from contextlib import contextmanager
from typing import Iterator

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import Field

from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.session import tenant_session
from tenant_pipelines.db.target import admin_dsn

_pools: dict[str, ConnectionPool] = {}
_pools_lock = threading.Lock()


def _pool(dsn: str) -> ConnectionPool:
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            # Fail fast with a clear message if the server is unreachable.
            connect(dsn).close()
            # Autocommit: storage operations commit step by step (each attach, each move)
            # and need an idle connection, not one left inside an implicit transaction.
            pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True, name="billing_db",
                                  kwargs={"autocommit": True})
            _pools[dsn] = pool
        return pool


class BillingDatabase(dg.ConfigurableResource):
    """The billing PostgreSQL database, through a psycopg connection pool.

    ``dsn`` is an admin DSN. Left empty, it comes from ``BILLING_DATABASE_URL`` or, when
    that is unset, from the embedded cluster.
    """

    dsn: str = Field(default="", description="Admin DSN; empty means BILLING_DATABASE_URL or the embedded cluster")

    def resolved_dsn(self) -> str:
        return self.dsn or admin_dsn()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An admin connection from the pool, returned to it afterwards."""
        with _pool(self.resolved_dsn()).connection() as conn:
            yield conn

    @contextmanager
    def tenant_session(self, tenant_id: object) -> Iterator[psycopg.Connection]:
        """One transaction as billing_app in ``tenant_id``'s context (RLS applies)."""
        with self.connection() as conn, tenant_session(conn, tenant_id) as tx:
            yield tx
