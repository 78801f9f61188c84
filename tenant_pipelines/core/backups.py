"""Per-tenant backups as Parquet: one consistent snapshot, checksums, encryption, retention.

Layout under the backup root (Hive-style; a reader globs one table or skips manifest.json and
verified.json, see ``backup_dataset`` and docs/backups.md)::

    tenant=<uuid>/backup=<id>/manifest.json
    tenant=<uuid>/backup=<id>/table=<name>/part-00000.parquet
    tenant=<uuid>/backup=<id>/verified.json        written by a successful restore drill

A backup is written into ``tenant=<uuid>/.backup=<id>.tmp-<host>-<pid>`` (hidden from Hive
readers by its leading dot), every file and folder is fsynced, ``manifest.json`` is written
last, and the folder is renamed to ``backup=<id>``. Only a folder named ``backup=<id>`` that
holds a ``manifest.json`` is a backup; a crash at any point leaves at most a temporary folder,
which the next backup or retention run of that tenant removes.

The data path: one REPEATABLE READ READ ONLY transaction on the admin connection exports its
snapshot (``pg_export_snapshot``); an ADBC connection joins it (``SET TRANSACTION SNAPSHOT``)
and streams each table with binary COPY into Arrow record batches, which go to
``pyarrow.parquet.ParquetWriter`` batch by batch, so memory does not grow with the tenant.
Types are exact: NUMERIC(p,s) becomes decimal128(p,s) (never a float), timestamptz
timestamp[us, UTC], uuid the ``arrow.uuid`` extension type, jsonb the ``arrow.json`` extension
type holding PostgreSQL's own text, interval a struct of (months, days, nanoseconds).
Nothing here uses pandas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import re
import secrets
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import adbc_driver_manager
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tenant_pipelines import __version__
from tenant_pipelines.settings import PROJECT_DIR, database_url_from_env, state_dir
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import BackupInvalid, BackupKeyMissing, InvalidInput, TenantPipelinesError

BACKUP_ROOT_ENV = "TENANT_PIPELINES_BACKUP_ROOT"
BACKUP_KEY_ENV = "TENANT_PIPELINES_BACKUP_KEY"
BACKUP_KEY_FILE_ENV = "TENANT_PIPELINES_BACKUP_KEY_FILE"
MANIFEST = "manifest.json"
VERIFIED = "verified.json"
FORMAT = "tenant-pipelines-backup"
FORMAT_VERSION = 1
MASTER_KEY_ID = "tenant-pipelines-backup-master"

# The tenant's tables, in the order a restore loads them (parents before children), with the
# column that names the tenant. A restore deletes in the reverse order.
TABLES: tuple[tuple[str, str], ...] = (
    ("organizations", "id"),
    ("tenant_classifications", "organization_id"),
    ("tenant_backup_config", "organization_id"),
    ("subscriptions", "organization_id"),
    ("invoices", "organization_id"),
    ("payment_methods", "organization_id"),
    ("usage_events_mt", "organization_id"),
)
TABLE_KEYS = dict(TABLES)

ROWS_PER_FILE = 20_000_000  # a table past this many rows gets another part file
BATCH_BYTES_HINT = 16 * 1024 * 1024  # what ADBC puts in one record batch
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}\d{6}Z-[0-9a-f]{6}$")
_TMP_PREFIX = ".backup="
_INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()), ("nanoseconds", pa.int64())])


# -- configuration ----------------------------------------------------------------------------


def default_backup_root() -> Path:
    """``$TENANT_PIPELINES_BACKUP_ROOT``, else ``<project>/.tenant-pipelines/backups``."""
    value = os.environ.get(BACKUP_ROOT_ENV, "").strip()
    return Path(value).resolve() if value else PROJECT_DIR / ".tenant-pipelines" / "backups"


def dev_key_file() -> Path:
    return state_dir() / "backup.key"


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (ValueError, TypeError):
        key = b""
    if len(key) != 32:
        raise BackupKeyMissing(
            f"the backup key in {where} is not 32 bytes in base64; make one with "
            "'python -c \"import base64,os; print(base64.b64encode(os.urandom(32)).decode())\"'"
        )
    return key


def load_master_key(*, generate_dev_key: bool | None = None) -> bytes | None:
    """The master key that wraps the backups' data keys, from configuration:
    ``$TENANT_PIPELINES_BACKUP_KEY`` (base64 of 32 bytes), else the file named by
    ``$TENANT_PIPELINES_BACKUP_KEY_FILE``, else ``.tenant-pipelines/backup.key`` when it exists.

    With the embedded cluster (see ``using_embedded_cluster``) and ``generate_dev_key`` left at
    None, a missing key file is generated (mode 0600) so that the demo works. Returns None when
    no key is configured."""
    value = os.environ.get(BACKUP_KEY_ENV, "").strip()
    if value:
        return _decode_key(value, f"${BACKUP_KEY_ENV}")
    named = os.environ.get(BACKUP_KEY_FILE_ENV, "").strip()
    path = Path(named) if named else dev_key_file()
    if path.is_file():
        return _read_key_file(path)
    if named:
        if path.exists():
            raise BackupKeyMissing(f"${BACKUP_KEY_FILE_ENV} names {path}, which is "
                                   f"{'a directory' if path.is_dir() else 'not a regular file'}; "
                                   "point it at a file holding the base64 key, or unset it")
        raise BackupKeyMissing(f"${BACKUP_KEY_FILE_ENV} names {path}, which does not exist; create it or unset it")
    if generate_dev_key is None:
        generate_dev_key = using_embedded_cluster()
    if not generate_dev_key:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    """The key in a key file: base64 text. A binary or unreadable file is a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupKeyMissing(f"the backup key file {path} cannot be read ({exc.strerror or exc.__class__.__name__}); "
                               "fix its permissions or point at another file") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BackupKeyMissing(
            f"the backup key file {path} is not base64 text (it holds binary data); write the key as base64, e.g. "
            "'python -c \"import base64,os; print(base64.b64encode(os.urandom(32)).decode())\"'") from None
    return _decode_key(text, str(path))


