"""Storage tiering: month partitions move hot -> warm -> cold as they age.

The policy lives in the database (``storage_tiers``, ``tiering_policy``) and is evaluated by
``fn_tier_plan()``; a DBA's ``fn_tier_usage_data()`` applies the same plan in one go.

Two ways to move a partition:

- ``online`` (the default): copy-and-swap, paced (sql/0014). A shadow copy of the partition
  is made in the target tablespace in batches, one short transaction each, at the pace of
  ``db/pacing.py`` (adaptive by default: as fast as the tenant's writers allow); a trigger
  logs the keys of rows written meanwhile, which are
  copied again before the swap; the swap (DETACH the old table, ATTACH the copy) takes
  milliseconds under lock. Live writers see neither a long lock nor a burst of I/O.
- ``set-tablespace``: ``ALTER TABLE ... SET TABLESPACE``, one transaction per partition: the
  fastest (a file copy), but it writes the whole partition and its WAL at full disk speed,
  and writers' commits queue behind that (docs/benchmarks/tiering.md). For maintenance windows.

Every step runs with ``lock_timeout`` and retries. A crash loses at most the move in flight:
the partition itself stays whole, and the next run drops the leftovers and starts that move
again. Partitions that land in the cold tier are frozen (``VACUUM (FREEZE)``, paced like the
copy) so anti-wraparound vacuums find them all-frozen later; autovacuum stays on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator, TypedDict, TypeVar, Unpack

import psycopg
from psycopg import sql

from tenant_pipelines.db.pacing import FIXED_BATCH_BLOCKS, FIXED_MB_PER_S, Pace, Pacer, PaceReport
from tenant_pipelines.db.locks import run_with_lock_timeout
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError

T = TypeVar("T")

TIERS = ("hot", "warm", "cold")
ONLINE = "online"
SET_TABLESPACE = "set-tablespace"
METHODS = (ONLINE, SET_TABLESPACE)
# The fixed pace's rate and batch (db/pacing.py): a writer's commit that meets a batch queues
# behind that batch's WAL and pages, so its batches are small (docs/tiering.md).
DEFAULT_MAX_MB_PER_S = FIXED_MB_PER_S
DEFAULT_BATCH_BLOCKS = FIXED_BATCH_BLOCKS  # 32 KiB of the partition per copy transaction
# What a move writes is handed to the disk every FLUSH_AFTER (backend_flush_after), so that no
# checkpoint or kernel writeback finds hundreds of MB of it to flush at once.
FLUSH_AFTER = "256kB"
# The online copy's session settings.
COPY_SETTINGS = {
    # A batch need not wait for the disk. Crash recovery replays a prefix of the WAL, so a swap
    # that survives a crash brings every batch before it; one that does not leaves the partition
    # as it was and its move starts again. Waiting would cost an fsync per batch, which the
    # tenant's writers queue behind to flush their own commits.
    "synchronous_commit": "off",
    # The shadow's pages that the mover's backend writes out go to disk now, 256 KiB at a time,
    # rather than piling up in the kernel's cache until a checkpoint or the kernel's own
    # writeback flushes hundreds of MB at once while the tenant's commits wait behind it.
    "backend_flush_after": FLUSH_AFTER,
}
SWAP_LOCK_TIMEOUT_MS = 100  # the online swap's lock_timeout, if partition_config's is longer (or 0: none)
# Advisory lock space (with hashtext(tenant)) held by a session while it tiers a tenant: two
# runs moving the same tenant would drop each other's moves in progress.
_TIERING_LOCK = 0x7469_6572  # "tier"
POOL = "pool"  # the tiering report's and lock's name for the pool's months
BLOCK = 8192
MiB = 1024 * 1024


class MissingTablespace(TenantPipelinesError):
    exit_code = 2


@dataclass(frozen=True)
class PlannedPartition:
    partition_name: str
    tenant: str | None
    month_start: object
    current_tier: str | None
    target_tier: str
    current_tablespace: str
    target_tablespace: str
    misplaced_indexes: int
    bytes: int
    movable: bool
    schema: str = "public"  # where the partition is: public, or a schema tenant's tenant_<hex>

    @property
    def qualified_name(self) -> str:
        """The partition's name, schema-qualified when it is not in public (a schema tenant's
        months are all named usage_events_pYYYYMM)."""
        return _qualified(self.schema, self.partition_name)

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.partition_name)

    @property
    def misplaced(self) -> bool:
        return self.current_tablespace != self.target_tablespace or self.misplaced_indexes > 0


@dataclass
class Move:
    partition: str  # PlannedPartition.qualified_name
    from_tablespace: str
    to_tablespace: str
    bytes: int
    lock_held_s: float
    attempts: int
    frozen: bool
    method: str = SET_TABLESPACE
    seconds: float = 0.0  # the whole move, copy and pauses included
    rows_caught_up: int = 0  # rows written during the copy, copied again before the swap
    # Where the time went, for whoever measures moves (bench/tiering.py):
    copy: str = "rows"  # online: "rows" (the paced copy) or "files" (nobody was writing: a file copy)
    copy_s: float | None = None  # online: the paced block copy, its sleeps included
    copy_bytes: int | None = None  # online: the heap bytes that copy went through
    slept_s: float = 0.0  # online: the pacer's sleeps during that copy
    vacuum_s: float | None = None  # the ANALYZE or VACUUM (FREEZE, ANALYZE) within the move, if any


@dataclass
class TieringReport:
    tenant: str | None
    moves: list[Move] = field(default_factory=list)
    placement: dict[str, dict[str, int]] = field(default_factory=dict)  # tier -> partitions, bytes
    misplaced_left: int = 0
    restarted: list[str] = field(default_factory=list)  # moves a crash left behind, started again
    pace: PaceReport | None = None  # online moves: how the copy paced itself

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
        " target_tablespace::text, misplaced_indexes, bytes, movable, partition_schema::text"
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
    """Point tiers at existing tablespaces, e.g. ``{"warm": "standard_disk"}``. Every name is
    checked before any is written: a tier that is not hot, warm or cold, an empty name,
    ``pg_global`` (it holds only shared catalogs: no table can move there) and a tablespace
    that does not exist are each refused with the fix, and nothing changes."""
    for tier, name in tablespaces.items():
        if tier not in TIERS:
            raise InvalidInput(f"tier {tier!r}: the tiers are hot, warm and cold")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"tablespace for the {tier} tier: the name is empty; give an existing "
                               "tablespace's name (SELECT spcname FROM pg_tablespace lists them)")
        if name == "pg_global":
            raise InvalidInput(f"tablespace pg_global for the {tier} tier: it holds only PostgreSQL's shared "
                               "catalogs and no table can be moved into it; name another tablespace "
                               "(pg_default, or one made with CREATE TABLESPACE)")
        exists = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_tablespace WHERE spcname = %s)", (name,)).fetchone()[0]
        if not exists:
            raise MissingTablespace(
                f"tablespace {name!r} for the {tier} tier does not exist: create it first "
                f"(CREATE TABLESPACE ... LOCATION '/path', as a superuser, outside a transaction)"
            )
    with conn.transaction():
        for tier, name in tablespaces.items():
            conn.execute("UPDATE storage_tiers SET tablespace = %s WHERE storage_tier = %s", (name, tier))


def storage_tier_tablespaces(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(storage tier, tablespace) for hot, warm and cold, in that order."""
    return [(tier, name) for tier, name in
            conn.execute("SELECT storage_tier, tablespace FROM storage_tiers ORDER BY rank").fetchall()]


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidInput(f"tiering method {method!r}: use one of {', '.join(METHODS)}")


