"""Point-in-time restore of one tenant on pgBackRest (issue 18), against a real cluster that
archives its WAL into a real, encrypted pgBackRest repository: no mocks.

The cluster is this module's own (the session's test cluster does not archive). Times are
read from the server's clock right after each commit; WAL switches are forced (archive_now)
rather than waited for with archive_timeout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from tenant_pipelines.core import moves
from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.core.pitr import (
    PitrRefused,
    archive_gaps,
    pitr_windows,
    restore_tenant_to_time,
    retention_days,
    take_cluster_backup,
    wal_archive_health,
)
from tenant_pipelines.core.backups.restore import RestoreRefused
from tenant_pipelines.core.placement import placement_of
from tenant_pipelines.core.tiering import configure_tablespaces
from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.errors import InvalidInput, UnknownTenant
from tenant_pipelines.local.cluster import FAST_UNSAFE_SETTINGS, TABLESPACES, EmbeddedCluster
from tenant_pipelines.local.pgbackrest import PgBackRest
from tenant_pipelines.local.processes import ClusterError, server_os_user
from tests.core.test_backups_placement import dump_placed
from tests.core.test_backups import seed_tenant
from tests.snapshots import assert_unchanged, snapshot
from tests.waiting import wait_until

KEY = bytes(range(32))


class Archived:
    def __init__(self, cluster: EmbeddedCluster, dsn: str) -> None:
        self.cluster, self.dsn = cluster, dsn
        self.engine: PgBackRest = cluster.pgbackrest()

    def sandboxes(self) -> list[Path]:
        return sorted(self.engine.sandbox_root.glob("sandbox-*")) if self.engine.sandbox_root.exists() else []

    def now(self, conn: psycopg.Connection) -> datetime:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


@pytest.fixture(scope="module")
def archived() -> Iterator[Archived]:
    base = Path(tempfile.mkdtemp(prefix="tp-pitr-", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = EmbeddedCluster(data_root=base / "pg", state_dir=base / "state", settings=dict(FAST_UNSAFE_SETTINGS),
                              archive=True, archive_key=lambda: KEY)
    try:
        dsn = cluster.up()
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
            configure_tablespaces(conn, TABLESPACES)
        yield Archived(cluster, dsn)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def conn(archived: Archived) -> Iterator[psycopg.Connection]:
    with psycopg.connect(archived.dsn, autocommit=True) as c:
        yield c


@contextmanager
def other_database(archived: Archived) -> Iterator[psycopg.Connection]:
    """A second migrated database on the archived cluster."""
    name = f"pitr_other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(archived.cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(archived.cluster.dsn(name), autocommit=True) as other:
            migrate(other)
            yield other
    finally:
        with psycopg.connect(archived.cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def enable_pitr(conn: psycopg.Connection, tenant: uuid.UUID, days: int = 9) -> None:
    conn.execute("UPDATE tenant_backup_config SET point_in_time_recovery = true, retention_days = %s "
                 "WHERE organization_id = %s", (days, tenant))


def full_backup(archived: Archived, conn: psycopg.Connection):
    backup, _ = take_cluster_backup(conn, archived.engine, "full")
    # pgBackRest's stop time is whole seconds: a restore target must be past the next one.
    wait_until(lambda: archived.now(conn) > backup.stopped_at + timedelta(seconds=1), "the backup's stop second to pass")
    return backup


@contextmanager
def archive_unwritable(archived: Archived) -> Iterator[None]:
    """The repository's WAL archive made unwritable (its backups stay readable), then put back."""
    top = archived.engine.config.parent / "repo" / "archive"
    folders = [Path(root) for root, _dirs, _files in os.walk(top)]
    modes = {f: f.stat().st_mode for f in folders}
    for f in folders:
        os.chmod(f, 0o500)
    try:
        yield
    finally:
        for f, mode in modes.items():
            os.chmod(f, mode)


