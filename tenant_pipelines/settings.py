"""Where things are: the project folder, the database DSN, Dagster's home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tenant_pipelines.errors import InvalidInput

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "BILLING_DATABASE_URL"
STATE_DIR_ENV = "TENANT_PIPELINES_HOME"
# billing_app's DSN through PgBouncer (`tenant-pipelines pgbouncer up` prints it): when set,
# tenant_session work in the code location goes through the pooler; admin work never does.
APP_DATABASE_URL_ENV = "BILLING_APP_DATABASE_URL"
# The pgbouncer.ini in force, whose pool sizes the tier-limit drift check compares with
# tier_limits; unset: the project's own PgBouncer's config, when there is one.
PGBOUNCER_INI_ENV = "TENANT_PIPELINES_PGBOUNCER_INI"
# Backups (docs/backups.md): where they go, and the master key (base64 of 32 bytes) or a file
# holding it.
BACKUP_ROOT_ENV = "TENANT_PIPELINES_BACKUP_ROOT"
BACKUP_KEY_ENV = "TENANT_PIPELINES_BACKUP_KEY"
BACKUP_KEY_FILE_ENV = "TENANT_PIPELINES_BACKUP_KEY_FILE"
# Point-in-time restore (docs/pitr.md): whether the embedded cluster archives its WAL into
# pgBackRest (on unless "off"), and a user's own stanza: its pgbackrest.conf and name.
WAL_ARCHIVE_ENV = "TENANT_PIPELINES_WAL_ARCHIVE"
PGBACKREST_CONFIG_ENV = "TENANT_PIPELINES_PGBACKREST_CONFIG"
PGBACKREST_STANZA_ENV = "TENANT_PIPELINES_PGBACKREST_STANZA"


def state_dir() -> Path:
    """Where the embedded cluster's state (and, when reachable, its data) lives.
    Default: the git-ignored ``.tenant-pipelines`` folder of the project. Something there that
    is not a folder (a file, or a path through a file) is a one-line InvalidInput."""
    value = os.environ.get(STATE_DIR_ENV, "").strip()
    path = Path(value).resolve() if value else PROJECT_DIR / ".tenant-pipelines"
    problem = _not_a_folder(path)
    if problem:
        raise InvalidInput(f"state folder {path}{_named_by_env()}: {problem}; {_state_dir_fix()}")
    return path


def writable_state_dir(path: Path | None = None) -> Path:
    """The state folder (``path``, default ``state_dir()``), created if missing, once a file
    could be written in it; else a one-line InvalidInput that names it and the fix. Commands
    that write state call this before they change anything."""
    path = path or state_dir()
    return writable_folder(path, f"state folder {path}{_named_by_env(path)}", _state_dir_fix())


def writable_folder(path: Path, what: str, fix: str) -> Path:
    """``path`` as a folder we can write in: created (with its parents) if missing, and a probe
    file created and removed in it. Else InvalidInput ``<what>: <why>; <fix>``. Root ignores
    mode bits, so only the probe tells (a read-only mount, /proc, /sys)."""
    problem = _not_a_folder(path)
    if problem:
        raise InvalidInput(f"{what}: {problem}; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot create it ({exc.strerror or type(exc).__name__}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".tenant-pipelines-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot write in it ({exc.strerror or type(exc).__name__}); {fix}") from None
    return path


def _not_a_folder(path: Path) -> str | None:
    """Why ``path`` cannot be a folder (it, or a folder above it, is something else), or None."""
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return None
            if candidate.exists() or candidate.is_symlink():
                return "it is a file, not a folder" if candidate == path else f"{candidate} is a file, not a folder"
        except OSError as exc:
            return f"cannot look at it ({exc.strerror or type(exc).__name__})"
    return None


def _named_by_env(path: Path | None = None) -> str:
    value = os.environ.get(STATE_DIR_ENV, "").strip()
    if not value or (path is not None and Path(value).resolve() != path):
        return ""
    return f" (${STATE_DIR_ENV})"


def _state_dir_fix() -> str:
    if os.environ.get(STATE_DIR_ENV, "").strip():
        return f"point {STATE_DIR_ENV} at a folder you can write, or unset it"
    return f"make it a folder you can write, or set {STATE_DIR_ENV} to one"


def database_url_from_env() -> str | None:
    """The admin DSN of a user's own server, or None to use the embedded cluster."""
    value = os.environ.get(DATABASE_URL_ENV, "").strip()
    return value or None


def app_database_url_from_env() -> str | None:
    """billing_app's pooled DSN (PgBouncer), or None: tenant sessions then use the admin DSN."""
    value = os.environ.get(APP_DATABASE_URL_ENV, "").strip()
    return value or None


def pgbouncer_ini_from_env() -> Path | None:
    """The pgbouncer.ini named by $TENANT_PIPELINES_PGBOUNCER_INI, or None."""
    value = os.environ.get(PGBOUNCER_INI_ENV, "").strip()
    return Path(value).expanduser() if value else None


def default_backup_root() -> Path:
    """``$TENANT_PIPELINES_BACKUP_ROOT``, else ``backups`` in the state folder (``state_dir()``:
    ``$TENANT_PIPELINES_HOME``, else ``<project>/.tenant-pipelines``)."""
    value = os.environ.get(BACKUP_ROOT_ENV, "").strip()
    return Path(value).resolve() if value else state_dir() / "backups"


def backup_key_from_env() -> str | None:
    """The backup master key as configured (``$TENANT_PIPELINES_BACKUP_KEY``, base64 text), or None."""
    value = os.environ.get(BACKUP_KEY_ENV, "").strip()
    return value or None


def backup_key_file_from_env() -> Path | None:
    """The key file named by ``$TENANT_PIPELINES_BACKUP_KEY_FILE``, or None."""
    value = os.environ.get(BACKUP_KEY_FILE_ENV, "").strip()
    return Path(value) if value else None


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_DIR / "dagster_home").resolve()


def wal_archive_from_env() -> bool:
    """Whether the embedded cluster archives its WAL: ``$TENANT_PIPELINES_WAL_ARCHIVE`` is not
    ``off`` (or ``0``, ``false``, ``no``)."""
    return os.environ.get(WAL_ARCHIVE_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def pgbackrest_stanza_from_env() -> tuple[Path, str] | None:
    """A user's own pgBackRest stanza: (``$TENANT_PIPELINES_PGBACKREST_CONFIG``,
    ``$TENANT_PIPELINES_PGBACKREST_STANZA``), or None when neither is set. One without the
    other is a one-line InvalidInput."""
    config = os.environ.get(PGBACKREST_CONFIG_ENV, "").strip()
    stanza = os.environ.get(PGBACKREST_STANZA_ENV, "").strip()
    if not config and not stanza:
        return None
    if not config or not stanza:
        missing = PGBACKREST_CONFIG_ENV if not config else PGBACKREST_STANZA_ENV
        raise InvalidInput(f"${missing} is not set; set both {PGBACKREST_CONFIG_ENV} (your pgbackrest.conf) "
                           f"and {PGBACKREST_STANZA_ENV} (your stanza's name), or neither")
    return Path(config).expanduser(), stanza
