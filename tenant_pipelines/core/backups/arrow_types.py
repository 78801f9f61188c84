"""PostgreSQL types to Arrow and back, exactly: NUMERIC(p,s) as decimal128(p,s) (never a float),
timestamptz as timestamp[us, UTC], uuid as the ``arrow.uuid`` extension type, jsonb as the
``arrow.json`` extension type holding PostgreSQL's own text, interval as a struct of (months,
days, nanoseconds), since Parquet has no such interval."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from tenant_pipelines.errors import TenantPipelinesError

# How an interval is stored: Parquet cannot hold Arrow's month_day_nano_interval.
INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())])


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str  # format_type(): numeric(20,6), uuid, timestamp with time zone, ...
    precision: int | None = None
    scale: int | None = None
    generated: bool = False
    not_null: bool = False


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> list[Column]:
    """The table's live columns in order, with NUMERIC precision and scale."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid = 'numeric'::regtype,
               a.atttypmod, a.attgenerated <> '', a.attnotnull
          FROM pg_attribute a
         WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum
        """,
        (schema, table),
    ).fetchall()
    columns = []
    for name, pg_type, is_numeric, typmod, generated, not_null in rows:
        precision = scale = None
        if is_numeric and typmod >= 4:
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        columns.append(Column(name, pg_type, precision, scale, generated, not_null))
    return columns


def arrow_type_for(column: Column, fetched: pa.DataType) -> pa.DataType:
    if column.precision is not None and column.precision <= 38:
        return pa.decimal128(column.precision, column.scale)
    if fetched == pa.month_day_nano_interval():
        return INTERVAL_STRUCT
    if isinstance(fetched, pa.OpaqueType):
        return pa.string()  # an unconstrained NUMERIC or an unknown type: its exact text
    return fetched


def target_schema(columns: list[Column], fetched: pa.Schema) -> pa.Schema:
    """What the backup stores for a table: the fetched schema with exact decimals."""
    fields = []
    for column, f in zip(columns, fetched):
        metadata = dict(f.metadata or {})
        metadata[b"tenant_pipelines:pg_type"] = column.pg_type.encode()
        fields.append(pa.field(f.name, arrow_type_for(column, f.type), nullable=not column.not_null,
                               metadata=metadata))
    return pa.schema(fields)


def normalize_batch(batch: pa.RecordBatch, schema: pa.Schema, what: str) -> pa.RecordBatch:
    """Cast one fetched batch to the backup's schema. A value that does not fit exactly (a NaN,
    a lost digit) fails the backup: nothing is ever rounded."""
    arrays = []
    for array, f in zip(batch.columns, schema):
        if array.type == f.type:
            arrays.append(array)
            continue
        if isinstance(array.type, pa.OpaqueType):
            array = array.storage
        if f.type == INTERVAL_STRUCT:
            values = [None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
                      for v in array.to_pylist()]
            arrays.append(pa.array(values, INTERVAL_STRUCT))
            continue
        try:
            arrays.append(pc.cast(array, f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TenantPipelinesError(
                f"{what}: column {f.name} has a value that {f.type} cannot hold exactly "
                f"({str(exc).splitlines()[0]}); fix the value or the column type, then re-run"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def denormalize_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The other way, for loading: interval structs back to Arrow intervals."""
    if not any(f.type == INTERVAL_STRUCT for f in batch.schema):
        return batch
    arrays, fields = [], []
    for array, f in zip(batch.columns, batch.schema):
        if f.type == INTERVAL_STRUCT:
            values = [None if v is None else pa.MonthDayNano([v["months"], v["days"], v["nanoseconds"]])
                      for v in array.to_pylist()]
            array = pa.array(values, pa.month_day_nano_interval())
            f = pa.field(f.name, array.type, f.nullable, f.metadata)
        arrays.append(array)
        fields.append(f)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def loading_schema(stored: pa.Schema, names: list[str]) -> pa.Schema:
    """The schema a restore loads with: the stored columns ``names``, intervals as Arrow
    intervals again (``denormalize_batch``), without field metadata."""
    fields = []
    for name in names:
        f = stored.field(name)
        if f.type == INTERVAL_STRUCT:
            f = pa.field(name, pa.month_day_nano_interval(), f.nullable)
        fields.append(pa.field(name, f.type, f.nullable))
    return pa.schema(fields)
