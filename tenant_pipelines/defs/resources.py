"""The resources of the code location: the billing database and the backup storage.

Bound once, in tenant_pipelines/definitions.py. This module is also the Dagster layer's one
composition point with the local development stack (tenant_pipelines.local): the embedded
cluster's DSN, the project's own PgBouncer configuration, the development backup key.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import Field, PrivateAttr

from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.session import tenant_session
from tenant_pipelines.settings import APP_DATABASE_URL_ENV, app_database_url_from_env, default_backup_root

# Every connection of the resource's pools says so in pg_stat_activity.application_name.
APPLICATION_NAME = "tenant_pipelines.billing_db"


def default_admin_dsn() -> str:
    """The billing database when no DSN is configured: $BILLING_DATABASE_URL, else the embedded
    cluster of `tenant-pipelines dev`."""
    from tenant_pipelines.local.target import admin_dsn

    return admin_dsn()


def pgbouncer_ini_in_force() -> Path | None:
    """The pgbouncer.ini whose PgBouncer pool sizes the tier-limit check compares with
    tier_limits: $TENANT_PIPELINES_PGBOUNCER_INI, else the project's own PgBouncer's, else None."""
    from tenant_pipelines.local.pgbouncer import pgbouncer_ini_in_force as in_force

    return in_force()


def _connection_kwargs(*, pooler: bool) -> dict:
    # Autocommit: storage operations commit step by step (each attach, each move) and need an
    # idle connection, not one left inside an implicit transaction. Through PgBouncer
    # (transaction mode), no server-side prepared statements: the next transaction may run on
    # another server connection.
    return {"autocommit": True, "application_name": APPLICATION_NAME, **({"prepare_threshold": None} if pooler else {})}


def _open_pool(dsn: str, *, pooler: bool) -> ConnectionPool:
    kwargs = _connection_kwargs(pooler=pooler)
    connect(dsn, **kwargs).close()  # fail fast, with a one-line message, if the server is unreachable
    return ConnectionPool(dsn, min_size=1, max_size=4, open=True, name="billing_db", kwargs=kwargs)


class BillingDatabase(dg.ConfigurableResource):
    """The billing PostgreSQL database, through psycopg connection pools that live as long as
    the run (or the sensor tick) that uses the resource.

    ``dsn`` is an admin DSN. Left empty, it comes from ``BILLING_DATABASE_URL`` or, when that is
    unset, from the embedded cluster. Dagster opens the pools when a run's step (or a sensor's
    tick) starts and closes them, with every connection, when it ends. Used outside Dagster
    (a script, a test), each ``connection()`` and ``tenant_session()`` opens a connection of its
    own and closes it afterwards.
    """

    dsn: str = Field(default="", description="Admin DSN; empty means BILLING_DATABASE_URL or the embedded cluster")
    app_dsn: str = Field(
        default="",
        description=f"billing_app's DSN through PgBouncer, for tenant sessions; empty means {APP_DATABASE_URL_ENV}, "
        "or, when that is unset, the admin DSN with SET LOCAL ROLE billing_app",
    )

    _admin_pool: ConnectionPool | None = PrivateAttr(default=None)
    _app_pool: ConnectionPool | None = PrivateAttr(default=None)

    def resolved_dsn(self) -> str:
        return self.dsn or default_admin_dsn()

    def resolved_app_dsn(self) -> str | None:
        """billing_app's pooled DSN (through PgBouncer), or None: tenant sessions then use the admin DSN."""
        return self.app_dsn or app_database_url_from_env()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._admin_pool = _open_pool(self.resolved_dsn(), pooler=False)
        app_dsn = self.resolved_app_dsn()
        if app_dsn:
            try:
                self._app_pool = _open_pool(app_dsn, pooler=True)
            except BaseException:
                self._close_pools()
                raise

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._close_pools()

    def _close_pools(self) -> None:
        pools, self._admin_pool, self._app_pool = [self._admin_pool, self._app_pool], None, None
        for pool in pools:
            if pool is not None:
                pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """An admin connection: from the run's pool, returned to it afterwards."""
        if self._admin_pool is not None:
            with self._admin_pool.connection() as conn:
                yield conn
        else:
            with connect(self.resolved_dsn(), **_connection_kwargs(pooler=False)) as conn:
                yield conn

    @contextmanager
    def tenant_session(self, tenant_id: object) -> Iterator[psycopg.Connection]:
        """One transaction as billing_app in ``tenant_id``'s context (RLS applies): through
        PgBouncer when an app DSN is set (the transaction-local context is what makes that
        safe), else on an admin connection with SET LOCAL ROLE. Admin work (DDL, VACUUM,
        advisory locks held across transactions) always uses ``connection()``, never PgBouncer."""
        app_dsn = self.resolved_app_dsn()
        if not app_dsn:
            with self.connection() as conn, tenant_session(conn, tenant_id) as tx:
                yield tx
        elif self._app_pool is not None:
            with self._app_pool.connection() as conn, tenant_session(conn, tenant_id) as tx:
                yield tx
        else:
            with connect(app_dsn, **_connection_kwargs(pooler=True)) as conn, tenant_session(conn, tenant_id) as tx:
                yield tx


class BackupStorage(dg.ConfigurableResource):
    """The backup root folder and the master key.

    ``root`` left empty is ``$TENANT_PIPELINES_BACKUP_ROOT``, else ``backups`` in the state
    folder (``settings.default_backup_root``). The key is never configuration that Dagster shows:
    it comes from ``$TENANT_PIPELINES_BACKUP_KEY`` (base64 of 32 bytes), or the file named by
    ``$TENANT_PIPELINES_BACKUP_KEY_FILE``, or ``.tenant-pipelines/backup.key``, which is
    generated for the embedded cluster when ``dev_key`` is on and ``BILLING_DATABASE_URL`` is unset
    (``tenant_pipelines.local.keys``, which core never imports: the key goes to core as bytes).
    It holds no connection or file open between calls, so it has nothing to set up or tear down.
    """

    root: str = Field(default="", description="Backup root folder; empty means $TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups")
    dev_key: bool = Field(default=True, description="With the embedded cluster, generate .tenant-pipelines/backup.key when no key is configured")

    def resolved_root(self) -> Path:
        return Path(self.root).resolve() if self.root else default_backup_root()

    def master_key(self) -> bytes | None:
        from tenant_pipelines.local.keys import load_master_key

        return load_master_key(generate_dev_key=None if self.dev_key else False)


class ClusterBackups(dg.ConfigurableResource):
    """pgBackRest on the billing database's cluster (docs/pitr.md): the stanza named by
    ``$TENANT_PIPELINES_PGBACKREST_CONFIG`` and ``$TENANT_PIPELINES_PGBACKREST_STANZA`` when set,
    else the embedded cluster's own (``tenant_pipelines.local.pgbackrest``). It holds nothing
    open between calls."""

    archive_wait_s: float = Field(default=60.0, description="How long wal_archive_healthy waits for a forced WAL "
                                  "switch to be archived before it calls archiving broken")

    def engine(self, dsn: str):
        from tenant_pipelines.local.pgbackrest import engine_for

        return engine_for(dsn)
