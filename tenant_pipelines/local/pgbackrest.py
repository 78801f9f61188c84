"""pgBackRest on this machine: the embedded cluster's encrypted WAL archive and backups, a user's
own stanza, and the sandboxes that point-in-time restores recover into (docs/pitr.md).

What to archive and restore is decided in ``tenant_pipelines.core.pitr``; this module only runs
Debian's ``pgbackrest`` binary and the server binaries. Everything runs as the cluster's OS
user (``postgres`` when we are root), in folders that user can reach:

- ``pgbackrest/`` beside the cluster's data (``.tenant-pipelines/pgbackrest``, or a
  ``/var/tmp/tenant-pipelines-<hash>-pgbackrest`` folder): ``pgbackrest.conf`` (mode 0600: it holds
  the repository's cipher pass, derived from the backup key), ``repo/`` (the repository,
  ``repo1-cipher-type=aes-256-cbc``), ``log/``, ``lock/``, ``spool/``;
- ``pitr/sandbox-<id>/``: one restore's sandbox (``data/``, ``tablespaces/``, ``socket/``,
  ``extract/``), with ``owner.json`` naming the process that made it. The next restore removes a
  sandbox whose process is gone (stopping its server first).

pgBackRest reaches a local server through its Unix socket: the embedded cluster gets one in
``<data_root>/socket`` (mode 0700, its OS user's), and the backup connects through it with the
superuser's password (``PGPASSWORD`` in pgBackRest's environment only).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from tenant_pipelines.core.pitr import (
    ClusterBackup,
    PitrError,
    PitrRefused,
    Sandbox,
    StanzaInfo,
    cipher_pass,
    parse_info,
)
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError
from tenant_pipelines.local.processes import OSUser, chown_tree, run_as, server_folder, server_os_user, start_on_free_port

INSTALL_HINT = "install it with 'apt-get install -y pgbackrest' (or run scripts/setup.sh)"
STANZA = "tenant-pipelines"
# The file, in the cluster's data folder, with its socket folder and archive settings;
# postgresql.conf includes it (include_if_exists), so an older cluster gets it at its next start.
SERVER_INCLUDE = "tenant_pipelines.conf"
ARCHIVE_TIMEOUT_S = 60
SANDBOX_START_TIMEOUT_S = 3600
STALE_UNOWNED_S = 120


class PgBackRestError(PitrError):
    pass


def find_pgbackrest() -> Path:
    found = shutil.which("pgbackrest") or ("/usr/bin/pgbackrest" if os.access("/usr/bin/pgbackrest", os.X_OK) else None)
    if not found:
        raise PgBackRestError(f"pgBackRest is not installed: {INSTALL_HINT}")
    return Path(found)


def _error_line(proc) -> str:
    lines = [l.strip() for l in ((proc.stderr or "") + "\n" + (proc.stdout or "")).splitlines() if l.strip()]
    errors = [l for l in lines if "ERROR" in l]
    line = (errors or lines or [f"exit code {proc.returncode}"])[0]
    return line.split("ERROR: ", 1)[-1] if "ERROR: " in line else line


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class PgBackRest:
    """pgBackRest on one stanza: ``config`` (pgbackrest.conf), run as ``user``. Implements
    ``core.pitr.Engine``: the info, backups, the archive's listing and restore sandboxes."""

    config: Path
    stanza: str
    user: OSUser
    sandbox_root: Path
    bindir: Path
    pg_user: str = "postgres"
    pg_password: str | None = None
    # Sandboxes whose server and data are being removed while their restore loads (release()).
    _releasing: dict[Path, threading.Thread] = field(default_factory=dict, repr=False, compare=False)

    # -- running pgBackRest -------------------------------------------------------------
    def run(self, command: str, *options: str, check: bool = True, stanza: bool = True, path: str | None = None):
        cmd = [str(find_pgbackrest()), f"--config={self.config}", *([f"--stanza={self.stanza}"] if stanza else []),
               "--log-level-console=warn", "--log-level-stderr=error", *options, command, *([path] if path else [])]
        env = {"PGPASSWORD": self.pg_password} if self.pg_password else None
        proc = run_as(cmd, self.user, check=False, env=env)
        if check and proc.returncode != 0:
            raise PgBackRestError(f"pgbackrest {command} (stanza {self.stanza}) failed: {_error_line(proc)}")
        return proc

    def info(self) -> StanzaInfo:
        proc = self.run("info", "--output=json")
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise PgBackRestError(f"pgbackrest info (stanza {self.stanza}) printed no JSON: {_error_line(proc)}") from None
        info = parse_info(data, self.stanza)
        if info.status not in ("ok", "") and not info.backups and "no valid backups" not in info.status:
            raise PgBackRestError(f"pgBackRest stanza {self.stanza}: {info.status}; run 'pgbackrest --config={self.config} "
                                  f"--stanza={self.stanza} info' as {self.user.name} for details")
        return info

    def backup(self, backup_type: str, retention_full_days: int) -> ClusterBackup:
        """A full or differential backup, then expiry by time: full backups (and the WAL after them)
        are kept for ``retention_full_days`` days. Returns the new backup."""
        if backup_type not in ("full", "diff", "incr"):
            raise InvalidInput(f"backup type {backup_type!r}: give full or diff")
        before = {b.label for b in self.info().backups}
        self.run("backup", f"--type={backup_type}", "--repo1-retention-full-type=time",
                 f"--repo1-retention-full={retention_full_days}")
        new = [b for b in self.info().backups if b.label not in before]
        if not new:
            raise PgBackRestError(f"pgbackrest backup (stanza {self.stanza}) finished but 'pgbackrest info' lists no new backup")
        return new[-1]

    def archive_segments(self, info: StanzaInfo | None = None) -> list[str]:
        """The WAL files in the repository's archive of the current database (names only)."""
        info = info or self.info()
        if not info.archive_id:
            return []
        proc = self.run("repo-ls", "--recurse", "--output=json", stanza=False,
                        path=f"archive/{self.stanza}/{info.archive_id}")
        try:
            listing = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise PgBackRestError(f"pgbackrest repo-ls (stanza {self.stanza}) printed no JSON") from None
        return sorted(Path(name).name for name, entry in listing.items() if entry.get("type") == "file")

    # -- sandboxes -------------------------------------------------------------------------
    def clean_stale_sandboxes(self, log: Callable[[str], None] = lambda m: None) -> list[Path]:
        """Remove every sandbox whose process is gone: stop its server, then delete it."""
        removed = []
        if not self.sandbox_root.is_dir():
            return removed
        for folder in sorted(self.sandbox_root.glob("sandbox-*")):
            try:
                owner = json.loads((folder / "owner.json").read_text())
                pid, started = int(owner["pid"]), owner.get("started")
                alive = owner.get("host") == socket.gethostname() and _process_start(pid) is not None \
                    and (started is None or _process_start(pid) == started)
            except (OSError, ValueError, KeyError, TypeError):
                alive = time.time() - folder.stat().st_mtime < STALE_UNOWNED_S  # being made right now
            if not alive:
                self._remove_sandbox(folder)
                removed.append(folder)
        return removed

    def _stop_server(self, data: Path) -> None:
        pidfile = data / "postmaster.pid"
        if not pidfile.exists():
            return
        run_as([str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "60", "-m", "immediate", "-D", str(data)],
               self.user, check=False)

    def release(self, sandbox: Sandbox) -> None:
        """Stop the sandbox's server and delete its copy of the cluster in a thread, keeping the
        folder (and the extract in it): the load runs meanwhile. ``sandbox()`` waits for it."""
        folder = sandbox.folder

        def work() -> None:
            self._stop_server(folder / "data")
            for part in ("data", "tablespaces"):
                shutil.rmtree(folder / part, ignore_errors=True)

        thread = threading.Thread(target=work, name=f"release-{folder.name}", daemon=True)
        self._releasing[folder] = thread
        thread.start()

    def _remove_sandbox(self, folder: Path) -> None:
        """Stop the sandbox's server, end whatever still works in it (a pgBackRest restore or
        archive-get whose caller was killed: each names the sandbox's folder on its command line),
        then delete it."""
        self._stop_server(folder / "data")
        deadline = time.monotonic() + 60
        while pids := _processes_in(folder):
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            raise PitrError(f"sandbox {folder}: could not remove it; remove it by hand")

    @contextmanager
    def sandbox(self, backup: ClusterBackup, to_time: datetime, log: Callable[[str], None]) -> Iterator[Sandbox]:
        """The cluster restored from ``backup`` and replayed to ``to_time`` (recovery_target_time,
        promoted there), on a free loopback port, without archiving; removed afterwards."""
        self.sandbox_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.sandbox_root, 0o711)
        if self.user.uid != os.geteuid():
            os.chown(self.sandbox_root, os.geteuid(), os.getegid())
        folder = self.sandbox_root / f"sandbox-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(mode=0o711)
        try:
            (folder / "owner.json").write_text(json.dumps(
                {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname(),
                 "to_time": to_time.isoformat(), "backup": backup.label}))
            data, tablespaces, sock = folder / "data", folder / "tablespaces", folder / "socket"
            logfile = folder / "log" / "server.log"
            for path in (data, tablespaces, sock, logfile.parent):
                path.mkdir(mode=0o700)
                chown_tree(path, self.user)
            (folder / "extract").mkdir(mode=0o700)
            t0 = time.monotonic()
            target = to_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
            log(f"step 1/3: pgBackRest restores backup {backup.label} into the sandbox {folder}")
            self.run("restore", f"--pg1-path={data}", f"--set={backup.label}", "--type=time", f"--target={target}",
                     "--target-action=promote", "--archive-mode=off", f"--tablespace-map-all={tablespaces}",
                     "--process-max=2")
            restore_seconds = time.monotonic() - t0
            size = _tree_size(folder)
            log(f"step 1/3: sandbox holds {size / 1e6:,.1f} MB; replaying WAL to {target}")
            t0 = time.monotonic()
            port = self._start_sandbox(data, sock, logfile)
            replayed = self._wait_promoted(data, port, backup, logfile, target)
            yield Sandbox(folder, port, size, replayed, restore_seconds, time.monotonic() - t0)
        finally:
            releasing = self._releasing.pop(folder, None)
            if releasing is not None:
                releasing.join()
            self._remove_sandbox(folder)
            log(f"sandbox {folder.name} removed")

    def _start_sandbox(self, data: Path, sock: Path, logfile: Path) -> int:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{sock}'",
            "archive_mode": "off",
            "archive_command": "''",
            "logging_collector": "off",
            "fsync": "off",  # a throwaway copy: nothing here has to survive a crash
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'128MB'",
        }
        with (data / "postgresql.auto.conf").open("a") as fh:
            fh.write("\n# tenant-pipelines point-in-time restore sandbox\n"
                     + "".join(f"{k} = {v}\n" for k, v in settings.items()))

        def start(port: int) -> bool:
            proc = run_as([str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(SANDBOX_START_TIMEOUT_S),
                           "-D", str(data), "-l", str(logfile), "-o", f"-p {port}"], self.user, check=False)
            if proc.returncode == 0:
                return True
            tail = _log_tail(logfile)
            if "could not bind" in tail or "Address already in use" in tail:
                return False
            raise _replay_failure(tail or proc.stderr.strip(), logfile)

        return start_on_free_port("the sandbox's PostgreSQL", None, start, error=PitrError)

    def _wait_promoted(self, data: Path, port: int, backup: ClusterBackup, logfile: Path, target: str) -> int:
        """Wait until the sandbox has reached the target and been promoted (or has died). Returns
        the bytes of WAL replayed since the backup's start."""
        import psycopg

        dsn_password = self.pg_password or ""
        while True:
            if not (data / "postmaster.pid").exists():
                raise _replay_failure(_log_tail(logfile), logfile)
            try:
                with psycopg.connect(host="127.0.0.1", port=port, dbname="postgres", user=self.pg_user,
                                     password=dsn_password, autocommit=True, connect_timeout=5) as conn:
                    while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        if not (data / "postmaster.pid").exists():
                            raise _replay_failure(_log_tail(logfile), logfile)
                        time.sleep(0.05)
                    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)",
                                            (backup.lsn_start or "0/0",)).fetchone()[0])
            except psycopg.OperationalError:
                time.sleep(0.1)


