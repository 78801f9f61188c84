"""``tenant_session``: one transaction in one tenant's context, with its tier limits.

The context (``app.current_tenant``) and the tier limits (``work_mem``,
``statement_timeout``) are set transaction-locally: when the transaction ends, by commit,
rollback or error, the connection carries none of them, so a pooled connection cannot leak
them into another tenant's transaction.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql

from tenant_pipelines.errors import InvalidInput, TenantPipelinesError, UnknownTenant
from tenant_pipelines.db.names import APP_ROLE



def parse_tenant_id(value: object) -> uuid.UUID:
    """A tenant id as a UUID, or a one-line error that shows the value and the fix."""
    if isinstance(value, uuid.UUID):
        return value
    text = str(value).strip() if value is not None else ""
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InvalidInput(
            f"tenant {shown!r}: not a valid UUID; pass an organization id such as "
            "'3f2b1c9e-8d4a-4f6b-9c1e-2a7d5e8f0b13'"
        ) from None
    # Only the canonical hyphenated form: no braces, urn: prefixes or bare hex.
    if str(parsed) != text.lower():
        raise InvalidInput(f"tenant {text!r}: write the UUID in its canonical form, {str(parsed)!r}")
    return parsed


@contextmanager
def tenant_session(
    conn: psycopg.Connection, tenant_id: object, *, role: str | None = APP_ROLE
) -> Iterator[psycopg.Connection]:
    """Run one transaction on ``conn`` as ``role`` (default billing_app), in ``tenant_id``'s
    context, with its tier's limits. Yields the connection; commits on success.

    ``role`` is taken with ``SET LOCAL ROLE`` when the connection logged in as someone else
    (an admin connection), so RLS applies exactly as it does to applications. Pass
    ``role=None`` to keep the login role.
    """
    tenant = parse_tenant_id(tenant_id)
    try:
        with conn.transaction():
            if role is not None:
                current = conn.execute("SELECT current_user").fetchone()[0]
                if current != role:
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            conn.execute("SELECT fn_set_tenant_resources(fn_set_tenant_context(%s))", (tenant,))
            yield conn
    except psycopg.errors.NoDataFound as exc:
        if "unknown tenant" in (exc.diag.message_primary or ""):
            raise UnknownTenant(
                f"tenant {tenant}: unknown tenant; onboard the organization first or check the id"
            ) from None
        raise
    except psycopg.errors.UndefinedFunction as exc:
        raise TenantPipelinesError(
            f"tenant {tenant}: the database has no tenant context functions; run 'tenant-pipelines db migrate'"
        ) from None
