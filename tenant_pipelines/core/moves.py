"""Online moves of one tenant between placements: pooled, partition and schema.

A tenant keeps writing while it moves. The steps, each recorded in
``tenant_pipelines.tenant_moves`` so that a crash at any point resumes on the next run:

1. **copying**: the target made ready (its schema, or its dedicated partition attached
   empty), capture triggers on the source (``fn_tenant_move_capture``, with a WHEN clause
   naming the tenant: no other tenant's row fires them), then its rows copied in batches of
   at most ``batch_rows``, at the pace of ``db/pacing.py`` (adaptive by default: as fast as
   the writers allow), each batch one transaction that also records how far it got; then catch-ups (the logged keys re-copied) until few keys are left.
2. **verified**: in one REPEATABLE READ snapshot, per table, the row count and a content hash
   of both sides, but for the keys still logged (the final catch-up re-copies those), equal.
3. **cut_over**: one short transaction under the tenant's advisory lock, taken EXCLUSIVE (its
   writers take it SHARED in ``fn_set_tenant_context``; only they wait, at most
   ``CUTOVER_LOCK_TIMEOUT_MS`` per try): the final catch-up, a check of what it copied, and
   the routing flip (``fn_record_placement``). From here the source is out of every route:
   the capture triggers refuse writes that still reach it.
4. the old copy removed (a schema dropped, a partition detached concurrently and dropped, a
   pool's rows deleted in batches, paced like the copy), the triggers and the log dropped, the move's row deleted.

Moves between ``pooled`` and ``partition`` stay the partition promotion of
``core.partitions`` (both live under ``usage_events_mt``, which cannot hold a tenant's rows
twice); a dedicated tenant goes back to the pool by way of a schema (two online moves).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tenant_pipelines.core import placement as placements
from tenant_pipelines.db.pacing import FIXED, Pace, Pacer, PaceReport, wal_position, wal_since
from tenant_pipelines.core.partitions import ensure_tenant_partition, require_known_tenant
from tenant_pipelines.db.locks import LockRetries, run_with_lock_timeout
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError

POOLED, PARTITION, SCHEMA = placements.POOLED, placements.PARTITION, placements.SCHEMA
KINDS = (POOLED, PARTITION, SCHEMA)
# The tables a placement holds, by their names in a tenant schema, parents before children
# (foreign keys): core/placement.py SCHEMA_TABLES, the one list of them. And their keys.
MOVED_TABLES = tuple(placements.SCHEMA_TABLES.values())
KEYS = {"usage_events": ("id", "timestamp")}
KEY_TYPES = {"id": "uuid", "timestamp": "timestamptz"}
# The primary keys: what an upsert of the catch-up conflicts on.
PRIMARY_KEYS = {"usage_events": ("organization_id", "id", "timestamp")}
# The fixed pace's batch and rate: 250 rows of a usage event (about 135 bytes) are about 32 KiB, and
# bench/pace_cost.py measured a copy at 4 MB/s in 32 KiB batches within 1.2x of two writers' p99
# (1.16x, 1.13x) where larger batches at the same rate were not (256 KiB 1.86x, 1.61x). The pace of
# before, 5,000-row batches (about 660 KiB) at 8 MB/s, took a writer to 2.16x (bench/placement.py).
# A batch counts as the larger of its rows and the WAL it wrote (Pacer.done): a move's copy writes
# several times its rows' size in WAL (index entries, whole pages after a checkpoint).
DEFAULT_BATCH_ROWS = 250
ADAPTIVE_BATCH_ROWS = 50_000  # the adaptive pace's largest (while nobody writes)
FIXED_MAX_MB_PER_S = 4.0
ROW_BYTES_GUESS = 200.0  # a row's size until the first batch says
CUTOVER_LOCK_TIMEOUT_MS = 100
CUTOVER_ATTEMPTS = 200  # about 100 s of a tenant transaction that does not end, then give up
CATCH_UP_UNTIL = 500  # keys left in the log when the mover stops catching up and verifies
VERIFY_CHUNKS = 64  # ranges of ids the verification reads the usage events in, paced
CUTOVER_KEYS = 100  # keys left when it cuts over: the final catch-up under the tenant's lock is that short
# The copy's, catch-ups' and cleanup's commits do not wait for the WAL flush: a crash loses the
# last batches together with the record of how far they got, and the move resumes before them.
# The tenant's and other tenants' commits then do not queue behind a flush of the mover's WAL.
_NO_FLUSH_WAIT = "SET LOCAL synchronous_commit = off"
_MOVE_LOCK = 0x6D6F_7665  # "move": with hashtext(tenant), one mover per tenant at a time
_TIERING_LOCK = 0x7469_6572  # core/tiering.py's, with hashtext(tenant) (tiering imports no core module)
MiB = 1024 * 1024


class MoveRefused(TenantPipelinesError):
    """The move cannot start (or go on) safely; nothing was changed."""

    exit_code = 2


@dataclass
class MoveReport:
    tenant: str
    from_kind: str
    to_kind: str
    from_location: str = ""
    to_location: str = ""
    moved: bool = False  # False: already there
    resumed_from: str | None = None
    rows_copied: dict[str, int] = field(default_factory=dict)
    keys_caught_up: int = 0
    bytes_copied: int = 0
    hashes: dict[str, list] = field(default_factory=dict)  # table -> [count, hash] checked on both sides
    cutover_lock_wait_ms: float = 0.0
    cutover_ms: float = 0.0
    cutover_keys: int = 0
    lock_retries: int = 0
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    hops: list[str] = field(default_factory=list)
    pace: PaceReport | None = None  # how the copy and the cleanup paced themselves

    @property
    def duration_s(self) -> float:
        return sum(self.steps.values())


@dataclass(frozen=True)
class Home:
    """One side of a move: where the tenant's rows of each table are."""

    kind: str
    location: str  # the schema, or the relation in public holding its usage events

    def read(self, table: str) -> sql.Composable:
        """The relation to read the tenant's rows of ``table`` from (filtered by tenant)."""
        if self.kind == SCHEMA:
            return sql.Identifier(self.location, table)
        if table == "usage_events":
            return sql.Identifier("public", self.location)
        return sql.Identifier("public", table)

    def write(self, table: str) -> sql.Composable:
        """The relation to write them into: the parent, which routes a public row to the
        tenant's partition or to the pool's month."""
        if self.kind == SCHEMA:
            return sql.Identifier(self.location, table)
        return sql.Identifier("public", "usage_events_mt" if table == "usage_events" else table)

    def capture_on(self, table: str) -> sql.Identifier:
        """Where the capture triggers go: the relation the tenant's writes reach (a trigger on
        a partitioned table is on each of its partitions, months made later included)."""
        if self.kind == SCHEMA:
            return sql.Identifier(self.location, table)
        if table == "usage_events":
            return sql.Identifier("public", self.location)
        return sql.Identifier("public", table)


