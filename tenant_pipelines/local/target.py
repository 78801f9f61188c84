"""Which database: the user's own server (BILLING_DATABASE_URL) or the embedded cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tenant_pipelines.settings import database_url_from_env, state_dir
from tenant_pipelines.local.cluster import EmbeddedCluster

if TYPE_CHECKING:
    from tenant_pipelines.local.citus import CitusCluster


def embedded_cluster(log: Callable[[str], None] = lambda m: None) -> EmbeddedCluster:
    return EmbeddedCluster.in_state_dir(state_dir(), log=log)


def embedded_citus(log: Callable[[str], None] = lambda m: None) -> "CitusCluster":
    """The embedded Citus cluster (local/citus.py) kept in the state folder, set up or not."""
    from tenant_pipelines.local.citus import CitusCluster

    return CitusCluster.in_state_dir(state_dir(), log=log)


def admin_dsn(*, start: bool = False, log: Callable[[str], None] = lambda m: None) -> str:
    """The admin DSN of the billing database. With ``start``, bring the embedded cluster up:
    the Citus coordinator once ``db up --citus`` has set one up here, else the single node."""
    url = database_url_from_env()
    if url:
        return url
    return embedded_dsn(start=start, log=log)


def embedded_dsn(*, start: bool = False, log: Callable[[str], None] = lambda m: None) -> str:
    """The embedded billing database's admin DSN, whatever $BILLING_DATABASE_URL says: the Citus
    coordinator once ``db up --citus`` has set one up here, else the single node (``start``
    brings it up)."""
    citus = embedded_citus(log)
    if citus.exists():
        return citus.up() if start else citus.dsn("billing")
    cluster = embedded_cluster(log)
    return cluster.up() if start else cluster.dsn("billing")


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return make_conninfo(dsn, dbname=dbname)


def dagster_storage_env(dsn: str) -> dict[str, str]:
    """DAGSTER_PG_* for dagster_home/dagster.yaml: the `dagster` database on the same server."""
    info = conninfo_to_dict(dsn)
    return {
        "DAGSTER_PG_USER": str(info.get("user") or "postgres"),
        "DAGSTER_PG_PASSWORD": str(info.get("password") or ""),
        "DAGSTER_PG_HOST": str(info.get("host") or "127.0.0.1"),
        "DAGSTER_PG_PORT": str(info.get("port") or "5432"),
        "DAGSTER_PG_DB": "dagster",
    }
