"""A project-local PgBouncer process: its folder, start, reuse, reload and stop.

What it pools (the config and auth file text) is decided in ``tenant_pipelines.core.pooling``;
this module only runs Debian's ``pgbouncer`` binary on those files. Like the embedded
cluster, it listens on a free loopback port, and PgBouncer refuses to run as root: invoked
as root, it runs as the ``postgres`` OS user, in a folder that user can reach: the project's
``.tenant-pipelines/pgbouncer`` when it can, else a per-project folder under ``/var/tmp``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import secrets
from dataclasses import replace
from typing import Mapping

import psycopg
from psycopg import sql

from tenant_pipelines import settings
from tenant_pipelines.core.pooling import (
    DEFAULT_LISTEN_PORT,
    DEFAULT_POOL_SIZE,
    check_listen_port,
    check_userlist_path,
    USERLIST_FIX,
    ensure_role_password,
    pooled_dsn,
    pooler_config,
    render_pgbouncer_ini,
    render_userlist,
    role_scram_secret,
)
from tenant_pipelines.db.connect import connect
from tenant_pipelines.db.names import APP_ROLE
from tenant_pipelines.errors import InvalidInput, TenantPipelinesError
from tenant_pipelines.local.processes import (
    ClusterError,
    FileIn,
    OSUser,
    chown_tree,
    port_in_use,
    read_state,
    run_as,
    server_folder,
    server_os_user,
    start_on_free_port,
    write_state,
)

INSTALL_HINT = "install it with 'apt-get install -y pgbouncer' (or run scripts/setup.sh)"
# Debian installs the binary in /usr/sbin, which is not on every user's PATH.
SEARCH_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class PgBouncerError(TenantPipelinesError):
    pass


def find_pgbouncer(search_dirs: tuple[str, ...] | None = None) -> Path:
    """The ``pgbouncer`` binary: on PATH, or in the sbin folders Debian uses."""
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    for folder in SEARCH_DIRS if search_dirs is None else search_dirs:
        candidate = Path(folder) / "pgbouncer"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PgBouncerError(f"PgBouncer is not installed: {INSTALL_HINT}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        comm, _, rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
    except OSError:
        return True
    # A recycled pid that now belongs to something else is not ours; and an exited daemon
    # stays a zombie until whoever adopted it (PID 1, which may never do it) reaps it.
    return comm.endswith("(pgbouncer") and rest.split()[0] != "Z"


def _error_line(text: str) -> str:
    """The line of PgBouncer's output that says what went wrong: its last ERROR, else its last
    FATAL (which is often only "cannot load config file"), without the timestamp and pid."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    chosen = ([l for l in lines if " ERROR " in l] or [l for l in lines if " FATAL " in l] or [""])[-1]
    for level in (" ERROR ", " FATAL "):
        if level in chosen:
            return chosen.split(level, 1)[1]
    return chosen


