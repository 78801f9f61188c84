"""Per-tenant backups as Parquet: one consistent snapshot, checksums, encryption, retention,
restore and the restore drill (docs/backups.md).

The modules, each one concern:

- ``layout``: the tables a backup holds, its folders and file names, the format version;
- ``keys``: the master key from the values the caller read, its fingerprint, the keys derived
  from it (the CLI and the Dagster resource resolve it: ``tenant_pipelines.local.keys``);
- ``encryption``: Parquet modular encryption with that key;
- ``arrow_types``: PostgreSQL types to exact Arrow types and back;
- ``hashing``: content hashes of the values, files' sha256;
- ``streaming``: a table's rows as Arrow batches over ADBC;
- ``manifest``: the manifest, written and read back with its shape checked;
- ``verify``: files against their sha256, the manifest's authenticity, the drill's record;
- ``writer``: ``backup_tenant``;
- ``catalog``: the backups on disk, the one as of a time, a table as a dataset, who is due;
- ``retention``: which backups go;
- ``restore``: ``restore_tenant``;
- ``drill``: ``restore_drill``.

Callers import from ``tenant_pipelines.core.backups``; what they use is re-exported here.
Nothing here reads the environment: settings and keys are passed in.
"""

from tenant_pipelines.core.backups.catalog import (
    BackupInfo,
    backup_as_of,
    backup_dataset,
    backup_frequencies,
    list_backups,
    tenants_due,
)
from tenant_pipelines.core.backups.drill import DrillReport, content_hashes, restore_drill
from tenant_pipelines.core.backups.encryption import LocalKmsClient, decryption_properties, encryption_properties
from tenant_pipelines.core.backups.keys import key_fingerprint, master_key_from
from tenant_pipelines.core.backups.layout import (
    DATASET_IGNORE_PREFIXES,
    FORMAT_VERSION,
    MANIFEST,
    TABLES,
    VERIFIED,
    tenant_folder,
)
from tenant_pipelines.core.backups.manifest import load_manifest
from tenant_pipelines.core.backups.restore import RestoreReport, check_target_dsn, restore_tenant
from tenant_pipelines.core.backups.retention import RetentionReport, apply_retention
from tenant_pipelines.core.backups.verify import (
    AUTH_DRILL,
    AUTH_MAC,
    UNVERIFIED,
    authenticate_backup,
    verify_backup,
)
from tenant_pipelines.core.backups.writer import BackupReport, backup_tenant

__all__ = [
    "AUTH_DRILL",
    "AUTH_MAC",
    "DATASET_IGNORE_PREFIXES",
    "FORMAT_VERSION",
    "MANIFEST",
    "TABLES",
    "UNVERIFIED",
    "VERIFIED",
    "BackupInfo",
    "BackupReport",
    "DrillReport",
    "LocalKmsClient",
    "RestoreReport",
    "RetentionReport",
    "apply_retention",
    "authenticate_backup",
    "backup_as_of",
    "backup_dataset",
    "backup_frequencies",
    "backup_tenant",
    "check_target_dsn",
    "content_hashes",
    "decryption_properties",
    "encryption_properties",
    "key_fingerprint",
    "list_backups",
    "load_manifest",
    "master_key_from",
    "restore_drill",
    "restore_tenant",
    "tenant_folder",
    "tenants_due",
    "verify_backup",
]
