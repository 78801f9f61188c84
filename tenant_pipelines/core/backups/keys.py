"""The backup master key: decoding it from the values the caller read (``settings``), naming it
(its fingerprint) and the keys derived from it.

Nothing here reads the environment or knows the embedded cluster: the CLI and the Dagster
resource resolve the key (``tenant_pipelines.local.keys.load_master_key`` adds the development
key file) and pass it in as bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from pathlib import Path

from tenant_pipelines.errors import BackupKeyMissing
from tenant_pipelines.settings import BACKUP_KEY_ENV, BACKUP_KEY_FILE_ENV

MASTER_KEY_ID = "tenant-pipelines-backup-master"
MAKE_A_KEY = "'python -c \"import base64,os; print(base64.b64encode(os.urandom(32)).decode())\"'"


def decode_key(text: str, where: str) -> bytes:
    """32 bytes from their base64 text, or a one-line BackupKeyMissing naming ``where``."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        key = b""
    if len(key) != 32:
        raise BackupKeyMissing(f"the backup key in {where} is not 32 bytes in base64; make one with {MAKE_A_KEY}")
    return key


def read_key_file(path: Path) -> bytes:
    """The key in a key file: base64 text. A binary or unreadable file is a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupKeyMissing(f"the backup key file {path} cannot be read ({exc.strerror or exc.__class__.__name__}); "
                               "fix its permissions or point at another file") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BackupKeyMissing(
            f"the backup key file {path} is not base64 text (it holds binary data); write the key as base64, e.g. "
            f"{MAKE_A_KEY}") from None
    return decode_key(text, str(path))


def master_key_from(key: str | None, key_file: Path | None) -> bytes | None:
    """The master key configured as ``key`` ($TENANT_PIPELINES_BACKUP_KEY's base64 text), else
    in ``key_file`` (named by $TENANT_PIPELINES_BACKUP_KEY_FILE), else None. A key file that is
    missing, a directory, binary or unreadable is a one-line BackupKeyMissing."""
    if key:
        return decode_key(key, f"${BACKUP_KEY_ENV}")
    if key_file is None:
        return None
    if key_file.is_file():
        return read_key_file(key_file)
    if key_file.exists():
        raise BackupKeyMissing(f"${BACKUP_KEY_FILE_ENV} names {key_file}, which is "
                               f"{'a directory' if key_file.is_dir() else 'not a regular file'}; "
                               "point it at a file holding the base64 key, or unset it")
    raise BackupKeyMissing(f"${BACKUP_KEY_FILE_ENV} names {key_file}, which does not exist; create it or unset it")


def key_fingerprint(key: bytes) -> str:
    """Names the key a backup needs without revealing it."""
    return hmac.new(key, b"tenant-pipelines backup key id", hashlib.sha256).hexdigest()[:16]


MANIFEST_MAC_LABEL = b"tenant-pipelines manifest mac v1"


def manifest_mac_key(master_key: bytes) -> bytes:
    """The key that authenticates manifests: HMAC-SHA256 of a fixed label under the backup key
    (an HKDF-style derivation), so the backup key itself never keys anything but its own KMS
    wrapping, and the MAC key differs from the content-hash key and from the fingerprint's."""
    return hmac.new(master_key, MANIFEST_MAC_LABEL, hashlib.sha256).digest()


def missing_key_message(tenant: uuid.UUID) -> str:
    """Why a backup that must be encrypted is not taken, and how to configure a key."""
    return (
        f"tenant {tenant}: its backups must be encrypted (tenant_backup_config.encryption_enabled) "
        f"but no backup key is configured; set ${BACKUP_KEY_ENV} to a base64 32-byte key, or "
        f"${BACKUP_KEY_FILE_ENV} to a file holding one"
    )
