"""`tenant-pipelines dev` after `db up --citus` (issue 19): the demo's events land in months of
their own, so the onboarding runs the sensor requests pass default_partition_drained; and the
coordinator is the embedded cluster, whose backups get the development key, as on one node."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tenant_pipelines.core.partitions import ensure_tenant_partition, stranded_in_pool
from tenant_pipelines.local.demo import seed_demo
from tenant_pipelines.local.keys import using_embedded_cluster
from tenant_pipelines.settings import BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV, DATABASE_URL_ENV, STATE_DIR_ENV
from tests.citus.conftest import CitusTarget
from tests.citus.test_citus_upgrade import add_citus, migrate, upgrade_dsns  # noqa: F401  (a fixture)


def test_demo_events_land_in_months_on_a_coordinator(upgrade_dsns: dict[str, str]) -> None:
    add_citus(upgrade_dsns)
    with psycopg.connect(upgrade_dsns["coordinator"], autocommit=True) as conn:
        migrate(conn)
        report = seed_demo(conn, 3, 200, seed=5)
        tenants = [str(t) for (t,) in conn.execute("SELECT id FROM organizations")]
        assert len(tenants) == 3 and report.events == 600
        for tenant in tenants:
            ensure_tenant_partition(conn, tenant)  # what the onboarding sensor's runs do
        assert stranded_in_pool(conn, tenants) == {}, "no demo event outside the months"
        assert conn.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0] == 600


def test_the_embedded_coordinator_is_the_embedded_cluster(citus: CitusTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """dev points BILLING_DATABASE_URL at the coordinator of `db up --citus`: backups there get the
    generated development key (local/keys.py), as on the embedded single node."""
    monkeypatch.setenv(STATE_DIR_ENV, str(citus.cluster.state_dir))
    monkeypatch.delenv(BACKUP_KEY_ENV, raising=False)
    monkeypatch.delenv(BACKUP_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(DATABASE_URL_ENV, citus.cluster.dsn("billing"))
    assert using_embedded_cluster()
    monkeypatch.setenv(DATABASE_URL_ENV, make_conninfo(citus.cluster.dsn("billing"), port=1))
    assert not using_embedded_cluster(), "another server is not the embedded one"
