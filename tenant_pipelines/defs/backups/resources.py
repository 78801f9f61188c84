"""Where backups go and the key that encrypts them."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from tenant_pipelines.local.keys import load_master_key
from tenant_pipelines.settings import default_backup_root


class BackupStorage(dg.ConfigurableResource):
    """The backup root folder and the master key.

    ``root`` left empty is ``$TENANT_PIPELINES_BACKUP_ROOT``, else ``backups`` in the state
    folder (``settings.default_backup_root``). The key is never configuration that Dagster shows:
    it comes from ``$TENANT_PIPELINES_BACKUP_KEY`` (base64 of 32 bytes), or the file named by
    ``$TENANT_PIPELINES_BACKUP_KEY_FILE``, or ``.tenant-pipelines/backup.key``, which is
    generated for the embedded cluster when ``dev_key`` is on and ``BILLING_DATABASE_URL`` is unset
    (``tenant_pipelines.local.keys``, which core never imports: the key goes to core as bytes).
    """

    root: str = Field(default="", description="Backup root folder; empty means $TENANT_PIPELINES_BACKUP_ROOT or .tenant-pipelines/backups")
    dev_key: bool = Field(default=True, description="With the embedded cluster, generate .tenant-pipelines/backup.key when no key is configured")

    def resolved_root(self) -> Path:
        return Path(self.root).resolve() if self.root else default_backup_root()

    def master_key(self) -> bytes | None:
        return load_master_key(generate_dev_key=None if self.dev_key else False)
