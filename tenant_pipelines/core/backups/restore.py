"""Restoring a tenant from a backup made by ``writer.backup_tenant``.

Every restore first verifies the backup (a complete folder, this tenant's manifest, every
file's sha256) and opens every file with the key, before it writes anything. Then, in ONE
transaction on an ADBC connection:

- **into the live tables**: takes the tenant's advisory lock (its writers and partition
  changes wait; other tenants never do) and the movers' lock, and refuses while a move of
  the tenant (``core.moves``) is in progress; deletes the tenant's rows child tables first
  wherever it lives now (its own usage_events_mt partition, or its schema's tables, are
  truncated), upserts its organizations row (tables outside the backup may reference it),
  and loads every table with binary COPY (``adbc_ingest``) into its placement's relations.
  The backup names the shared tables, whatever the placement it was taken from: usage
  events go through the parent ``usage_events_mt`` (its partition, or DEFAULT when it has
  none yet: the onboarding sensor then gives it one), or through a schema tenant's own
  ``usage_events``; the tenant keeps its placement. Every row loaded must belong to the
  tenant, and the tenant's row counts must equal the manifest's, or nothing is committed.
- **into a scratch schema**: creates the schema (owned by the admin, no privilege for anyone
  else) with one table per backed-up table (``LIKE`` the live one, no keys or indexes; RLS
  forced with the usual policy, so the isolation audit holds) and loads.

Another database is restored into the same way as the live one; it must be migrated first.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import adbc_driver_manager
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.core.backups.arrow_types import denormalize_batch, loading_schema, table_columns
from tenant_pipelines.core.backups.encryption import backup_decryption
from tenant_pipelines.core.backups.hashing import ContentHasher
from tenant_pipelines.core.backups.layout import TABLES
from tenant_pipelines.core.citus import columnar_months_of
from tenant_pipelines.core.moves import _MOVE_LOCK
from tenant_pipelines.core.placement import (SCHEMA, SCHEMA_TABLES, SHARED_PARTITION, SHARED_SCHEMA, USAGE_EVENTS, Placement,
                                             placement_of)
from tenant_pipelines.core.backups.manifest import load_manifest, manifest_schema
from tenant_pipelines.core.backups.streaming import adbc_connect
from tenant_pipelines.core.backups.verify import UNVERIFIED, authenticate_backup, check_files
from tenant_pipelines.core.backups.writer import backup_policy
from tenant_pipelines.db.migrate import BOOKKEEPING_SCHEMA, load_migrations
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import BackupInvalid, InvalidInput, MigrationError, TenantPipelinesError

LOCK_TIMEOUT = "30s"
_SCHEMA_NAME_MAX = 63


class RestoreRefused(TenantPipelinesError):
    """The restore cannot run safely now (the tenant is moving); nothing was changed."""

    exit_code = 2


def _move_refusal(tenant: uuid.UUID, to_kind: str | None, step: str | None) -> RestoreRefused:
    what = f"its move to {to_kind} is in progress (step {step})" if to_kind else "a run is moving it now"
    return RestoreRefused(
        f"tenant {tenant}: {what}; nothing was restored: let the move finish (or re-run it to finish, "
        "or abandon it), then restore")


@dataclass
class TableRestore:
    table: str
    rows: int
    seconds: float


@dataclass
class RestoreReport:
    tenant: str
    backup_id: str
    target: str
    tables: list[TableRestore] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    authentication: str = ""  # "mac", "drill digest" or "unverified" (verify.authenticate_backup)

    @property
    def rows(self) -> dict[str, int]:
        return {t.table: t.rows for t in self.tables}

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)


def check_migrated(conn: psycopg.Connection) -> None:
    """The target database has every migration of this checkout, or a one-line MigrationError."""
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    fix = "run 'BILLING_DATABASE_URL=<its admin DSN> tenant-pipelines db migrate' first"
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{BOOKKEEPING_SCHEMA}.schema_migrations",)).fetchone()[0]
    if not exists:
        raise MigrationError(f"database {where} is not migrated (no tenant-pipelines schema); {fix}")
    applied = {r[0] for r in conn.execute(
        sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(BOOKKEEPING_SCHEMA)))}
    missing = [m.filename for m in load_migrations() if m.version not in applied]
    if missing:
        raise MigrationError(f"database {where} lacks migration {missing[0]} (and {len(missing) - 1} more); {fix}")


# The name of a tenant's own schema (fn_tenant_schema_name): a scratch schema so named would pass
# for one in the audit and block that tenant's move into a schema of its own.
_RESERVED_SCHEMA = re.compile(r"^tenant_[0-9a-f]{32}$")


def _valid_schema_name(name: str) -> str:
    if (not isinstance(name, str) or not name.strip() or len(name.encode()) > _SCHEMA_NAME_MAX
            or name.startswith("pg_") or name in ("public", BOOKKEEPING_SCHEMA)
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or _RESERVED_SCHEMA.match(name)):
        raise InvalidInput(f"schema {name!r}: pick a new schema name (not blank, no control characters; not public, "
                           f"pg_*, {BOOKKEEPING_SCHEMA} or tenant_<32 hex>, a tenant's own schema; "
                           f"at most {_SCHEMA_NAME_MAX} bytes)")
    return name


def check_target_dsn(dsn: str) -> str:
    """An admin DSN given for another database: not empty and parseable, or InvalidInput."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise InvalidInput("the target database DSN is empty; pass the admin DSN of a migrated database, "
                           "like postgresql://user:password@host:5432/billing, or leave --into-database out "
                           "to restore into the billing database")
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unparseable"
        raise InvalidInput(f"the target database DSN is not a valid connection string ({reason}); pass an "
                           "admin DSN like postgresql://user:password@host:5432/billing") from None
    return dsn


