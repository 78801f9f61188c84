"""Issue 15: a restore never trusts a manifest it cannot verify, malformed input is a one-line
error, and the backup folders read as a pyarrow dataset. Every refusal leaves the tenant's live
rows exactly as they were (row counts and a content fingerprint of every backed-up table)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Callable

import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from tenant_pipelines.core.backups import (
    AUTH_DRILL,
    AUTH_MAC,
    DATASET_IGNORE_PREFIXES,
    MANIFEST,
    TABLES,
    UNVERIFIED,
    backup_dataset,
    backup_tenant,
    check_target_dsn,
    key_fingerprint,
    list_backups,
    restore_drill,
    restore_tenant,
)
from tenant_pipelines.errors import BackupInvalid, BackupKeyMissing, InvalidInput
from tenant_pipelines.local.keys import load_master_key
from tenant_pipelines.settings import BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV
from tests.conftest import make_tenant

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PROJECT = Path(__file__).resolve().parents[2]


def fingerprint(conn: psycopg.Connection, tenant: uuid.UUID) -> dict[str, tuple[int, str]]:
    """Row count and an md5 of every row (as text, sorted) of the tenant in each backed-up table."""
    out = {}
    for table, key in TABLES:
        out[table] = conn.execute(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM public.{} t WHERE {} = %s"
        ).format(sql.Identifier(table), sql.Identifier(key)), (tenant,)).fetchone()
    return out


def scratch_schemas(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'scratch%' OR nspname LIKE 'tp_drill%'")]


def tenant_with_rows(conn: psycopg.Connection, *, encrypted: bool = True, events: int = 40) -> uuid.UUID:
    tenant = make_tenant(conn)
    with conn.transaction():
        conn.execute("INSERT INTO tenant_backup_config (organization_id, encryption_enabled) VALUES (%s, %s)", (tenant, encrypted))
        conn.execute("INSERT INTO invoices (organization_id, amount, currency, status) "
                     "SELECT %s, g * 1.5, 'EUR', 'open' FROM generate_series(1, 3) g", (tenant,))
        conn.execute('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp") '
                     "SELECT %s, 'api', g, now() - g * interval '1 hour' FROM generate_series(1, %s) g", (tenant, events))
    return tenant


def edit(path: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))


@pytest.fixture
def encrypted(admin_conn: psycopg.Connection, tmp_path: Path):
    tenant = tenant_with_rows(admin_conn)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    return tenant, report.path


@pytest.fixture
def cleartext(admin_conn: psycopg.Connection, tmp_path: Path):
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    return tenant, report.path


def refused(conn: psycopg.Connection, tenant: uuid.UUID, path: Path, error: type, *, key: bytes | None = KEY,
            into_schema: str | None = None) -> str:
    """Restore must raise ``error`` in one line naming the backup, and change nothing."""
    before, schemas = fingerprint(conn, tenant), scratch_schemas(conn)
    with pytest.raises(error) as caught:
        restore_tenant(conn, tenant, path, master_key=key, into_schema=into_schema)
    message = str(caught.value)
    assert "\n" not in message
    assert fingerprint(conn, tenant) == before, "the live rows are untouched"
    assert scratch_schemas(conn) == schemas, "no scratch schema is left behind"
    return message


# -- the edits of a manifest ---------------------------------------------------------


@pytest.mark.parametrize("table", ["usage_events_mt", "invoices"])
def test_a_table_emptied_in_the_manifest_never_empties_the_live_table(admin_conn, encrypted, table) -> None:
    tenant, path = encrypted

    def empty(m: dict) -> None:
        m["tables"][table]["files"], m["tables"][table]["rows"] = [], 0
    edit(path, empty)
    shutil.rmtree(path / f"table={table}")

    message = refused(admin_conn, tenant, path, BackupInvalid)
    assert str(path) in message and ("MAC" in message or "at least one file" in message)
    refused(admin_conn, tenant, path, BackupInvalid, into_schema="scratch_a")


def test_the_same_edit_of_a_cleartext_manifest_is_refused_too(admin_conn, cleartext) -> None:
    tenant, path = cleartext
    edit(path, lambda m: m["tables"]["usage_events_mt"].update(files=[], rows=0))
    shutil.rmtree(path / "table=usage_events_mt")
    assert "at least one file" in refused(admin_conn, tenant, path, BackupInvalid, key=None)


def test_an_altered_content_hash_is_refused_into_the_live_tables_and_a_scratch_schema(admin_conn, encrypted) -> None:
    tenant, path = encrypted
    edit(path, lambda m: m["tables"]["invoices"].update(content_hash="0" * 64))
    refused(admin_conn, tenant, path, BackupInvalid)
    refused(admin_conn, tenant, path, BackupInvalid, into_schema="scratch_b")


def test_the_content_hash_is_recomputed_while_loading_and_checked_before_commit(admin_conn, cleartext) -> None:
    """A cleartext backup no drill verified: a forged file with a consistent sha256 and row
    count loads, and is rolled back because its content hash is not the manifest's."""
    tenant, path = cleartext
    part = path / "table=invoices" / "part-00000.parquet"
    table = pq.read_table(part)
    amounts = pa.array([a * 100 for a in table.column("amount").to_pylist()], table.schema.field("amount").type)
    pq.write_table(table.set_column(table.schema.get_field_index("amount"), table.schema.field("amount"), amounts), part,
                   store_schema=True)
    edit(path, lambda m: m["tables"]["invoices"]["files"][0].update(sha256=hashlib.sha256(part.read_bytes()).hexdigest()))
    message = refused(admin_conn, tenant, path, BackupInvalid, key=None)
    assert "table invoices" in message and "content hash" in message and "nothing was committed" in message
    refused(admin_conn, tenant, path, BackupInvalid, key=None, into_schema="scratch_c")


