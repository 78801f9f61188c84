"""What a backup is on disk: the tables it holds, the folders and file names, the format.

Under the backup root (Hive-style; see ``catalog.backup_dataset`` and docs/backups.md)::

    tenant=<uuid>/backup=<id>/manifest.json
    tenant=<uuid>/backup=<id>/table=<name>/part-00000.parquet
    tenant=<uuid>/backup=<id>/verified.json        written by a successful restore drill
    tenant=<uuid>/.backup=<id>.tmp-<host>-<pid>/    a backup being written (or given up)
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

from tenant_pipelines.core.placement import TENANT_TABLES

MANIFEST = "manifest.json"
VERIFIED = "verified.json"
FORMAT = "tenant-pipelines-backup"
FORMAT_VERSION = 1

# The tenant's tables, in the order a restore loads them (parents before children), with the
# column that names the tenant: where a tenant's rows are is core/placement.py's to say.
TABLES: tuple[tuple[str, str], ...] = TENANT_TABLES
TABLE_KEYS = dict(TABLES)

BACKUP_ID_PATTERN = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
# A temporary folder's name starts so: hidden from Hive readers by its leading dot.
TMP_PREFIX = ".backup="

# What a reader of <root>/tenant=<uuid>/ skips so that only the Parquet files remain: the hidden
# temporary folders of unfinished backups ("."), "_" (pyarrow's default along with "."), the
# manifest and the drill's marker. The same list is in docs/backups.md.
DATASET_IGNORE_PREFIXES = [".", "_", MANIFEST, VERIFIED]


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def tenant_folder(root: Path, tenant: uuid.UUID) -> Path:
    return Path(root) / f"tenant={tenant}"


def tmp_name(backup_id: str) -> str:
    """The temporary folder this process writes backup ``backup_id`` into."""
    return f"{TMP_PREFIX}{backup_id}.tmp-{socket.gethostname()}-{os.getpid()}"
