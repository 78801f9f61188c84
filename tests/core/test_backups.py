"""Per-tenant backups and restores against a real database: exact round trips, one snapshot,
crash safety, checksums, encryption, retention, and other tenants never touched."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from tenant_pipelines.core.backups import (
    MANIFEST,
    TABLES,
    apply_retention,
    backup_as_of,
    backup_tenant,
    decryption_properties,
    list_backups,
    restore_drill,
    restore_tenant,
    tenants_due,
    verify_backup,
)
from tenant_pipelines.core.security import audit_isolation
from tenant_pipelines.core.partitions import ensure_tenant_partition
from tenant_pipelines.db.migrate import migrate
from tenant_pipelines.errors import BackupInvalid, BackupKeyMissing, InvalidInput, MigrationError
from tests.conftest import app_dsn_for, make_tenant

KEY = bytes(range(32))
MAX = Decimal("99999999999999.999999")
NESTED = {"ünïcødé": "日本語 ✓ 🙂", "a": {"b": [1, 2.5, None, True, {"c": "d"}]}, "big": Decimal("12345678901234567890.123456789")}


def seed_tenant(conn: psycopg.Connection, tier: str = "growth", events: int = 50) -> uuid.UUID:
    """A tenant with a row in every table, edge values included."""
    tenant = make_tenant(conn, name="Edge ✓ Ünïcødé", tier=tier)
    with conn.transaction():
        conn.execute("UPDATE tenant_classifications SET monthly_events_limit = NULL, storage_quota_gb = 7 WHERE organization_id = %s", (tenant,))
        conn.execute("INSERT INTO tenant_backup_config (organization_id, backup_frequency, retention_days) "
                     "VALUES (%s, '1 day 02:03:04.5', 9)", (tenant,))
        sub = conn.execute("INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'pro', 'active') RETURNING id",
                           (tenant,)).fetchone()[0]
        conn.execute("INSERT INTO subscriptions (organization_id, plan, status, canceled_at) VALUES (%s, 'old', 'canceled', now())", (tenant,))
        for amount, sub_id, due in [(MAX, sub, None), (-MAX, sub, datetime(2030, 1, 1, tzinfo=timezone.utc)),
                                    (Decimal("0"), None, None), (Decimal("-0.000001"), sub, None)]:
            conn.execute("INSERT INTO invoices (organization_id, subscription_id, amount, currency, status, due_at) "
                         "VALUES (%s, %s, %s, 'EUR', 'open', %s)", (tenant, sub_id, amount, due))
        conn.execute("INSERT INTO payment_methods (organization_id, kind, last4, is_default) VALUES (%s, 'card', NULL, true), "
                     "(%s, 'bank_account', '4242', false)", (tenant, tenant))
        with conn.cursor().copy('COPY usage_events_mt (organization_id, metric_name, quantity, "timestamp", properties) FROM STDIN') as copy:
            edge = [
                ("métrica_ü", MAX, datetime(1, 1, 1, tzinfo=timezone.utc), json.dumps(NESTED, default=str)),
                ("api_calls", -MAX, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), "{}"),
                ("api_calls", Decimal("0"), datetime(1970, 1, 1, tzinfo=timezone.utc), '[1, "two", {"3": null}]'),
                ("api_calls", Decimal("0.000001"), datetime.now(timezone.utc), '"just a string"'),
            ]
            for row in edge:
                copy.write_row((tenant, *row))
            for i in range(events):
                copy.write_row((tenant, f"m{i % 3}", Decimal(i) / 7 if i % 2 else Decimal(-i), datetime.now(timezone.utc) - timedelta(days=i),
                                json.dumps({"i": i, "tags": ["x", "ÿ"]})))
    return tenant


def dump(conn: psycopg.Connection, tenant: uuid.UUID, schema: str = "public") -> dict[str, list[str]]:
    """Every row of the tenant in every backed-up table, as PostgreSQL's text, sorted."""
    out = {}
    for table, key in TABLES:
        rows = conn.execute(sql.SQL("SELECT t::text FROM {}.{} t WHERE {} = %s ORDER BY 1").format(
            sql.Identifier(schema), sql.Identifier(table), sql.Identifier(key)), (tenant,)).fetchall()
        out[table] = [r[0] for r in rows]
    return out