def _key(table: str) -> tuple[str, ...]:
    return KEYS.get(table, ("id",))


def _trigger_name(tenant: uuid.UUID) -> str:
    return "tenant_move_" + tenant.hex


def _target_location(conn: psycopg.Connection, tenant: uuid.UUID, kind: str) -> str:
    if kind == SCHEMA:
        return conn.execute("SELECT fn_tenant_schema_name(%s)", (tenant,)).fetchone()[0]
    if kind == PARTITION:
        return placements.partition_name(tenant)
    return placements.SHARED_PARTITION


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidInput(f"placement {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def move_tenant(
    conn: psycopg.Connection,
    tenant_id: object,
    to_kind: str,
    *,
    batch_rows: int | None = None,
    pace: Pace = Pace(),
    log: Callable[[str], None] = lambda message: None,
    stop_after: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> MoveReport:
    """Move ``tenant_id`` to a placement of kind ``to_kind``, online; resume its move if one
    is recorded. ``conn``: an admin connection in autocommit mode. ``batch_rows``: the
    largest batch (None: ADAPTIVE_BATCH_ROWS), or the fixed pace's batch (None:
    DEFAULT_BATCH_ROWS). ``pace``: how the copy and the cleanup pace
    themselves (db/pacing.py; its ``batch_blocks`` is not used: batches are rows).
    ``stop_after`` (a step name) stops there, as a crash would: for tests."""
    check_kind(to_kind)
    if batch_rows is None:
        batch_rows = DEFAULT_BATCH_ROWS if pace.method == FIXED else ADAPTIVE_BATCH_ROWS
    if not 1 <= batch_rows <= 1_000_000:
        raise InvalidInput(f"batch of {batch_rows} rows: give 1 to 1000000")
    tenant = require_known_tenant(conn, tenant_id)
    if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_MOVE_LOCK, str(tenant))).fetchone()[0]:
        raise MoveRefused(f"tenant {tenant}: another run is moving it now; wait for it to finish")
    try:
        # Tiering's lock on the tenant too (core/tiering.py takes it per tenant run): its months
        # are not swapped for copies in other tablespaces while this copies them, and the other way.
        if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_TIERING_LOCK, str(tenant))).fetchone()[0]:
            raise MoveRefused(f"tenant {tenant}: a tiering run is moving its months now; re-run when it is done")
        try:
            with Pacer(conn, pace, log=log, sleep=sleep) as pacer:
                report = _move(conn, tenant, to_kind, batch_rows, pacer, log, stop_after)
            report.pace = pacer.report()
            return report
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_TIERING_LOCK, str(tenant)))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_MOVE_LOCK, str(tenant)))


