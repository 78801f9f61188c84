"""Backups and restores follow placement (issue 17): a schema tenant's backup reads its schema's
tables and names the shared ones, so any backup restores into whatever placement the tenant has
now; a restore is refused while the tenant moves."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tenant_pipelines.core import moves
from tenant_pipelines.core.backups import MANIFEST, TABLES, backup_tenant, restore_drill, restore_tenant
from tenant_pipelines.core.backups.restore import RestoreRefused
from tenant_pipelines.core.placement import SCHEMA_TABLES, placement_of
from tenant_pipelines.db.migrate import migrate
from tests.core.test_backups import KEY, dump, seed_tenant

SHARED = ("subscriptions", "invoices", "payment_methods", "usage_events_mt")


def dump_placed(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, list[str]]:
    """Every row of the tenant in every backed-up table, read where it lives now."""
    where = placement_of(conn, tenant)
    return {table: [r[0] for r in conn.execute(sql.SQL("SELECT t::text FROM {} t WHERE {} = %s ORDER BY 1").format(
        where.table(table), sql.Identifier(key)), (tenant,)).fetchall()] for table, key in TABLES}


def shared_rows(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, int]:
    return {t: conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE organization_id = %s").format(
        sql.Identifier("public", t)), (tenant,)).fetchone()[0] for t in SHARED}


def to_schema(conn: psycopg.Connection, tenant: uuid.UUID) -> str:
    moves.move_tenant(conn, tenant, "schema")
    where = placement_of(conn, tenant)
    assert where.kind == "schema"
    return where.location


def damage(conn: psycopg.Connection, tenant: uuid.UUID) -> None:
    where = placement_of(conn, tenant)
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE organization_id = %s AND metric_name = 'm1'").format(
            where.table("usage_events_mt")), (tenant,))
        conn.execute(sql.SQL("UPDATE {} SET amount = 1 WHERE organization_id = %s").format(where.table("invoices")), (tenant,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE organization_id = %s").format(where.table("payment_methods")), (tenant,))
        conn.execute(sql.SQL("INSERT INTO {} (organization_id, metric_name, quantity, \"timestamp\") VALUES (%s, 'x', 1, now())")
                     .format(where.table("usage_events_mt")), (tenant,))
        conn.execute("UPDATE organizations SET name = 'renamed' WHERE id = %s", (tenant,))


def test_a_schema_tenants_backup_reads_its_schema_and_restores_into_it(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant, other = seed_tenant(admin_conn), seed_tenant(admin_conn, tier="free")
    schema = to_schema(admin_conn, tenant)
    before, other_before = dump_placed(admin_conn, tenant), dump(admin_conn, other)
    assert shared_rows(admin_conn, tenant) == dict.fromkeys(SHARED, 0) and len(before["usage_events_mt"]) == 54

    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    assert report.rows == {t: len(rows) for t, rows in before.items()}
    manifest = json.loads((report.path / MANIFEST).read_text())
    assert list(manifest["tables"]) == [t for t, _ in TABLES], "the shared names, whatever the placement"
    assert sorted(p.name for p in report.path.glob("table=*")) == sorted(f"table={t}" for t, _ in TABLES)

    damage(admin_conn, tenant)
    assert dump_placed(admin_conn, tenant) != before
    restored = restore_tenant(admin_conn, tenant, report.path, master_key=KEY)

    assert restored.rows == report.rows
    where = placement_of(admin_conn, tenant)
    assert (where.kind, where.location) == ("schema", schema), "it stays a schema tenant"
    assert dump_placed(admin_conn, tenant) == before, "every value back exactly, in its schema"
    assert shared_rows(admin_conn, tenant) == dict.fromkeys(SHARED, 0), "nothing of it in the shared tables"
    assert dump(admin_conn, other) == other_before
    # The drill (a scratch schema) passes on it too.
    assert restore_drill(admin_conn, report.path, master_key=KEY).passed


def test_a_pooled_backup_restored_after_the_move_lands_in_the_schema(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, tier="free")
    before = dump(admin_conn, tenant)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)  # pooled
    schema = to_schema(admin_conn, tenant)
    damage(admin_conn, tenant)

    restore_tenant(admin_conn, tenant, report.path, master_key=KEY)

    assert placement_of(admin_conn, tenant).location == schema
    assert dump_placed(admin_conn, tenant) == before
    assert shared_rows(admin_conn, tenant) == dict.fromkeys(SHARED, 0)
    counts = {t: admin_conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, SCHEMA_TABLES[t])))
              .fetchone()[0] for t in SHARED}
    assert counts == {t: len(before[t]) for t in SHARED}


def test_a_schema_tenants_backup_restores_pooled_after_it_moved_back(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, tier="free")
    to_schema(admin_conn, tenant)
    before = dump_placed(admin_conn, tenant)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    moves.move_tenant(admin_conn, tenant, "pooled")
    damage(admin_conn, tenant)
    restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
    assert placement_of(admin_conn, tenant).kind == "pooled"
    assert dump(admin_conn, tenant) == before


def test_a_schema_tenants_backup_into_a_scratch_schema_and_another_database(
        admin_conn: psycopg.Connection, empty_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=10)
    to_schema(admin_conn, tenant)
    live = dump_placed(admin_conn, tenant)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    restore_tenant(admin_conn, tenant, report.path, master_key=KEY, into_schema="scratch_schema_tenant")
    assert dump(admin_conn, tenant, "scratch_schema_tenant") == live
    with psycopg.connect(empty_dsn, autocommit=True) as target:
        migrate(target)
        restore_tenant(target, tenant, report.path, master_key=KEY)
        assert placement_of(target, tenant).kind == "pooled"
        assert dump(target, tenant) == live, "no placement there: the shared tables"


def test_a_restore_is_refused_while_the_tenant_moves(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=10)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    damage(admin_conn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", stop_after="copy")  # a crashed move
    before = dump(admin_conn, tenant)
    with pytest.raises(RestoreRefused, match="its move to schema is in progress") as info:
        restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    assert dump(admin_conn, tenant) == before, "nothing changed"
    # A scratch schema touches nothing of the tenant: allowed.
    restore_tenant(admin_conn, tenant, report.path, master_key=KEY, into_schema="scratch_during_move")

    moves.move_tenant(admin_conn, tenant, "schema")  # finished
    # A mover at work (it holds the movers' lock) also refuses a restore.
    with psycopg.connect(admin_dsn, autocommit=True) as mover:
        mover.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (moves._MOVE_LOCK, str(tenant)))
        with pytest.raises(RestoreRefused, match="a run is moving it now"):
            restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
        assert dump_placed(admin_conn, tenant) == before
    restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
    assert placement_of(admin_conn, tenant).kind == "schema"
    assert dump_placed(admin_conn, tenant) != before