def test_round_trip_is_exact_and_leaves_other_tenants_alone(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn)
    ensure_tenant_partition(admin_conn, tenant)  # split by month (growth): TRUNCATE path
    other = seed_tenant(admin_conn, tier="free")  # pooled
    before, other_before = dump(admin_conn, tenant), dump(admin_conn, other)

    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    assert report.rows == {t: len(rows) for t, rows in before.items()}
    assert report.encrypted and report.path.name == f"backup={report.backup_id}"
    # The manifest says what is in it.
    manifest = json.loads((report.path / MANIFEST).read_text())
    assert manifest["tenant"] == str(tenant) and manifest["snapshot"]["lsn"].count("/") == 1
    text = (report.path / MANIFEST).read_text()
    assert manifest["encryption"]["enabled"] and base64.b64encode(KEY).decode() not in text and KEY.hex() not in text
    events = manifest["tables"]["usage_events_mt"]
    assert "decimal128(20, 6)" in events["arrow_schema"] and "arrow.uuid" in events["arrow_schema"]
    assert all(len(f["sha256"]) == 64 for t in manifest["tables"].values() for f in t["files"])

    # Damage the tenant: rows deleted, changed and added.
    with admin_conn.transaction():
        admin_conn.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND metric_name = 'm1'", (tenant,))
        admin_conn.execute("UPDATE invoices SET amount = 1 WHERE organization_id = %s", (tenant,))
        admin_conn.execute("DELETE FROM payment_methods WHERE organization_id = %s", (tenant,))
        admin_conn.execute("UPDATE organizations SET name = 'renamed' WHERE id = %s", (tenant,))
        admin_conn.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") VALUES (%s, 'x', 1, now())", (tenant,))
    assert dump(admin_conn, tenant) != before

    restored = restore_tenant(admin_conn, tenant, report.path, master_key=KEY)

    assert restored.rows == report.rows
    assert dump(admin_conn, tenant) == before, "every value back exactly"
    assert dump(admin_conn, other) == other_before, "the other tenant is untouched"
    leaves = admin_conn.execute("SELECT DISTINCT tableoid::regclass::text FROM usage_events_mt WHERE organization_id = %s",
                                (tenant,)).fetchall()
    assert all(leaf.startswith("usage_events_mt_t_" + tenant.hex) for (leaf,) in leaves), "routed to its own partition"


def test_a_pooled_tenant_is_restored_by_delete_and_insert_in_the_pool(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, tier="free")
    neighbour = seed_tenant(admin_conn, tier="free")
    for who in (tenant, neighbour):
        assert ensure_tenant_partition(admin_conn, who).layout == "pooled"
    before, neighbour_before = dump(admin_conn, tenant), dump(admin_conn, neighbour)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    with admin_conn.transaction():
        admin_conn.execute("DELETE FROM usage_events_mt WHERE organization_id = %s AND metric_name = 'm1'", (tenant,))
        admin_conn.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") VALUES (%s, 'x', 1, now())", (tenant,))

    restore_tenant(admin_conn, tenant, report.path, master_key=KEY)

    assert dump(admin_conn, tenant) == before
    assert dump(admin_conn, neighbour) == neighbour_before, "the pool's other tenant is untouched"
    leaves = admin_conn.execute("SELECT DISTINCT tableoid::regclass::text FROM usage_events_mt WHERE organization_id = %s",
                                (tenant,)).fetchall()
    assert all(leaf.startswith("usage_events_mt_pool_") for (leaf,) in leaves), "back in the pool"


def test_backup_reads_exact_types_and_is_readable_with_pyarrow_and_the_key(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=0)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    part = report.path / "table=usage_events_mt" / "part-00000.parquet"
    with pytest.raises(OSError):
        pq.read_table(part)  # encrypted: no key, no data
    table = pq.ParquetFile(part, decryption_properties=decryption_properties(KEY)).read()
    assert table.schema.field("quantity").type == pa.decimal128(20, 6)
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    quantities = sorted(table.column("quantity").to_pylist())
    assert quantities[0] == -MAX and quantities[-1] == MAX and Decimal("0.000001") in quantities
    props = [json.loads(p) for p in table.column("properties").to_pylist()]
    assert {"ünïcødé": "日本語 ✓ 🙂", "a": {"b": [1, 2.5, None, True, {"c": "d"}]},
            "big": 12345678901234567890.123456789} in props or any(p.get("ünïcødé") == "日本語 ✓ 🙂" for p in props if isinstance(p, dict))


