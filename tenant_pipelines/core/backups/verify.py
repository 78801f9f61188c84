"""Whether a backup can be trusted before anything reads it: its files against their sha256,
its manifest's authenticity (the MAC of an encrypted backup, the restore drill's digest of a
cleartext one), and the drill's record in ``verified.json``."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from tenant_pipelines.core.backups.encryption import decryption_properties
from tenant_pipelines.core.backups.hashing import sha256_file
from tenant_pipelines.core.backups.keys import key_fingerprint
from tenant_pipelines.core.backups.layout import MANIFEST, TABLES, VERIFIED
from tenant_pipelines.core.backups.manifest import load_manifest, manifest_digest, manifest_mac, read_manifest_document
from tenant_pipelines.errors import BackupInvalid, BackupKeyMissing
from tenant_pipelines.files import write_json_atomic
from tenant_pipelines.settings import BACKUP_KEY_ENV

# How authenticate_backup vouched for a manifest.
UNVERIFIED, AUTH_MAC, AUTH_DRILL = "unverified", "mac", "drill digest"


def check_files(path: Path, manifest: dict) -> None:
    """Every listed file is there and matches its sha256."""
    for table, entry in manifest["tables"].items():
        for f in entry["files"]:
            file = path / f["path"]
            if not file.is_file():
                raise BackupInvalid(f"{path}: {f['path']} is missing; the backup is damaged, use another one")
            try:
                digest = sha256_file(file)
            except OSError as exc:
                raise BackupInvalid(f"{path}: {f['path']} cannot be read ({exc.strerror}); use another backup") from None
            if digest != f["sha256"]:
                raise BackupInvalid(f"{path}: {f['path']} does not match its sha256 in the manifest; "
                                    "the backup is damaged or was altered, use another one")


def verify_backup(path: Path, tenant_id: object | None = None) -> dict:
    """Check a backup before anything reads it: a complete folder, a well-formed manifest of this
    tenant, every listed file present, inside the folder and matching its sha256.
    Returns the manifest; raises BackupInvalid naming the problem otherwise. Whether the manifest
    itself can be trusted is ``authenticate_backup``'s question."""
    manifest = load_manifest(path, tenant_id)
    check_files(Path(path), manifest)
    return manifest


def drill_record(path: Path, manifest: dict) -> dict | None:
    """``verified.json`` when it is a passing drill's record of this backup, else None."""
    try:
        record = json.loads((path / VERIFIED).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(record, dict) or record.get("passed") is not True
            or record.get("backup_id") != manifest.get("backup_id") or record.get("tenant") != manifest.get("tenant")):
        return None
    return record


def _opens_with(path: Path, manifest: dict, master_key: bytes) -> bool:
    first = manifest["tables"][TABLES[0][0]]["files"][0]["path"]
    try:
        pq.ParquetFile(path / first, decryption_properties=decryption_properties(master_key)).schema_arrow
        return True
    except Exception:
        return False


def authenticate_backup(path: Path, manifest: dict, master_key: bytes | None, *, expect_encrypted: bool = False,
                        allow_cleartext: bool = False) -> str:
    """Whether the manifest can be trusted, for a manifest that ``check_manifest`` accepted.

    - Encrypted: its MAC (``manifest_mac``) must verify under the configured key; no key is
      BackupKeyMissing. A MAC that fails is BackupInvalid (exit 5) when the configured key is the
      backup's, by its fingerprint or because it opens the files (the fingerprint itself was
      altered), and BackupKeyMissing (exit 6) when it is another key. Returns ``AUTH_MAC``.
    - Cleartext: its sha256 must equal the digest its passing restore drill recorded in
      ``verified.json`` (``AUTH_DRILL``); a manifest changed since is BackupInvalid. A cleartext
      backup no drill verified returns ``UNVERIFIED``: nothing vouches for its manifest, which
      the caller must say.
    - Cleartext while ``expect_encrypted`` (the tenant's backups are encrypted): refused unless
      ``allow_cleartext``. Without the key anyone who can write the folder can turn an encrypted
      backup into a cleartext one with consistent sha256s and a matching ``verified.json``;
      only the MAC of an encrypted backup proves it was written with the key."""
    path = Path(path)
    document, raw = read_manifest_document(path)
    if document != manifest:
        raise BackupInvalid(f"{path}: {MANIFEST} changed while it was being checked; re-run")
    encryption = manifest["encryption"]
    if encryption["enabled"]:
        wanted = encryption["master_key_fingerprint"]
        if master_key is None:
            raise BackupKeyMissing(
                f"tenant {manifest['tenant']}: backup {manifest['backup_id']} is encrypted and no backup key is "
                f"configured; set ${BACKUP_KEY_ENV} to the key with fingerprint {wanted}")
        auth = manifest.get("authentication")
        mac = auth.get("mac") if isinstance(auth, dict) else None
        if not isinstance(mac, str):
            raise BackupInvalid(f"{path}: the manifest of this encrypted backup carries no MAC (it was altered, or "
                                "written before manifests were authenticated), so it cannot be trusted; use another backup")
        if hmac.compare_digest(mac, manifest_mac(manifest, master_key)):
            return AUTH_MAC
        configured = key_fingerprint(master_key)
        if configured == wanted:
            raise BackupInvalid(f"{path}: the manifest fails its MAC under the backup's own key: it was altered "
                                "after the backup was written; use another backup")
        if _opens_with(path, manifest, master_key):
            raise BackupInvalid(f"{path}: the manifest's key fingerprint {wanted} was altered (the configured key, "
                                f"fingerprint {configured}, opens the files but the manifest fails its MAC); "
                                "use another backup")
        raise BackupKeyMissing(
            f"tenant {manifest['tenant']}: backup {manifest['backup_id']} needs the key with fingerprint {wanted}, "
            f"the configured one is {configured}; set ${BACKUP_KEY_ENV} to the key it was written with")
    if expect_encrypted and not allow_cleartext:
        raise BackupInvalid(
            f"{path}: tenant {manifest['tenant']}'s backups are encrypted (tenant_backup_config.encryption_enabled) but "
            "this one is cleartext, so nothing proves it was written with the key (an encrypted backup rewritten "
            "without it looks the same); use another backup, or pass --allow-cleartext if it was written so on purpose")
    record = drill_record(path, manifest)
    if record is None or not isinstance(record.get("manifest_sha256"), str):
        return UNVERIFIED
    if not hmac.compare_digest(record["manifest_sha256"], hashlib.sha256(raw).hexdigest()):
        raise BackupInvalid(f"{path}: {MANIFEST} changed after the restore drill verified it (its sha256 differs "
                            f"from the one in {VERIFIED}); use another backup")
    return AUTH_DRILL


def mark_verified(path: Path, manifest: dict, details: dict, *, manifest_sha256: str | None = None) -> None:
    """Record a passing drill in ``verified.json``, with the sha256 of the manifest it checked:
    what a later restore of a cleartext backup compares its manifest with."""
    # 0o666: the umask decides, as for the backup's other files.
    write_json_atomic(path / VERIFIED, {
        "backup_id": manifest["backup_id"], "tenant": manifest["tenant"], "passed": True,
        "verified_at": datetime.now(timezone.utc).isoformat(),
        "manifest_sha256": manifest_sha256 or manifest_digest(path), **details,
    }, mode=0o666)