@dataclass
class PgBouncerProcess:
    """One PgBouncer whose files (pgbouncer.ini, userlist.txt, log, pid) live in ``folder``."""

    folder: Path
    log: Callable[[str], None] = lambda message: None

    @classmethod
    def in_state_dir(cls, state_dir: Path, log: Callable[[str], None] = lambda m: None) -> "PgBouncerProcess":
        """The PgBouncer kept beside the project's state: ``state_dir/pgbouncer``, or, when the
        OS user that runs it cannot reach that folder, ``/var/tmp/tenant-pipelines-<hash>-pgbouncer``."""
        return cls(folder=server_folder(state_dir, "pgbouncer", "-pgbouncer"), log=log)

    # -- paths -------------------------------------------------------------------------
    config_file = FileIn("folder", "pgbouncer.ini")
    auth_file = FileIn("folder", "userlist.txt")
    logfile = FileIn("folder", "pgbouncer.log")
    pidfile = FileIn("folder", "pgbouncer.pid")

    # -- state ---------------------------------------------------------------------------
    def running_pid(self) -> int | None:
        pid = self._written_pid()
        return pid if pid is not None and _pid_alive(pid) else None

    def _written_pid(self) -> int | None:
        """The pid in the pidfile; None while there is none, or while PgBouncer has created the
        file but not yet written to it."""
        try:
            return int(self.pidfile.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None

    def _write(self, path: Path, text: str, mode: int, user: OSUser) -> bool:
        """Write ``text`` to ``path`` atomically, owned by ``user``. Returns whether it changed."""
        try:
            if path.read_text() == text:
                return False
        except FileNotFoundError:
            pass
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        if user.uid != os.geteuid():
            os.chown(tmp, user.uid, user.gid)
        os.replace(tmp, path)
        return True

    def _prepare_folder(self, user: OSUser) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)  # the auth file holds password verifiers
        chown_tree(self.folder, user)

    # -- lifecycle -----------------------------------------------------------------------
    def up(self, render_config: Callable[[int], str], userlist: str, preferred_port: int | None = None) -> int:
        """Start PgBouncer with the config ``render_config(port)`` and ``userlist``, or reuse the
        one running (rewriting both files and reloading it when they changed). Returns its port."""
        binary = find_pgbouncer()
        user = server_os_user()
        self._prepare_folder(user)
        pid = self.running_pid()
        port = self.configured_port() if pid is not None else None
        if pid is not None and port is not None:
            changed = self._write(self.config_file, render_config(port), 0o644, user)
            changed |= self._write(self.auth_file, userlist, 0o600, user)
            if changed:
                self._reload(pid)
                self.log(f"reloaded the PgBouncer running on 127.0.0.1:{port} with the new configuration")
            else:
                self.log(f"reusing the PgBouncer running on 127.0.0.1:{port}")
            return port
        if pid is not None:  # running, but its config file is gone: start afresh
            self.down(immediate=True)
        self.pidfile.unlink(missing_ok=True)

        def start(port: int) -> bool:
            self._write(self.config_file, render_config(port), 0o644, user)
            self._write(self.auth_file, userlist, 0o600, user)
            return self._start(binary, user, port)

        return start_on_free_port("PgBouncer", preferred_port, start, error=PgBouncerError)

    def _reload(self, pid: int) -> None:
        """SIGHUP: PgBouncer re-reads pgbouncer.ini and userlist.txt. Returns once its log says so."""
        offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.logfile.open("rb") as fh:
                fh.seek(offset)
                if b"got SIGHUP" in fh.read():
                    return
            time.sleep(0.02)
        raise PgBouncerError(f"PgBouncer did not confirm the reload within {START_TIMEOUT_S:.0f} s (log: {self.logfile})")

    def configured_port(self) -> int | None:
        try:
            for line in self.config_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "listen_port":
                    return int(value.strip())
        except (FileNotFoundError, ValueError):
            pass
        return None

    def _start(self, binary: Path, user: OSUser, port: int) -> bool:
        """Start the daemon; True once it accepts connections, False when its port was taken."""
        self.log(f"starting PgBouncer on 127.0.0.1:{port} (files: {self.folder})")
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        proc = run_as([str(binary), "-d", str(self.config_file)], user, check=False)
        if proc.returncode != 0:  # config errors are reported before it daemonises
            raise PgBouncerError(f"PgBouncer did not start: {_error_line(proc.stderr) or self._log_tail(log_offset)}")
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT_S:
            # PgBouncer logs a taken port as a WARNING, then "FATAL nowhere to listen on".
            if "Address already in use" in self._log_since(log_offset):
                self.down(immediate=True)
                return False
            pid = self._written_pid()  # read once: the daemon may write it between two reads
            if pid is not None:
                if not _pid_alive(pid):
                    break  # it wrote its pid (after it listens) and exited
                if port_in_use(port):
                    return True
            elif "FATAL" in self._log_tail(log_offset):
                break  # it said why it will not run, before writing a pid
            time.sleep(0.05)  # on a loaded machine the daemon may take seconds to write its pid
        raise PgBouncerError(f"PgBouncer did not start: {self._log_tail(log_offset) or 'no log line'} (log: {self.logfile})")

    def _log_since(self, offset: int) -> str:
        try:
            with self.logfile.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def _log_tail(self, offset: int = 0) -> str:
        return _error_line(self._log_since(offset))

    def down(self, *, immediate: bool = False) -> bool:
        """Stop PgBouncer: a safe shutdown (waits for running transactions), then an immediate
        one after a few seconds. ``immediate`` skips the safe shutdown:
        open transactions are cut off and roll back. Returns False when it was not running."""
        pid = self.running_pid()
        if pid is None:
            return False
        signals = (signal.SIGTERM, signal.SIGKILL) if immediate else (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
        for sig in signals:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.05)
            if not _pid_alive(pid):
                break
        self.pidfile.unlink(missing_ok=True)
        return True

    def destroy(self) -> None:
        """Stop it and remove its folder (used by throwaway test set-ups)."""
        try:
            self.down(immediate=True)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