def _preflight_files(path: Path, manifest: dict, master_key: bytes | None,
                     stored: dict[str, pa.Schema]) -> None:
    """Open every file's footer with the key (authenticate_backup has checked it; ``backup_decryption``
    once more): each must be Parquet, hold the rows the manifest says and the table's schema,
    before any write."""
    properties = backup_decryption(manifest, master_key)
    for table, entry in manifest["tables"].items():
        for f in entry["files"]:
            try:
                parquet = pq.ParquetFile(path / f["path"], decryption_properties=properties)
                rows, schema = parquet.metadata.num_rows, parquet.schema_arrow
            except (OSError, pa.ArrowException) as exc:
                raise BackupInvalid(f"{path}: {f['path']} cannot be opened as Parquet ({str(exc).splitlines()[0]}); "
                                    "the backup is damaged, use another one") from None
            if rows != f["rows"]:
                raise BackupInvalid(f"{path}: {f['path']} holds {rows} rows, the manifest says {f['rows']}; "
                                    "the backup is damaged or was altered, use another one")
            if not schema.equals(stored[table], check_metadata=False):
                raise BackupInvalid(f"{path}: {f['path']} does not have the schema the manifest gives table {table}; "
                                    "the backup is damaged or was altered, use another one")


def read_batches(path: Path, manifest: dict, table: str, master_key: bytes | None,
                 batch_size: int = 131_072) -> Iterator[pa.RecordBatch]:
    """The table's rows from a verified backup, batch by batch, in file order."""
    properties = backup_decryption(manifest, master_key)
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


def _tenant_batches(path: Path, manifest: dict, table: str, key_column: str, tenant: uuid.UUID,
                    master_key: bytes | None, names: list[str], schema: pa.Schema,
                    counter: list[int], errors: list[BaseException],
                    hasher: ContentHasher | None = None) -> Iterator[pa.RecordBatch]:
    """The batches a load sends, each checked to hold only the tenant's rows, and hashed as
    stored (every column) into ``hasher``. An error raised here reaches the caller wrapped by
    ADBC: it is kept in ``errors`` to be raised as it is."""
    expected = pa.scalar(tenant.bytes, pa.binary(16))
    try:
        for batch in read_batches(path, manifest, table, master_key):
            if hasher is not None:
                hasher.update(batch)
            owner = batch.column(key_column)
            storage = owner.storage if isinstance(owner.type, pa.BaseExtensionType) else owner
            if owner.null_count or not pc.all(pc.equal(storage, expected)).as_py():
                raise BackupInvalid(f"{path}: table {table} holds rows of another tenant than {tenant}; refusing the backup")
            batch = denormalize_batch(batch.select(names))
            counter[0] += batch.num_rows
            yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    except TenantPipelinesError as exc:
        errors.append(exc)
        raise
    except Exception as exc:  # a file the checks let through that Arrow cannot read as the table: one line
        reason = (str(exc).strip().splitlines() or [""])[0]
        wrapped = BackupInvalid(f"{path}: table {table}: its files cannot be loaded ({type(exc).__name__}: "
                                f"{reason}); the backup is damaged or was altered, nothing was committed, "
                                "use another backup")
        errors.append(wrapped)
        raise wrapped from None
    except BaseException as exc:
        errors.append(exc)
        raise