def _move(conn, tenant, to_kind, batch_rows: int, pacer: Pacer, log, stop_after) -> MoveReport:
    move = _recorded_move(conn, tenant)
    current = placements.placement_of(conn, tenant)
    if move is not None and move["to_kind"] != to_kind:
        raise MoveRefused(
            f"tenant {tenant}: a move to {move['to_kind']} is in progress (step {move['step']}); "
            f"finish it with --to {move['to_kind']} first")
    if move is None and current.kind == to_kind:
        return MoveReport(str(tenant), current.kind, to_kind, current.location, current.location, moved=False)
    if move is None and {current.kind, to_kind} == {POOLED, PARTITION}:
        if to_kind == PARTITION:
            return _promote(conn, tenant, current, log)
        log(f"tenant {tenant}: partition -> pooled goes by way of a schema (two online moves)")
        first = _move(conn, tenant, SCHEMA, batch_rows, pacer, log, stop_after)
        second = _move(conn, tenant, POOLED, batch_rows, pacer, log, stop_after)
        second.from_kind, second.from_location = first.from_kind, first.from_location
        second.hops = [f"{PARTITION} -> {SCHEMA}", f"{SCHEMA} -> {POOLED}"]
        second.steps = {f"1 {k}": v for k, v in first.steps.items()} | {f"2 {k}": v for k, v in second.steps.items()}
        second.rows_copied = {t: first.rows_copied.get(t, 0) + second.rows_copied.get(t, 0)
                              for t in set(first.rows_copied) | set(second.rows_copied)}
        return second

    report = MoveReport(str(tenant), current.kind if move is None else move["from_kind"], to_kind)
    retries = LockRetries()
    if move is None:
        source = Home(current.kind, current.location)
        target = Home(to_kind, _target_location(conn, tenant, to_kind))
        started = time.monotonic()
        _refuse_unknown_data(conn, tenant, source, target)
        conn.execute(
            "INSERT INTO tenant_pipelines.tenant_moves (organization_id, from_kind, from_location, to_kind, to_location, step)"
            " VALUES (%s, %s, %s, %s, %s, 'copying')",
            (tenant, source.kind, source.location, target.kind, target.location))
        report.steps["begin"] = time.monotonic() - started
        step = "copying"
        log(f"tenant {tenant}: moving {source.kind} ({source.location}) -> {target.kind} ({target.location})")
    else:
        source = Home(move["from_kind"], move["from_location"])
        target = Home(move["to_kind"], move["to_location"])
        step = report.resumed_from = move["step"]
        log(f"tenant {tenant}: resuming its move to {target.kind} at step {step}")
    report.from_location, report.to_location = source.location, target.location

    if step in ("copying", "verified"):
        started = time.monotonic()
        _prepare_target(conn, tenant, source, target)
        _install_capture(conn, tenant, source, retries)
        report.steps["prepare"] = time.monotonic() - started
        if stop_after == "prepare":
            return report
        started = time.monotonic()
        last_key = move["last_key"] if move is not None and step == "copying" else None
        if step == "copying":
            _copy(conn, tenant, source, target, report, batch_rows, pacer, last_key, log)
        report.steps["copy"] = time.monotonic() - started
        if stop_after == "copy":
            return report
        started = time.monotonic()
        for _ in range(20):
            caught = _catch_up(conn, tenant, source, target)
            report.keys_caught_up += caught
            if _logged(conn, tenant) <= CATCH_UP_UNTIL:
                break
        report.steps["catch_up"] = time.monotonic() - started
        started = time.monotonic()
        report.hashes = _verify(conn, tenant, source, target, pacer)
        _set_step(conn, tenant, "verified", {"hashes": report.hashes})
        report.steps["verify"] = time.monotonic() - started
        log(f"tenant {tenant}: verified " + ", ".join(f"{t} {c} rows" for t, (c, _) in report.hashes.items()))
        if stop_after == "verify":
            return report
        started = time.monotonic()
        for _ in range(20):  # what the tenant wrote during the verification, outside its lock
            report.keys_caught_up += _catch_up(conn, tenant, source, target)
            if _logged(conn, tenant) <= CUTOVER_KEYS:
                break
        _cutover(conn, tenant, source, target, report, retries)
        report.steps["cutover"] = time.monotonic() - started
        log(f"tenant {tenant}: cut over to {target.kind} ({target.location}): lock waited "
            f"{report.cutover_lock_wait_ms:.1f} ms, held {report.cutover_ms:.1f} ms, {report.cutover_keys} keys")
        if stop_after == "cutover":
            return report
    started = time.monotonic()
    _remove_old_copy(conn, tenant, source, target, batch_rows, pacer, retries, log)
    report.steps["cleanup"] = time.monotonic() - started
    report.moved = True
    report.lock_retries = retries.count
    return report


def _promote(conn: psycopg.Connection, tenant: uuid.UUID, current: placements.Placement,
             log: Callable[[str], None]) -> MoveReport:
    started = time.monotonic()
    result = ensure_tenant_partition(conn, tenant)
    if placements.placement_of(conn, tenant).kind != PARTITION:
        raise MoveRefused(f"tenant {tenant}: not promoted to a dedicated partition: {result.note or 'its policy says pooled'}; "
                          "set its placement override to partition (placement move does)")
    log(f"tenant {tenant}: promoted to {result.partition} ({result.rows_moved} rows moved under its lock)")
    report = MoveReport(str(tenant), current.kind, PARTITION, current.location, result.partition or "", moved=True)
    report.rows_copied = {"usage_events": result.rows_moved}
    report.steps["promote"] = time.monotonic() - started
    report.lock_retries = result.lock_retries
    return report


def _recorded_move(conn: psycopg.Connection, tenant: uuid.UUID) -> dict | None:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM tenant_pipelines.tenant_moves WHERE organization_id = %s", (tenant,)).fetchone()


def _set_step(conn: psycopg.Connection, tenant: uuid.UUID, step: str, detail: dict | None = None) -> None:
    conn.execute(
        "UPDATE tenant_pipelines.tenant_moves SET step = %s,"
        " steps = steps || jsonb_build_object(%s::text, jsonb_build_object('at', now()) || %s)"
        " WHERE organization_id = %s", (step, step, Jsonb(detail or {}), tenant))


