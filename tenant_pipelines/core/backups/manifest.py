"""The manifest: what a backup holds (per table: rows, files with their sha256, columns, Arrow
schema, content hash), written last; its MAC for encrypted backups; reading it back with every
field a reader uses checked for type and shape before anything uses it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from tenant_pipelines import __version__
from tenant_pipelines.core.backups.arrow_types import Column
from tenant_pipelines.core.backups.keys import MASTER_KEY_ID, key_fingerprint, manifest_mac_key
from tenant_pipelines.core.backups.layout import (
    BACKUP_ID_PATTERN,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TABLE_KEYS,
    TABLES,
)
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import BackupInvalid

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class TableExport:
    """One table as the writer wrote it: what the manifest says of it."""

    name: str
    rows: int = 0
    files: list[dict] = field(default_factory=list)
    schema: pa.Schema | None = None
    columns: list[Column] = field(default_factory=list)
    content_hash: str = ""
    seconds: float = 0.0


def canonical_json(document: dict) -> bytes:
    """JSON with sorted keys, no whitespace, ASCII: what a MAC covers."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def manifest_mac(manifest: dict, master_key: bytes) -> str:
    """HMAC-SHA256 (under ``manifest_mac_key``) of the manifest as canonical JSON (sorted keys,
    no whitespace, ASCII), without ``authentication.mac`` itself."""
    document = dict(manifest)
    auth = document.get("authentication")
    if isinstance(auth, dict):
        document["authentication"] = {k: v for k, v in auth.items() if k != "mac"}
    return hmac.new(manifest_mac_key(master_key), canonical_json(document), hashlib.sha256).hexdigest()


def build_manifest(tenant: uuid.UUID, backup_id: str, exports: list[TableExport], *, snapshot_at: datetime, lsn: str,
                   server_version: str, database: str, key: bytes | None, finished_at: datetime,
                   seconds: float) -> dict:
    """The manifest of a finished backup (``key``: the master key when it is encrypted, which
    then also signs it with ``manifest_mac``)."""
    encryption: dict = {"enabled": False}
    if key is not None:
        encryption = {
            "enabled": True,
            "scheme": "parquet-modular-encryption",
            "algorithm": "AES_GCM_V1",
            "uniform": True,
            "double_wrapping": True,
            "kms": "tenant-pipelines LocalKmsClient (AES-256-GCM key wrapping)",
            "master_key_id": MASTER_KEY_ID,
            "master_key_fingerprint": key_fingerprint(key),
            "content_hash": "hmac-sha256",
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "tenant-pipelines", "version": __version__},
        "tenant": str(tenant),
        "backup_id": backup_id,
        "snapshot": {"taken_at": snapshot_at.astimezone(timezone.utc).isoformat(), "lsn": lsn,
                     "isolation": "repeatable read, read only (one exported snapshot)"},
        "source": {"server_version": server_version, "database": database},
        "finished_at": finished_at.isoformat(),
        "duration_s": round(seconds, 3),
        "encryption": encryption,
        "tables": {
            e.name: {
                "tenant_column": TABLE_KEYS[e.name],
                "rows": e.rows,
                "content_hash": e.content_hash,
                "files": e.files,
                "columns": [{"name": c.name, "pg_type": c.pg_type, "generated": c.generated} for c in e.columns],
                "arrow_schema": e.schema.to_string(show_field_metadata=False),
                "arrow_schema_ipc": base64.b64encode(e.schema.serialize().to_pybytes()).decode(),
            }
            for e in exports
        },
        "totals": {"rows": sum(e.rows for e in exports),
                   "bytes": sum(f["bytes"] for e in exports for f in e.files)},
    }
    if key is not None:
        manifest["authentication"] = {
            "scheme": "hmac-sha256",
            "key": "HMAC-SHA256(backup key, 'tenant-pipelines manifest mac v1')",
            "covers": "this manifest without authentication.mac, as JSON with sorted keys, no whitespace, ASCII",
        }
        manifest["authentication"]["mac"] = manifest_mac(manifest, key)
    return manifest