class TieringOptions(TypedDict, total=False):
    """How ``tier_tenant`` and ``tier_pool`` move partitions; a missing one takes its default.

    ``as_of``: the time the partitions' ages are taken at (default: now). ``attempts``: tries of
    each step that meets a lock timeout (5). ``method``: ``online`` (the default) or
    ``set-tablespace``. ``pace``: how the online copy paces itself (``Pace()``: adaptive, see
    db/pacing.py). ``log``: gets one line per move. ``sleep``: how the paced copy waits
    (``time.sleep``)."""

    as_of: datetime | None
    attempts: int
    method: str
    pace: Pace
    log: Callable[[str], None]
    sleep: Callable[[float], None]


def tier_tenant(conn: psycopg.Connection, tenant: object, **options: Unpack[TieringOptions]) -> TieringReport:
    """Move the tenant's month partitions whose age puts them in another tier: a dedicated
    tenant's (``usage_events_mt_t_<hex>_pYYYYMM``) or a schema tenant's
    (``tenant_<hex>.usage_events_pYYYYMM``). Idempotent: a second run moves nothing. ``conn``
    must be idle; every step commits on its own. A pooled tenant has no months of its own: its
    rows move with the pool's (``tier_pool``)."""
    return _tier(conn, str(parse_tenant_id(tenant)), **options)