def test_unencrypted_when_the_tenant_says_so(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=3)
    admin_conn.execute("UPDATE tenant_backup_config SET encryption_enabled = false WHERE organization_id = %s", (tenant,))
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    assert not report.encrypted
    table = pq.read_table(report.path / "table=usage_events_mt")  # any Parquet reader, no key
    assert table.num_rows == 7


def test_encryption_required_and_no_key_fails_clearly_and_writes_nothing(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=3)
    with pytest.raises(BackupKeyMissing) as err:
        backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    message = str(err.value)
    assert str(tenant) in message and "TENANT_PIPELINES_BACKUP_KEY" in message and "\n" not in message
    assert not list(tmp_path.rglob("*.parquet")), "never a cleartext file"
    assert admin_conn.execute("SELECT last_backup_at FROM tenant_backup_config WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] is None


def test_one_snapshot_across_tables(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=10)
    counts = {t: len(r) for t, r in dump(admin_conn, tenant).items()}

    def write_meanwhile(table: str) -> None:
        if table == "organizations":  # committed by another session while the backup runs
            with psycopg.connect(admin_dsn, autocommit=True) as other:
                other.execute("INSERT INTO subscriptions (organization_id, plan, status) VALUES (%s, 'late', 'active')", (tenant,))
                other.execute("INSERT INTO usage_events_mt (organization_id, metric_name, quantity, \"timestamp\") "
                              "VALUES (%s, 'late', 1, now())", (tenant,))
                other.execute("UPDATE organizations SET name = 'late' WHERE id = %s", (tenant,))

    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY, on_table_written=write_meanwhile)
    assert report.rows == counts, "nothing written after the snapshot is in the backup"
    assert dump(admin_conn, tenant)["subscriptions"] != [] and len(dump(admin_conn, tenant)["usage_events_mt"]) == counts["usage_events_mt"] + 1


