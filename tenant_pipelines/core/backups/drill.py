"""The restore drill: restore a backup into a scratch schema, recompute every table's row count
and content hash exactly as the backup did, compare them with the manifest, record
``verified.json`` when all match, and drop the scratch schema in every case."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from tenant_pipelines.core.backups.arrow_types import normalize_batch, table_columns, target_schema
from tenant_pipelines.core.backups.hashing import ContentHasher
from tenant_pipelines.core.backups.layout import TABLES
from tenant_pipelines.core.backups.manifest import load_manifest, manifest_digest
from tenant_pipelines.core.backups.restore import restore_tenant
from tenant_pipelines.core.backups.streaming import adbc_connect, stream_table
from tenant_pipelines.core.backups.verify import mark_verified


@dataclass
class DrillReport:
    tenant: str
    backup_id: str
    path: Path
    passed: bool
    rows: dict[str, int]
    mismatches: list[str]
    seconds: float


def content_hashes(conn: psycopg.Connection, schema: str, key: bytes | None) -> dict[str, tuple[int, str]]:
    """Row count and content hash of each backed-up table in ``schema`` (all its rows, in
    physical order), computed exactly as the backup computed them while writing."""
    adbc = adbc_connect(conn, autocommit=True)
    out: dict[str, tuple[int, str]] = {}
    try:
        cur = adbc.cursor()
        cur.execute("SET synchronize_seqscans = off")  # physical order: the order the rows were loaded in
        for table, _ in TABLES:
            columns = table_columns(conn, schema, table)
            reader = stream_table(cur, conn, schema, table, None, None, columns)
            out_schema = target_schema(columns, reader.schema)
            hasher = ContentHasher(out_schema, key)
            rows = 0
            for batch in reader:
                batch = normalize_batch(batch, out_schema, f"schema {schema}: table {table}")
                hasher.update(batch)
                rows += batch.num_rows
            reader.close()
            out[table] = (rows, hasher.hexdigest())
    finally:
        adbc.close()
    return out


def restore_drill(
    conn: psycopg.Connection,
    backup_path: Path,
    *,
    master_key: bytes | None,
    log: Callable[[str], None] = lambda message: None,
) -> DrillReport:
    """Restore a backup into a scratch schema, compare every table's row count and content hash
    with the manifest, record ``verified.json`` in the backup when all match, and drop the
    scratch schema in every case."""
    started = time.monotonic()
    backup_path = Path(backup_path)
    manifest = load_manifest(backup_path)
    manifest_sha256 = manifest_digest(backup_path)  # what verified.json vouches for, read before the restore checks it
    tenant = manifest["tenant"]
    scratch = f"tp_drill_{secrets.token_hex(6)}"
    key = master_key if manifest["encryption"].get("enabled") else None
    try:
        restore_tenant(conn, tenant, backup_path, master_key=master_key, into_schema=scratch, log=log)
        found = content_hashes(conn, scratch, key)
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))
        if not conn.autocommit:
            conn.commit()
    mismatches = []
    for table, entry in manifest["tables"].items():
        rows, digest = found[table]
        if rows != entry["rows"]:
            mismatches.append(f"{table}: {rows} rows restored, the manifest says {entry['rows']}")
        elif digest != entry["content_hash"]:
            mismatches.append(f"{table}: the restored content hash differs from the manifest's")
    seconds = time.monotonic() - started
    if not mismatches and manifest_digest(backup_path) != manifest_sha256:
        mismatches.append(f"{backup_path.name}: the manifest changed during the drill")
    if not mismatches:
        mark_verified(backup_path, manifest, {"rows": {t: r for t, (r, _) in found.items()},
                                              "drill_seconds": round(seconds, 3)}, manifest_sha256=manifest_sha256)
    return DrillReport(tenant, manifest["backup_id"], backup_path, not mismatches,
                       {t: r for t, (r, _) in found.items()}, mismatches, seconds)
