"""The catalogue of backups: a tenant's backups on disk, the one to restore as of a time, every
backup of a table as a pyarrow dataset, and which tenants are due for a backup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from tenant_pipelines.core.backups.encryption import crypto_factory, decryption_properties
from tenant_pipelines.core.backups.layout import (
    BACKUP_ID_PATTERN,
    DATASET_IGNORE_PREFIXES,
    TABLE_KEYS,
    tenant_folder,
)
from tenant_pipelines.core.backups.manifest import read_manifest
from tenant_pipelines.core.backups.verify import drill_record
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import BackupInvalid, BackupKeyMissing, InvalidInput
from tenant_pipelines.settings import BACKUP_KEY_ENV


@dataclass(frozen=True)
class BackupInfo:
    """One complete backup on disk (``list_backups``)."""

    tenant: str
    backup_id: str
    path: Path
    taken_at: datetime
    verified_at: datetime | None

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


def list_backups(root: Path, tenant_id: object) -> list[BackupInfo]:
    """The tenant's complete backups, oldest first. Temporary folders and folders without a
    readable manifest are not backups."""
    tenant = parse_tenant_id(tenant_id)
    folder = tenant_folder(root, tenant)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        name = path.name
        if not name.startswith("backup=") or not BACKUP_ID_PATTERN.match(name.removeprefix("backup=")):
            continue
        try:
            manifest = read_manifest(path)
            if manifest.get("tenant") != str(tenant):
                continue
            backup_id, taken_at = manifest["backup_id"], datetime.fromisoformat(manifest["snapshot"]["taken_at"])
            # The folder names the backup; a manifest that names another (edited) is not this backup.
            if backup_id != name.removeprefix("backup=") or taken_at.tzinfo is None:
                continue
        except (BackupInvalid, KeyError, TypeError, ValueError):
            continue
        record = drill_record(path, manifest)
        verified_at = None
        if record is not None:
            try:
                verified_at = datetime.fromisoformat(record["verified_at"])
            except (KeyError, TypeError, ValueError):
                pass
        found.append(BackupInfo(str(tenant), backup_id, path, taken_at, verified_at))
    return sorted(found, key=lambda b: (b.taken_at, b.backup_id))


def backup_as_of(root: Path, tenant_id: object, as_of: datetime) -> Path:
    """The newest verified backup of the tenant taken at or before ``as_of``."""
    tenant = parse_tenant_id(tenant_id)
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    backups = list_backups(root, tenant)
    chosen = [b for b in backups if b.verified and b.taken_at <= as_of]
    if not chosen:
        unverified = [b for b in backups if b.taken_at <= as_of]
        hint = (f"; {len(unverified)} unverified backups are that old: run the backup_restorable check on them, "
                "or pass one with --backup") if unverified else ""
        raise BackupInvalid(f"tenant {tenant}: no verified backup taken at or before {as_of.isoformat()} under {root}{hint}")
    return chosen[-1].path


# -- reading backups as a dataset ------------------------------------------------------------


def backup_dataset(root: Path, tenant_id: object, table: str, *, master_key: bytes | None = None):
    """One table of every backup of a tenant, as a ``pyarrow.dataset.Dataset`` with the Hive
    partition columns ``backup`` and ``table``: exactly the call docs/backups.md gives, over
    ``<root>/tenant=<uuid>/``. The table's schema comes from one of its files (the tables'
    schemas differ, so it is not inferred from whichever file comes first). ``master_key``
    decrypts encrypted backups."""
    import pyarrow.dataset as ds

    tenant = parse_tenant_id(tenant_id)
    if table not in TABLE_KEYS:
        raise InvalidInput(f"table {table!r} is not in a backup; pick one of {', '.join(TABLE_KEYS)}")
    folder = tenant_folder(root, tenant)
    sample = next(iter(sorted(folder.glob(f"backup=*/table={table}/*.parquet"))), None)
    if sample is None:
        raise BackupInvalid(f"tenant {tenant}: no backup under {root} holds table {table}; take a backup first")
    properties = decryption_properties(master_key) if master_key is not None else None
    try:
        schema = pq.read_schema(sample, decryption_properties=properties)
    except (OSError, pa.ArrowException) as exc:
        raise BackupKeyMissing(f"{sample} cannot be opened ({str(exc).splitlines()[0]}); an encrypted backup needs "
                               f"its key: set ${BACKUP_KEY_ENV}") from None
    schema = schema.append(pa.field("backup", pa.string())).append(pa.field("table", pa.string()))
    file_format = "parquet"
    if master_key is not None:
        file_format = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
            decryption_config=ds.ParquetDecryptionConfig(crypto_factory(master_key), pe.KmsConnectionConfig(),
                                                         pe.DecryptionConfiguration())))
    dataset = ds.dataset(folder, format=file_format, partitioning="hive",
                         ignore_prefixes=DATASET_IGNORE_PREFIXES, schema=schema)
    return dataset.filter(ds.field("table") == table)


# -- the sensor's question -------------------------------------------------------------------


def tenants_due(conn: psycopg.Connection, now: datetime | None = None) -> list[tuple[str, datetime | None]]:
    """Organizations whose backup is due: next_backup_at passed, or never backed up (no
    last_backup_at, or no tenant_backup_config row). With the due time (None: never)."""
    rows = conn.execute(
        """
        SELECT o.id, bc.next_backup_at
          FROM organizations o
          LEFT JOIN tenant_backup_config bc ON bc.organization_id = o.id
         WHERE bc.next_backup_at IS NULL OR bc.next_backup_at <= COALESCE(%s, now())
         ORDER BY bc.next_backup_at NULLS FIRST, o.id
        """,
        (now,),
    ).fetchall()
    return [(str(t), due) for t, due in rows]


def backup_frequencies(conn: psycopg.Connection, tenants: Iterable[str]) -> dict[str, timedelta]:
    wanted = [parse_tenant_id(t) for t in tenants]
    rows = conn.execute(
        """SELECT o.id, COALESCE(bc.backup_frequency, interval '24 hours')
             FROM organizations o LEFT JOIN tenant_backup_config bc ON bc.organization_id = o.id
            WHERE o.id = ANY(%s)""",
        (wanted,),
    ).fetchall()
    return {str(t): f for t, f in rows}