# -- authentication ----------------------------------------------------------------------------


def test_an_encrypted_manifest_carries_a_mac_under_a_key_derived_from_the_backup_key(admin_conn, encrypted) -> None:
    tenant, path = encrypted
    manifest = json.loads((path / MANIFEST).read_text())
    auth = manifest["authentication"]
    derived = hmac.new(KEY, b"tenant-pipelines manifest mac v1", hashlib.sha256).digest()
    assert derived != KEY
    body = dict(manifest, authentication={k: v for k, v in auth.items() if k != "mac"})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert auth["mac"] == hmac.new(derived, canonical, hashlib.sha256).hexdigest()
    assert restore_tenant(admin_conn, tenant, path, master_key=KEY).authentication == AUTH_MAC

    edit(path, lambda m: m.pop("authentication"))
    assert "carries no MAC" in refused(admin_conn, tenant, path, BackupInvalid)


def test_an_altered_key_fingerprint_is_a_damaged_backup_and_a_wrong_key_a_key_error(admin_conn, encrypted) -> None:
    tenant, path = encrypted
    assert "fingerprint" in refused(admin_conn, tenant, path, BackupKeyMissing, key=OTHER_KEY), "exit 6: the key is wrong"
    edit(path, lambda m: m["encryption"].update(master_key_fingerprint="0123456789abcdef"))
    assert "was altered" in refused(admin_conn, tenant, path, BackupInvalid, key=KEY), "exit 5: the right key, an altered manifest"
    assert "fingerprint" in refused(admin_conn, tenant, path, BackupKeyMissing, key=OTHER_KEY), "exit 6: still the wrong key"
    edit(path, lambda m: m["encryption"].update(master_key_fingerprint=key_fingerprint(OTHER_KEY)))
    refused(admin_conn, tenant, path, BackupInvalid, key=OTHER_KEY)  # names the configured key, which cannot open the files


def test_a_cleartext_manifest_is_checked_against_its_drill_and_an_unverified_one_says_so(admin_conn, cleartext) -> None:
    tenant, path = cleartext
    said: list[str] = []
    report = restore_tenant(admin_conn, tenant, path, master_key=None, log=said.append)
    assert report.authentication == UNVERIFIED
    assert any(line.startswith("warning:") and "no restore drill has verified it" in line for line in said)

    assert restore_drill(admin_conn, path, master_key=None).passed
    assert len(json.loads((path / "verified.json").read_text())["manifest_sha256"]) == 64
    said.clear()
    assert restore_tenant(admin_conn, tenant, path, master_key=None, log=said.append).authentication == AUTH_DRILL
    assert not any("warning" in line for line in said)

    edit(path, lambda m: m.update(finished_at="2000-01-01T00:00:00+00:00"))
    assert "changed after the restore drill" in refused(admin_conn, tenant, path, BackupInvalid, key=None)