def _insert_columns(conn: psycopg.Connection, schema: str, table: str, stored: pa.Schema, path: Path,
                    *, include_generated: bool = False) -> list[str]:
    """The columns a load writes: every non-generated column of the target, all present in the backup."""
    target = table_columns(conn, schema, table)
    if not target:
        raise MigrationError(f"table {schema}.{table} does not exist in the target; migrate it first")
    names = [c.name for c in target if include_generated or not c.generated]
    missing = [n for n in names if n not in stored.names]
    if missing:
        raise BackupInvalid(f"{path}: table {table} in the backup has no column {missing[0]}, which the target has; "
                            "restore with the tenant-pipelines version whose schema matches the backup")
    extra = [n for n in stored.names if n not in {c.name for c in target}]
    if extra:
        raise BackupInvalid(f"{path}: table {table} in the backup has column {extra[0]}, which the target lacks; "
                            "migrate the target database first")
    for column in target:
        if column.name not in names or column.scale is None:
            continue
        kind = stored.field(column.name).type
        kind = kind.storage_type if isinstance(kind, pa.BaseExtensionType) else kind
        if pa.types.is_decimal(kind) and kind.scale > column.scale:  # PostgreSQL would round, silently
            raise BackupInvalid(
                f"{path}: table {table}: column {column.name} is stored with {kind.scale} decimal places and the "
                f"target's {column.pg_type} keeps {column.scale}, so restoring would round its values; restore "
                "into a database whose column keeps them, or use a backup written against this schema")
    return names


def _expects_encryption(conn: psycopg.Connection, tenant: uuid.UUID) -> bool:
    """Whether the tenant's backups are encrypted (tenant_backup_config, its default when the
    tenant has no row). False in a database not migrated yet: check_migrated says so later."""
    if not conn.execute("SELECT to_regclass('public.tenant_backup_config') IS NOT NULL").fetchone()[0]:
        return False
    return backup_policy(conn, tenant).encryption_enabled