def using_embedded_cluster() -> bool:
    """Whether the billing database is the embedded cluster: BILLING_DATABASE_URL unset, or set
    to the embedded cluster's own DSN (as `tenant-pipelines dev` does for the Dagster UI)."""
    url = database_url_from_env()
    if url is None:
        return True
    from tenant_pipelines.db.target import embedded_cluster

    try:
        return url == embedded_cluster().dsn("billing")
    except TenantPipelinesError:
        return False


def key_fingerprint(key: bytes) -> str:
    """Names the key a backup needs without revealing it."""
    return hmac.new(key, b"tenant-pipelines backup key id", hashlib.sha256).hexdigest()[:16]


MANIFEST_MAC_LABEL = b"tenant-pipelines manifest mac v1"


def manifest_mac_key(master_key: bytes) -> bytes:
    """The key that authenticates manifests: HMAC-SHA256 of a fixed label under the backup key
    (an HKDF-style derivation), so the backup key itself never keys anything but its own KMS
    wrapping, and the MAC key differs from the content-hash key and from the fingerprint's."""
    return hmac.new(master_key, MANIFEST_MAC_LABEL, hashlib.sha256).digest()


def _canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def manifest_mac(manifest: dict, master_key: bytes) -> str:
    """HMAC-SHA256 (under ``manifest_mac_key``) of the manifest as canonical JSON (sorted keys,
    no whitespace, ASCII), without ``authentication.mac`` itself."""
    document = dict(manifest)
    auth = document.get("authentication")
    if isinstance(auth, dict):
        document["authentication"] = {k: v for k, v in auth.items() if k != "mac"}
    return hmac.new(manifest_mac_key(master_key), _canonical(document), hashlib.sha256).hexdigest()


def _missing_key_message(tenant: uuid.UUID) -> str:
    return (
        f"tenant {tenant}: its backups must be encrypted (tenant_backup_config.encryption_enabled) "
        f"but no backup key is configured; set ${BACKUP_KEY_ENV} to a base64 32-byte key, or "
        f"${BACKUP_KEY_FILE_ENV} to a file holding one"
    )


# -- encryption: Parquet modular encryption with a key of our own -----------------------------


class LocalKmsClient(pe.KmsClient):
    """A KMS client that wraps the data keys Parquet generates with our master key (AES-256-GCM,
    the key id as associated data). The wrapped keys live in each file's footer; the master
    key never does."""

    def __init__(self, master_key: bytes) -> None:
        super().__init__()
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(master_key)

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, key_bytes, master_key_identifier.encode())
        return base64.b64encode(nonce + sealed).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        return self._aead.decrypt(raw[:12], raw[12:], master_key_identifier.encode())


def _crypto_factory(master_key: bytes) -> pe.CryptoFactory:
    return pe.CryptoFactory(lambda _config: LocalKmsClient(master_key))


def encryption_properties(master_key: bytes) -> pe.FileEncryptionProperties:
    config = pe.EncryptionConfiguration(
        footer_key=MASTER_KEY_ID, uniform_encryption=True, encryption_algorithm="AES_GCM_V1",
        double_wrapping=True, data_key_length_bits=256, plaintext_footer=False,
    )
    return _crypto_factory(master_key).file_encryption_properties(pe.KmsConnectionConfig(), config)


def decryption_properties(master_key: bytes) -> pe.FileDecryptionProperties:
    """For ``pq.ParquetFile(path, decryption_properties=...)`` and ``pq.read_table``."""
    return _crypto_factory(master_key).file_decryption_properties(pe.KmsConnectionConfig())


# -- Arrow: exact types ----------------------------------------------------------------------


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


def _arrow_type_for(column: Column, fetched: pa.DataType) -> pa.DataType:
    if column.precision is not None and column.precision <= 38:
        return pa.decimal128(column.precision, column.scale)
    if fetched == pa.month_day_nano_interval():
        return _INTERVAL_STRUCT
    if isinstance(fetched, pa.OpaqueType):
        return pa.string()  # an unconstrained NUMERIC or an unknown type: its exact text
    return fetched