def test_a_cleartext_backup_of_a_tenant_whose_backups_are_encrypted_is_refused(admin_conn, tmp_path) -> None:
    """Without the key anyone who can write the folder can rewrite an encrypted backup as a
    cleartext one, sha256s, content hashes and a matching verified.json included: only the MAC
    proves the key wrote it. A tenant whose backups are encrypted gets no cleartext restore,
    drill record or not, unless the caller says it was meant (allow_cleartext)."""
    tenant = tenant_with_rows(admin_conn)  # encryption_enabled
    path = backup_tenant(admin_conn, tenant, tmp_path, master_key=None, encrypt=False).path  # cleartext
    manifest = json.loads((path / "manifest.json").read_bytes())
    (path / "verified.json").write_text(json.dumps({  # a drill record anyone can write
        "backup_id": manifest["backup_id"], "tenant": manifest["tenant"], "passed": True,
        "manifest_sha256": hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()}))
    message = refused(admin_conn, tenant, path, BackupInvalid)
    assert "backups are encrypted" in message and "--allow-cleartext" in message
    refused(admin_conn, tenant, path, BackupInvalid, key=None, into_schema="scratch_c")
    report = restore_tenant(admin_conn, tenant, path, master_key=KEY, allow_cleartext=True)
    assert report.total_rows > 0 and report.authentication == AUTH_DRILL


# -- malformed manifests -----------------------------------------------------------------------


def _truncate_and_rehash(path: Path) -> None:
    part = path / "table=usage_events_mt" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    edit(path, lambda m: m["tables"]["usage_events_mt"]["files"][0].update(sha256=hashlib.sha256(part.read_bytes()).hexdigest()))


MALFORMED: dict[str, Callable[[Path], None]] = {
    "missing sha256": lambda p: edit(p, lambda m: m["tables"]["invoices"]["files"][0].pop("sha256")),
    "files as a string": lambda p: edit(p, lambda m: m["tables"]["invoices"].update(files="table=invoices/part-00000.parquet")),
    "rows abc": lambda p: edit(p, lambda m: m["tables"]["invoices"].update(rows="abc")),
    "missing encryption": lambda p: edit(p, lambda m: m.pop("encryption")),
    "garbage arrow_schema_ipc": lambda p: edit(p, lambda m: m["tables"]["invoices"].update(
        arrow_schema_ipc=base64.b64encode(b"\xff\xff\xff\xff garbage, not a schema").decode())),
    "truncated file, sha256 updated": _truncate_and_rehash,
    "file path a number": lambda p: edit(p, lambda m: m["tables"]["invoices"]["files"][0].update(path=7)),
}