def restore_tenant(
    conn: psycopg.Connection,
    tenant_id: object,
    backup_path: Path,
    *,
    master_key: bytes | None,
    into_schema: str | None = None,
    allow_cleartext: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> RestoreReport:
    """Restore ``tenant_id`` from ``backup_path`` into the live tables of ``conn``'s database, or
    into a new scratch schema ``into_schema``. ``conn`` is an idle admin connection.
    ``allow_cleartext``: accept a cleartext backup of a tenant whose backups are encrypted
    (``authenticate_backup``); point-in-time restore passes it for the files it just wrote."""
    # All input is checked before anything is written: the tenant, the target, then the backup --
    # its manifest's shape, its authenticity (MAC, or the drill's digest), every file's sha256, every
    # footer with the key. The content hash is recomputed while loading and compared before COMMIT.
    tenant = parse_tenant_id(tenant_id)
    if backup_path is None or (isinstance(backup_path, str) and not backup_path.strip()):
        raise InvalidInput("no backup folder given; pass one like <root>/tenant=<uuid>/backup=<id>")
    backup_path = Path(backup_path)
    schema = "public" if into_schema is None else _valid_schema_name(into_schema)
    started = time.monotonic()
    log(f"tenant {tenant}: verifying {backup_path}")
    manifest = load_manifest(backup_path, tenant)
    authentication = authenticate_backup(backup_path, manifest, master_key,
                                         expect_encrypted=_expects_encryption(conn, tenant),
                                         allow_cleartext=allow_cleartext)
    if authentication == UNVERIFIED:
        log(f"warning: backup {backup_path} is not encrypted and no restore drill has verified it, so nothing "
            "vouches for its manifest (a cleartext manifest carries no MAC); run 'tenant-pipelines backup --verify' "
            "or the backup_restorable check to verify backups before you need them")
    check_files(backup_path, manifest)
    stored = {t: manifest_schema(backup_path, manifest, t) for t, _ in TABLES}
    _preflight_files(backup_path, manifest, master_key, stored)
    verified_in = time.monotonic() - started
    check_migrated(conn)
    if into_schema is None:
        move = conn.execute("SELECT to_kind, step FROM tenant_pipelines.tenant_moves WHERE organization_id = %s",
                            (tenant,)).fetchone()
        if move is not None:
            raise _move_refusal(tenant, *move)
        cold = columnar_months_of(conn, tenant)
        if cold:  # Citus: a live restore deletes the tenant's rows, which a columnar month refuses
            raise TenantPipelinesError(
                f"tenant {tenant}: its rows in {', '.join(cold)} are Citus columnar (cold), which cannot delete "
                f"them, so the live restore would fail halfway; make those months heap first (SELECT "
                f"alter_table_set_access_method('{cold[0]}', 'heap') for each), or restore --into-schema")
    target = f"schema {schema}" if into_schema else f"the live tables of {conn.info.dbname}"
    report = RestoreReport(str(tenant), manifest["backup_id"], target, verify_seconds=verified_in,
                           authentication=authentication)
    hash_key = master_key if manifest["encryption"]["enabled"] else None

    adbc = adbc_connect(conn, autocommit=False)
    try:
        cur = adbc.cursor()

        def run(statement: sql.Composable) -> None:
            try:
                cur.execute(statement.as_string(conn))
            except adbc_driver_manager.Error as exc:
                raise TenantPipelinesError(_explain(tenant, "the tables", exc)) from None

        run(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        where: Placement | None = None
        if into_schema is None:
            run(sql.SQL("SELECT pg_advisory_xact_lock(public.fn_tenant_lock_key({}::uuid))").format(sql.Literal(str(tenant))))
            # No move may start (core.moves takes this lock) or be under way while the rows are replaced.
            run(sql.SQL("SELECT pg_try_advisory_xact_lock({}, hashtext({}))").format(
                sql.Literal(_MOVE_LOCK), sql.Literal(str(tenant))))
            if not cur.fetchone()[0]:
                raise _move_refusal(tenant, None, None)
            run(sql.SQL("SELECT to_kind, step FROM tenant_pipelines.tenant_moves WHERE organization_id = {}::uuid").format(
                sql.Literal(str(tenant))))
            move = cur.fetchone()
            if move is not None:
                raise _move_refusal(tenant, *move)
            where = placement_of(conn, tenant)  # no move can change it now
            _delete_tenant_rows(run, tenant, where)
        else:
            exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (schema,)).fetchone()[0]
            if exists:
                raise InvalidInput(f"schema {schema} exists already; pick a new name for the scratch schema, or drop it")
            run(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            run(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema)))
            for table, key_column in TABLES:
                _create_scratch_table(run, schema, table, key_column)

        def relation(table: str) -> tuple[str, str]:
            """Where the table's rows go: the tenant's placement (a schema tenant's usage_events_mt
            is its schema's usage_events), or the scratch schema's table of the shared name."""
            return (where.schema_of(table), where.name_of(table)) if where is not None else (schema, table)

        for table, key_column in TABLES:
            t0 = time.monotonic()
            # A scratch table is LIKE the live one, its generated columns made plain: it takes them all.
            live = relation(table) if where is not None else ("public", table)  # scratch tables are LIKE public's
            names = _insert_columns(conn, *live, stored[table], backup_path, include_generated=into_schema is not None)
            load_schema = loading_schema(stored[table], names)
            counter, errors = [0], []
            hasher = ContentHasher(stored[table], hash_key)
            reader = pa.RecordBatchReader.from_batches(
                load_schema,
                _tenant_batches(backup_path, manifest, table, key_column, tenant, master_key, names, load_schema,
                                counter, errors, hasher))
            try:
                if into_schema is None and table == "organizations":
                    _upsert_organization(conn, cur, run, reader, names)
                else:
                    into_schema_name, into_table = relation(table)
                    cur.adbc_ingest(into_table, reader, mode="append", db_schema_name=into_schema_name)
            except Exception as exc:
                if errors:
                    raise errors[0] from None
                if isinstance(exc, TenantPipelinesError):
                    raise
                raise TenantPipelinesError(_explain(tenant, table, exc)) from None
            entry = manifest["tables"][table]
            if counter[0] != entry["rows"] or hasher.hexdigest() != entry["content_hash"]:
                raise BackupInvalid(
                    f"{backup_path}: table {table}: the rows loaded ({counter[0]}) do not match the manifest's "
                    f"{'content hash' if counter[0] == entry['rows'] else 'row count ' + str(entry['rows'])}; "
                    "the backup is damaged or was altered, nothing was committed, use another backup")
            seconds = time.monotonic() - t0
            report.tables.append(TableRestore(table, counter[0], seconds))
            rate = f", {counter[0] / seconds:,.0f} rows/s" if seconds > 0 and counter[0] > 1000 else ""
            log(f"tenant {tenant}: {table}: {counter[0]} rows restored in {seconds:.2f}s{rate}")

        for table, key_column in TABLES:
            run(sql.SQL("SELECT count(*) FROM {} WHERE {} = {}::uuid").format(
                sql.Identifier(*relation(table)), sql.Identifier(key_column),
                sql.Literal(str(tenant))))
            count = cur.fetchone()[0]
            if count != manifest["tables"][table]["rows"]:
                raise TenantPipelinesError(
                    f"tenant {tenant}: table {table} holds {count} rows after the load, the backup "
                    f"{manifest['tables'][table]['rows']}; nothing was committed")
        try:
            adbc.commit()
        except adbc_driver_manager.Error as exc:
            raise TenantPipelinesError(_explain(tenant, "the commit", exc)) from None
    except BaseException:
        try:
            adbc.rollback()
        except Exception:
            pass
        raise
    finally:
        try:
            adbc.close()
        except Exception:
            pass
    report.seconds = time.monotonic() - started
    return report