def target_schema(columns: list[Column], fetched: pa.Schema) -> pa.Schema:
    """What the backup stores for a table: the fetched schema with exact decimals."""
    fields = []
    for column, f in zip(columns, fetched):
        metadata = dict(f.metadata or {})
        metadata[b"tenant_pipelines:pg_type"] = column.pg_type.encode()
        fields.append(pa.field(f.name, _arrow_type_for(column, f.type), nullable=not column.not_null,
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
        if f.type == _INTERVAL_STRUCT:
            values = [None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
                      for v in array.to_pylist()]
            arrays.append(pa.array(values, _INTERVAL_STRUCT))
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
    if not any(f.type == _INTERVAL_STRUCT for f in batch.schema):
        return batch
    arrays, fields = [], []
    for array, f in zip(batch.columns, batch.schema):
        if f.type == _INTERVAL_STRUCT:
            values = [None if v is None else pa.MonthDayNano([v["months"], v["days"], v["nanoseconds"]])
                      for v in array.to_pylist()]
            array = pa.array(values, pa.month_day_nano_interval())
            f = pa.field(f.name, array.type, f.nullable, f.metadata)
        arrays.append(array)
        fields.append(f)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


class ContentHasher:
    """A digest of a table's values that does not depend on how the rows were cut into batches
    or files, nor on the Parquet encoding: per column, one hash over the null flags, one over
    the fixed-width values (or the string lengths) and one over the string bytes. Keyed with
    HMAC when the backup is encrypted, so that the cleartext manifest gives no way to confirm a
    guess of the data."""

    def __init__(self, schema: pa.Schema, key: bytes | None) -> None:
        self._names = schema.names
        self._key = hmac.new(key, b"tenant-pipelines content hash", hashlib.sha256).digest() if key else None
        self._streams = [[self._new() for _ in range(3)] for _ in schema]

    def _new(self):
        return hmac.new(self._key, digestmod=hashlib.sha256) if self._key else hashlib.sha256()

    def update(self, batch: pa.RecordBatch) -> None:
        for streams, array in zip(self._streams, batch.columns):
            _hash_array(array, streams)

    def hexdigest(self) -> str:
        outer = self._new()
        for name, streams in zip(self._names, self._streams):
            outer.update(name.encode() + b"\0" + b"".join(s.digest() for s in streams))
        return outer.hexdigest()


def _hash_array(array: pa.Array, streams: list) -> None:
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    n = len(array)
    if n == 0:
        return
    if array.null_count:
        streams[0].update(np.asarray(pc.is_null(array).to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        array = _fill_nulls(array)
    else:
        streams[0].update(b"\0" * n)
    t = array.type
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            _hash_array(array.field(i), streams)
        return
    if pa.types.is_boolean(t):
        streams[1].update(np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        return
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        width = np.int64 if (pa.types.is_large_string(t) or pa.types.is_large_binary(t)) else np.int32
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset: array.offset + n + 1]
        streams[1].update(np.diff(offsets).astype(np.int64).tobytes())
        data = array.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            streams[2].update(memoryview(data)[int(offsets[0]): int(offsets[-1])])
        return
    width = t.byte_width if pa.types.is_fixed_size_binary(t) else t.bit_width // 8
    data = memoryview(array.buffers()[1])
    streams[1].update(data[array.offset * width: (array.offset + n) * width])


def _fill_nulls(array: pa.Array) -> pa.Array:
    t = array.type
    if pa.types.is_struct(t):
        return array  # children are hashed with their own null flags
    if pa.types.is_fixed_size_binary(t):
        zero = pa.scalar(b"\0" * t.byte_width, t)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        zero = pa.scalar("", t)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        zero = pa.scalar(b"", t)
    elif pa.types.is_boolean(t):
        zero = pa.scalar(False)
    elif pa.types.is_decimal(t):
        zero = pa.scalar(0, pa.int64()).cast(t)
    elif pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        zero = pa.scalar(0, pa.int64()).cast(t)
    else:
        zero = pa.scalar(0, t)
    return pc.fill_null(array, zero)


# -- the snapshot ------------------------------------------------------------------------------


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


# -- writing ---------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TableExport:
    name: str
    rows: int = 0
    files: list[dict] = field(default_factory=list)
    schema: pa.Schema | None = None
    columns: list[Column] = field(default_factory=list)
    content_hash: str = ""
    seconds: float = 0.0


def dictionary_columns(columns: list[Column], key_column: str) -> list[str]:
    """Dictionary encoding only where values repeat: the tenant column and short texts (plan,
    status, metric name...). Ids, amounts, times and JSON are all different: trying a
    dictionary on them cost two thirds of the Parquet writer's time, for larger files."""
    short_text = ("text", "character varying", "character(")
    return [c.name for c in columns
            if c.name == key_column or (c.pg_type.startswith(short_text) and c.pg_type != "text[]")]


class _TableWriter:
    """Parquet part files of one table, a new part every ``rows_per_file`` rows."""

    def __init__(self, folder: Path, schema: pa.Schema, master_key: bytes | None, rows_per_file: int,
                 dictionary_columns: list[str]) -> None:
        self.folder, self.schema, self.rows_per_file = folder, schema, rows_per_file
        self.dictionary_columns = dictionary_columns
        self.properties = encryption_properties(master_key) if master_key else None
        self.folder.mkdir(parents=True)
        self.files: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def _open(self) -> None:
        path = self.folder / f"part-{len(self.files):05d}.parquet"
        self._writer = pq.ParquetWriter(
            path, self.schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
            encryption_properties=self.properties, store_schema=True, use_dictionary=self.dictionary_columns,
        )
        self.files.append({"path": path, "rows": 0})
        self._rows_in_file = 0

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            if self._writer is None or self._rows_in_file >= self.rows_per_file:
                self._close_file()
                self._open()
            take = min(batch.num_rows, self.rows_per_file - self._rows_in_file)
            self._writer.write_batch(batch.slice(0, take))
            self._rows_in_file += take
            self.files[-1]["rows"] += take
            batch = batch.slice(take)

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[dict]:
        if self._writer is None and not self.files:
            self._open()  # an empty table still gets a file: readers see its schema
        self._close_file()
        for entry in self.files:
            _fsync_path(entry["path"])
        _fsync_path(self.folder)
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None


def _pump(reader: pa.RecordBatchReader, schema: pa.Schema, hasher: ContentHasher, writer: _TableWriter,
          what: str, depth: int = 2) -> int:
    """Fetch batches on this thread while another one casts, hashes and writes them. Both sides
    spend their time in C++ with the GIL released (libpq and the ADBC decoder here; the decimal
    cast, sha256, Parquet encoding, compression and encryption there), so the two overlap. The
    queue holds at most ``depth`` batches: memory stays flat whatever the table's size."""
    batches: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []
    rows = [0]

    def work() -> None:
        try:
            while (batch := batches.get()) is not None:
                batch = normalize_batch(batch, schema, what)
                hasher.update(batch)
                writer.write(batch)
                rows[0] += batch.num_rows
        except BaseException as exc:  # handed to the fetching thread, which raises it
            failure.append(exc)
            while batches.get() is not None:  # drain, so the fetcher never blocks on a dead consumer
                pass

    worker = threading.Thread(target=work, name="backup-writer", daemon=True)
    worker.start()
    try:
        for batch in reader:
            if failure:
                break
            batches.put(batch)
    finally:
        batches.put(None)
        worker.join()
        reader.close()
    if failure:
        raise failure[0]
    return rows[0]


@dataclass
class BackupReport:
    tenant: str
    backup_id: str
    path: Path
    manifest: dict
    rows: dict[str, int]
    bytes: int
    seconds: float
    encrypted: bool
    removed_by_retention: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class BackupPolicy:
    encryption_enabled: bool = True
    backup_frequency: timedelta = timedelta(hours=24)
    retention_days: int = 30
    last_backup_at: datetime | None = None
    next_backup_at: datetime | None = None


def backup_policy(conn: psycopg.Connection, tenant: uuid.UUID) -> BackupPolicy:
    """The tenant's tenant_backup_config, or the table's defaults when it has no row."""
    row = conn.execute(
        """SELECT encryption_enabled, backup_frequency, retention_days, last_backup_at, next_backup_at
             FROM tenant_backup_config WHERE organization_id = %s""",
        (tenant,),
    ).fetchone()
    return BackupPolicy(*row) if row else BackupPolicy()


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def tenant_folder(root: Path, tenant: uuid.UUID) -> Path:
    return Path(root) / f"tenant={tenant}"


def _unusable_root_message(root: Path, exc: OSError) -> str:
    reason = exc.strerror or exc.__class__.__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = "it, or a folder on its path, is not a directory"
    elif isinstance(exc, FileNotFoundError) and Path(root).exists():
        reason = "its file system takes no new folders"
    return (f"backup root {root}: cannot create a backup folder there ({reason}); pass --root "
            f"(or set ${BACKUP_ROOT_ENV}) to a folder this user can write")


def _tmp_name(backup_id: str) -> str:
    return f"{_TMP_PREFIX}{backup_id}.tmp-{socket.gethostname()}-{os.getpid()}"


def backup_tenant(
    conn: psycopg.Connection,
    tenant_id: object,
    root: Path,
    *,
    master_key: bytes | None,
    encrypt: bool | None = None,
    rows_per_file: int = ROWS_PER_FILE,
    apply_retention_after: bool = True,
    log: Callable[[str], None] = lambda message: None,
    on_table_written: Callable[[str], None] | None = None,
) -> BackupReport:
    """Back one tenant up into ``root``: every table in TABLES from one snapshot, then
    ``last_backup_at`` (as the admin), then retention. ``conn`` is an admin connection, idle.

    ``encrypt`` defaults to the tenant's ``encryption_enabled``. Encryption required and no
    ``master_key`` is a one-line BackupKeyMissing error, before anything is written.
    ``on_table_written`` is called after each table (tests use it to crash or to write
    concurrently)."""
    tenant = parse_tenant_id(tenant_id)
    root = Path(root)
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise TenantPipelinesError(f"tenant {tenant}: backup needs an idle connection, not one inside a transaction")
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM organizations WHERE id = %s)", (tenant,)).fetchone()[0]:
        raise TenantPipelinesError(f"tenant {tenant}: no such organization; check the id")
    policy = backup_policy(conn, tenant)
    encrypt = policy.encryption_enabled if encrypt is None else encrypt
    if encrypt and master_key is None:
        raise BackupKeyMissing(_missing_key_message(tenant))
    key = master_key if encrypt else None

    folder = tenant_folder(root, tenant)
    started = time.monotonic()
    backup_id = new_backup_id()
    tmp = folder / _tmp_name(backup_id)
    try:  # the root must take a folder before the snapshot is taken: a real write, which root's mode bits cannot fake
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        tmp.mkdir()
    except OSError as exc:
        raise InvalidInput(_unusable_root_message(root, exc)) from None
    exports: list[TableExport] = []
    writer: _TableWriter | None = None
    adbc = None
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot, lsn, taken_at, server_version, database = conn.execute(
                "SELECT pg_export_snapshot(), pg_current_wal_lsn()::text, clock_timestamp(), "
                "current_setting('server_version'), current_database()"
            ).fetchone()
            adbc = adbc_connect(conn, autocommit=True)
            cursor = adbc.cursor()
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)).as_string(conn))
            for table, key_column in TABLES:
                t0 = time.monotonic()
                columns = table_columns(conn, "public", table)
                reader = stream_table(cursor, conn, "public", table, key_column, tenant, columns)
                schema = target_schema(columns, reader.schema)
                export = TableExport(table, schema=schema, columns=columns)
                hasher = ContentHasher(schema, key)
                writer = _TableWriter(tmp / f"table={table}", schema, key, rows_per_file,
                                      dictionary_columns(columns, key_column))
                export.rows = _pump(reader, schema, hasher, writer, f"tenant {tenant}: table {table}")
                files = writer.close()
                writer = None
                export.files = [
                    {"path": str(f["path"].relative_to(tmp)), "rows": f["rows"],
                     "bytes": f["path"].stat().st_size, "sha256": sha256_file(f["path"])}
                    for f in files
                ]
                export.content_hash = hasher.hexdigest()
                export.seconds = time.monotonic() - t0
                exports.append(export)
                log(f"tenant {tenant}: {table}: {export.rows} rows in {export.seconds:.2f}s")
                if on_table_written is not None:
                    on_table_written(table)
            cursor.execute("COMMIT")
            cursor.close()
        finished_at = datetime.now(timezone.utc)
        manifest = _manifest(tenant, backup_id, exports, snapshot_at=taken_at, lsn=lsn,
                             server_version=server_version, database=database, key=key,
                             finished_at=finished_at, seconds=time.monotonic() - started)
        _write_json_durably(tmp / MANIFEST, manifest)
        _fsync_path(tmp)
        final = folder / f"backup={backup_id}"
        os.rename(tmp, final)
        _fsync_path(folder)
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (psycopg.Error, adbc_driver_manager.Error)):
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise TenantPipelinesError(f"tenant {tenant}: the backup failed ({text}); nothing was kept, re-run it") from None
        if isinstance(exc, OSError):  # the disk filled up, the folder went away...
            raise TenantPipelinesError(f"tenant {tenant}: writing the backup under {root} failed "
                                       f"({exc.strerror or exc.__class__.__name__}); nothing was kept, "
                                       "free space or fix the folder and re-run it") from None
        raise
    finally:
        if adbc is not None:
            try:
                adbc.close()
            except Exception:
                pass
    # Only now that the backup is complete on disk does the database say so.
    conn.execute(
        """INSERT INTO tenant_backup_config (organization_id, last_backup_at) VALUES (%s, %s)
           ON CONFLICT (organization_id) DO UPDATE SET last_backup_at = EXCLUDED.last_backup_at""",
        (tenant, taken_at),
    )
    if not conn.autocommit:
        conn.commit()
    removed: list[str] = []
    if apply_retention_after:
        removed = [str(p) for p in apply_retention(root, tenant, policy.retention_days).removed]
    seconds = time.monotonic() - started
    total_bytes = sum(f["bytes"] for e in exports for f in e.files)
    return BackupReport(str(tenant), backup_id, final, manifest, {e.name: e.rows for e in exports},
                        total_bytes, seconds, key is not None, removed)