def tier_pool(conn: psycopg.Connection, **options: Unpack[TieringOptions]) -> TieringReport:
    """The same for the pool's month partitions (every pooled tenant's rows), by the global
    policy: the tiering_policy row for all tiers."""
    return _tier(conn, None, **options)


def _tier(conn: psycopg.Connection, tenant_id: str | None, **options: Unpack[TieringOptions]) -> TieringReport:
    check_method(options.get("method", ONLINE))
    require_tablespaces(conn)
    lock_name = tenant_id or POOL
    who = f"tenant {tenant_id}" if tenant_id else "the pool"
    if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_TIERING_LOCK, lock_name)).fetchone()[0]:
        raise TenantPipelinesError(
            f"{who}: another tiering run (or a placement move of the tenant) is moving these partitions; "
            "let it finish (pg_stat_activity shows it), then re-run")
    try:
        return _tier_partitions(conn, tenant_id, who, **options)
    finally:
        try:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_TIERING_LOCK, lock_name))
        except psycopg.Error:
            pass  # the connection is gone, and the session's lock with it


def _scope_plan(conn: psycopg.Connection, tenant_id: str | None, as_of: datetime | None) -> list[PlannedPartition]:
    if tenant_id is not None:
        return plan(conn, tenant_id, as_of)
    return [p for p in plan(conn, None, as_of) if p.tenant is None]


def _tier_partitions(conn: psycopg.Connection, tenant_id: str | None, who: str, *, as_of: datetime | None = None,
                     attempts: int = 5, method: str = ONLINE, pace: Pace = Pace(),
                     log: Callable[[str], None] = lambda message: None,
                     sleep: Callable[[float], None] = time.sleep) -> TieringReport:
    """The defaults of ``TieringOptions`` are these."""
    report = TieringReport(tenant=tenant_id or POOL)
    planned = _scope_plan(conn, tenant_id, as_of)
    report.restarted = _abandon_leftovers(conn, [(p.schema, p.partition_name) for p in planned])
    to_move = [part for part in planned if part.movable and part.misplaced]
    if to_move and method == ONLINE:
        # One pacer for the run: its baseline of the writers' commits is measured once.
        with Pacer(conn, pace, log=log, sleep=sleep) as pacer:
            for part in to_move:
                _log_move(log, who, part, _move_online(conn, who, part, attempts=attempts, pacer=pacer, log=log), report)
        report.pace = pacer.report()
    else:
        for part in to_move:
            _log_move(log, who, part, _move_set_tablespace(conn, who, part, attempts=attempts), report)
    after = _scope_plan(conn, tenant_id, as_of)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"partitions": 0, "bytes": 0})
    for part in after:
        tier = part.current_tier or f"unmapped:{part.current_tablespace}"
        counts[tier]["partitions"] += 1
        counts[tier]["bytes"] += part.bytes
    report.placement = dict(counts)
    report.misplaced_left = sum(1 for p in after if p.movable and p.misplaced)
    return report


def _log_move(log: Callable[[str], None], who: str, part: PlannedPartition, move: Move, report: TieringReport) -> None:
    log(f"{who}: moved {part.qualified_name} to {part.target_tablespace} "
        f"({move.bytes / MiB:,.1f} MiB in {move.seconds:.1f}s, {move.lock_held_s * 1000:.0f} ms under lock)")
    report.moves.append(move)