# -- the project's PgBouncer: state, start, stop ------------------------------------------------

STATE_FILE = "pgbouncer.json"


def pgbouncer_ini_in_force(state_dir: Path | None = None) -> Path | None:
    """The pgbouncer.ini to compare with tier_limits: $TENANT_PIPELINES_PGBOUNCER_INI (which must
    exist), else the project's own PgBouncer's when it has written one, else None."""
    explicit = settings.pgbouncer_ini_from_env()
    if explicit is not None:
        if not _is_file(explicit):
            raise TenantPipelinesError(
                f"{settings.PGBOUNCER_INI_ENV} names {explicit}, which is not a file: point it at the "
                "pgbouncer.ini your PgBouncer reads, or unset it"
            )
        return explicit
    try:
        own = PgBouncerProcess.in_state_dir(state_dir or settings.state_dir()).config_file
    except ClusterError:  # root without a postgres OS user: the project's PgBouncer cannot have run
        return None
    return own if _is_file(own) else None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except PermissionError:  # there, but not ours to see: reading it says so
        return True


def _read_state(path: Path) -> dict:
    return read_state(path, "make it a readable file, or remove it: 'tenant-pipelines pgbouncer up' writes it again")


def _password_works(admin_dsn: str, role: str, password: str) -> bool:
    try:
        connect(admin_dsn, user=role, password=password).close()
        return True
    except TenantPipelinesError:
        return False