def _explain(tenant: uuid.UUID, what: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if "lock timeout" in text or "55P03" in text:
        return (f"tenant {tenant}: waited {LOCK_TIMEOUT} for a lock on {what}; a long transaction holds it: find it in "
                "pg_stat_activity, let it finish, and re-run (nothing was committed)")
    return f"tenant {tenant}: restoring {what} failed ({text}); nothing was committed"


def _delete_tenant_rows(run: Callable[[sql.Composable], None], tenant: uuid.UUID, where: Placement) -> None:
    """The tenant's rows, children first, wherever it lives (core/placement.py). A dedicated
    tenant's usage_events_mt partition is truncated (that locks only the tenant's tables), and
    any strays of it in the pool deleted; a pooled tenant's rows are deleted from the pool (row
    locks only: the pool's other tenants go on). A schema tenant's four tables are truncated
    together (they hold its rows only, and reference each other), and any strays of it in the
    shared tables deleted: it stays a schema tenant."""
    literal = sql.Literal(str(tenant))
    if where.kind == SCHEMA:
        run(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(
            where.table(table) for table, _ in reversed(TABLES) if table in SCHEMA_TABLES)))
        for table, key_column in reversed(TABLES):
            if table in SCHEMA_TABLES:
                run(sql.SQL("DELETE FROM {} WHERE {} = {}::uuid").format(
                    sql.Identifier(SHARED_SCHEMA, table), sql.Identifier(key_column), literal))
    elif where.dedicated:
        run(sql.SQL("TRUNCATE {}").format(where.usage_events_leaf))
        run(sql.SQL("DELETE FROM {} WHERE organization_id = {}::uuid").format(
            sql.Identifier(SHARED_SCHEMA, SHARED_PARTITION), literal))
    else:
        run(sql.SQL("DELETE FROM {} WHERE organization_id = {}::uuid").format(where.table(USAGE_EVENTS), literal))
    for table, key_column in reversed(TABLES):
        if table in (USAGE_EVENTS, "organizations") or (where.kind == SCHEMA and table in SCHEMA_TABLES):
            continue
        run(sql.SQL("DELETE FROM {} WHERE {} = {}::uuid").format(
            where.table(table), sql.Identifier(key_column), literal))


def _create_scratch_table(run: Callable[[sql.Composable], None], schema: str, table: str, key_column: str) -> None:
    """A table LIKE the live one, without keys or indexes, owned by the admin. billing_app has
    no privilege on the schema or the table; RLS is forced with the same tenant_isolation
    policy all the same, so that the catalog audit (tenant_isolation_holds) holds while a
    scratch schema exists, and a grant made by mistake still shows nothing."""
    name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    run(sql.SQL("CREATE TABLE {} (LIKE public.{})").format(name, sql.Identifier(table)))
    run(sql.SQL("SELECT public.fn_protect_tenant_table(format('%I.%I', {}::text, {}::text)::regclass, {})").format(
        sql.Literal(schema), sql.Literal(table), sql.Literal(key_column)))


def _upsert_organization(conn: psycopg.Connection, cur, run: Callable[[sql.Composable], None],
                         reader: pa.RecordBatchReader, names: list[str]) -> None:
    """The organizations row is updated in place, never deleted: tables outside the backup
    (tenant_schemas, ...) may reference it."""
    stage = "tp_restore_organizations"
    run(sql.SQL("CREATE TEMP TABLE {} (LIKE public.organizations) ON COMMIT DROP").format(sql.Identifier(stage)))
    cur.adbc_ingest(stage, reader, mode="append", db_schema_name="pg_temp")
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    updates = sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                                 for n in names if n != "id")
    run(sql.SQL("INSERT INTO public.organizations ({}) SELECT {} FROM {} ON CONFLICT (id) DO UPDATE SET {}").format(
        columns, columns, sql.Identifier(stage), updates))