def _count(conn: psycopg.Connection, relation: sql.Composable, tenant: uuid.UUID) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE organization_id = %s").format(relation),
                        (tenant,)).fetchone()[0]


def _tables_not_carried(conn: psycopg.Connection, schema: str) -> list[tuple[str, int]]:
    """Tables of ``schema`` (a tenant's) that hold rows and that a move does not carry: a
    `-- tenant tables` migration that created a table in every schema, say, without teaching
    SCHEMA_TABLES and fn_create_tenant_schema about it (sql/README.md). Dropping the schema after
    a move out of it would lose their rows. (name, rows), by name."""
    names = [r[0] for r in conn.execute(
        """SELECT c.relname FROM pg_class c
            WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
              AND c.relname <> ALL(%s::text[])
            ORDER BY 1""", (schema, list(MOVED_TABLES))).fetchall()]
    out = []
    for name in names:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]
        if rows:
            out.append((name, rows))
    return out


def _refuse_tables_not_carried(conn: psycopg.Connection, tenant: uuid.UUID, schema: str) -> None:
    found = _tables_not_carried(conn, schema)
    if found:
        listed = ", ".join(f"{name} ({rows} rows)" for name, rows in found)
        raise MoveRefused(
            f"tenant {tenant}: schema {schema} holds rows in {listed}, which a move does not carry (it carries "
            f"{', '.join(MOVED_TABLES)}) and dropping the schema afterwards would lose: add the table to "
            "core/placement.py SCHEMA_TABLES and fn_create_tenant_schema (sql/README.md, 'a new table'), or take "
            "those rows out of the schema, then re-run")


def _refuse_unknown_data(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home) -> None:
    """A target that already holds rows of the tenant that no recorded move put there cannot be
    verified against the source, and a source schema with rows a move does not carry would lose
    them: refuse, before anything changes."""
    if source.kind == SCHEMA:
        _refuse_tables_not_carried(conn, tenant, source.location)
    if target.kind == SCHEMA:
        exists = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (target.location,)).fetchone()[0]
        if not exists:
            return
        for table in MOVED_TABLES:
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                            (f"{target.location}.{table}",)).fetchone()[0] and _count(conn, target.read(table), tenant):
                raise MoveRefused(
                    f"tenant {tenant}: schema {target.location} exists with rows in {table} that no move put there; "
                    "back them up and drop the schema (or restore them into the tenant first), then re-run")
    else:
        for table in MOVED_TABLES:
            relation = target.write(table)
            if _count(conn, relation, tenant):
                raise MoveRefused(
                    f"tenant {tenant}: public {table} already has rows of this tenant that no move put there; "
                    "remove them (or move them into its schema by hand) first, then re-run")


def _prepare_target(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home) -> None:
    if target.kind == SCHEMA:
        oldest = None
        if source.kind != SCHEMA:
            oldest = conn.execute(sql.SQL('SELECT min("timestamp") FROM {} WHERE organization_id = %s').format(
                source.read("usage_events")), (tenant,)).fetchone()[0]
        run_with_lock_timeout(conn, f"tenant {tenant}: creating its schema",
                              lambda c: c.execute("SELECT fn_create_tenant_schema(%s, (%s::timestamptz AT TIME ZONE 'UTC')::date)", (tenant, oldest)))
    elif target.kind == PARTITION:
        result = ensure_tenant_partition(conn, tenant)
        if not conn.execute("SELECT fn_is_partition_of(%s, 'usage_events_mt')", (target.location,)).fetchone()[0]:
            raise MoveRefused(f"tenant {tenant}: its dedicated partition could not be attached ({result.note}); "
                              "see partition_config.leaf_budget")


def _install_capture(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, retries: LockRetries) -> None:
    """The capture triggers, one set per source relation. CREATE TRIGGER takes SHARE ROW
    EXCLUSIVE on the relation: a pooled source's writers of other tenants wait for it at most
    CUTOVER_LOCK_TIMEOUT_MS a try."""
    name = _trigger_name(tenant)
    for table in MOVED_TABLES:
        relation = source.capture_on(table)
        exists = conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s AND tgparentid = 0",
            (relation.as_string(conn), name + "_ins")).fetchone()
        if exists:
            continue
        literal = sql.Literal(str(tenant))
        statements = [
            sql.SQL("CREATE TRIGGER {} AFTER INSERT ON {} FOR EACH ROW WHEN (NEW.organization_id = {}::uuid)"
                    " EXECUTE FUNCTION public.fn_tenant_move_capture({})").format(
                sql.Identifier(name + "_ins"), relation, literal, sql.Literal(table)),
            sql.SQL("CREATE TRIGGER {} AFTER UPDATE ON {} FOR EACH ROW"
                    " WHEN (NEW.organization_id = {}::uuid OR OLD.organization_id = {}::uuid)"
                    " EXECUTE FUNCTION public.fn_tenant_move_capture({})").format(
                sql.Identifier(name + "_upd"), relation, literal, literal, sql.Literal(table)),
            sql.SQL("CREATE TRIGGER {} AFTER DELETE ON {} FOR EACH ROW WHEN (OLD.organization_id = {}::uuid)"
                    " EXECUTE FUNCTION public.fn_tenant_move_capture({})").format(
                sql.Identifier(name + "_del"), relation, literal, sql.Literal(table)),
        ]
        run_with_lock_timeout(conn, f"tenant {tenant}: capturing its writes to {relation.as_string(conn)}",
                              lambda c: [c.execute(s) for s in statements],
                              attempts=20, at_most_ms=CUTOVER_LOCK_TIMEOUT_MS, retries=retries)