# -- reading it back ----------------------------------------------------------------------------


def _damaged(path: Path, problem: str) -> BackupInvalid:
    return BackupInvalid(f"{path}: {problem}; the backup is damaged or was altered, use another one")


MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # far above any manifest (a few KiB per table)


def read_manifest_document(path: Path) -> tuple[dict, bytes]:
    """The manifest and its bytes, with its format checked; nothing else is trusted yet."""
    try:
        info = (path / MANIFEST).stat()
        if not stat.S_ISREG(info.st_mode):  # a pipe would block the read, a device never end
            raise BackupInvalid(f"{path}: {MANIFEST} is not a regular file; the backup is damaged or was altered")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise BackupInvalid(f"{path}: {MANIFEST} is {info.st_size} bytes, more than any manifest "
                                f"({MAX_MANIFEST_BYTES}); the backup is damaged or was altered")
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupInvalid(f"{path}: no {MANIFEST}; it is not a complete backup (an interrupted one?)") from None
    except OSError as exc:
        raise BackupInvalid(f"{path}: {MANIFEST} is unreadable ({exc.strerror or exc.__class__.__name__}); "
                            "the backup is damaged") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BackupInvalid(f"{path}: {MANIFEST} is unreadable ({exc.__class__.__name__}); the backup is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{path}: {MANIFEST} is not a tenant-pipelines backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupInvalid(f"{path}: backup format {manifest.get('format_version')!r} is not {FORMAT_VERSION}; "
                            "use the tenant-pipelines version that wrote it")
    return manifest, raw


def read_manifest(path: Path) -> dict:
    return read_manifest_document(path)[0]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def manifest_schema(path: Path, manifest: dict, table: str) -> pa.Schema:
    """The Arrow schema the manifest stores for a table (``arrow_schema_ipc``)."""
    text = manifest["tables"][table].get("arrow_schema_ipc")
    try:
        if not isinstance(text, str):
            raise TypeError(text)
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))
    except (TypeError, ValueError, pa.ArrowException):
        raise _damaged(path, f"table {table}: arrow_schema_ipc is not a serialized Arrow schema") from None