def _processes_in(folder: Path) -> list[int]:
    """Live processes whose command line names a path inside ``folder`` (a sandbox: only its own
    restore, archive-get and server do)."""
    needle = (str(folder) + "/").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _log_tail(logfile: Path) -> str:
    try:
        lines = [l for l in logfile.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    errors = [l for l in lines[-30:] if "FATAL" in l or "PANIC" in l]
    return (errors or lines[-1:] or [""])[-1].strip()


def _replay_failure(tail: str, logfile: Path) -> TenantPipelinesError:
    if "recovery ended before configured recovery target was reached" in tail:
        return PitrRefused("the archive ends before the requested time (PostgreSQL: recovery ended before the "
                           "recovery target was reached); nothing was changed; give an earlier time or fix archiving")
    return PitrError(f"the sandbox's PostgreSQL did not recover: {tail} (log: {logfile}); nothing was changed")


# -- the embedded cluster's archive ---------------------------------------------------------------

def pgbackrest_folder(state_dir: Path) -> Path:
    return server_folder(state_dir, "pgbackrest", "-pgbackrest")


def sandbox_folder(state_dir: Path) -> Path:
    return server_folder(state_dir, "pitr", "-pitr")


def _quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def server_include(config: Path | None, socket_dir: Path, archive_timeout_s: int = ARCHIVE_TIMEOUT_S) -> str:
    """The embedded cluster's own settings file: its socket folder and, with ``config``, WAL
    archiving into pgBackRest's repository."""
    lines = [f"unix_socket_directories = {_quote_conf(str(socket_dir))}",
             "unix_socket_permissions = 0700"]
    if config is not None:
        command = " ".join(shlex.quote(p) for p in (str(find_pgbackrest()), f"--config={config}", f"--stanza={STANZA}",
                                                    "archive-push", "%p"))
        lines += ["archive_mode = on", f"archive_command = {_quote_conf(command)}",
                  f"archive_timeout = {int(archive_timeout_s)}"]
    else:
        lines += ["archive_mode = off"]
    return "# written by tenant-pipelines at each start (local/pgbackrest.py); edits are lost\n" + "\n".join(lines) + "\n"


def render_config(folder: Path, datadir: Path, socket_dir: Path, port: int | None, master_key: bytes) -> str:
    """pgbackrest.conf for the embedded cluster (mode 0600: the cipher pass)."""
    lines = [
        "[global]",
        f"repo1-path={folder / 'repo'}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={cipher_pass(master_key)}",
        "repo1-retention-full-type=time",
        "repo1-retention-full=14",
        f"log-path={folder / 'log'}",
        f"lock-path={folder / 'lock'}",
        f"spool-path={folder / 'spool'}",
        "log-level-file=info",
        "compress-type=lz4",
        "start-fast=y",
        "process-max=2",
        "",
        f"[{STANZA}]",
        f"pg1-path={datadir}",
        f"pg1-socket-path={socket_dir}",
        "pg1-user=postgres",
    ]
    if port is not None:
        lines.append(f"pg1-port={port}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, user: OSUser, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    if user.uid != os.geteuid():
        os.chown(tmp, user.uid, user.gid)
    os.replace(tmp, path)


def prepare_folders(folder: Path, user: OSUser) -> None:
    for path in (folder, folder / "repo", folder / "log", folder / "lock", folder / "spool"):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        if user.uid != os.geteuid():
            os.chown(path, user.uid, user.gid)


def stanza_create(engine: PgBackRest) -> None:
    """Create the stanza (idempotent: an existing one that matches the cluster is fine)."""
    proc = engine.run("stanza-create", check=False)
    if proc.returncode != 0:
        line = _error_line(proc)
        hint = ""
        if "cipher" in line.lower() or "unable to" in line.lower() and "decrypt" in line.lower():
            hint = "; the repository was made with another backup key: restore that key, or move the repository away"
        raise PgBackRestError(f"pgbackrest stanza-create (stanza {engine.stanza}) failed: {line}{hint}")


def user_engine(config: Path, stanza: str, state_dir: Path, bindir: Path, dsn: str) -> PgBackRest:
    """A user's own stanza: their pgbackrest.conf and stanza name. pgBackRest and the sandbox's
    server run as this OS user, or as ``postgres`` when this is root (PostgreSQL refuses root; the
    repository of a server's stanza is usually that user's). The sandbox is reached with
    ``dsn``'s user and password (the restored cluster has the same roles)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    if not config.is_file():
        raise InvalidInput(f"pgBackRest config {config}: no such file; point $TENANT_PIPELINES_PGBACKREST_CONFIG at "
                           "the pgbackrest.conf of your stanza")
    return PgBackRest(config=config, stanza=stanza, user=server_os_user(), sandbox_root=sandbox_folder(state_dir),
                      bindir=bindir, pg_user=str(params.get("user") or "postgres"),
                      pg_password=str(params["password"]) if params.get("password") else None)


def embedded_engine(folder: Path, state_dir: Path, bindir: Path, password: str | None) -> PgBackRest:
    return PgBackRest(config=folder / "pgbackrest.conf", stanza=STANZA, user=server_os_user(),
                      sandbox_root=sandbox_folder(state_dir), bindir=bindir, pg_password=password)


def engine_for(dsn: str) -> PgBackRest:
    """pgBackRest for the billing database at ``dsn``: the stanza named by
    $TENANT_PIPELINES_PGBACKREST_CONFIG and _STANZA when set, else the embedded cluster's own
    (when ``dsn`` is the embedded cluster's). Else a one-line InvalidInput saying what to set."""
    from tenant_pipelines.local.cluster import find_bindir
    from tenant_pipelines.local.target import embedded_cluster
    from tenant_pipelines.settings import pgbackrest_stanza_from_env, state_dir

    user_stanza = pgbackrest_stanza_from_env()
    if user_stanza is not None:
        return user_engine(user_stanza[0], user_stanza[1], state_dir(), find_bindir(), dsn)
    cluster = embedded_cluster()
    try:
        embedded = cluster.dsn("billing")
    except TenantPipelinesError:
        embedded = None
    from psycopg.conninfo import conninfo_to_dict

    if embedded is None or {k: v for k, v in conninfo_to_dict(dsn).items() if k != "dbname"} != \
            {k: v for k, v in conninfo_to_dict(embedded).items() if k != "dbname"}:
        raise InvalidInput("the billing database is your own server: set TENANT_PIPELINES_PGBACKREST_CONFIG (your "
                           "pgbackrest.conf) and TENANT_PIPELINES_PGBACKREST_STANZA (your stanza) to use its WAL archive")
    if not cluster._archiving_configured():
        raise InvalidInput("the embedded cluster does not archive its WAL: start it with archiving "
                           "('tenant-pipelines db down', then 'db up' with TENANT_PIPELINES_WAL_ARCHIVE unset)")
    return cluster.pgbackrest()