def _drop_capture(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, retries: LockRetries) -> None:
    name = _trigger_name(tenant)
    for table in MOVED_TABLES:
        relation = source.capture_on(table)
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation.as_string(conn),)).fetchone()[0]:
            continue
        run_with_lock_timeout(
            conn, f"tenant {tenant}: dropping its capture triggers on {relation.as_string(conn)}",
            lambda c: [c.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(name + s), relation))
                       for s in ("_ins", "_upd", "_del")],
            attempts=20, at_most_ms=CUTOVER_LOCK_TIMEOUT_MS, retries=retries)


def _column_names(conn: psycopg.Connection, table: str) -> list[str]:
    """The tenant table's columns, in the shared table's order (a schema's are LIKE it)."""
    relation = "usage_events_mt" if table == "usage_events" else table
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (f"public.{relation}",)).fetchall()]


def _columns(conn: psycopg.Connection, table: str, alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, n) if alias else sql.Identifier(n)
                              for n in _column_names(conn, table))


def _copy(conn, tenant, source: Home, target: Home, report: MoveReport, batch_rows: int, pacer: Pacer,
          last_key: dict | None, log) -> None:
    """Each table's rows, in key order, a batch (as many rows as the pacer says, at most
    ``batch_rows``) a transaction that records how far it got; rows already there (a resumed
    copy) are skipped by their key."""
    row_bytes = ROW_BYTES_GUESS
    done = dict(last_key or {})
    for table in MOVED_TABLES:
        if done.get(table) == "done":
            continue
        columns, key = _columns(conn, table), _key(table)
        key_sql = sql.SQL(", ").join(sql.Identifier(k) for k in key)
        after = done.get(table)
        copied = 0
        while True:
            where = sql.SQL("organization_id = %s")
            params: list = [tenant]
            if after is not None:
                where = sql.SQL("organization_id = %s AND ({}) > ({})").format(
                    key_sql, sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(KEY_TYPES[k])) for k in key))
                params += list(after)
            query = sql.SQL(
                "WITH batch AS (SELECT {cols} FROM {src} WHERE {where} ORDER BY {key} LIMIT %s),"
                " copied AS (INSERT INTO {dst} ({cols}) SELECT {cols} FROM batch ON CONFLICT DO NOTHING)"
                " SELECT count(*), sum(pg_column_size(b.*)),"
                "        (SELECT ARRAY[{key_text}] FROM batch b ORDER BY {key_b} LIMIT 1)"
                " FROM batch b").format(
                cols=columns, src=source.read(table), dst=target.write(table), where=where, key=key_sql,
                key_text=sql.SQL(", ").join(sql.SQL("b.{}::text").format(sql.Identifier(k)) for k in key),
                key_b=sql.SQL(", ").join(sql.SQL("b.{} DESC").format(sql.Identifier(k)) for k in key))
            pacer.mark()
            with conn.transaction():
                conn.execute(_NO_FLUSH_WAIT)
                lsn = wal_position(conn)
                n, size, last = conn.execute(query, params + [pacer.batch_rows(row_bytes, batch_rows)]).fetchone()
                if n:
                    after = last
                    done[table] = after
                else:
                    done[table] = "done"
                conn.execute("UPDATE tenant_pipelines.tenant_moves SET last_key = %s WHERE organization_id = %s",
                             (Jsonb(done), tenant))
                wal = wal_since(conn, lsn)
            if not n:
                break
            copied += n
            report.bytes_copied += int(size or 0)
            row_bytes = max(1.0, int(size or 0) / n)
            pacer.done(int(size or 0), wal)
        report.rows_copied[table] = report.rows_copied.get(table, 0) + copied
        log(f"tenant {tenant}: copied {copied} rows of {table}")


def _logged(conn: psycopg.Connection, tenant: uuid.UUID) -> int:
    return conn.execute("SELECT count(*) FROM tenant_pipelines.tenant_move_log WHERE organization_id = %s",
                        (tenant,)).fetchone()[0]


def _catch_up(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home) -> int:
    """One transaction: the logged keys this transaction sees are re-copied (the target's
    version deleted, the source's current one inserted) and forgotten. Children's keys are
    deleted before parents', parents' inserted first."""
    with conn.transaction():
        conn.execute(_NO_FLUSH_WAIT)
        return sum(len(ids) for ids in _apply_log(conn, tenant, source, target).values())


