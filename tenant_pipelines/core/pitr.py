"""Point-in-time restore of one tenant, on pgBackRest's WAL archive (docs/pitr.md).

pgBackRest recovers a whole cluster to a point in time; this module puts one tenant back to a
time T while every other tenant keeps its data:

1. pgBackRest restores the cluster as of T into a *sandbox* (a temporary data folder, its own
   loopback port, no archiving, ``recovery_target_time`` = T, promoted at the target);
2. the tenant is read from the sandbox with the Parquet backup path (``backups.backup_tenant``:
   one snapshot, exact types, a manifest with content hashes), into the sandbox's folder;
3. that backup is restored with the restore path (``backups.restore_tenant``: verified, then
   one transaction under the tenant's lock into the live tables, or a scratch schema, or
   another database);
4. the sandbox is removed in every case; one left by a crashed run is removed by the next run.

Everything the restore can refuse (T in the future, before the oldest backup, after the newest
archived WAL, a tenant without ``point_in_time_recovery``, a bad target) is refused before the
sandbox is made; a tenant that did not exist at T is refused from the sandbox, before anything
is written. Nothing here runs a process: the caller passes an ``Engine`` (the local stack's
``tenant_pipelines.local.pgbackrest``) that runs pgBackRest and the sandbox's server.

Also here: what ``pgbackrest info --output=json`` says, in plain values (``StanzaInfo``), the
health of the WAL archive, each PITR tenant's restorable window, and the retention that keeps
every promised window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Protocol

import psycopg

from tenant_pipelines.core.backups import backup_tenant, restore_tenant
from tenant_pipelines.core.backups.restore import RestoreReport, _move_refusal, _valid_schema_name, check_migrated
from tenant_pipelines.db.session import parse_tenant_id
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError, UnknownTenant

# Full backups are kept for at least this many days when no PITR tenant promises more.
DEFAULT_RETENTION_DAYS = 14
# How long a restore (and the health check) waits for a forced WAL switch to be archived.
ARCHIVE_WAIT_S = 60.0
WAL_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})")


class PitrError(TenantPipelinesError):
    """pgBackRest or the sandbox failed (exit 1): nothing was changed."""


class PitrRefused(InvalidInput):
    """A point-in-time restore that cannot be done as asked (exit 2): nothing was changed."""


def cipher_pass(master_key: bytes) -> str:
    """The pgBackRest repository's cipher pass, derived from the backup master key (never the key
    itself): base64 of HMAC-SHA256(key, "tenant-pipelines pgbackrest cipher v1")."""
    digest = hmac.new(master_key, b"tenant-pipelines pgbackrest cipher v1", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


# -- what pgbackrest info says ------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterBackup:
    label: str
    type: str  # full, diff, incr
    started_at: datetime
    stopped_at: datetime
    lsn_start: str
    lsn_stop: str
    wal_start: str | None
    wal_stop: str | None
    size: int  # the cluster's size at the backup
    repo_size: int  # what the backup takes in the repository (compressed)
    delta: int  # bytes copied by this backup

    @property
    def seconds(self) -> float:
        return (self.stopped_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class StanzaInfo:
    stanza: str
    status: str
    backups: list[ClusterBackup]
    archive_id: str | None
    wal_min: str | None
    wal_max: str | None

    @property
    def oldest(self) -> ClusterBackup | None:
        return self.backups[0] if self.backups else None

    @property
    def newest(self) -> ClusterBackup | None:
        return self.backups[-1] if self.backups else None


def _ts(value: int) -> datetime:
    return datetime.fromtimestamp(int(value), tz=timezone.utc)


def parse_info(data: object, stanza: str) -> StanzaInfo:
    """``pgbackrest info --output=json`` (a list of stanzas) as a StanzaInfo of ``stanza``."""
    entries = [s for s in data if isinstance(s, dict) and s.get("name") == stanza] if isinstance(data, list) else []
    if not entries:
        raise PitrError(f"pgBackRest stanza {stanza}: not found in 'pgbackrest info'; "
                        "create it ('tenant-pipelines db up' does for the embedded cluster)")
    entry = entries[0]
    backups = []
    for b in entry.get("backup") or []:
        info, repo = b.get("info") or {}, (b.get("info") or {}).get("repository") or {}
        backups.append(ClusterBackup(
            label=b["label"], type=b["type"],
            started_at=_ts(b["timestamp"]["start"]), stopped_at=_ts(b["timestamp"]["stop"]),
            lsn_start=(b.get("lsn") or {}).get("start") or "", lsn_stop=(b.get("lsn") or {}).get("stop") or "",
            wal_start=(b.get("archive") or {}).get("start"), wal_stop=(b.get("archive") or {}).get("stop"),
            size=int(info.get("size") or 0), repo_size=int(repo.get("size") or 0), delta=int(info.get("delta") or 0),
        ))
    backups.sort(key=lambda b: (b.stopped_at, b.label))
    archives = entry.get("archive") or []
    archive = archives[-1] if archives else {}
    status = (entry.get("status") or {}).get("message") or ""
    return StanzaInfo(stanza, status, backups, archive.get("id"), archive.get("min"), archive.get("max"))


def backup_for(info: StanzaInfo, to_time: datetime) -> ClusterBackup | None:
    """The newest backup that was consistent (stopped) at or before ``to_time``."""
    # pgBackRest records the stop time in whole seconds (truncated): a second more is safe.
    candidates = [b for b in info.backups if b.stopped_at + timedelta(seconds=1) <= to_time]
    return candidates[-1] if candidates else None


def segment_index(name: str, segment_size: int = 16 * 1024 * 1024) -> tuple[int, int] | None:
    """(timeline, position) of a WAL segment file name; None for other files (history, backup)."""
    m = WAL_SEGMENT_RE.match(name)
    if not m or len(name.split("-")[0].split(".")[0]) != 24:
        return None
    per_log = 0x100000000 // segment_size
    return int(m.group(1), 16), int(m.group(2), 16) * per_log + int(m.group(3), 16)


def archive_gaps(segment_names: list[str], since: str | None) -> list[str]:
    """The WAL segments missing between ``since`` (the oldest backup's first segment) and the
    newest archived one, whatever timeline each is on: every one is needed to replay to any
    time in between."""
    if since is None:
        return []
    start = segment_index(since)
    positions: dict[int, str] = {}
    for name in segment_names:
        index = segment_index(name)
        if index is not None and start is not None and index[1] >= start[1]:
            positions.setdefault(index[1], name[:24])
    if not positions or start is None:
        return [since]
    top = max(positions)
    timeline = start[0]
    per_log = 0x100
    missing = []
    for pos in range(start[1], top + 1):
        if pos not in positions:
            missing.append(f"{timeline:08X}{pos // per_log:08X}{pos % per_log:08X}")
    return missing


# -- the archive's health and the PITR windows --------------------------------------------------

@dataclass
class ArchiverState:
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    archive_mode: str
    archive_timeout_s: int


def archiver_state(conn: psycopg.Connection) -> ArchiverState:
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,"
        " last_failed_time, current_setting('archive_mode'),"
        " (SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout') FROM pg_stat_archiver"
    ).fetchone()
    return ArchiverState(*row)


@dataclass
class ArchivedUpTo:
    """How far the archive holds the cluster's WAL: every transaction committed at or before
    ``covered_until`` can be replayed. ``ok`` is False when a forced switch was not archived."""

    covered_until: datetime | None
    switched_segment: str | None
    ok: bool
    detail: str = ""


def archive_now(conn: psycopg.Connection, *, wait_s: float = ARCHIVE_WAIT_S) -> ArchivedUpTo:
    """Switch to a new WAL segment (``pg_switch_wal``) and wait, on pg_stat_archiver's state, until
    the segment holding everything written before the switch is archived. The clock read in the
    same statement as the switch is then covered. ``conn`` is an autocommit superuser connection
    to the archived cluster (any database)."""
    # A WAL record first, so that the switch always closes a segment (and wakes the archiver).
    try:
        conn.execute("SELECT pg_logical_emit_message(false, 'tenant-pipelines', 'archive probe')")
        segment, switched_at = conn.execute(
            "SELECT pg_walfile_name(pg_switch_wal()), clock_timestamp()").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise PitrRefused(f"user {conn.info.user} may not switch WAL (pg_switch_wal): use a superuser's DSN "
                          "(BILLING_DATABASE_URL), or GRANT EXECUTE ON FUNCTION pg_switch_wal() and "
                          "pg_logical_emit_message(boolean, text, text) to it") from None
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:  # a standby, or wal_level minimal
        raise PitrRefused(f"cannot switch WAL on this server ({str(exc).strip().splitlines()[0]}); point "
                          "BILLING_DATABASE_URL at the primary") from None
    deadline = time.monotonic() + wait_s
    while True:
        state = archiver_state(conn)
        if state.last_archived_wal is not None and state.last_archived_wal[:24] >= segment:
            return ArchivedUpTo(switched_at, segment, True)
        if time.monotonic() > deadline:
            failing = (f"; archiving of {state.last_failed_wal} failed at {state.last_failed_time:%Y-%m-%d %H:%M:%S}Z"
                       if state.last_failed_time is not None and state.last_failed_wal else "")
            return ArchivedUpTo(state.last_archived_time, segment, False,
                                f"WAL segment {segment} was not archived within {wait_s:.0f}s{failing}")
        time.sleep(0.05)


@dataclass
class ArchiveHealth:
    passed: bool
    problems: list[str]
    newest_archived_wal: str | None
    newest_archived_at: datetime | None
    archive_timeout_s: int
    failed_count: int
    gaps: list[str] = field(default_factory=list)


def wal_archive_health(conn: psycopg.Connection, info: StanzaInfo, segment_names: list[str], *,
                       now: datetime | None = None, wait_s: float = ARCHIVE_WAIT_S) -> ArchiveHealth:
    """Archiving works (a forced switch is archived within ``wait_s``), the newest archived WAL is
    recent (within ``archive_timeout`` plus a minute), and no segment is missing since the oldest
    backup's first one (``segment_names``: the repository's archive listing)."""
    problems: list[str] = []
    state = archiver_state(conn)
    if state.archive_mode == "off":
        problems.append("archive_mode is off: nothing is archived; start the cluster with archiving "
                        "('tenant-pipelines db down; tenant-pipelines db up')")
        return ArchiveHealth(False, problems, state.last_archived_wal, state.last_archived_time,
                             state.archive_timeout_s, state.failed_count)
    probe = archive_now(conn, wait_s=wait_s)
    if not probe.ok:
        problems.append(f"archiving does not work: {probe.detail}; check the repository (writable? its key?) "
                        "and the server log")
    state = archiver_state(conn)
    now = now or datetime.now(timezone.utc)
    limit = timedelta(seconds=max(state.archive_timeout_s, 0) + 60)
    if state.last_archived_time is None:
        problems.append("no WAL segment has ever been archived")
    elif now - state.last_archived_time > limit:
        problems.append(f"the newest archived WAL ({state.last_archived_wal}) is from "
                        f"{state.last_archived_time:%Y-%m-%d %H:%M:%S}Z, older than archive_timeout + 60 s")
    gaps = archive_gaps(segment_names, info.oldest.wal_start if info.oldest else None)
    if gaps:
        problems.append(f"{len(gaps)} WAL segment(s) missing from the archive since the oldest backup "
                        f"(first: {gaps[0]}): no point-in-time restore can cross them; take a full backup")
    if info.oldest is None:
        problems.append("the repository holds no backup: run 'tenant-pipelines cluster-backup --type full'")
    return ArchiveHealth(not problems, problems, state.last_archived_wal, state.last_archived_time,
                         state.archive_timeout_s, state.failed_count, gaps)


@dataclass(frozen=True)
class PitrTenant:
    tenant: str
    name: str
    tier: str | None
    promised_days: int


def pitr_tenants(conn: psycopg.Connection) -> list[PitrTenant]:
    """Tenants with ``tenant_backup_config.point_in_time_recovery``, with the window they are
    promised: their ``retention_days`` (the enterprise contract's custom retention)."""
    rows = conn.execute(
        """SELECT c.organization_id::text, o.name, t.tier, c.retention_days
             FROM tenant_backup_config c JOIN organizations o ON o.id = c.organization_id
             LEFT JOIN tenant_classifications t ON t.organization_id = c.organization_id
            WHERE c.point_in_time_recovery ORDER BY 1"""
    ).fetchall()
    return [PitrTenant(*row) for row in rows]


def retention_days(conn: psycopg.Connection, default: int = DEFAULT_RETENTION_DAYS) -> int:
    """How many days of full backups (and the WAL after them) the repository keeps: the longest
    window any PITR tenant is promised, and at least ``default``. Passed to every backup as
    ``repo1-retention-full`` with ``repo1-retention-full-type=time``: pgBackRest then keeps the
    newest full backup older than that many days and everything after it."""
    longest = max((t.promised_days for t in pitr_tenants(conn)), default=0)
    return max(default, longest)


@dataclass(frozen=True)
class Window:
    tenant: str
    name: str
    promised_days: int
    restorable_from: datetime | None
    restorable_until: datetime | None

    def met(self, now: datetime) -> bool:
        return self.restorable_from is not None and self.restorable_from <= now - timedelta(days=self.promised_days)


def pitr_windows(conn: psycopg.Connection, info: StanzaInfo, archived_until: datetime | None) -> list[Window]:
    """For each PITR tenant, the window it can be restored to: from the oldest backup's end to the
    newest archived WAL's time."""
    start = info.oldest.stopped_at if info.oldest else None
    return [Window(t.tenant, t.name, t.promised_days, start, archived_until if start else None)
            for t in pitr_tenants(conn)]


def take_cluster_backup(conn: psycopg.Connection, engine: Engine, backup_type: str = "diff"
                        ) -> tuple[ClusterBackup, int]:
    """A full or differential backup of the cluster, then pgBackRest's expiry with a retention
    (``retention_days``) that keeps every PITR tenant's promised window. Returns the backup and
    the retention in days. A diff with no full backup yet is made a full one by pgBackRest."""
    if backup_type not in ("full", "diff"):
        raise InvalidInput(f"backup type {backup_type!r}: give full or diff")
    days = retention_days(conn)
    return engine.backup(backup_type, days), days


# -- the restore -------------------------------------------------------------------------------

@dataclass
class Sandbox:
    """A cluster restored as of a time, running on ``dsn``'s loopback port."""

    folder: Path
    port: int
    size_bytes: int
    wal_replayed_bytes: int
    restore_seconds: float
    replay_seconds: float


class Engine(Protocol):
    """What the restore needs from pgBackRest and the local server binaries."""

    stanza: str

    def info(self) -> StanzaInfo: ...

    def backup(self, backup_type: str, retention_full_days: int) -> ClusterBackup: ...

    def archive_segments(self, info: StanzaInfo | None = None) -> list[str]: ...

    def clean_stale_sandboxes(self, log: Callable[[str], None]) -> list[Path]: ...

    def sandbox(self, backup: ClusterBackup, to_time: datetime, log: Callable[[str], None]
                ) -> AbstractContextManager[Sandbox]: ...

    def release(self, sandbox: Sandbox) -> None:
        """The sandbox's server is no longer needed (the tenant has been read from it): stop it
        and start deleting its data while the restore goes on; the rest of the sandbox goes
        when its context ends, which waits for this."""


@dataclass
class PitrReport:
    tenant: str
    to_time: datetime
    backup_label: str
    target: str
    rows: dict[str, int]
    sandbox_bytes: int
    wal_replayed_bytes: int
    seconds: dict[str, float]

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _fmt(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f") + "Z"


def check_pitr_request(conn: psycopg.Connection, tenant: uuid.UUID, to_time: datetime, info: StanzaInfo, *,
                       force: bool, now: datetime) -> ClusterBackup:
    """Every refusal that needs no sandbox, before anything is made. Returns the backup to restore."""
    if to_time.tzinfo is None:
        raise InvalidInput(f"--to-time {to_time.isoformat()} has no time zone; add one (Z for UTC)")
    if to_time > now:
        raise PitrRefused(f"tenant {tenant}: {_fmt(to_time)} is in the future (now {_fmt(now)}); "
                          "give a time in the past")
    row = conn.execute("SELECT point_in_time_recovery FROM tenant_backup_config WHERE organization_id = %s",
                       (tenant,)).fetchone()
    if not force and not (row and row[0]):
        raise PitrRefused(f"tenant {tenant}: point-in-time recovery is not enabled for it "
                          "(tenant_backup_config.point_in_time_recovery); enable it, or pass --force")
    if info.oldest is None:
        raise PitrRefused(f"tenant {tenant}: the pgBackRest repository (stanza {info.stanza}) holds no backup; "
                          "run 'tenant-pipelines cluster-backup --type full' first")
    backup = backup_for(info, to_time)
    if backup is None:
        raise PitrRefused(f"tenant {tenant}: {_fmt(to_time)} is before the oldest cluster backup "
                          f"({info.oldest.label}, consistent from {_fmt(info.oldest.stopped_at)}); "
                          "give a later time, or restore a Parquet backup with --as-of")
    return backup


def restore_tenant_to_time(
    conn: psycopg.Connection,
    tenant_id: object,
    to_time: datetime,
    engine: Engine,
    *,
    master_key: bytes | None,
    target_conn: psycopg.Connection | None = None,
    into_schema: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = lambda message: None,
    now: datetime | None = None,
    archive_wait_s: float = ARCHIVE_WAIT_S,
) -> PitrReport:
    """Restore one tenant as it was at ``to_time``. ``conn``: an idle autocommit admin connection
    to the archived cluster's billing database (a superuser: it switches WAL); ``target_conn``:
    where the tenant is restored (default ``conn``: its live tables, or ``into_schema``).
    Progress goes to ``log``, one line as each step starts and ends."""
    tenant = parse_tenant_id(tenant_id)
    target = target_conn if target_conn is not None else conn
    if into_schema is not None:
        _valid_schema_name(into_schema)
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    seconds: dict[str, float] = {}

    # 0: every refusal that needs no sandbox.
    info = engine.info()
    backup = check_pitr_request(conn, tenant, to_time, info, force=force, now=now)
    check_migrated(target)
    if into_schema is not None and target.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", (into_schema,)).fetchone()[0]:
        raise InvalidInput(f"schema {into_schema} exists already; pick a new name for the scratch schema, or drop it")
    if into_schema is None:  # the restore path refuses a tenant that is moving: say so before the sandbox
        move = target.execute("SELECT to_kind, step FROM tenant_pipelines.tenant_moves WHERE organization_id = %s",
                              (tenant,)).fetchone()
        if move is not None:
            raise _move_refusal(tenant, *move)
    archived = archive_now(conn, wait_s=archive_wait_s)
    if archived.covered_until is None or to_time > archived.covered_until:
        newest = _fmt(archived.covered_until) if archived.covered_until else "never"
        raise PitrRefused(f"tenant {tenant}: {_fmt(to_time)} is after the newest archived WAL (covered until "
                          f"{newest}; {archived.detail or 'archiving is behind'}); the restore would stop short: "
                          "fix archiving (check wal_archive_healthy) or give an earlier time")
    seconds["checks"] = time.monotonic() - started
    log(f"tenant {tenant}: restoring to {_fmt(to_time)} from cluster backup {backup.label} "
        f"({backup.type}, consistent from {_fmt(backup.stopped_at)}); WAL archived up to {_fmt(archived.covered_until)}")
    for stale in engine.clean_stale_sandboxes(log):
        log(f"removed the sandbox {stale} of an earlier run that did not finish")

    # 1: the sandbox.
    t0 = time.monotonic()
    with engine.sandbox(backup, to_time, log) as sandbox:
        seconds["sandbox_restore"] = sandbox.restore_seconds
        seconds["sandbox_replay"] = sandbox.replay_seconds
        log(f"step 1/3: sandbox restored ({sandbox.size_bytes / 1e6:,.1f} MB) and replayed "
            f"{sandbox.wal_replayed_bytes / 1e6:,.1f} MB of WAL to {_fmt(to_time)} in {time.monotonic() - t0:.1f}s")
        # 2: the tenant as it was, with the backup path.
        log(f"step 2/3: reading tenant {tenant} from the sandbox with the backup path")
        t0 = time.monotonic()
        try:
            with psycopg.connect(_sandbox_dsn(conn, sandbox), autocommit=True) as sconn:
                if not sconn.execute("SELECT EXISTS (SELECT 1 FROM organizations WHERE id = %s)",
                                     (tenant,)).fetchone()[0]:
                    raise UnknownTenant(f"tenant {tenant}: did not exist at {_fmt(to_time)} (no organizations row in "
                                        "the cluster as of that time); nothing was changed; give a later time")
                extracted = backup_tenant(sconn, tenant, sandbox.folder / "extract", master_key=master_key,
                                          encrypt=master_key is not None, apply_retention_after=False)
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PitrError(f"tenant {tenant}: reading it from the sandbox failed ({text}); nothing was changed, "
                            "re-run the restore") from None
        seconds["extract"] = time.monotonic() - t0
        log(f"step 2/3: read {extracted.total_rows} rows of tenant {tenant} as of {_fmt(to_time)} in "
            f"{seconds['extract']:.1f}s")
        # The extract (verified files) is all the load needs: the sandbox's server and its copy of
        # the cluster are removed meanwhile, not after.
        engine.release(sandbox)
        # 3: the restore path.
        log(f"step 3/3: restoring tenant {tenant} into "
            + (f"schema {into_schema}" if into_schema else f"the live tables of {target.info.dbname}") + " (one transaction)")
        t0 = time.monotonic()
        restored: RestoreReport = restore_tenant(target, tenant, extracted.path, master_key=master_key,
                                                 into_schema=into_schema, allow_cleartext=True)  # written just now
        seconds["load"] = time.monotonic() - t0
        log(f"step 3/3: restored {restored.total_rows} rows into {restored.target} in {seconds['load']:.1f}s")
        t0 = time.monotonic()
    seconds["cleanup"] = time.monotonic() - t0
    seconds["total"] = time.monotonic() - started
    return PitrReport(str(tenant), to_time, backup.label, restored.target, restored.rows,
                      sandbox.size_bytes, sandbox.wal_replayed_bytes, seconds)


def _sandbox_dsn(conn: psycopg.Connection, sandbox: Sandbox) -> str:
    """The live connection's credentials and database, on the sandbox's port (the sandbox is a
    copy of the cluster: the same roles and passwords)."""
    from psycopg.conninfo import make_conninfo

    params = conn.info.get_parameters()
    return make_conninfo(user=params.get("user") or conn.info.user, password=conn.info.password or "",
                         dbname=conn.info.dbname, host="127.0.0.1", port=str(sandbox.port))