def _in_transaction(conn: psycopg.Connection, work: Callable[[psycopg.Connection], T]) -> T:
    with conn.transaction():
        return work(conn)


def _move_set_tablespace(conn: psycopg.Connection, who: str, part: PlannedPartition, *, attempts: int) -> Move:
    started = time.monotonic()

    def move(c: psycopg.Connection) -> tuple[int, float]:
        locked = time.monotonic()
        moved = c.execute("SELECT fn_move_partition(%s, %s, %s)",
                          (part.partition_name, part.target_tablespace, part.schema)).fetchone()[0]
        return moved, locked

    (moved_bytes, locked), tries = run_with_lock_timeout(
        conn, f"{who}: moving {part.qualified_name} to {part.target_tablespace}", move, attempts=attempts)
    held = time.monotonic() - locked  # from the ALTER to COMMIT: the time under ACCESS EXCLUSIVE
    frozen = part.target_tier == "cold"
    vacuum_s = None
    if frozen:
        vacuumed = time.monotonic()
        _vacuum(conn, part.table, freeze=True, rate=None)
        vacuum_s = time.monotonic() - vacuumed
    return Move(part.qualified_name, part.current_tablespace, part.target_tablespace, moved_bytes, held, tries,
                frozen, SET_TABLESPACE, time.monotonic() - started, vacuum_s=vacuum_s)


def _move_online(conn: psycopg.Connection, who: str, part: PlannedPartition, *, attempts: int, pacer: Pacer,
                 log: Callable[[str], None]) -> Move:
    what = f"{who}: moving {part.qualified_name} to {part.target_tablespace}"
    if pacer.nobody_writes():
        move = _move_files_while_nobody_writes(conn, what, part, pacer, log)
        if move is not None:
            return move
    started = time.monotonic()

    def begin(c: psycopg.Connection) -> tuple[str, int, float]:
        t = time.monotonic()
        shadow, blocks = c.execute("SELECT shadow_name, blocks FROM fn_move_begin(%s, %s, %s)",
                                   (part.partition_name, part.target_tablespace, part.schema)).fetchone()
        return shadow, blocks, t

    (shadow_name, blocks, t0), tries = run_with_lock_timeout(conn, what, begin, attempts=attempts)
    held = time.monotonic() - t0
    shadow = sql.Identifier("tenant_pipelines", shadow_name)
    try:
        copied = time.monotonic()
        slept = _copy_paced(conn, part, shadow, blocks, pacer, log, what)
        copy_s = time.monotonic() - copied
        caught_up = 0
        for _ in range(20):  # until the log is nearly empty, so that the swap's own catch-up is short
            n = _in_transaction(conn, lambda c: c.execute("SELECT fn_move_catch_up(%s, %s)",
                                                          (part.partition_name, part.schema)).fetchone()[0])
            caught_up += n
            if n < 1000:
                break
        frozen = part.target_tier == "cold"
        vacuumed = time.monotonic()
        _vacuum(conn, shadow, freeze=frozen, rate=pacer.rate())
        vacuum_s = time.monotonic() - vacuumed

        def finish(c: psycopg.Connection) -> tuple[int, float]:
            t = time.monotonic()
            return c.execute("SELECT fn_move_finish(%s, %s)", (part.partition_name, part.schema)).fetchone()[0], t

        # While the swap waits for its lock, the tenant's writers queue behind it: give up soon
        # and try again (an autovacuum of the month, say, finishes in the meantime).
        (moved_bytes, t1), more = run_with_lock_timeout(conn, what + " (swap)", finish, attempts=max(attempts, 8),
                                                     at_most_ms=SWAP_LOCK_TIMEOUT_MS)
        held += time.monotonic() - t1
        # The replaced table goes now, in a transaction of its own: no lock anyone waits for.
        # If this fails, the next run drops it (it is listed in tenant_pipelines.partition_moves).
        _abandon_quietly(conn, part.schema, part.partition_name)
    except psycopg.Error as exc:
        _abandon_quietly(conn, part.schema, part.partition_name)
        hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
        raise TenantPipelinesError(f"{what}: {exc.diag.message_primary or exc}{hint}; "
                                   "the partition is untouched and a re-run starts this move again") from None
    except BaseException:
        _abandon_quietly(conn, part.schema, part.partition_name)
        raise
    return Move(part.qualified_name, part.current_tablespace, part.target_tablespace, moved_bytes, held,
                max(tries, more), frozen, ONLINE, time.monotonic() - started, caught_up,
                copy_s=copy_s, copy_bytes=blocks * BLOCK, slept_s=slept, vacuum_s=vacuum_s)


