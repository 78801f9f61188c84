"""Where things are: the project folder, the database DSN, Dagster's home."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATABASE_URL_ENV = "BILLING_DATABASE_URL"
STATE_DIR_ENV = "TENANT_PIPELINES_HOME"
# billing_app's DSN through PgBouncer (`tenant-pipelines pgbouncer up` prints it): when set,
# tenant_session work in the code location goes through the pooler; admin work never does.
APP_DATABASE_URL_ENV = "BILLING_APP_DATABASE_URL"
# The pgbouncer.ini in force, whose pool sizes the tier-limit drift check compares with
# tier_limits; unset: the project's own PgBouncer's config, when there is one.
PGBOUNCER_INI_ENV = "TENANT_PIPELINES_PGBOUNCER_INI"


def state_dir() -> Path:
    """Where the embedded cluster's state (and, when reachable, its data) lives.
    Default: the git-ignored ``.tenant-pipelines`` folder of the project."""
    value = os.environ.get(STATE_DIR_ENV, "").strip()
    return Path(value).resolve() if value else PROJECT_DIR / ".tenant-pipelines"


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


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_DIR / "dagster_home").resolve()
