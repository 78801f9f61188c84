"""An existing single-node billing database onto a Citus coordinator (issue 19): demo data in
the single-node layout (pooled tenants in the month pool, others in dedicated partitions), then
the extension and the workers, then db migrate: every row of every tenant table is still there,
unchanged (each tenant's fingerprint per table equal), now distributed. A database with a tenant
in a schema of its own is refused before anything changes."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.errors import MigrationError
from tenant_pipelines.local.demo import seed_demo
from tests.citus.conftest import CitusTarget

DATABASE = "billing_upgrade"
TENANT_TABLES = {  # table -> tenant column
    "organizations": "id", "subscriptions": "organization_id", "invoices": "organization_id",
    "payment_methods": "organization_id", "usage_events_mt": "organization_id",
    "tenant_classifications": "organization_id", "tenant_backup_config": "organization_id",
    "tenant_placements": "organization_id",
}


def fingerprints(conn: psycopg.Connection) -> dict[tuple[str, uuid.UUID], tuple[int, str]]:
    """(table, tenant) -> (rows, md5 of the rows' text in order), as the superuser sees them."""
    result = {}
    for table, column in TENANT_TABLES.items():
        for tenant, count, digest in conn.execute(sql.SQL(
                "SELECT t.{c}, count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {t} t GROUP BY 1")
                .format(c=sql.Identifier(column), t=sql.Identifier(table))).fetchall():
            result[(table, tenant)] = (count, digest)
    return result


def without_registry(prints: dict) -> dict:
    """The fingerprints but the placement registry's, which the Citus layout rewrites."""
    return {key: value for key, value in prints.items() if key[0] != "tenant_placements"}


@pytest.fixture
def upgrade_dsns(citus: CitusTarget) -> Iterator[dict[str, str]]:
    """An empty database of the same name on every node; node name -> superuser DSN (over the
    nodes' sockets, like Citus itself). Dropped afterwards."""
    nodes = {node.name: node for node in citus.cluster.nodes()}
    dsns = {}
    for name, node in nodes.items():
        dsns[name] = make_conninfo(host=str(node.socket_dir), port=node.cluster.running_port(), user="postgres",
                                   dbname=DATABASE)
        with psycopg.connect(make_conninfo(dsns[name], dbname="postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    try:
        yield dsns
    finally:
        for name in reversed(list(nodes)):
            with psycopg.connect(make_conninfo(dsns[name], dbname="postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))


def add_citus(dsns: dict[str, str]) -> None:
    """What an operator does to turn the server into a coordinator: the extension on every node,
    the coordinator's host, the workers."""
    for dsn in dsns.values():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    with psycopg.connect(dsns["coordinator"], autocommit=True) as conn:
        info = conn.info
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", (info.host, info.port))
        for name, dsn in dsns.items():
            if name != "coordinator":
                with psycopg.connect(dsn) as worker:
                    conn.execute("SELECT citus_add_node(%s, %s)", (worker.info.host, worker.info.port))


def test_a_single_node_database_with_demo_data_moves_onto_the_coordinator(upgrade_dsns: dict[str, str]) -> None:
    with psycopg.connect(upgrade_dsns["coordinator"], autocommit=True) as conn:
        migrate(conn)  # no extension yet: the single-node layout, as on any server
        seed_demo(conn, 8, 150, seed=11, as_of=date.today())
        tenants = [t for (t,) in conn.execute("SELECT id FROM organizations ORDER BY id")]
        for tenant in tenants:
            ensure_tenant_partition(conn, tenant)  # growth and enterprise: dedicated partitions
        kinds = dict(conn.execute("SELECT kind, count(*) FROM tenant_placements GROUP BY 1").fetchall())
        assert kinds.get("pooled") and kinds.get("partition"), kinds
        before = fingerprints(conn)
        assert conn.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0] == 8 * 150

    add_citus(upgrade_dsns)
    with psycopg.connect(upgrade_dsns["coordinator"], autocommit=True) as conn:
        report = migrate(conn)
        assert report.citus is not None and report.citus.applied[0].startswith("0001_")
        after = fingerprints(conn)
        assert without_registry(after) == without_registry(before), "every row of every tenant, unchanged"
        # The registry's rows are the Citus kinds now (sql/citus/migrations/0009), one a tenant still.
        assert after.keys() == before.keys()
        assert conn.execute("SELECT kind, location, count(*) FROM tenant_placements GROUP BY 1, 2").fetchall() == [
            ("shared", "usage_events_mt", 8)]
        # The coordinator kept no copy of the rows it distributed (0008): every table's own heap is empty.
        assert conn.execute("SELECT logicalrelid::regclass::text FROM pg_dist_partition"
                            " WHERE pg_relation_size(logicalrelid) > 0").fetchall() == []
        assert conn.execute("SELECT count(*) FROM citus_tables WHERE table_name = 'usage_events_mt'::regclass"
                            " AND citus_table_type = 'distributed'").fetchone()[0] == 1
        # The rows are on the workers, not in a coordinator table left behind.
        assert conn.execute("SELECT to_regclass('usage_events_mt_before_citus')").fetchone()[0] is None
        on_workers = conn.execute(
            "SELECT sum(result::bigint) FROM run_command_on_placements('usage_events_mt', 'SELECT count(*) FROM %s')"
        ).fetchone()[0]
        assert on_workers == 8 * 150


def test_a_database_with_a_schema_tenant_is_refused_before_anything_changes(upgrade_dsns: dict[str, str]) -> None:
    with psycopg.connect(upgrade_dsns["coordinator"], autocommit=True) as conn:
        migrate(conn)
        tenant = uuid.uuid4()
        conn.execute("INSERT INTO organizations (id, name) VALUES (%s, 'in a schema')", (tenant,))
        schema = conn.execute("SELECT fn_create_tenant_schema(%s)", (tenant,)).fetchone()[0]
        conn.execute("SELECT fn_record_placement(%s, 'schema', %s)", (tenant, schema))
    add_citus(upgrade_dsns)
    with psycopg.connect(upgrade_dsns["coordinator"], autocommit=True) as conn:
        with pytest.raises(MigrationError, match=(
                rf"0001_distribute_tenant_tables\.sql: tenant {tenant} lives in schema {schema} \(placement 'schema'\)"
                rf".*placement move --tenant {tenant} --to pooled")):
            migrate(conn)
        assert conn.execute("SELECT count(*) FROM citus_tables").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('tenant_pipelines.citus_migrations')").fetchone()[0] is not None
        assert conn.execute("SELECT count(*) FROM tenant_pipelines.citus_migrations").fetchone()[0] == 0