def start_pgbouncer_for(
    admin_dsn: str,
    *,
    state_dir: Path | None = None,
    pool_overrides: Mapping[str, int] | None = None,
    default_pool_size: int = DEFAULT_POOL_SIZE,
    manage_app_password: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> str:
    """Start PgBouncer in front of ``admin_dsn``'s database (or reuse and reload the running one)
    and return billing_app's DSN to its plain ``billing`` pool; ``billing_<tier>`` are the others.

    With ``manage_app_password`` (the embedded cluster, which is ours), billing_app gets a
    generated password when it has none, kept in ``pgbouncer.json`` (mode 0600) and put in the
    DSN. Otherwise the DSN carries no password: the application supplies its own.
    """
    find_pgbouncer()  # not installed: say so before touching the database
    home = state_dir or settings.state_dir()
    state_path = home / STATE_FILE
    state = _read_state(state_path)
    process = PgBouncerProcess.in_state_dir(home, log=log)
    password: str | None = None
    gave_password = False
    with connect(admin_dsn, autocommit=True) as conn:
        # Everything is checked before anything changes: the pools (tiers, sizes) and every name
        # and path that goes into the files. Only then may billing_app get a password.
        base = pooler_config(
            conn, admin_dsn, listen_port=DEFAULT_LISTEN_PORT, auth_file=str(process.auth_file),
            pool_overrides=pool_overrides, default_pool_size=default_pool_size,
            logfile=str(process.logfile), pidfile=str(process.pidfile),
        )

        def render(port: int) -> str:
            return render_pgbouncer_ini(replace(base, listen_port=port))

        render(DEFAULT_LISTEN_PORT)  # refuse a hostile name before anything starts
        if manage_app_password:
            password = state.get("app_password") or secrets.token_urlsafe(24)
            gave_password = ensure_role_password(conn, APP_ROLE, password)
            if gave_password:
                log(f"gave {APP_ROLE} a generated password (kept in {state_path})")
            elif not _password_works(admin_dsn, APP_ROLE, password):
                log(f"{APP_ROLE} has a password tenant-pipelines did not set: the DSN carries none, supply it yourself")
                password = None
        try:
            userlist = render_userlist({APP_ROLE: role_scram_secret(conn, APP_ROLE)})
        except BaseException:
            if gave_password:
                _take_back_password(admin_dsn, APP_ROLE, log)
            raise
    try:
        port = process.up(render, userlist, preferred_port=state.get("port"))
        state.update({"port": port, "folder": str(process.folder)})
        if password:
            state["app_password"] = password
        write_state(state_path, state)  # it holds billing_app's generated password
    except BaseException:
        # A password that pgbouncer.json does not keep would be one "tenant-pipelines did not
        # set" on the next run: a failed start leaves the role as it found it.
        if gave_password:
            _take_back_password(admin_dsn, APP_ROLE, log)
        raise
    return pooled_dsn(port, password=password)


def _take_back_password(admin_dsn: str, role: str, log: Callable[[str], None]) -> None:
    """Undo ``ensure_role_password`` of a start that failed: ``role`` has no password again."""
    try:
        with connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(role)))
    except (TenantPipelinesError, psycopg.Error):
        log(f"could not take back the password just given to {role}: run ALTER ROLE {role} PASSWORD NULL, "
            "then 'tenant-pipelines pgbouncer up' again")


def pgbouncer_config_text(
    admin_dsn: str,
    *,
    listen_port: int | None = None,
    userlist: Path | None = None,
    state_dir: Path | None = None,
    pool_overrides: Mapping[str, int] | None = None,
    default_pool_size: int = DEFAULT_POOL_SIZE,
) -> str:
    """pgbouncer.ini for a PgBouncer of the user's own, in front of ``admin_dsn``'s database:
    the project's config without its log and pid files. The port defaults to the project's
    PgBouncer's (6432 when it never ran). With ``userlist``, the auth file is written there
    (mode 0600) and named in the config; else the config names the project's auth file."""
    if listen_port is not None:
        check_listen_port(listen_port)
    if userlist is not None:
        userlist = check_userlist_path(userlist)
    home = state_dir or settings.state_dir()
    process = PgBouncerProcess.in_state_dir(home)
    port = listen_port or _read_state(home / STATE_FILE).get("port") or DEFAULT_LISTEN_PORT
    with connect(admin_dsn, autocommit=True) as conn:
        cfg = pooler_config(
            conn, admin_dsn, listen_port=port, auth_file=str((userlist or process.auth_file).absolute()),
            pool_overrides=pool_overrides, default_pool_size=default_pool_size,
        )
        text = render_pgbouncer_ini(cfg)
        if userlist is not None:
            secret = render_userlist({APP_ROLE: role_scram_secret(conn, APP_ROLE)})
            try:
                fd = os.open(userlist, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)  # also when the file was there already
                with os.fdopen(fd, "w") as fh:
                    fh.write(secret)
            except OSError as exc:
                raise InvalidInput(f"auth file {userlist}: cannot write it ({exc.strerror or type(exc).__name__}); "
                                   f"{USERLIST_FIX}") from None
    return text


def stop_pgbouncer(
    state_dir: Path | None = None, *, immediate: bool = False, log: Callable[[str], None] = lambda m: None
) -> bool:
    """Stop the project's PgBouncer (``immediate``: without waiting for open transactions).
    Returns False when it was not running."""
    return PgBouncerProcess.in_state_dir(state_dir or settings.state_dir(), log=log).down(immediate=immediate)
