"""Per-tenant metrics: the daily rollup of ``vw_tenant_metrics``, its history, its Parquet
export, and the quota checks against ``tenant_classifications``."""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg.rows import class_row

WARN_AT = 0.8
ERROR_AT = 1.0
GIB = 1024**3


@dataclass(frozen=True)
class TenantMetrics:
    organization_id: uuid.UUID
    organization_name: str
    tier: str
    active_subscriptions: int
    events_last_24h: int
    events_this_month: int
    storage_bytes: int
    last_activity: datetime | None
    monthly_events_limit: int | None
    storage_quota_gb: int | None


@dataclass(frozen=True)
class QuotaUse:
    organization_id: uuid.UUID
    organization_name: str
    quota: str  # "monthly_events" or "storage"
    used: int
    limit: int

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit else float("inf")

    @property
    def level(self) -> str:
        return "error" if self.ratio >= ERROR_AT else "warn" if self.ratio >= WARN_AT else "ok"

    def __str__(self) -> str:
        unit = "events this month" if self.quota == "monthly_events" else "bytes"
        return (f"{self.organization_name} ({self.organization_id}): {self.used:,} of {self.limit:,} {unit} "
                f"({self.ratio:.0%})")


COLLECT_BATCH = 500


def collect(conn: psycopg.Connection, *, batch: int = COLLECT_BATCH) -> list[TenantMetrics]:
    """Every tenant's figures now, from vw_tenant_metrics, with its quotas. Admin connection.

    The view locks each tenant's partitions (and their indexes) as it reads them, and a
    transaction keeps its locks to its end: 10,000 tenants in one statement take ~70,000
    locks, past the default lock table (max_locks_per_transaction 64 is ~14,000 slots). So
    the tenants are read ``batch`` at a time, one transaction each, and an idle connection
    never holds more than one batch's locks. (Inside a caller's transaction the batches are
    savepoints: the figures are the same, the locks stay until the caller commits.) Each
    batch has its own ``now()``: figures are as of a few seconds apart at most."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    ids = tenant_ids(conn)
    metrics: list[TenantMetrics] = []
    for start in range(0, len(ids), batch):
        with conn.transaction():
            metrics.extend(collect_batch(conn, ids[start:start + batch]))
    return metrics


def tenant_ids(conn: psycopg.Connection) -> list[uuid.UUID]:
    return [row[0] for row in conn.execute("SELECT id FROM organizations ORDER BY id").fetchall()]


def collect_batch(conn: psycopg.Connection, ids: list[uuid.UUID]) -> list[TenantMetrics]:
    """The figures of the tenants ``ids``, in the caller's transaction."""
    with conn.cursor(row_factory=class_row(TenantMetrics)) as cur:
        cur.execute(
            """
            SELECT m.organization_id, m.organization_name, m.tier, m.active_subscriptions,
                   m.events_last_24h, m.events_this_month, m.storage_bytes, m.last_activity,
                   tc.monthly_events_limit, tc.storage_quota_gb
              FROM vw_tenant_metrics m
              LEFT JOIN tenant_classifications tc ON tc.organization_id = m.organization_id
             WHERE m.organization_id = ANY(%s)
             ORDER BY m.organization_id
            """,
            (ids,),
        )
        return cur.fetchall()


def record_history(conn: psycopg.Connection, day: date, metrics: list[TenantMetrics]) -> int:
    """Upsert one row per tenant for ``day`` into tenant_metrics_history (re-runs replace it).
    ``recorded_at`` is the transaction's now(), passed as a value: Citus refuses a function that
    is not IMMUTABLE in the DO UPDATE SET of an insert into a distributed table."""
    with conn.transaction(), conn.cursor() as cur:
        recorded_at = cur.execute("SELECT now()").fetchone()[0]
        cur.executemany(
            """
            INSERT INTO tenant_metrics_history (day, organization_id, tier, active_subscriptions, events_last_24h,
                events_this_month, storage_bytes, last_activity, monthly_events_limit, storage_quota_gb, recorded_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (organization_id, day) DO UPDATE SET
                tier = EXCLUDED.tier, active_subscriptions = EXCLUDED.active_subscriptions,
                events_last_24h = EXCLUDED.events_last_24h, events_this_month = EXCLUDED.events_this_month,
                storage_bytes = EXCLUDED.storage_bytes, last_activity = EXCLUDED.last_activity,
                monthly_events_limit = EXCLUDED.monthly_events_limit,
                storage_quota_gb = EXCLUDED.storage_quota_gb, recorded_at = EXCLUDED.recorded_at
            """,
            [(day, m.organization_id, m.tier, m.active_subscriptions, m.events_last_24h, m.events_this_month,
              m.storage_bytes, m.last_activity, m.monthly_events_limit, m.storage_quota_gb, recorded_at)
             for m in metrics],
        )
    return len(metrics)


_SCHEMA = pa.schema([
    ("day", pa.date32()),
    ("organization_id", pa.string()),
    ("organization_name", pa.string()),
    ("tier", pa.string()),
    ("active_subscriptions", pa.int64()),
    ("events_last_24h", pa.int64()),
    ("events_this_month", pa.int64()),
    ("storage_bytes", pa.int64()),
    ("last_activity", pa.timestamp("us", tz="UTC")),
    ("monthly_events_limit", pa.int64()),
    ("storage_quota_gb", pa.int64()),
])


def export_parquet(root: Path, day: date, metrics: list[TenantMetrics]) -> Path:
    """Write ``<root>/day=YYYY-MM-DD/part-00000.parquet`` (hive style: DuckDB, pandas and
    Spark read ``<root>`` as one table with a ``day`` column). Written aside, then renamed."""
    folder = root / f"day={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(m), "organization_id": str(m.organization_id), "day": day} for m in metrics]
    table = pa.Table.from_pylist(rows, schema=_SCHEMA).drop_columns(["day"])  # the path carries it
    target = folder / "part-00000.parquet"
    tmp = folder / f".part-00000.parquet.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def quota_use(metrics: list[TenantMetrics]) -> list[QuotaUse]:
    """Every tenant quota in force, with what is used of it."""
    uses = []
    for m in metrics:
        if m.monthly_events_limit is not None:
            uses.append(QuotaUse(m.organization_id, m.organization_name, "monthly_events",
                                 m.events_this_month, m.monthly_events_limit))
        if m.storage_quota_gb is not None:
            uses.append(QuotaUse(m.organization_id, m.organization_name, "storage",
                                 m.storage_bytes, m.storage_quota_gb * GIB))
    return uses