def _apply_log(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home) -> dict[str, list]:
    """The logged keys this transaction sees, applied and forgotten: each key's source row
    upserted into the target, parents first; keys the source no longer has deleted from the
    target, children first (so foreign keys hold at every statement). Returns the keys, by table."""
    taken = conn.execute(
        "WITH taken AS (DELETE FROM tenant_pipelines.tenant_move_log WHERE organization_id = %s"
        " RETURNING table_name, row_id)"
        " SELECT table_name, array_agg(DISTINCT row_id) FROM taken GROUP BY table_name",
        (tenant,)).fetchall()
    keys = dict(taken)
    for table in MOVED_TABLES:
        if table in keys:
            names = _column_names(conn, table)
            conn.execute(sql.SQL(
                "INSERT INTO {dst} ({cols}) SELECT {cols} FROM {src} WHERE organization_id = %s AND id = ANY(%s)"
                " ON CONFLICT ({pk}) DO UPDATE SET {sets}").format(
                dst=target.write(table), src=source.read(table),
                cols=sql.SQL(", ").join(sql.Identifier(n) for n in names),
                pk=sql.SQL(", ").join(sql.Identifier(k) for k in PRIMARY_KEYS.get(table, ("id",))),
                sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                                        for n in names)),
                (tenant, keys[table]))
    for table in reversed(MOVED_TABLES):
        if table in keys:
            conn.execute(sql.SQL(
                "DELETE FROM {dst} d WHERE d.organization_id = %s AND d.id = ANY(%s)"
                " AND NOT EXISTS (SELECT 1 FROM {src} s WHERE s.organization_id = %s AND s.id = d.id)").format(
                dst=target.write(table), src=source.read(table)), (tenant, keys[table], tenant))
    return keys


def _fingerprint(conn: psycopg.Connection, home: Home, table: str, tenant: uuid.UUID,
                 ids: tuple[uuid.UUID, uuid.UUID] | None = None) -> tuple[int, int, int]:
    """Row count, an order-free hash (the sum of each row's 64-bit hash) and bytes of the
    tenant's rows, but those whose keys are still logged; of the ids in [lo, hi] only, if
    ``ids`` is given."""
    where = sql.SQL("") if ids is None else sql.SQL(" AND r.id BETWEEN %s AND %s")
    count, digest, size = conn.execute(sql.SQL(
        "SELECT count(*), COALESCE(sum(hashtextextended(ROW({cols})::text, 0)::numeric), 0)::text,"
        "       COALESCE(sum(pg_column_size(r.*)), 0) FROM {rel} r"
        " WHERE r.organization_id = %s{where} AND NOT EXISTS (SELECT 1 FROM tenant_pipelines.tenant_move_log l"
        "   WHERE l.organization_id = %s AND l.table_name = %s AND l.row_id = r.id)").format(
        cols=_columns(conn, table, "r"), rel=home.read(table), where=where),
        (tenant, *(ids or ()), tenant, table)).fetchone()
    return count, int(digest), int(size)


def _keys_fingerprint(conn: psycopg.Connection, home: Home, table: str, tenant: uuid.UUID, ids: list) -> list:
    """The same, of the rows with these keys only."""
    count, digest = conn.execute(sql.SQL(
        "SELECT count(*), COALESCE(sum(hashtextextended(ROW({cols})::text, 0)::numeric), 0)::text FROM {rel} r"
        " WHERE organization_id = %s AND id = ANY(%s)").format(
        cols=_columns(conn, table, "r"), rel=home.read(table)), (tenant, ids)).fetchone()
    return [count, digest]


def _verify(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home, pacer: Pacer) -> dict[str, list]:
    """Per table, count and hash equal on both sides. The usage events are read in
    VERIFY_CHUNKS ranges of ids, each range on both sides in one snapshot of its own (a
    REPEATABLE READ transaction) and compared at once; the pacer's wait comes between them,
    outside any transaction. (One snapshot over every range, as before, stayed open through
    every wait: bench/placement.py measured 35 minutes for 2,000,000 events at the adaptive
    pace's floor, holding back vacuum in the whole database all that time.) A row is in one
    range by its id, and a key changed meanwhile is still in the move's log, which both sides
    leave out, so the ranges together check every row."""
    result = {}
    for table in MOVED_TABLES:
        totals = [0, 0]
        for ids in (_id_ranges(VERIFY_CHUNKS) if table == "usage_events" else [None]):
            pacer.mark()
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                a = _fingerprint(conn, source, table, tenant, ids)
                b = _fingerprint(conn, target, table, tenant, ids)
            if a[:2] != b[:2]:
                where = "" if ids is None else f" with ids from {ids[0]} to {ids[1]}"
                raise TenantPipelinesError(
                    f"tenant {tenant}: {table} differs after the copy ({a[0]} rows{where} at {source.kind}, {b[0]} at "
                    f"{target.kind}); nothing was switched: re-run to resume, or abandon the move")
            totals[0] += a[0]
            totals[1] += a[1]
            pacer.done(a[2] + b[2])
        result[table] = [totals[0], str(totals[1])]
    return result


