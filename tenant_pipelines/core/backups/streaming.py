"""Streaming a table out of PostgreSQL as Arrow record batches: ADBC's binary COPY, in batches
of about ``BATCH_BYTES_HINT``, NUMERIC fetched as the server's text (cast exactly by
``arrow_types.normalize_batch``)."""

from __future__ import annotations

import uuid

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines.core.backups.arrow_types import Column
from tenant_pipelines.errors import TenantPipelinesError

BATCH_BYTES_HINT = 16 * 1024 * 1024  # what ADBC puts in one record batch


def adbc_dsn(conn: psycopg.Connection) -> str:
    """A libpq connection string for another session as the same user on the same database."""
    return make_conninfo(conn.info.dsn, password=conn.info.password or None)


def adbc_connect(conn: psycopg.Connection, *, autocommit: bool):
    import adbc_driver_postgresql.dbapi as adbc

    try:
        return adbc.connect(adbc_dsn(conn), autocommit=autocommit)
    except Exception as exc:  # adbc raises its own DB-API errors
        raise TenantPipelinesError(f"cannot open an ADBC connection to the billing database: "
                                   f"{str(exc).splitlines()[0]}") from None


def _select_item(column: Column) -> sql.Composable:
    # NUMERIC as PostgreSQL's own text: the server's numeric_out costs what numeric_send does, and
    # Arrow parses the text into decimal128 far faster than the driver turns binary NUMERIC into
    # text itself (measured: a third of the client's CPU). The cast to decimal128 is exact or fails.
    if column.precision is not None:
        return sql.SQL("{}::text AS {}").format(sql.Identifier(column.name), sql.Identifier(column.name))
    return sql.Identifier(column.name)


def stream_table(cursor, conn: psycopg.Connection, schema: str, table: str, key_column: str | None,
                 tenant: uuid.UUID | None, columns: list[Column]) -> pa.RecordBatchReader:
    """A reader over one table's rows of ``tenant`` (all rows when ``tenant`` is None), through the
    ADBC cursor. The tenant is a literal, so the planner prunes usage_events_mt's partitions at
    plan time."""
    query = sql.SQL("SELECT {} FROM {}.{}").format(
        sql.SQL(", ").join(_select_item(c) for c in columns), sql.Identifier(schema), sql.Identifier(table)
    )
    if tenant is not None:
        query = sql.SQL("{} WHERE {} = {}::uuid").format(query, sql.Identifier(key_column), sql.Literal(str(tenant)))
    cursor.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES_HINT)})
    cursor.execute(query.as_string(conn))
    return cursor.fetch_record_batch()