def test_crash_mid_export_leaves_no_backup_then_a_rerun_succeeds(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=200)
    script = textwrap.dedent(f"""
        import os, signal, psycopg
        from pathlib import Path
        from tenant_pipelines.core.backups import backup_tenant
        def crash(table):
            if table == "invoices":
                os.kill(os.getpid(), signal.SIGKILL)
        with psycopg.connect({admin_dsn!r}, autocommit=True) as conn:
            backup_tenant(conn, {str(tenant)!r}, Path({str(tmp_path)!r}), master_key=bytes(range(32)), on_table_written=crash)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = tmp_path / f"tenant={tenant}"
    leftovers = [p.name for p in folder.iterdir()]
    assert leftovers and all(name.startswith(".backup=") and ".tmp-" in name for name in leftovers)
    assert list_backups(tmp_path, tenant) == []
    assert admin_conn.execute("SELECT last_backup_at FROM tenant_backup_config WHERE organization_id = %s",
                              (tenant,)).fetchone()[0] is None
    with pytest.raises(BackupInvalid):
        verify_backup(folder / leftovers[0], tenant)

    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    assert [p.name for p in folder.iterdir()] == [report.path.name], "the dead run's temporary folder is gone"
    assert [b.path for b in list_backups(tmp_path, tenant)] == [report.path]
    last = admin_conn.execute("SELECT last_backup_at FROM tenant_backup_config WHERE organization_id = %s", (tenant,)).fetchone()[0]
    assert last == datetime.fromisoformat(report.manifest["snapshot"]["taken_at"])
    assert str(tenant) not in {t for t, _ in tenants_due(admin_conn)}


def test_a_tampered_file_fails_verification_before_anything_is_written(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=20)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    admin_conn.execute("DELETE FROM payment_methods WHERE organization_id = %s", (tenant,))
    after_change = dump(admin_conn, tenant)
    part = report.path / "table=usage_events_mt" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))

    with pytest.raises(BackupInvalid, match="does not match its sha256"):
        restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
    assert dump(admin_conn, tenant) == after_change
    with pytest.raises(BackupInvalid):
        restore_drill(admin_conn, report.path, master_key=KEY)


def test_a_foreign_backup_or_a_wrong_key_is_refused(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant, other = seed_tenant(admin_conn, events=5), seed_tenant(admin_conn, events=5)
    report = backup_tenant(admin_conn, other, tmp_path, master_key=KEY)
    before = dump(admin_conn, tenant)
    with pytest.raises(BackupInvalid, match=f"backup of tenant {other}, not of tenant {tenant}"):
        restore_tenant(admin_conn, tenant, report.path, master_key=KEY)
    with pytest.raises(BackupKeyMissing, match="fingerprint"):
        restore_tenant(admin_conn, other, report.path, master_key=bytes(32))
    with pytest.raises(BackupKeyMissing):
        restore_tenant(admin_conn, other, report.path, master_key=None)
    assert dump(admin_conn, tenant) == before


def test_rows_of_another_tenant_inside_a_backup_roll_everything_back(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant, other = seed_tenant(admin_conn, events=5), seed_tenant(admin_conn, events=5)
    admin_conn.execute("UPDATE tenant_backup_config SET encryption_enabled = false WHERE organization_id = %s", (tenant,))
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    # Forge a file holding the other tenant's id, with a matching checksum in the manifest.
    part = report.path / "table=payment_methods" / "part-00000.parquet"
    table = pq.read_table(part)
    forged = table.set_column(1, table.schema.field(1), pa.array([other.bytes] * table.num_rows, pa.binary(16)).cast(table.schema.field(1).type))
    pq.write_table(forged, part)
    manifest = json.loads((report.path / MANIFEST).read_text())
    import hashlib
    manifest["tables"]["payment_methods"]["files"][0]["sha256"] = hashlib.sha256(part.read_bytes()).hexdigest()
    (report.path / MANIFEST).write_text(json.dumps(manifest))
    admin_conn.execute("UPDATE organizations SET name = 'changed' WHERE id = %s", (tenant,))
    before, other_before = dump(admin_conn, tenant), dump(admin_conn, other)

    with pytest.raises(BackupInvalid, match="another tenant"):
        restore_tenant(admin_conn, tenant, report.path, master_key=None)
    assert dump(admin_conn, tenant) == before and dump(admin_conn, other) == other_before


def test_restore_into_a_scratch_schema_is_closed_to_the_app(admin_conn: psycopg.Connection, admin_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=10)
    live = dump(admin_conn, tenant)  # as backed up: before the backup sets last_backup_at
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    restored = restore_tenant(admin_conn, tenant, report.path, master_key=KEY, into_schema="scratch_one")
    assert restored.rows == report.rows
    assert dump(admin_conn, tenant, "scratch_one") == live
    assert not admin_conn.execute("SELECT has_schema_privilege('billing_app', 'scratch_one', 'USAGE')").fetchone()[0]
    with psycopg.connect(app_dsn_for(admin_dsn)) as app, pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("SELECT * FROM scratch_one.usage_events_mt")
    assert audit_isolation(admin_conn) == [], "a scratch schema passes the isolation audit"
    with pytest.raises(InvalidInput, match="exists already"):
        restore_tenant(admin_conn, tenant, report.path, master_key=KEY, into_schema="scratch_one")
    with pytest.raises(InvalidInput):
        restore_tenant(admin_conn, tenant, report.path, master_key=KEY, into_schema="public")


def test_restore_into_another_database_needs_it_migrated(admin_conn: psycopg.Connection, empty_dsn: str, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=10)
    ensure_tenant_partition(admin_conn, tenant)
    live = dump(admin_conn, tenant)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    with psycopg.connect(empty_dsn, autocommit=True) as target:
        with pytest.raises(MigrationError, match="not migrated"):
            restore_tenant(target, tenant, report.path, master_key=KEY)
        migrate(target)
        restore_tenant(target, tenant, report.path, master_key=KEY)
        assert dump(target, tenant) == live
        # No partition there yet: the events are in the pool, until the onboarding sensor runs.
        leaves = {r[0] for r in target.execute("SELECT DISTINCT tableoid::regclass::text FROM usage_events_mt")}
        assert leaves and all(leaf.startswith("usage_events_mt_pool_") for leaf in leaves), leaves


def test_restore_drill_marks_the_backup_verified(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=30)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    drill = restore_drill(admin_conn, report.path, master_key=KEY)
    assert drill.passed and drill.mismatches == [] and drill.rows == report.rows
    assert (report.path / "verified.json").is_file()
    assert list_backups(tmp_path, tenant)[-1].verified
    assert not admin_conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tp_drill_%'").fetchone()[0]


def test_retention_keeps_a_single_old_backup_and_the_newest_verified(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=3)
    first = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    later = datetime.now(timezone.utc) + timedelta(days=400)
    report = apply_retention(tmp_path, tenant, 30, now=later)
    assert report.removed == [] and report.kept == [first.path], "a single old backup is kept"

    restore_drill(admin_conn, first.path, master_key=KEY)  # first: verified
    second = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY, apply_retention_after=False)
    third = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY, apply_retention_after=False)
    report = apply_retention(tmp_path, tenant, 30, now=later)
    assert report.removed == [second.path]
    assert [b.path for b in list_backups(tmp_path, tenant)] == [first.path, third.path]
    # Within the retention period nothing goes.
    assert apply_retention(tmp_path, tenant, 30).removed == []


def test_as_of_picks_the_newest_verified_backup_at_or_before(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=3)
    first = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    with pytest.raises(BackupInvalid, match="no verified backup"):
        backup_as_of(tmp_path, tenant, datetime.now(timezone.utc))
    restore_drill(admin_conn, first.path, master_key=KEY)
    second = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    restore_drill(admin_conn, second.path, master_key=KEY)
    taken = [b.taken_at for b in list_backups(tmp_path, tenant)]
    assert backup_as_of(tmp_path, tenant, taken[1]) == second.path
    assert backup_as_of(tmp_path, tenant, taken[1] - timedelta(microseconds=1)) == first.path
    with pytest.raises(BackupInvalid):
        backup_as_of(tmp_path, tenant, taken[0] - timedelta(seconds=1))


def test_large_tables_roll_over_into_several_files(admin_conn: psycopg.Connection, tmp_path: Path) -> None:
    tenant = seed_tenant(admin_conn, events=120)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY, rows_per_file=50)
    files = report.manifest["tables"]["usage_events_mt"]["files"]
    assert [f["rows"] for f in files] == [50, 50, 24]
    drill = restore_drill(admin_conn, report.path, master_key=KEY)
    assert drill.passed, drill.mismatches


def test_the_default_backup_root_follows_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenant_pipelines.settings import BACKUP_ROOT_ENV, PROJECT_DIR, STATE_DIR_ENV, default_backup_root

    monkeypatch.delenv(BACKUP_ROOT_ENV, raising=False)
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    assert default_backup_root() == PROJECT_DIR / ".tenant-pipelines" / "backups"
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    assert default_backup_root() == (tmp_path / "state").resolve() / "backups", "like the dev key file, in $TENANT_PIPELINES_HOME"
    monkeypatch.setenv(BACKUP_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert default_backup_root() == (tmp_path / "elsewhere").resolve(), "$TENANT_PIPELINES_BACKUP_ROOT wins"


def test_the_embedded_cluster_gets_a_generated_key_file_and_nothing_else_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenant_pipelines.local.keys import load_master_key
    from tenant_pipelines.settings import BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV

    for name in (BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV, "BILLING_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TENANT_PIPELINES_HOME", str(tmp_path))
    (tmp_path / "cluster.json").write_text(json.dumps({"port": 5999, "password": "pw"}))

    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://someone@db.example:5432/billing")
    assert load_master_key() is None, "your own server: no key is made up"
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://postgres:pw@127.0.0.1:5999/billing")  # what `dev` sets
    key = load_master_key()
    assert key is not None and len(key) == 32
    assert (tmp_path / "backup.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv("BILLING_DATABASE_URL")
    assert load_master_key() == key, "generated once, then read"
    monkeypatch.setenv(BACKUP_KEY_ENV, "not base64!")
    with pytest.raises(BackupKeyMissing, match="32 bytes"):
        load_master_key()
