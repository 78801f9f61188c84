"""Storage tiering: month partitions move hot -> warm -> cold as they age.

The policy lives in the database (``storage_tiers``, ``tiering_policy``) and is evaluated by
``fn_tier_plan()``; a DBA's ``fn_tier_usage_data()`` applies the same plan. Here each move
is its own short transaction with ``lock_timeout`` and a retry, so a crash loses at most the
move in flight (PostgreSQL rolls it back) and a re-run picks up where it stopped. Partitions
that land in the cold tier are frozen (``VACUUM (FREEZE)``) so anti-wraparound vacuums find
them all-frozen later; autovacuum stays on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql

from tenant_pipelines.core.partitions import run_with_lock_retry
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError

TIERS = ("hot", "warm", "cold")


class MissingTablespace(TenantPipelinesError):
    exit_code = 2


@dataclass(frozen=True)
class PlannedPartition:
    partition_name: str
    tenant: str
    month_start: object
    current_tier: str | None
    target_tier: str
    current_tablespace: str
    target_tablespace: str
    misplaced_indexes: int
    bytes: int
    movable: bool

    @property
    def misplaced(self) -> bool:
        return self.current_tablespace != self.target_tablespace or self.misplaced_indexes > 0


@dataclass
class Move:
    partition: str
    from_tablespace: str
    to_tablespace: str
    bytes: int
    lock_held_s: float
    attempts: int
    frozen: bool


@dataclass
class TieringReport:
    tenant: str
    moves: list[Move] = field(default_factory=list)
    placement: dict[str, dict[str, int]] = field(default_factory=dict)  # tier -> partitions, bytes
    misplaced_left: int = 0

    @property
    def bytes_moved(self) -> int:
        return sum(m.bytes for m in self.moves)

    @property
    def lock_held_s(self) -> float:
        return sum(m.lock_held_s for m in self.moves)


def plan(conn: psycopg.Connection, tenant: object | None = None, as_of: datetime | None = None) -> list[PlannedPartition]:
    """Every month partition (of ``tenant``, or all) with its current and target tier."""
    tenant_id = parse_tenant_id(tenant) if tenant is not None else None
    rows = conn.execute(
        "SELECT partition_name, tenant::text, month_start, current_tier, target_tier, current_tablespace::text,"
        " target_tablespace::text, misplaced_indexes, bytes, movable"
        " FROM fn_tier_plan(%s, COALESCE(%s, now()))",
        (tenant_id, as_of),
    ).fetchall()
    return [PlannedPartition(*row) for row in rows]


def missing_tablespaces(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(tier, tablespace) pairs of storage_tiers whose tablespace does not exist."""
    return conn.execute(
        "SELECT storage_tier, tablespace::text FROM storage_tiers st"
        " WHERE NOT EXISTS (SELECT 1 FROM pg_tablespace t WHERE t.spcname = st.tablespace) ORDER BY rank"
    ).fetchall()


def require_tablespaces(conn: psycopg.Connection) -> None:
    missing = missing_tablespaces(conn)
    if missing:
        tier, name = missing[0]
        raise MissingTablespace(
            f"tablespace {name} for the {tier} tier does not exist: create it as a superuser outside a "
            f"transaction (CREATE TABLESPACE {name} LOCATION '/path'; the folder must exist, be empty and "
            f"belong to the server's OS user), or name an existing one with "
            f"'tenant-pipelines tiering configure --{tier} NAME'"
        )


def configure_tablespaces(conn: psycopg.Connection, tablespaces: dict[str, str]) -> None:
    """Point tiers at existing tablespaces, e.g. ``{"warm": "standard_disk"}``."""
    for tier, name in tablespaces.items():
        if tier not in TIERS:
            raise InvalidInput(f"tier {tier!r}: the tiers are hot, warm and cold")
        exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = %s)", (name,)).fetchone()[0]
        if not exists:
            raise MissingTablespace(
                f"tablespace {name!r} for the {tier} tier does not exist: create it first "
                f"(CREATE TABLESPACE ... LOCATION '/path', as a superuser, outside a transaction)"
            )
    with conn.transaction():
        for tier, name in tablespaces.items():
            conn.execute("UPDATE storage_tiers SET tablespace = %s WHERE storage_tier = %s", (name, tier))


def tier_tenant(
    conn: psycopg.Connection, tenant: object, *, as_of: datetime | None = None, attempts: int = 5
) -> TieringReport:
    """Move the tenant's month partitions whose age puts them in another tier. Idempotent:
    a second run moves nothing. ``conn`` must be idle; it is used in autocommit for VACUUM."""
    tenant_id = str(parse_tenant_id(tenant))
    require_tablespaces(conn)
    report = TieringReport(tenant=tenant_id)
    for part in plan(conn, tenant_id, as_of):
        if not (part.movable and part.misplaced):
            continue

        def move(c: psycopg.Connection, part: PlannedPartition = part) -> tuple[int, float]:
            c.execute("SELECT set_config('lock_timeout', lock_timeout, true) FROM partition_config")
            started = time.monotonic()
            moved = c.execute("SELECT fn_move_partition(%s, %s)", (part.partition_name, part.target_tablespace)).fetchone()[0]
            return moved, started

        (moved_bytes, started), tries = run_with_lock_retry(
            conn, f"tenant {tenant_id}: moving {part.partition_name} to {part.target_tablespace}", move,
            attempts=attempts,
        )
        held = time.monotonic() - started  # from the ALTER to COMMIT: the time under ACCESS EXCLUSIVE
        frozen = False
        if part.target_tier == "cold":
            _vacuum_freeze(conn, part.partition_name)
            frozen = True
        report.moves.append(Move(part.partition_name, part.current_tablespace, part.target_tablespace,
                                 moved_bytes, held, tries, frozen))
    after = plan(conn, tenant_id, as_of)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"partitions": 0, "bytes": 0})
    for part in after:
        tier = part.current_tier or f"unmapped:{part.current_tablespace}"
        counts[tier]["partitions"] += 1
        counts[tier]["bytes"] += part.bytes
    report.placement = dict(counts)
    report.misplaced_left = sum(1 for p in after if p.movable and p.misplaced)
    return report


def _vacuum_freeze(conn: psycopg.Connection, partition: str) -> None:
    previous = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(sql.Identifier("public", partition)))
    finally:
        conn.autocommit = previous


def misplaced(conn: psycopg.Connection, tenants: list[str] | None = None, as_of: datetime | None = None) -> list[PlannedPartition]:
    """Movable month partitions not in the tablespace their policy says."""
    wanted = None if tenants is None else {str(parse_tenant_id(t)) for t in tenants}
    return [p for p in plan(conn, None, as_of) if p.movable and p.misplaced and (wanted is None or p.tenant in wanted)]