def _manifest(tenant: uuid.UUID, backup_id: str, exports: list[TableExport], *, snapshot_at: datetime, lsn: str,
              server_version: str, database: str, key: bytes | None, finished_at: datetime, seconds: float) -> dict:
    encryption: dict = {"enabled": False}
    if key is not None:
        encryption = {
            "enabled": True,
            "scheme": "parquet-modular-encryption",
            "algorithm": "AES_GCM_V1",
            "uniform": True,
            "double_wrapping": True,
            "kms": "tenant-pipelines LocalKmsClient (AES-256-GCM key wrapping)",
            "master_key_id": MASTER_KEY_ID,
            "master_key_fingerprint": key_fingerprint(key),
            "content_hash": "hmac-sha256",
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": {"name": "tenant-pipelines", "version": __version__},
        "tenant": str(tenant),
        "backup_id": backup_id,
        "snapshot": {"taken_at": snapshot_at.astimezone(timezone.utc).isoformat(), "lsn": lsn,
                     "isolation": "repeatable read, read only (one exported snapshot)"},
        "source": {"server_version": server_version, "database": database},
        "finished_at": finished_at.isoformat(),
        "duration_s": round(seconds, 3),
        "encryption": encryption,
        "tables": {
            e.name: {
                "tenant_column": TABLE_KEYS[e.name],
                "rows": e.rows,
                "content_hash": e.content_hash,
                "files": e.files,
                "columns": [{"name": c.name, "pg_type": c.pg_type, "generated": c.generated} for c in e.columns],
                "arrow_schema": e.schema.to_string(show_field_metadata=False),
                "arrow_schema_ipc": base64.b64encode(e.schema.serialize().to_pybytes()).decode(),
            }
            for e in exports
        },
        "totals": {"rows": sum(e.rows for e in exports),
                   "bytes": sum(f["bytes"] for e in exports for f in e.files)},
    }
    if key is not None:
        manifest["authentication"] = {
            "scheme": "hmac-sha256",
            "key": "HMAC-SHA256(backup key, 'tenant-pipelines manifest mac v1')",
            "covers": "this manifest without authentication.mac, as JSON with sorted keys, no whitespace, ASCII",
        }
        manifest["authentication"]["mac"] = manifest_mac(manifest, key)
    return manifest


