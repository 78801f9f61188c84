"""Retention: a tenant's backups older than its retention_days go, never its newest backup nor
its newest verified one; temporary folders of backups that will never finish go too."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tenant_pipelines.core.backups.catalog import list_backups
from tenant_pipelines.core.backups.layout import TMP_PREFIX, tenant_folder, tmp_name
from tenant_pipelines.db.session import parse_tenant_id


@dataclass
class RetentionReport:
    kept: list[Path]
    removed: list[Path]


def remove_stale_temporaries(folder: Path, *, older_than: timedelta = timedelta(hours=24)) -> list[Path]:
    """Temporary folders of backups that will never finish: their process (on this host) is
    gone, or they are older than ``older_than``."""
    removed = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for path in folder.iterdir():
        if not path.name.startswith(TMP_PREFIX):
            continue
        owner = path.name.rsplit(".tmp-", 1)[-1]
        owner_host, _, pid = owner.rpartition("-")
        try:  # lstat: a link (dangling, or to anywhere) is judged by itself, and never followed
            info = path.lstat()
        except FileNotFoundError:  # removed meanwhile (another run finished or cleaned it)
            continue
        stale = time.time() - info.st_mtime > older_than.total_seconds()
        if owner_host == host and pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale = True
            except PermissionError:
                pass
        if stale:
            if path.is_symlink() or not path.is_dir():
                path.unlink(missing_ok=True)  # not a folder a backup made: the entry only, not what it points at
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def apply_retention(root: Path, tenant_id: object, retention_days: int, *, now: datetime | None = None) -> RetentionReport:
    """Remove the tenant's backups older than ``retention_days``, but never its newest verified
    backup, nor its newest backup: a tenant always keeps a copy."""
    now = now or datetime.now(timezone.utc)
    backups = list_backups(root, tenant_id)
    protected = set()
    if backups:
        protected.add(backups[-1].path)
    verified = [b for b in backups if b.verified]
    if verified:
        protected.add(verified[-1].path)
    cutoff = now - timedelta(days=retention_days)
    kept, removed = [], []
    for b in backups:
        if b.taken_at < cutoff and b.path not in protected:
            # Rename first, so that a crash halfway through never leaves a damaged backup that looks complete.
            doomed = b.path.with_name(f"{tmp_name(b.backup_id)}-expired")  # the folder's id (list_backups)
            os.rename(b.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(b.path)
        else:
            kept.append(b.path)
    remove_stale_temporaries(tenant_folder(root, parse_tenant_id(tenant_id)))
    return RetentionReport(kept, removed)