@pytest.mark.parametrize("damage", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_manifest_is_one_line_and_changes_nothing(admin_conn, cleartext, damage) -> None:
    tenant, path = cleartext
    MALFORMED[damage](path)
    message = refused(admin_conn, tenant, path, BackupInvalid, key=None)
    assert str(path) in message
    with pytest.raises(BackupInvalid):
        restore_drill(admin_conn, path, master_key=None)


@pytest.mark.parametrize("damage", ["rows abc", "garbage arrow_schema_ipc", "missing encryption"])
def test_a_malformed_encrypted_manifest_is_refused_too(admin_conn, encrypted, damage) -> None:
    tenant, path = encrypted
    MALFORMED[damage](path)
    refused(admin_conn, tenant, path, BackupInvalid)


# -- bad input -----------------------------------------------------------------------------------


def test_an_empty_backup_path_or_target_dsn_is_bad_input(admin_conn, encrypted) -> None:
    tenant, _ = encrypted
    before = fingerprint(admin_conn, tenant)
    with pytest.raises(InvalidInput):
        restore_tenant(admin_conn, tenant, "", master_key=KEY)
    for dsn in ("", "   ", "not a dsn"):
        with pytest.raises(InvalidInput, match="DSN"):
            check_target_dsn(dsn)
    assert fingerprint(admin_conn, tenant) == before


@pytest.mark.parametrize("where", ["a file", "/dev/null", "/proc/self", "under /dev/null"])
def test_an_unusable_backup_root_is_one_line_before_any_snapshot(admin_conn, tmp_path, where) -> None:
    tenant = tenant_with_rows(admin_conn)
    (tmp_path / "file").write_text("x")
    root = {"a file": tmp_path / "file", "/dev/null": Path("/dev/null"), "/proc/self": Path("/proc/self"),
            "under /dev/null": Path("/dev/null/backups")}[where]
    before = fingerprint(admin_conn, tenant)
    with pytest.raises(InvalidInput, match="backup root") as caught:
        backup_tenant(admin_conn, tenant, root, master_key=KEY)
    assert "\n" not in str(caught.value) and ("--root" in str(caught.value))
    assert fingerprint(admin_conn, tenant) == before, "last_backup_at unchanged"


def test_a_key_file_that_is_binary_or_a_directory_is_a_key_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(BACKUP_KEY_ENV, raising=False)
    binary = tmp_path / "binary.key"
    binary.write_bytes(bytes(range(256)))
    monkeypatch.setenv(BACKUP_KEY_FILE_ENV, str(binary))
    with pytest.raises(BackupKeyMissing, match="not base64 text"):
        load_master_key()
    monkeypatch.setenv(BACKUP_KEY_FILE_ENV, str(tmp_path))
    with pytest.raises(BackupKeyMissing, match="is a directory"):
        load_master_key()


# -- reading backups as a dataset ------------------------------------------------------------------


def test_the_tenant_folder_reads_as_a_hive_dataset(admin_conn, tmp_path) -> None:
    """docs/backups.md's call, over tenant=<uuid>/ with two backups, a drill's verified.json and
    an unfinished backup's temporary folder in it."""
    tenant = tenant_with_rows(admin_conn, encrypted=False, events=5)
    first = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    restore_drill(admin_conn, first.path, master_key=None)
    second = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    folder = tmp_path / f"tenant={tenant}"
    shutil.copytree(second.path, folder / ".backup=20000101T000000000000Z-abcdef.tmp-host-1")
    (folder / ".backup=20000101T000000000000Z-abcdef.tmp-host-1" / "table=invoices" / "junk.parquet").write_text("x")

    with pytest.raises(pa.ArrowInvalid, match="manifest.json"):
        ds.dataset(folder, format="parquet", partitioning="hive")  # what docs/backups.md used to promise

    # The documented snippet, run as it is written.
    docs = (PROJECT / "docs" / "backups.md").read_text()
    snippet = next(block.split("\n", 1)[1] for block in docs.split("```python")[1:] if "ignore_prefixes" in block)
    scope = {"root": str(tmp_path), "tenant": str(tenant)}
    exec(snippet.split("```")[0], scope)
    assert sorted(Path(f).name for f in scope["files"]) == ["part-00000.parquet"] * 2 * len(TABLES)
    assert scope["invoices"].num_rows == 6 and set(scope["invoices"].column("backup").to_pylist()) == {first.backup_id, second.backup_id}
    assert scope["invoices"].column("amount").type == pa.decimal128(20, 6)
    # pandas passes the same arguments to pyarrow.
    import pandas as pd

    frame = pd.read_parquet(folder, ignore_prefixes=scope["skip"], schema=scope["schema"], filters=[("table", "==", "invoices")])
    assert len(frame) == 6 and sorted(frame["amount"].astype(str)) == sorted(str(a) for a in scope["invoices"].column("amount").to_pylist())

    events = backup_dataset(tmp_path, tenant, "usage_events_mt").to_table()
    assert events.num_rows == 10 and set(events.column("backup").to_pylist()) == {first.backup_id, second.backup_id}
    assert events.schema.field("quantity").type == pa.decimal128(20, 6)
    invoices = backup_dataset(tmp_path, tenant, "invoices").to_table()
    assert invoices.num_rows == 6 and set(invoices.column("table").to_pylist()) == {"invoices"}
    assert DATASET_IGNORE_PREFIXES == [".", "_", "manifest.json", "verified.json"]


def test_an_encrypted_tenant_folder_reads_as_a_dataset_with_the_key(admin_conn, tmp_path) -> None:
    tenant = tenant_with_rows(admin_conn, events=7)
    report = backup_tenant(admin_conn, tenant, tmp_path, master_key=KEY)
    table = backup_dataset(tmp_path, tenant, "usage_events_mt", master_key=KEY).to_table()
    assert table.num_rows == 7 and table.column("backup").to_pylist() == [report.backup_id] * 7
    with pytest.raises(BackupKeyMissing):
        backup_dataset(tmp_path, tenant, "usage_events_mt")


# -- a hostile-input audit's findings ----------------------------------------------------------


def _rewrite_cleartext(path: Path, table: str, new: pa.Table) -> None:
    """``new`` as the table's one cleartext file, the manifest made consistent with it (what
    anyone who can write the folder can do to a cleartext backup)."""
    from tenant_pipelines.core.backups.hashing import ContentHasher

    for old in (path / f"table={table}").glob("*.parquet"):
        old.unlink()
    part = path / f"table={table}" / "part-00000.parquet"
    pq.write_table(new, part, store_schema=True)
    hasher = ContentHasher(new.schema, None)
    for batch in pq.ParquetFile(part).iter_batches():
        hasher.update(batch)

    def consistent(m: dict) -> None:
        m["tables"][table].update(
            files=[{"path": f"table={table}/part-00000.parquet", "rows": new.num_rows, "bytes": part.stat().st_size,
                    "sha256": hashlib.sha256(part.read_bytes()).hexdigest()}],
            rows=new.num_rows, content_hash=hasher.hexdigest(),
            arrow_schema_ipc=base64.b64encode(new.schema.serialize().to_pybytes()).decode())
    edit(path, consistent)


def test_a_nul_in_a_file_path_is_one_line(admin_conn, cleartext) -> None:
    tenant, path = cleartext
    edit(path, lambda m: m["tables"]["invoices"]["files"][0].update(path="table=invoices/part\u0000.parquet"))
    assert "names no file" in refused(admin_conn, tenant, path, BackupInvalid, key=None)


def test_a_column_listed_twice_is_refused(admin_conn, cleartext) -> None:
    tenant, path = cleartext
    table = pq.read_table(path / "table=invoices" / "part-00000.parquet")
    _rewrite_cleartext(path, "invoices", table.append_column(table.schema.field("amount"), table.column("amount")))
    edit(path, lambda m: m["tables"]["invoices"]["columns"].append(
        {"name": "amount", "pg_type": "numeric(20,6)", "generated": False}))
    assert "listed twice" in refused(admin_conn, tenant, path, BackupInvalid, key=None)
    refused(admin_conn, tenant, path, BackupInvalid, key=None, into_schema="scratch_dup")


def test_a_manifest_that_is_a_pipe_is_refused_without_blocking(admin_conn, cleartext) -> None:
    tenant, path = cleartext
    (path / MANIFEST).unlink()
    os.mkfifo(path / MANIFEST)
    assert "not a regular file" in refused(admin_conn, tenant, path, BackupInvalid, key=None)


@pytest.mark.parametrize("name", ["tenant_" + "ab" * 16, "   ", "a\tb", "x\u0000y"])
def test_a_scratch_schema_name_a_tenant_schema_or_blank_is_refused(admin_conn, cleartext, name) -> None:
    tenant, path = cleartext
    refused(admin_conn, tenant, path, InvalidInput, key=None, into_schema=name)


def test_an_edited_backup_id_does_not_break_retention_and_is_no_backup(admin_conn, tmp_path) -> None:
    """A folder whose manifest names another backup id is not a backup (list_backups); retention
    names what it removes after the folder, never after the manifest."""
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    first = backup_tenant(admin_conn, tenant, tmp_path, master_key=None).path
    old = first.with_name("backup=20000101T000000000000Z-aaaaaa")
    shutil.copytree(first, old)
    edit(old, lambda m: (m.update(backup_id="x/y"), m["snapshot"].update(taken_at="2000-01-01T00:00:00+00:00")))
    assert old not in [b.path for b in list_backups(tmp_path, tenant)]
    second = backup_tenant(admin_conn, tenant, tmp_path, master_key=None)
    assert second.path.is_dir() and first.is_dir()


def test_a_dangling_link_among_the_temporaries_blocks_no_backup(admin_conn, tmp_path) -> None:
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    first = backup_tenant(admin_conn, tenant, tmp_path, master_key=None).path
    link = first.parent / ".backup=20000101T000000000000Z-aaaaaa.tmp-otherhost-1"
    os.symlink("/nonexistent/tenant-pipelines-audit", link)
    assert backup_tenant(admin_conn, tenant, tmp_path, master_key=None).path.is_dir()


def test_values_the_target_column_would_round_are_refused(admin_conn, cleartext) -> None:
    """A file whose amounts carry more decimal places than the target's numeric(20,6) (a backup
    of another schema version, or a hand-made file): PostgreSQL would round them silently."""
    tenant, path = cleartext
    table = pq.read_table(path / "table=invoices" / "part-00000.parquet")
    index = table.schema.get_field_index("amount")
    finer = pa.array([Decimal("1.1234567891")] * table.num_rows, pa.decimal128(38, 10))
    _rewrite_cleartext(path, "invoices", table.set_column(index, pa.field("amount", finer.type), finer))
    message = refused(admin_conn, tenant, path, BackupInvalid, key=None)
    assert "column amount is stored with 10 decimal places" in message and "round" in message
