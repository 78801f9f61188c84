"""Backing one tenant up: every table of ``layout.TABLES`` from one snapshot into Parquet, then
the manifest, then ``last_backup_at``, then retention.

A backup is written into ``tenant=<uuid>/.backup=<id>.tmp-<host>-<pid>`` (hidden from Hive
readers by its leading dot), every file and folder is fsynced, ``manifest.json`` is written
last, and the folder is renamed to ``backup=<id>``. Only a folder named ``backup=<id>`` that
holds a ``manifest.json`` is a backup; a crash at any point leaves at most a temporary folder,
which the next backup or retention run of that tenant removes.

The data path: one REPEATABLE READ READ ONLY transaction on the admin connection exports its
snapshot (``pg_export_snapshot``); an ADBC connection joins it (``SET TRANSACTION SNAPSHOT``)
and streams each table with binary COPY into Arrow record batches (``streaming``), which are
cast to exact types (``arrow_types``), hashed (``hashing``) and go to
``pyarrow.parquet.ParquetWriter`` batch by batch, so memory does not grow with the tenant.
Nothing here uses pandas.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import adbc_driver_manager
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from tenant_pipelines.core.backups.arrow_types import Column, normalize_batch, table_columns, target_schema
from tenant_pipelines.core.backups.encryption import encryption_properties
from tenant_pipelines.core.backups.hashing import ContentHasher, sha256_file
from tenant_pipelines.core.backups.keys import missing_key_message
from tenant_pipelines.core.backups.layout import MANIFEST, TABLES, new_backup_id, tenant_folder, tmp_name
from tenant_pipelines.core.backups.manifest import TableExport, build_manifest
from tenant_pipelines.core.backups.retention import apply_retention, remove_stale_temporaries
from tenant_pipelines.core.backups.streaming import adbc_connect, stream_table
from tenant_pipelines.core.placement import placement_of
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import BackupKeyMissing, InvalidInput, TenantPipelinesError
from tenant_pipelines.files import fsync_path, write_json_atomic
from tenant_pipelines.settings import BACKUP_ROOT_ENV

ROWS_PER_FILE = 20_000_000  # a table past this many rows gets another part file
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 1


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
            fsync_path(entry["path"])
        fsync_path(self.folder)
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


def _unusable_root_message(root: Path, exc: OSError) -> str:
    reason = exc.strerror or exc.__class__.__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = "it, or a folder on its path, is not a directory"
    elif isinstance(exc, FileNotFoundError) and Path(root).exists():
        reason = "its file system takes no new folders"
    return (f"backup root {root}: cannot create a backup folder there ({reason}); pass --root "
            f"(or set ${BACKUP_ROOT_ENV}) to a folder this user can write")


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
        raise BackupKeyMissing(missing_key_message(tenant))
    key = master_key if encrypt else None

    folder = tenant_folder(root, tenant)
    started = time.monotonic()
    backup_id = new_backup_id()
    tmp = folder / tmp_name(backup_id)
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
            where = placement_of(conn, tenant)  # in the snapshot: where the tenant lived at that moment
            for table, key_column in TABLES:
                t0 = time.monotonic()
                # Read where the tenant lives (a schema tenant's usage_events_mt is its schema's
                # usage_events); written under the shared name, so it restores into any placement.
                source = (where.schema_of(table), where.name_of(table))
                columns = table_columns(conn, *source)
                reader = stream_table(cursor, conn, *source, key_column, tenant, columns)
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
        manifest = build_manifest(tenant, backup_id, exports, snapshot_at=taken_at, lsn=lsn,
                                  server_version=server_version, database=database, key=key,
                                  finished_at=finished_at, seconds=time.monotonic() - started)
        write_json_atomic(tmp / MANIFEST, manifest, mode=0o666)  # the umask decides, as for the Parquet files
        fsync_path(tmp)
        final = folder / f"backup={backup_id}"
        os.rename(tmp, final)
        fsync_path(folder)
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
        try:
            removed = [str(p) for p in apply_retention(root, tenant, policy.retention_days).removed]
        except OSError as exc:  # the backup is written and recorded: that stands; say what retention could not do
            log(f"warning: tenant {tenant}: backup {backup_id} is complete, but retention failed in {folder} "
                f"({exc.strerror or exc.__class__.__name__}: {exc.filename or ''}); old backups are kept until it "
                "succeeds on a later run")
    seconds = time.monotonic() - started
    total_bytes = sum(f["bytes"] for e in exports for f in e.files)
    return BackupReport(str(tenant), backup_id, final, manifest, {e.name: e.rows for e in exports},
                        total_bytes, seconds, key is not None, removed)
