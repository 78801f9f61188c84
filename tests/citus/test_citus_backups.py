"""Per-tenant backups and restore on a Citus coordinator (issue 19): the same backup_tenant and
restore_tenant as on one server. A tenant's shard group is on one worker, so its rows of every
table come from one node. Restore puts every value back exactly after deletes, updates and
inserts, for a tenant sharing its shard group and for one isolated on the other worker, and no
other tenant's rows change."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.core.backups import backup_tenant, restore_tenant
from tenant_pipelines.core.citus import move_tenant_to_node, tenant_placement_on_citus, worker_balance
from tests.citus.conftest import CitusTarget
from tests.citus.test_citus_isolation import seed, snapshot

KEY = bytes(range(32))


@pytest.mark.parametrize("placement", ["shared", "node"])
def test_backup_and_restore_of_one_tenant_on_citus(citus: CitusTarget, citus_admin: psycopg.Connection,
                                                   tmp_path: Path, placement: str) -> None:
    tenant, neighbour = seed(citus_admin, f"Backed up {placement}", "enterprise"), seed(citus_admin, "Neighbour", "free")
    if placement == "node":
        here = tenant_placement_on_citus(citus_admin, tenant).node_id
        other = next(w.node_id for w in worker_balance(citus_admin).workers if w.node_id != here)
        citus_admin.execute("SET statement_timeout = '180s'")
        move_tenant_to_node(citus_admin, tenant, other)
    before, neighbour_before = snapshot(citus_admin, [tenant]), snapshot(citus_admin, [neighbour])

    report = backup_tenant(citus_admin, tenant, tmp_path, master_key=KEY)
    assert report.rows["usage_events_mt"] > 0 and report.rows["invoices"] > 0

    with citus_admin.transaction():
        citus_admin.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND ctid IN "
                            "(SELECT ctid FROM usage_events_mt WHERE organization_id = %s LIMIT 2)", (tenant, tenant))
        citus_admin.execute("UPDATE invoices SET amount = 1 WHERE organization_id = %s", (tenant,))
        citus_admin.execute("DELETE FROM payment_methods WHERE organization_id = %s", (tenant,))
        citus_admin.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\")"
                            " VALUES (%s, 'x', 1, now())", (tenant,))
    assert snapshot(citus_admin, [tenant]) != before

    restored = restore_tenant(citus_admin, tenant, report.path, master_key=KEY)
    assert restored.rows == report.rows
    assert snapshot(citus_admin, [tenant]) == before, "every value back exactly"
    assert snapshot(citus_admin, [neighbour]) == neighbour_before, "the neighbour is untouched"