def change(conn: psycopg.Connection, tenant: uuid.UUID, round_: int) -> None:
    """Inserts, updates and deletes across the tenant's tables, wherever it lives."""
    where = placement_of(conn, tenant)
    with conn.transaction():
        conn.execute(sql.SQL("INSERT INTO {} (organization_id, metric_name, quantity, \"timestamp\") "
                             "SELECT %s, 'round' || %s, g, now() - g * interval '1 day' FROM generate_series(1, 7) g")
                     .format(where.table("usage_events_mt")), (tenant, round_))
        conn.execute(sql.SQL("DELETE FROM {} WHERE organization_id = %s AND metric_name = %s")
                     .format(where.table("usage_events_mt")), (tenant, f"m{round_ % 3}"))
        conn.execute(sql.SQL("UPDATE {} SET amount = -amount WHERE organization_id = %s AND amount <> 0")
                     .format(where.table("invoices")), (tenant,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE ctid IN (SELECT ctid FROM {} WHERE organization_id = %s LIMIT 1)")
                     .format(where.table("payment_methods"), where.table("payment_methods")), (tenant,))
        conn.execute(sql.SQL("INSERT INTO {} (organization_id, plan, status) VALUES (%s, %s, 'active')")
                     .format(where.table("subscriptions")), (tenant, f"plan-{round_}"))
        conn.execute("UPDATE organizations SET name = %s WHERE id = %s", (f"name {round_}", tenant))


def test_restoring_to_each_time_gives_exactly_that_state(archived: Archived, conn: psycopg.Connection) -> None:
    tenant, other = seed_tenant(conn), seed_tenant(conn, tier="free")
    enable_pitr(conn, tenant)
    full_backup(archived, conn)
    change(conn, tenant, 1)
    change(conn, other, 1)
    states = {}
    states["t1"] = (archived.now(conn), dump_placed(conn, tenant))
    # Between t1 and t2: more changes and a promotion out of the pool into a partition of its own.
    ensure_tenant_partition(conn, tenant)
    assert placement_of(conn, tenant).kind == "partition"
    change(conn, tenant, 2)
    states["t2"] = (archived.now(conn), dump_placed(conn, tenant))
    change(conn, tenant, 3)
    states["t3"] = (archived.now(conn), dump_placed(conn, tenant))
    # After t3: it becomes a schema tenant, and changes again.
    moves.move_tenant(conn, tenant, "schema")
    change(conn, tenant, 4)
    change(conn, other, 4)
    assert len({str(s[1]) for s in states.values()}) == 3
    other_before = dump_placed(conn, other)

    for name in ("t2", "t1", "t3"):
        at, fingerprint = states[name]
        report = restore_tenant_to_time(conn, tenant, at, archived.engine, master_key=KEY)
        assert dump_placed(conn, tenant) == fingerprint, name
        assert placement_of(conn, tenant).kind == "schema"  # restored as a schema tenant
        assert dump_placed(conn, other) == other_before, name
        assert report.rows["usage_events_mt"] == len(fingerprint["usage_events_mt"])
        assert report.wal_replayed_bytes > 0 and report.sandbox_bytes > 0
        assert archived.sandboxes() == []

    # Into another, migrated database: the live tables stay as they are.
    at, fingerprint = states["t2"]
    live = dump_placed(conn, tenant)
    with other_database(archived) as other_conn:
        restore_tenant_to_time(conn, tenant, at, archived.engine, master_key=KEY, target_conn=other_conn)
        assert dump_placed(other_conn, tenant) == fingerprint
    assert dump_placed(conn, tenant) == live

    # Into a scratch schema: the live tables stay as they are.
    at, fingerprint = states["t1"]
    live = dump_placed(conn, tenant)
    restore_tenant_to_time(conn, tenant, at, archived.engine, master_key=KEY, into_schema="pitr_look")
    scratch = {t: [r[0] for r in conn.execute(sql.SQL("SELECT t::text FROM pitr_look.{} t ORDER BY 1").format(
        sql.Identifier(t))).fetchall()] for t in fingerprint}
    assert scratch == fingerprint
    assert dump_placed(conn, tenant) == live


def test_each_refusal_changes_nothing(archived: Archived, conn: psycopg.Connection) -> None:
    tenant = seed_tenant(conn)
    enable_pitr(conn, tenant)
    plain = seed_tenant(conn, tier="free")  # point_in_time_recovery off
    backup = full_backup(archived, conn)
    change(conn, tenant, 1)
    at = archived.now(conn)
    late = seed_tenant(conn)  # created after `at`
    enable_pitr(conn, late)
    before = snapshot(archived.dsn)

    def refused(exc_type, *args, match: str, **kwargs) -> None:
        with pytest.raises(exc_type, match=match):
            restore_tenant_to_time(conn, *args, archived.engine, master_key=KEY, **kwargs)
        assert_unchanged(before, snapshot(archived.dsn), match)
        assert archived.sandboxes() == []

    refused(PitrRefused, tenant, datetime.now(timezone.utc) + timedelta(hours=1), match="is in the future")
    refused(PitrRefused, tenant, backup.started_at - timedelta(days=400), match="before the oldest cluster backup")
    refused(PitrRefused, plain, at, match="point-in-time recovery is not enabled")
    refused(UnknownTenant, late, at, match="did not exist at")
    refused(InvalidInput, tenant, at, into_schema="public", match="pick a new schema name")
    # A tenant whose placement move is recorded (a crashed move): refused before the sandbox.
    mover = seed_tenant(conn)
    enable_pitr(conn, mover)
    moves.move_tenant(conn, mover, "schema", batch_rows=10, stop_after="copy")
    before = snapshot(archived.dsn)
    refused(RestoreRefused, mover, archived.now(conn), match="its move to schema is in progress", force=True)
    moves.move_tenant(conn, mover, "schema")  # resumed and finished
    before = snapshot(archived.dsn)
    # T after the newest archived WAL: archiving is broken (the repository unwritable).
    with archive_unwritable(archived):
        change(conn, tenant, 2)
        after = archived.now(conn)
        before = snapshot(archived.dsn)
        refused(PitrRefused, tenant, after, match="after the newest archived WAL", archive_wait_s=3)
    # --force restores a tenant without point_in_time_recovery.
    restore_tenant_to_time(conn, plain, at, archived.engine, master_key=KEY, force=True)


def test_a_sandbox_whose_archive_ends_before_t_is_refused_and_removed(archived: Archived, conn: psycopg.Connection) -> None:
    """The backstop behind the refusal of T after the newest archived WAL: PostgreSQL ends
    recovery before the target, and the sandbox says so and goes."""
    backup = full_backup(archived, conn)
    tenant = seed_tenant(conn)
    with archive_unwritable(archived):
        change(conn, tenant, 1)
        after = archived.now(conn)
        with pytest.raises(PitrRefused, match="archive ends before the requested time"):
            with archived.engine.sandbox(backup, after, lambda m: None):
                pass
    assert archived.sandboxes() == []


def test_wal_archive_check_fails_when_archiving_breaks_and_recovers(archived: Archived, conn: psycopg.Connection) -> None:
    tenant = seed_tenant(conn)
    enable_pitr(conn, tenant, days=45)
    full_backup(archived, conn)
    info = archived.engine.info()
    health = wal_archive_health(conn, info, archived.engine.archive_segments(info), wait_s=30)
    assert health.passed, health.problems
    with archive_unwritable(archived):
        broken = wal_archive_health(conn, archived.engine.info(), [], wait_s=3)
        assert not broken.passed
        assert any("archiving does not work" in p for p in broken.problems), broken.problems
    info = archived.engine.info()
    healed = wal_archive_health(conn, info, archived.engine.archive_segments(info), wait_s=60)
    assert healed.passed, healed.problems
    # Retention keeps the longest promised window (pgBackRest was told so, by time); every PITR
    # tenant has its window.
    assert retention_days(conn) == 45
    backup_log = (archived.engine.config.parent / "log" / f"{archived.engine.stanza}-backup.log").read_text()
    last_begin = [l for l in backup_log.splitlines() if "backup command begin" in l][-1]
    assert "--repo1-retention-full=45" in last_begin and "--repo1-retention-full-type=time" in last_begin
    windows = {w.tenant: w for w in pitr_windows(conn, info, healed.newest_archived_at)}
    assert windows[str(tenant)].restorable_from == info.oldest.stopped_at
    assert windows[str(tenant)].promised_days == 45


def test_archive_gaps_are_found() -> None:
    names = ["000000010000000000000002-aa.lz4", "000000010000000000000003-bb.lz4", "000000010000000000000005-cc.lz4",
             "000000010000000100000000-dd.lz4", "00000001000000000000000F.00000028.backup"]
    gaps = archive_gaps(names, "000000010000000000000002")
    assert gaps[0] == "000000010000000000000004"
    assert "0000000100000000000000FF" in gaps and "000000010000000000000005" not in gaps
    assert archive_gaps(names[:2], "000000010000000000000002") == []


def test_archiving_without_a_key_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="tp-pitr-nokey-", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = EmbeddedCluster(data_root=base / "pg", state_dir=base / "state", archive=True, archive_key=lambda: None)
    try:
        with pytest.raises(ClusterError, match="no backup key is configured"):
            cluster.up()
        assert not (base / "pg").exists() and cluster.running_port() is None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_socket_folder_is_the_servers_alone(archived: Archived) -> None:
    folder = archived.cluster.socket_dir
    st = folder.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == server_os_user().uid
    assert any(p.name.startswith(".s.PGSQL.") for p in folder.iterdir())