def _write_json_durably(path: Path, document: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(document, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


# -- reading back: listing and verification ---------------------------------------------------


@dataclass(frozen=True)
class BackupInfo:
    tenant: str
    backup_id: str
    path: Path
    taken_at: datetime
    verified_at: datetime | None

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
UNVERIFIED, AUTH_MAC, AUTH_DRILL = "unverified", "mac", "drill digest"


def _damaged(path: Path, problem: str) -> BackupInvalid:
    return BackupInvalid(f"{path}: {problem}; the backup is damaged or was altered, use another one")


def _read_manifest_document(path: Path) -> tuple[dict, bytes]:
    """The manifest and its bytes, with its format checked; nothing else is trusted yet."""
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupInvalid(f"{path}: no {MANIFEST}; it is not a complete backup (an interrupted one?)") from None
    except OSError as exc:
        raise BackupInvalid(f"{path}: {MANIFEST} is unreadable ({exc.strerror or exc.__class__.__name__}); "
                            "the backup is damaged") from None
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BackupInvalid(f"{path}: {MANIFEST} is unreadable ({exc.__class__.__name__}); the backup is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupInvalid(f"{path}: {MANIFEST} is not a tenant-pipelines backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupInvalid(f"{path}: backup format {manifest.get('format_version')!r} is not {FORMAT_VERSION}; "
                            "use the tenant-pipelines version that wrote it")
    return manifest, raw


def _read_manifest(path: Path) -> dict:
    return _read_manifest_document(path)[0]


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def manifest_schema(path: Path, manifest: dict, table: str) -> pa.Schema:
    """The Arrow schema the manifest stores for a table (``arrow_schema_ipc``)."""
    text = manifest["tables"][table].get("arrow_schema_ipc")
    try:
        if not isinstance(text, str):
            raise TypeError(text)
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))
    except (TypeError, ValueError, pa.ArrowException):
        raise _damaged(path, f"table {table}: arrow_schema_ipc is not a serialized Arrow schema") from None


def check_manifest(path: Path, manifest: dict, tenant: uuid.UUID | None = None) -> None:
    """Every field a reader uses has the type and shape the backup wrote, before anything uses
    it: a malformed manifest is a one-line BackupInvalid, never a traceback further on. This is
    about shape only; ``authenticate_backup`` says whether the manifest can be trusted."""
    owner = manifest.get("tenant")
    try:
        uuid.UUID(owner) if isinstance(owner, str) else None
    except ValueError:
        owner = None
    if not isinstance(owner, str):
        raise _damaged(path, "the manifest names no tenant")
    if tenant is not None and owner != str(tenant):
        raise BackupInvalid(f"{path}: this is a backup of tenant {owner}, not of tenant {tenant}; "
                            "pick a backup under tenant=" + str(tenant))
    if not isinstance(manifest.get("backup_id"), str) or not _BACKUP_ID.match(manifest["backup_id"]):
        raise _damaged(path, "the manifest has no valid backup_id")
    snapshot = manifest.get("snapshot")
    try:
        taken_at = datetime.fromisoformat(snapshot["taken_at"])
    except (TypeError, KeyError, ValueError):
        taken_at = None
    if taken_at is None or taken_at.tzinfo is None:
        raise _damaged(path, "the manifest has no snapshot.taken_at time")
    encryption = manifest.get("encryption")
    if not isinstance(encryption, dict) or not isinstance(encryption.get("enabled"), bool):
        raise _damaged(path, "the manifest has no encryption section saying whether the files are encrypted")
    if encryption["enabled"] and not (isinstance(encryption.get("master_key_fingerprint"), str)
                                      and _HEX16.match(encryption["master_key_fingerprint"])):
        raise _damaged(path, "the manifest's encryption section has no key fingerprint")
    tables = manifest.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(TABLE_KEYS):
        raise _damaged(path, f"the manifest does not list exactly the tables of backup format {FORMAT_VERSION} "
                             f"({', '.join(TABLE_KEYS)})")
    base = path.resolve()
    for table, key_column in TABLES:
        entry = tables[table]
        what = f"table {table}"
        if not isinstance(entry, dict):
            raise _damaged(path, f"{what} is not described")
        if entry.get("tenant_column") != key_column:
            raise _damaged(path, f"{what}: its tenant_column is not {key_column}")
        if not _count(entry.get("rows")):
            raise _damaged(path, f"{what}: rows is {entry.get('rows')!r}, not a row count")
        if not isinstance(entry.get("content_hash"), str) or not _HEX64.match(entry["content_hash"]):
            raise _damaged(path, f"{what} has no content_hash")
        files = entry.get("files")
        if not isinstance(files, list) or not files:
            raise _damaged(path, f"{what}: files is {files!r}; every table has at least one file, an empty one too")
        total, seen = 0, set()
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"]:
                raise _damaged(path, f"{what}: a file entry has no path")
            file = (path / f["path"]).resolve()
            if base not in file.parents:
                raise BackupInvalid(f"{path}: the manifest names a file outside the backup ({f['path']}); refusing it")
            if file.parent != base / f"table={table}" or file in seen:
                raise _damaged(path, f"{what}: {f['path']} is not a file of its own in table={table}/")
            seen.add(file)
            for name in ("rows", "bytes"):
                if not _count(f.get(name)):
                    raise _damaged(path, f"{what}: {f['path']}: {name} is {f.get(name)!r}, not a count")
            if not isinstance(f.get("sha256"), str) or not _HEX64.match(f["sha256"]):
                raise _damaged(path, f"{what}: {f['path']} has no sha256")
            total += f["rows"]
        if total != entry["rows"]:
            raise _damaged(path, f"{what}: its files hold {total} rows, the manifest says {entry['rows']}")
        schema = manifest_schema(path, manifest, table)
        columns = entry.get("columns")
        names = [c.get("name") for c in columns if isinstance(c, dict)] if isinstance(columns, list) else None
        if names != schema.names or key_column not in names:
            raise _damaged(path, f"{what}: its columns and its Arrow schema disagree")


def check_files(path: Path, manifest: dict) -> None:
    """Every listed file is there and matches its sha256."""
    for table, entry in manifest["tables"].items():
        for f in entry["files"]:
            file = path / f["path"]
            if not file.is_file():
                raise BackupInvalid(f"{path}: {f['path']} is missing; the backup is damaged, use another one")
            try:
                digest = sha256_file(file)
            except OSError as exc:
                raise BackupInvalid(f"{path}: {f['path']} cannot be read ({exc.strerror}); use another backup") from None
            if digest != f["sha256"]:
                raise BackupInvalid(f"{path}: {f['path']} does not match its sha256 in the manifest; "
                                    "the backup is damaged or was altered, use another one")


def list_backups(root: Path, tenant_id: object) -> list[BackupInfo]:
    """The tenant's complete backups, oldest first. Temporary folders and folders without a
    readable manifest are not backups."""
    tenant = parse_tenant_id(tenant_id)
    folder = tenant_folder(root, tenant)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        name = path.name
        if not name.startswith("backup=") or not _BACKUP_ID.match(name.removeprefix("backup=")):
            continue
        try:
            manifest = _read_manifest(path)
            if manifest.get("tenant") != str(tenant):
                continue
            backup_id, taken_at = manifest["backup_id"], datetime.fromisoformat(manifest["snapshot"]["taken_at"])
            if not isinstance(backup_id, str) or taken_at.tzinfo is None:
                continue
        except (BackupInvalid, KeyError, TypeError, ValueError):
            continue
        record = drill_record(path, manifest)
        verified_at = None
        if record is not None:
            try:
                verified_at = datetime.fromisoformat(record["verified_at"])
            except (KeyError, TypeError, ValueError):
                pass
        found.append(BackupInfo(str(tenant), backup_id, path, taken_at, verified_at))
    return sorted(found, key=lambda b: (b.taken_at, b.backup_id))


def newest_backup(root: Path, tenant_id: object, *, verified_only: bool = False,
                  at_or_before: datetime | None = None) -> BackupInfo | None:
    candidates = [b for b in list_backups(root, tenant_id)
                  if (b.verified or not verified_only) and (at_or_before is None or b.taken_at <= at_or_before)]
    return candidates[-1] if candidates else None


def _folder(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise BackupInvalid(f"{path}: no such backup folder; pass a folder like <root>/tenant=<uuid>/backup=<id>")
    if ".tmp" in path.name:
        raise BackupInvalid(f"{path}: a temporary folder of an unfinished backup, not a backup; pick a backup=<id> folder")
    return path


def load_manifest(path: Path, tenant_id: object | None = None) -> dict:
    """The manifest of a complete backup folder, its shape checked (``check_manifest``) and, when
    ``tenant_id`` is given, its tenant. Files are not read and the manifest not authenticated."""
    path = _folder(path)
    tenant = parse_tenant_id(tenant_id) if tenant_id is not None else None
    manifest = _read_manifest(path)
    check_manifest(path, manifest, tenant)
    return manifest


def verify_backup(path: Path, tenant_id: object | None = None) -> dict:
    """Check a backup before anything reads it: a complete folder, a well-formed manifest of this
    tenant, every listed file present, inside the folder and matching its sha256.
    Returns the manifest; raises BackupInvalid naming the problem otherwise. Whether the manifest
    itself can be trusted is ``authenticate_backup``'s question."""
    manifest = load_manifest(path, tenant_id)
    check_files(Path(path), manifest)
    return manifest


def drill_record(path: Path, manifest: dict) -> dict | None:
    """``verified.json`` when it is a passing drill's record of this backup, else None."""
    try:
        record = json.loads((path / VERIFIED).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(record, dict) or record.get("passed") is not True
            or record.get("backup_id") != manifest.get("backup_id") or record.get("tenant") != manifest.get("tenant")):
        return None
    return record


def manifest_digest(path: Path) -> str:
    return hashlib.sha256(_read_manifest_document(Path(path))[1]).hexdigest()


def _opens_with(path: Path, manifest: dict, master_key: bytes) -> bool:
    first = manifest["tables"][TABLES[0][0]]["files"][0]["path"]
    try:
        pq.ParquetFile(path / first, decryption_properties=decryption_properties(master_key)).schema_arrow
        return True
    except Exception:
        return False


def authenticate_backup(path: Path, manifest: dict, master_key: bytes | None) -> str:
    """Whether the manifest can be trusted, for a manifest that ``check_manifest`` accepted.

    - Encrypted: its MAC (``manifest_mac``) must verify under the configured key; no key is
      BackupKeyMissing. A MAC that fails is BackupInvalid (exit 5) when the configured key is the
      backup's, by its fingerprint or because it opens the files (the fingerprint itself was
      altered), and BackupKeyMissing (exit 6) when it is another key. Returns ``AUTH_MAC``.
    - Cleartext: its sha256 must equal the digest its passing restore drill recorded in
      ``verified.json`` (``AUTH_DRILL``); a manifest changed since is BackupInvalid. A cleartext
      backup no drill verified returns ``UNVERIFIED``: nothing vouches for its manifest, which
      the caller must say."""
    path = Path(path)
    document, raw = _read_manifest_document(path)
    if document != manifest:
        raise BackupInvalid(f"{path}: {MANIFEST} changed while it was being checked; re-run")
    encryption = manifest["encryption"]
    if encryption["enabled"]:
        wanted = encryption["master_key_fingerprint"]
        if master_key is None:
            raise BackupKeyMissing(
                f"tenant {manifest['tenant']}: backup {manifest['backup_id']} is encrypted and no backup key is "
                f"configured; set ${BACKUP_KEY_ENV} to the key with fingerprint {wanted}")
        auth = manifest.get("authentication")
        mac = auth.get("mac") if isinstance(auth, dict) else None
        if not isinstance(mac, str):
            raise BackupInvalid(f"{path}: the manifest of this encrypted backup carries no MAC (it was altered, or "
                                "written before manifests were authenticated), so it cannot be trusted; use another backup")
        if hmac.compare_digest(mac, manifest_mac(manifest, master_key)):
            return AUTH_MAC
        configured = key_fingerprint(master_key)
        if configured == wanted:
            raise BackupInvalid(f"{path}: the manifest fails its MAC under the backup's own key: it was altered "
                                "after the backup was written; use another backup")
        if _opens_with(path, manifest, master_key):
            raise BackupInvalid(f"{path}: the manifest's key fingerprint {wanted} was altered (the configured key, "
                                f"fingerprint {configured}, opens the files but the manifest fails its MAC); "
                                "use another backup")
        raise BackupKeyMissing(
            f"tenant {manifest['tenant']}: backup {manifest['backup_id']} needs the key with fingerprint {wanted}, "
            f"the configured one is {configured}; set ${BACKUP_KEY_ENV} to the key it was written with")
    record = drill_record(path, manifest)
    if record is None or not isinstance(record.get("manifest_sha256"), str):
        return UNVERIFIED
    if not hmac.compare_digest(record["manifest_sha256"], hashlib.sha256(raw).hexdigest()):
        raise BackupInvalid(f"{path}: {MANIFEST} changed after the restore drill verified it (its sha256 differs "
                            f"from the one in {VERIFIED}); use another backup")
    return AUTH_DRILL


def read_batches(path: Path, manifest: dict, table: str, master_key: bytes | None,
                 batch_size: int = 131_072) -> Iterator[pa.RecordBatch]:
    """The table's rows from a verified backup, batch by batch, in file order."""
    properties = None
    if manifest["encryption"].get("enabled"):
        if master_key is None:
            raise BackupKeyMissing(
                f"tenant {manifest['tenant']}: backup {manifest['backup_id']} is encrypted and no backup key is "
                f"configured; set ${BACKUP_KEY_ENV} (key fingerprint {manifest['encryption']['master_key_fingerprint']})"
            )
        if key_fingerprint(master_key) != manifest["encryption"]["master_key_fingerprint"]:
            raise BackupKeyMissing(
                f"tenant {manifest['tenant']}: backup {manifest['backup_id']} was encrypted with another key "
                f"(fingerprint {manifest['encryption']['master_key_fingerprint']}, the configured one is "
                f"{key_fingerprint(master_key)}); set ${BACKUP_KEY_ENV} to the key it was written with"
            )
        properties = decryption_properties(master_key)
    for f in manifest["tables"][table]["files"]:
        try:
            # No pre-buffering: by default the reader keeps every row group it has read cached
            # until the file is closed, and memory then grows with the table.
            parquet = pq.ParquetFile(path / f["path"], decryption_properties=properties,
                                     pre_buffer=False, buffer_size=1 << 20)
            yield from parquet.iter_batches(batch_size=batch_size, use_threads=True)
        except (OSError, pa.ArrowException) as exc:
            raise BackupInvalid(f"{path}: {f['path']} cannot be read ({str(exc).splitlines()[0]}); "
                                "the backup is damaged, use another one") from None


def mark_verified(path: Path, manifest: dict, details: dict, *, manifest_sha256: str | None = None) -> None:
    """Record a passing drill in ``verified.json``, with the sha256 of the manifest it checked:
    what a later restore of a cleartext backup compares its manifest with."""
    _write_json_durably(path / VERIFIED, {
        "backup_id": manifest["backup_id"], "tenant": manifest["tenant"], "passed": True,
        "verified_at": datetime.now(timezone.utc).isoformat(),
        "manifest_sha256": manifest_sha256 or manifest_digest(path), **details,
    })


# -- reading backups as a dataset ------------------------------------------------------------

# What a reader of <root>/tenant=<uuid>/ skips so that only the Parquet files remain: the hidden
# temporary folders of unfinished backups ("."), "_" (pyarrow's default along with "."), the
# manifest and the drill's marker. The same list is in docs/backups.md.
DATASET_IGNORE_PREFIXES = [".", "_", MANIFEST, VERIFIED]


def backup_dataset(root: Path, tenant_id: object, table: str, *, master_key: bytes | None = None):
    """One table of every backup of a tenant, as a ``pyarrow.dataset.Dataset`` with the Hive
    partition columns ``backup`` and ``table``: exactly the call docs/backups.md gives, over
    ``<root>/tenant=<uuid>/``. The table's schema comes from one of its files (the tables'
    schemas differ, so it is not inferred from whichever file comes first). ``master_key``
    decrypts encrypted backups."""
    import pyarrow.dataset as ds

    tenant = parse_tenant_id(tenant_id)
    if table not in TABLE_KEYS:
        raise InvalidInput(f"table {table!r} is not in a backup; pick one of {', '.join(TABLE_KEYS)}")
    folder = tenant_folder(root, tenant)
    sample = next(iter(sorted(folder.glob(f"backup=*/table={table}/*.parquet"))), None)
    if sample is None:
        raise BackupInvalid(f"tenant {tenant}: no backup under {root} holds table {table}; take a backup first")
    properties = decryption_properties(master_key) if master_key is not None else None
    try:
        schema = pq.read_schema(sample, decryption_properties=properties)
    except (OSError, pa.ArrowException) as exc:
        raise BackupKeyMissing(f"{sample} cannot be opened ({str(exc).splitlines()[0]}); an encrypted backup needs "
                               f"its key: set ${BACKUP_KEY_ENV}") from None
    schema = schema.append(pa.field("backup", pa.string())).append(pa.field("table", pa.string()))
    file_format = "parquet"
    if master_key is not None:
        file_format = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
            decryption_config=ds.ParquetDecryptionConfig(_crypto_factory(master_key), pe.KmsConnectionConfig(),
                                                         pe.DecryptionConfiguration())))
    dataset = ds.dataset(folder, format=file_format, partitioning="hive",
                         ignore_prefixes=DATASET_IGNORE_PREFIXES, schema=schema)
    return dataset.filter(ds.field("table") == table)