def _move_files_while_nobody_writes(conn: psycopg.Connection, what: str, part: PlannedPartition, pacer: Pacer,
                                    log: Callable[[str], None]) -> Move | None:
    """While nobody writes: the month's files copied at disk speed (``fn_move_partition``:
    ALTER TABLE ... SET TABLESPACE, under ACCESS EXCLUSIVE on that month only). The pacer
    cancels it the moment a client waits for that lock or starts writing (the copy rolls back:
    nothing changed, and the month is copied online instead: None). Got within 100 ms or not at
    all."""
    started = time.monotonic()
    pid = conn.info.backend_pid

    statement = "SELECT fn_move_partition("

    def move(c: psycopg.Connection) -> tuple[int, float]:
        locked = time.monotonic()
        return c.execute(statement + "%s, %s, %s)",
                         (part.partition_name, part.target_tablespace, part.schema)).fetchone()[0], locked

    with pacer.stepping_aside(pid, statement) as stepped_aside:
        try:
            (moved_bytes, locked), _ = run_with_lock_timeout(conn, what, move, attempts=1,
                                                             at_most_ms=SWAP_LOCK_TIMEOUT_MS)
        except (psycopg.errors.QueryCanceled, TenantPipelinesError) as exc:
            why = stepped_aside() or (exc.diag.message_primary if isinstance(exc, psycopg.Error) else str(exc))
            if isinstance(exc, psycopg.errors.QueryCanceled) and stepped_aside() is None:
                raise  # a statement_timeout or someone else's cancel: not ours to hide
            log(f"{what}: the file copy stepped aside ({why}); copying the rows online instead")
            return None
    held = time.monotonic() - locked
    pacer.count(moved_bytes)
    frozen = part.target_tier == "cold"
    vacuum_s = None
    if frozen:
        vacuumed = time.monotonic()
        _vacuum(conn, part.table, freeze=True, rate=pacer.rate())
        vacuum_s = time.monotonic() - vacuumed
    log(f"{what}: nobody was writing: its files copied at disk speed ({moved_bytes / MiB:,.1f} MiB, "
        f"{held * 1000:.0f} ms under lock)")
    return Move(part.qualified_name, part.current_tablespace, part.target_tablespace, moved_bytes, held, 1, frozen,
                ONLINE, time.monotonic() - started, copy="files", copy_s=held, copy_bytes=moved_bytes,
                vacuum_s=vacuum_s)


def _copy_paced(conn: psycopg.Connection, part: PlannedPartition, shadow: sql.Identifier, blocks: int, pacer: Pacer,
                log: Callable[[str], None], what: str) -> float:
    """Copy the partition's blocks into the shadow, one transaction per batch, each as many
    blocks as the pacer says and followed by its wait. The pace counts the heap's blocks, not
    the WAL the batch writes, unlike a placement move's (docs/pacing.md: measured, counting the
    WAL made tiering 3.6x slower without a p99 gain that stood out of this machine's noise). A
    row met twice (an update moved it to a later block) is skipped here; the change log brings
    its last version before the swap.
    Returns the seconds spent waiting for the pacer."""
    before = pacer.report()
    waited = before.slept_s + before.paused_s
    insert = sql.SQL(
        "INSERT INTO {} SELECT * FROM {} WHERE ctid >= %s::tid AND ctid < %s::tid ON CONFLICT DO NOTHING"
    ).format(shadow, part.table)
    next_report = time.monotonic() + 10
    # Each batch is one autocommitted statement: a single round trip, so that small batches
    # cost little.
    with session_settings(conn, COPY_SETTINGS):
        first = 0
        while first < blocks:
            last = min(blocks, first + max(1, pacer.batch_bytes() // BLOCK))
            pacer.mark()
            conn.execute(insert, (f"({first},0)", f"({last},0)"))
            pacer.done((last - first) * BLOCK)
            first = last
            now = time.monotonic()
            if now >= next_report:
                rate = pacer.rate()
                log(f"{what}: {last * BLOCK / MiB:,.0f} of {blocks * BLOCK / MiB:,.0f} MiB copied "
                    f"(pace: {'no limit' if rate is None else f'{rate / MiB:.2f} MB/s'})")
                next_report = now + 10
    after = pacer.report()
    return after.slept_s + after.paused_s - waited


@contextmanager
def session_settings(conn: psycopg.Connection, settings: dict[str, str]) -> Iterator[None]:
    """Autocommit, with these session settings; then the caller's autocommit and settings as
    they were."""
    previous_autocommit = conn.autocommit
    conn.autocommit = True
    previous = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(settings),)).fetchall()
    try:
        for name, value in settings.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        yield
    finally:
        for name, value in previous:
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        conn.autocommit = previous_autocommit