def _id_ranges(n: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """[lo, hi] ranges of uuids, ``n`` of them, covering every uuid."""
    top = 1 << 128
    bounds = [i * top // n for i in range(n + 1)]
    return [(uuid.UUID(int=bounds[i]), uuid.UUID(int=bounds[i + 1] - 1)) for i in range(n)]


def _cutover(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home, report: MoveReport,
             retries: LockRetries) -> None:
    def flip(c: psycopg.Connection) -> None:
        asked = time.monotonic()
        c.execute("SELECT pg_advisory_xact_lock(fn_tenant_lock_key(%s))", (tenant,))
        got = time.monotonic()
        report.cutover_lock_wait_ms = (got - asked) * 1000
        keys = _apply_log(c, tenant, source, target)
        report.cutover_keys = sum(len(ids) for ids in keys.values())
        # The snapshot verification covered every row but the logged ones; these are the
        # logged ones, so both sides are now equal row for row. Only they are compared here,
        # so the tenant's writers do not wait for a scan of its tables.
        for table, ids in keys.items():
            a, b = _keys_fingerprint(c, source, table, tenant, ids), _keys_fingerprint(c, target, table, tenant, ids)
            if a != b:
                raise TenantPipelinesError(f"tenant {tenant}: {table} differs at cutover ({a[0]} rows at {source.kind}, "
                                           f"{b[0]} at {target.kind}); nothing was switched: re-run to resume")
        _set_step(c, tenant, "cut_over")
        c.execute("SELECT fn_record_placement(%s, %s, %s)", (tenant, target.kind, target.location))
        report.cutover_ms = (time.monotonic() - got) * 1000

    # A transaction of the tenant's in flight holds its lock SHARED: the cutover gives up after
    # 100 ms so that its writers queue no longer than that behind it, and tries again soon.
    run_with_lock_timeout(conn, f"tenant {tenant}: cutting over", flip, attempts=CUTOVER_ATTEMPTS,
                          at_most_ms=CUTOVER_LOCK_TIMEOUT_MS, retries=retries, backoff_s=0.05, max_backoff_s=0.5)


def _remove_old_copy(conn: psycopg.Connection, tenant: uuid.UUID, source: Home, target: Home, batch_rows: int,
                     pacer: Pacer, retries: LockRetries, log: Callable[[str], None]) -> None:
    if source.kind == SCHEMA:
        # Checked again here: rows may have reached such a table since the move began. The tenant
        # is in its new placement already; the old schema, out of every route, stays until then.
        _refuse_tables_not_carried(conn, tenant, source.location)
        run_with_lock_timeout(conn, f"tenant {tenant}: dropping schema {source.location}",
                              lambda c: (c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                  sql.Identifier(source.location))),
                                  c.execute("DELETE FROM tenant_schemas WHERE organization_id = %s", (tenant,))),
                              attempts=20, at_most_ms=CUTOVER_LOCK_TIMEOUT_MS, retries=retries)
    else:
        for table in reversed(MOVED_TABLES):
            if table == "usage_events" and source.kind == PARTITION:
                continue
            relation = source.read(table)
            row_bytes = ROW_BYTES_GUESS
            while True:
                pacer.mark()
                with conn.transaction():
                    conn.execute(_NO_FLUSH_WAIT)
                    lsn = wal_position(conn)
                    n, size = conn.execute(sql.SQL(
                        "WITH gone AS (DELETE FROM {rel} AS d WHERE d.organization_id = %s AND ({key}) IN"
                        " (SELECT {key} FROM {rel} WHERE organization_id = %s LIMIT %s) RETURNING pg_column_size(d.*) AS size)"
                        " SELECT count(*), coalesce(sum(size), 0) FROM gone").format(
                        rel=relation, key=sql.SQL(", ").join(sql.Identifier(k) for k in _key(table))),
                        (tenant, tenant, pacer.batch_rows(row_bytes, batch_rows))).fetchone()
                    wal = wal_since(conn, lsn)
                if n == 0:
                    break
                row_bytes = max(1.0, size / n)
                pacer.done(int(size), wal)
        _drop_capture(conn, tenant, source, retries)
        if source.kind == PARTITION:
            _drop_partition(conn, tenant, source.location, retries)
    log(f"tenant {tenant}: old copy at {source.kind} ({source.location}) removed")
    with conn.transaction():
        conn.execute("DELETE FROM tenant_pipelines.tenant_move_log WHERE organization_id = %s", (tenant,))
        conn.execute("DELETE FROM tenant_pipelines.tenant_moves WHERE organization_id = %s", (tenant,))


def _drop_partition(conn: psycopg.Connection, tenant: uuid.UUID, partition: str, retries: LockRetries) -> None:
    """DETACH and DROP, in one transaction. usage_events_mt has a DEFAULT partition (the pool),
    so DETACH cannot be CONCURRENTLY: it locks the parent, for an instant, and gives up after
    CUTOVER_LOCK_TIMEOUT_MS to try again, so that an open transaction elsewhere stalls other
    tenants' writers that long at most."""
    def detach_and_drop(c: psycopg.Connection) -> None:
        if c.execute("SELECT fn_is_partition_of(%s, 'usage_events_mt')", (partition,)).fetchone()[0]:
            c.execute(sql.SQL("ALTER TABLE public.usage_events_mt DETACH PARTITION {}").format(
                sql.Identifier("public", partition)))
        c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("public", partition)))

    run_with_lock_timeout(conn, f"tenant {tenant}: detaching and dropping {partition}", detach_and_drop,
                          attempts=50, at_most_ms=CUTOVER_LOCK_TIMEOUT_MS, retries=retries)