# -- retention -------------------------------------------------------------------------------


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
        if not path.name.startswith(_TMP_PREFIX):
            continue
        owner = path.name.rsplit(".tmp-", 1)[-1]
        owner_host, _, pid = owner.rpartition("-")
        stale = time.time() - path.stat().st_mtime > older_than.total_seconds()
        if owner_host == host and pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                stale = True
            except PermissionError:
                pass
        if stale:
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
            doomed = b.path.with_name(f"{_TMP_PREFIX}{b.backup_id}.tmp-{socket.gethostname()}-{os.getpid()}-expired")
            os.rename(b.path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(b.path)
        else:
            kept.append(b.path)
    remove_stale_temporaries(tenant_folder(root, parse_tenant_id(tenant_id)))
    return RetentionReport(kept, removed)


# -- the sensor's question -------------------------------------------------------------------


def tenants_due(conn: psycopg.Connection, now: datetime | None = None) -> list[tuple[str, datetime | None]]:
    """Organizations whose backup is due: next_backup_at passed, or never backed up (no
    last_backup_at, or no tenant_backup_config row). With the due time (None: never)."""
    rows = conn.execute(
        """
        SELECT o.id, bc.next_backup_at
          FROM organizations o
          LEFT JOIN tenant_backup_config bc ON bc.organization_id = o.id
         WHERE bc.next_backup_at IS NULL OR bc.next_backup_at <= COALESCE(%s, now())
         ORDER BY bc.next_backup_at NULLS FIRST, o.id
        """,
        (now,),
    ).fetchall()
    return [(str(t), due) for t, due in rows]


def backup_frequencies(conn: psycopg.Connection, tenants: Iterable[str]) -> dict[str, timedelta]:
    wanted = [parse_tenant_id(t) for t in tenants]
    rows = conn.execute(
        """SELECT o.id, COALESCE(bc.backup_frequency, interval '24 hours')
             FROM organizations o LEFT JOIN tenant_backup_config bc ON bc.organization_id = o.id
            WHERE o.id = ANY(%s)""",
        (wanted,),
    ).fetchall()
    return {str(t): f for t, f in rows}
