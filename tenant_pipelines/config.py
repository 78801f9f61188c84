"""Where things are: the project folder, the database DSN, Dagster's home."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = PROJECT_DIR / ".tenant-pipelines"
DATABASE_URL_ENV = "BILLING_DATABASE_URL"


def database_url_from_env() -> str | None:
    """The admin DSN of a user's own server, or None to use the embedded cluster."""
    value = os.environ.get(DATABASE_URL_ENV, "").strip()
    return value or None


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or PROJECT_DIR / "dagster_home").resolve()