def check_manifest(path: Path, manifest: dict, tenant: uuid.UUID | None = None) -> None:
    """Every field a reader uses has the type and shape the backup wrote, before anything uses
    it: a malformed manifest is a one-line BackupInvalid, never a traceback further on. This is
    about shape only; ``authenticate_backup`` says whether the manifest can be trusted."""
    owner = manifest.get("tenant")
    try:
        uuid.UUID(owner) if isinstance(owner, str) else None
    except ValueError:
        owner = None
    if not isinstance(owner, str):
        raise _damaged(path, "the manifest names no tenant")
    if tenant is not None and owner != str(tenant):
        raise BackupInvalid(f"{path}: this is a backup of tenant {owner}, not of tenant {tenant}; "
                            "pick a backup under tenant=" + str(tenant))
    if not isinstance(manifest.get("backup_id"), str) or not BACKUP_ID_PATTERN.match(manifest["backup_id"]):
        raise _damaged(path, "the manifest has no valid backup_id")
    snapshot = manifest.get("snapshot")
    try:
        taken_at = datetime.fromisoformat(snapshot["taken_at"])
    except (TypeError, KeyError, ValueError):
        taken_at = None
    if taken_at is None or taken_at.tzinfo is None:
        raise _damaged(path, "the manifest has no snapshot.taken_at time")
    encryption = manifest.get("encryption")
    if not isinstance(encryption, dict) or not isinstance(encryption.get("enabled"), bool):
        raise _damaged(path, "the manifest has no encryption section saying whether the files are encrypted")
    if encryption["enabled"] and not (isinstance(encryption.get("master_key_fingerprint"), str)
                                      and _HEX16.match(encryption["master_key_fingerprint"])):
        raise _damaged(path, "the manifest's encryption section has no key fingerprint")
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(TABLE_KEYS):
        raise _damaged(path, f"the manifest does not list exactly the tables of backup format {FORMAT_VERSION} "
                             f"({', '.join(TABLE_KEYS)})")
    base = path.resolve()
    for table, key_column in TABLES:
        entry = tables[table]
        what = f"table {table}"
        if not isinstance(entry, dict):
            raise _damaged(path, f"{what} is not described")
        if entry.get("tenant_column") != key_column:
            raise _damaged(path, f"{what}: its tenant_column is not {key_column}")
        if not _count(entry.get("rows")):
            raise _damaged(path, f"{what}: rows is {entry.get('rows')!r}, not a row count")
        if not isinstance(entry.get("content_hash"), str) or not _HEX64.match(entry["content_hash"]):
            raise _damaged(path, f"{what} has no content_hash")
        files = entry.get("files")
        if not isinstance(files, list) or not files:
            raise _damaged(path, f"{what}: files is {files!r}; every table has at least one file, an empty one too")
        total, seen = 0, set()
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"]:
                raise _damaged(path, f"{what}: a file entry has no path")
            try:
                if "\0" in f["path"]:
                    raise ValueError("a NUL character")
                file = (path / f["path"]).resolve()
            except (ValueError, OSError):
                raise _damaged(path, f"{what}: a file path that names no file ({f['path']!r})") from None
            if base not in file.parents:
                raise BackupInvalid(f"{path}: the manifest names a file outside the backup ({f['path']}); refusing it")
            if file.parent != base / f"table={table}" or file in seen:
                raise _damaged(path, f"{what}: {f['path']} is not a file of its own in table={table}/")
            seen.add(file)
            for name in ("rows", "bytes"):
                if not _count(f.get(name)):
                    raise _damaged(path, f"{what}: {f['path']}: {name} is {f.get(name)!r}, not a count")
            if not isinstance(f.get("sha256"), str) or not _HEX64.match(f["sha256"]):
                raise _damaged(path, f"{what}: {f['path']} has no sha256")
            total += f["rows"]
        if total != entry["rows"]:
            raise _damaged(path, f"{what}: its files hold {total} rows, the manifest says {entry['rows']}")
        schema = manifest_schema(path, manifest, table)
        columns = entry.get("columns")
        names = [c.get("name") for c in columns if isinstance(c, dict)] if isinstance(columns, list) else None
        if names != schema.names or key_column not in names:
            raise _damaged(path, f"{what}: its columns and its Arrow schema disagree")
        if len(set(names)) != len(names):
            raise _damaged(path, f"{what}: a column is listed twice")


def backup_folder(path: Path) -> Path:
    """``path`` when it is a folder that can be a finished backup, else BackupInvalid."""
    path = Path(path)
    if not path.is_dir():
        raise BackupInvalid(f"{path}: no such backup folder; pass a folder like <root>/tenant=<uuid>/backup=<id>")
    if ".tmp" in path.name:
        raise BackupInvalid(f"{path}: a temporary folder of an unfinished backup, not a backup; pick a backup=<id> folder")
    return path


def load_manifest(path: Path, tenant_id: object | None = None) -> dict:
    """The manifest of a complete backup folder, its shape checked (``check_manifest``) and, when
    ``tenant_id`` is given, its tenant. Files are not read and the manifest not authenticated."""
    path = backup_folder(path)
    tenant = parse_tenant_id(tenant_id) if tenant_id is not None else None
    manifest = read_manifest(path)
    check_manifest(path, manifest, tenant)
    return manifest


def manifest_digest(path: Path) -> str:
    """The sha256 of the manifest's bytes: what a drill records in verified.json."""
    return hashlib.sha256(read_manifest_document(Path(path))[1]).hexdigest()