def abandon_move(conn: psycopg.Connection, tenant_id: object) -> bool:
    """Roll back a move that has not cut over: its triggers, its target copy and its records
    gone, the tenant where it was. A move that has cut over is finished instead (re-run it).
    Returns whether there was a move to abandon."""
    tenant = require_known_tenant(conn, tenant_id)
    move = _recorded_move(conn, tenant)
    if move is None:
        return False
    if move["step"] == "cut_over":
        raise MoveRefused(f"tenant {tenant}: its move to {move['to_kind']} has cut over; re-run it to finish, "
                          "or move it back")
    source, target = Home(move["from_kind"], move["from_location"]), Home(move["to_kind"], move["to_location"])
    retries = LockRetries()
    if target.kind == SCHEMA:
        _refuse_tables_not_carried(conn, tenant, target.location)
    _drop_capture(conn, tenant, source, retries)
    if target.kind == SCHEMA:
        run_with_lock_timeout(conn, f"tenant {tenant}: dropping schema {target.location}",
                              lambda c: (c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                  sql.Identifier(target.location))),
                                  c.execute("DELETE FROM tenant_schemas WHERE organization_id = %s", (tenant,))))
    else:
        with conn.transaction():
            for table in reversed(MOVED_TABLES):
                conn.execute(sql.SQL("DELETE FROM {} WHERE organization_id = %s").format(target.write(table)), (tenant,))
    with conn.transaction():
        conn.execute("DELETE FROM tenant_pipelines.tenant_move_log WHERE organization_id = %s", (tenant,))
        conn.execute("DELETE FROM tenant_pipelines.tenant_moves WHERE organization_id = %s", (tenant,))
    return True


def desired_placement(conn: psycopg.Connection, tenant_id: object) -> str | None:
    """What policy says for the tenant: its override, else its tier's; None: no policy (the
    partition rule of core.partitions decides between pooled and partition)."""
    row = conn.execute(
        "SELECT COALESCE(tc.placement_override, tl.placement) FROM tenant_classifications tc"
        " JOIN tier_limits tl ON tl.tier = tc.tier WHERE tc.organization_id = %s", (tenant_id,)).fetchone()
    return row[0] if row else None


def moves_in_progress(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT organization_id, from_kind, from_location, to_kind, to_location, step, started_at"
            " FROM tenant_pipelines.tenant_moves ORDER BY started_at").fetchall()


def set_placement_override(conn: psycopg.Connection, tenant_id: object, kind: str | None) -> bool:
    """Record where the tenant belongs whatever its tier says (``tenant_classifications
    .placement_override``; None clears it), so that the placement sensor keeps it there. Returns
    whether the tenant has a classification to record it in (one without has no policy at all)."""
    if kind is not None:
        check_kind(kind)
    tenant = require_known_tenant(conn, tenant_id)
    return conn.execute("UPDATE tenant_classifications SET placement_override = %s WHERE organization_id = %s",
                        (kind, tenant)).rowcount == 1


@dataclass(frozen=True)
class PlacementStatus:
    """One tenant's placement beside its policy, and its move in progress if any."""

    tenant: uuid.UUID
    tier: str | None  # tenant tier; None: no classification
    kind: str
    location: str
    since: object  # datetime, or None: not in the registry (pooled by default)
    policy: str | None  # override, else its tier's; None: no policy
    override: str | None
    move_to: str | None = None
    move_step: str | None = None
    move_started_at: object = None  # datetime

    @property
    def misplaced(self) -> bool:
        """Policy names a placement it is not in, and no move is under way."""
        return self.policy is not None and self.policy != self.kind and self.move_step is None


def placement_status(conn: psycopg.Connection, tenants: list | None = None) -> list[PlacementStatus]:
    """Every tenant (organizations, the registry's and the movers' tenants), or those of
    ``tenants``: its placement, its policy and its move in progress, in tenant order."""
    from tenant_pipelines.db.session import parse_tenant_id

    ids = None if tenants is None else [parse_tenant_id(t) for t in tenants]
    rows = conn.execute(
        """WITH t AS (
               SELECT id AS organization_id FROM organizations WHERE %(all)s
               UNION SELECT organization_id FROM public.tenant_placements WHERE %(all)s
               UNION SELECT organization_id FROM tenant_pipelines.tenant_moves WHERE %(all)s
               UNION SELECT unnest(%(ids)s::uuid[]))
           SELECT t.organization_id, tc.tier, COALESCE(p.kind, %(pooled)s), COALESCE(p.location, %(pool)s), p.since,
                  COALESCE(tc.placement_override, tl.placement), tc.placement_override,
                  m.to_kind, m.step, m.started_at
             FROM t
             LEFT JOIN public.tenant_placements p ON p.organization_id = t.organization_id
             LEFT JOIN tenant_classifications tc ON tc.organization_id = t.organization_id
             LEFT JOIN tier_limits tl ON tl.tier = tc.tier
             LEFT JOIN tenant_pipelines.tenant_moves m ON m.organization_id = t.organization_id
            ORDER BY t.organization_id""",
        {"all": ids is None, "ids": ids or [], "pooled": POOLED, "pool": placements.SHARED_PARTITION}).fetchall()
    return [PlacementStatus(*row) for row in rows]
