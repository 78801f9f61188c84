"""Opening connections with errors a user can act on."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.errors import DatabaseUnreachable

CONNECT_TIMEOUT_S = 5


def describe(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, without its password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection:
    """Connect, turning every connection failure into one line that names the host and port."""
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnreachable(f"invalid database URL: {str(exc).splitlines()[0]}") from None
    except psycopg.OperationalError as exc:
        reason = next((l.strip() for l in str(exc).splitlines() if l.strip()), "unknown error")
        # libpq prefixes with 'connection to server at ... failed:'; keep the cause only
        reason = reason.split("failed:", 1)[-1].strip()
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {describe(dsn)}: {reason}") from None
