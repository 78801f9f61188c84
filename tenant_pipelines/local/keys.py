"""The backup master key as the CLI and the code location resolve it, with the development key
file that the embedded cluster gets so that the demo's backups work.

The order: ``$TENANT_PIPELINES_BACKUP_KEY``, else the file named by
``$TENANT_PIPELINES_BACKUP_KEY_FILE`` (both read in ``settings``, decoded by
``core.backups.keys.master_key_from``), else ``backup.key`` in the state folder when it exists;
with the embedded cluster, that file is generated (mode 0600) when it is missing.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from tenant_pipelines.core.backups.keys import master_key_from, read_key_file
from tenant_pipelines.errors import TenantPipelinesError
from tenant_pipelines.settings import (
    backup_key_file_from_env,
    backup_key_from_env,
    database_url_from_env,
    state_dir,
)


def dev_key_file() -> Path:
    """The development key file: ``backup.key`` in the state folder."""
    return state_dir() / "backup.key"


def using_embedded_cluster() -> bool:
    """Whether the billing database is the embedded cluster (the single node, or the Citus
    coordinator of ``db up --citus``): BILLING_DATABASE_URL unset, or set to the embedded
    cluster's own DSN (as `tenant-pipelines dev` does for the Dagster UI)."""
    url = database_url_from_env()
    if url is None:
        return True
    from tenant_pipelines.local.target import embedded_dsn

    try:
        return url == embedded_dsn()
    except TenantPipelinesError:
        return False


def load_master_key(*, generate_dev_key: bool | None = None) -> bytes | None:
    """The master key that wraps the backups' data keys, from configuration:
    ``$TENANT_PIPELINES_BACKUP_KEY`` (base64 of 32 bytes), else the file named by
    ``$TENANT_PIPELINES_BACKUP_KEY_FILE``, else the development key file (``dev_key_file``)
    when it exists.

    With the embedded cluster (see ``using_embedded_cluster``) and ``generate_dev_key`` left at
    None, a missing development key file is generated (mode 0600) so that the demo works;
    ``generate_dev_key=False`` never generates one. Returns None when no key is configured."""
    key, key_file = backup_key_from_env(), backup_key_file_from_env()
    if key or key_file is not None:
        return master_key_from(key, key_file)
    path = dev_key_file()
    if path.is_file():
        return read_key_file(path)
    if generate_dev_key is None:
        generate_dev_key = using_embedded_cluster()
    if not generate_dev_key:
        return None
    return _create_dev_key(path)


def _create_dev_key(path: Path) -> bytes:
    """A new random key in ``path`` (mode 0600), or the one another process wrote there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return read_key_file(path)