def _qualified(schema: str, partition: str) -> str:
    return partition if schema == "public" else f"{schema}.{partition}"


def _abandon(conn: psycopg.Connection, schema: str, partition: str) -> None:
    run_with_lock_timeout(conn, f"partition {_qualified(schema, partition)}: dropping what an unfinished move left",
                       lambda c: c.execute("SELECT fn_move_abandon(%s, %s)", (partition, schema)))


def _abandon_leftovers(conn: psycopg.Connection, partitions: list[tuple[str, str]]) -> list[str]:
    """Drop what crashed moves of these (schema, partition) left: before the swap, the shadow,
    log and trigger (that move starts again from scratch); after it, the replaced table.
    Returns the partitions (schema-qualified but in public) whose move starts again."""
    rows = conn.execute(
        "SELECT m.partition_schema::text, m.partition_name, m.swapped_at IS NULL FROM tenant_pipelines.partition_moves m"
        " WHERE (m.partition_schema::text, m.partition_name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " ORDER BY 1, 2", ([s for s, _ in partitions], [n for _, n in partitions])).fetchall()
    for schema, name, _ in rows:
        _abandon(conn, schema, name)
    return [_qualified(schema, name) for schema, name, unfinished in rows if unfinished]


def _abandon_quietly(conn: psycopg.Connection, schema: str, partition: str) -> None:
    """After a failed move: drop its leftovers if the connection still works (else the next
    run does)."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        _abandon(conn, schema, partition)
    except (psycopg.Error, TenantPipelinesError):
        pass


def _vacuum(conn: psycopg.Connection, table: sql.Identifier, *, freeze: bool, rate: float | None) -> None:
    """VACUUM (FREEZE, ANALYZE) ``table``, or ANALYZE it, with a cost delay that keeps the
    pages it dirties near ``rate`` bytes/s (the pacer's at the time; vacuum_cost_page_dirty
    is 20, a miss 2)."""
    # Like the copy's: what it writes (hint bits, frozen tuples) goes to disk now, not in one
    # burst at the next checkpoint.
    settings = {"backend_flush_after": FLUSH_AFTER}
    if rate:
        delay_ms = 2
        settings["vacuum_cost_delay"] = f"{delay_ms}ms"
        settings["vacuum_cost_limit"] = str(max(1, min(10000, round(rate / BLOCK * 22 * delay_ms / 1000))))
    with session_settings(conn, settings):
        if freeze:
            conn.execute(sql.SQL("VACUUM (FREEZE, ANALYZE) {}").format(table))
        else:
            conn.execute(sql.SQL("ANALYZE {}").format(table))


def misplaced(conn: psycopg.Connection, tenants: list[str] | None = None, as_of: datetime | None = None) -> list[PlannedPartition]:
    """Movable month partitions not in the tablespace their policy says: of ``tenants``, or
    of every tenant and the pool. (The pool's months have ``tenant`` None.)"""
    wanted = None if tenants is None else {str(parse_tenant_id(t)) for t in tenants}
    return [p for p in plan(conn, None, as_of) if p.movable and p.misplaced and (wanted is None or p.tenant in wanted)]


