"""What `tenant-pipelines dev` (README command 1) composes: the billing database (the embedded
cluster, or $BILLING_DATABASE_URL), Dagster's own database beside it, migrations, the embedded
tablespaces, demo data when the database is empty, PgBouncer for the code location's tenant
sessions, and the environment the Dagster processes get. Then the main job, stored in Dagster's
PostgreSQL instance."""

from __future__ import annotations

import os
from datetime import date
from typing import Callable

from psycopg import sql

from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.errors import TenantPipelinesError
from tenant_pipelines.local.cluster import TABLESPACES
from tenant_pipelines.local.demo import database_is_empty, seed_demo
from tenant_pipelines.local.pgbouncer import start_pgbouncer_for
from tenant_pipelines.local.target import admin_dsn, dagster_storage_env, with_database
from tenant_pipelines.settings import APP_DATABASE_URL_ENV, DATABASE_URL_ENV, dagster_home, database_url_from_env

Log = Callable[[str], None]
DAGSTER_DATABASE = "dagster"


def ensure_database(dsn: str, name: str, log: Log) -> None:
    """Create database ``name`` on ``dsn``'s server unless it exists."""
    with connect(with_database(dsn, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            log(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def migrate_database(dsn: str, log: Log) -> None:
    with connect(dsn, autocommit=True) as conn:
        report = migrate(conn, log=log)
    log(f"{len(report.applied)} migrations applied, {len(report.already_applied)} already applied")


def seed(dsn: str, tenants: int, events: int, random_seed: int, as_of: date | None, log: Log) -> None:
    with connect(dsn, autocommit=True) as conn:
        report = seed_demo(conn, tenants, events, seed=random_seed, as_of=as_of, log=log)
    log(f"demo seed: {report.tenants_created} tenants created, {report.tenants_existing} already there, "
        f"{report.events} usage events")


def prepare(*, tenants: int, events_per_tenant: int, random_seed: int, log: Log) -> dict[str, str]:
    """Everything before the main job, idempotently. Returns the environment of the Dagster
    processes (DAGSTER_HOME, the billing DSN, Dagster's storage, billing_app's pooled DSN)."""
    from tenant_pipelines.core.tiering import configure_tablespaces

    embedded = not database_url_from_env()
    dsn = admin_dsn(start=embedded, log=log)
    ensure_database(dsn, DAGSTER_DATABASE, log)
    migrate_database(dsn, log)
    if embedded:  # the embedded cluster made hot_storage, warm_storage and cold_storage: use them
        with connect(dsn) as conn:
            configure_tablespaces(conn, TABLESPACES)
    with connect(dsn) as conn:
        empty = database_is_empty(conn)
    if empty:
        seed(dsn, tenants, events_per_tenant, random_seed, None, log)
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "DAGSTER_HOME": str(home),
        DATABASE_URL_ENV: dsn,
        **{k: v for k, v in dagster_storage_env(with_database(dsn, DAGSTER_DATABASE)).items() if k not in os.environ},
    }
    if embedded:
        # Tenant sessions of the code location go through a real PgBouncer (transaction
        # pooling, per-tier pools); DDL and Dagster's own storage connect directly.
        env[APP_DATABASE_URL_ENV] = start_pgbouncer_for(dsn, manage_app_password=True, log=log)
    return env


def run_main_job(env: dict[str, str], log: Log) -> None:
    """The main job, in process, recorded in Dagster's instance (``env`` names it)."""
    os.environ.update(env)
    import dagster as dg

    from tenant_pipelines.definitions import MAIN_JOB, defs

    with dg.DagsterInstance.get() as instance:
        log(f"running {MAIN_JOB} (stored in Dagster's instance at {dagster_home()})")
        result = defs.resolve_job_def(MAIN_JOB).execute_in_process(instance=instance, raise_on_error=False)
        if not result.success:
            raise TenantPipelinesError(f"{MAIN_JOB} failed: open the run in the Dagster UI for its logs")
