"""A project-local PostgreSQL cluster, run with the system's server binaries.

The cluster listens on a free loopback port, and on a Unix socket in a folder only its OS
user can open (``<data_root>/socket``: pgBackRest reaches a local server only there),
authenticates with scram-sha-256 and a generated superuser password, and sets
``wal_level=logical``. With ``archive``, it archives its WAL into an encrypted pgBackRest
repository in the state folder (local/pgbackrest.py, docs/pitr.md).

PostgreSQL refuses to run as root. Invoked as root, every server command runs as the
``postgres`` OS user, so the data folder has to be one that user can reach: the project's
``.tenant-pipelines/pg`` when it can, else a per-project folder under ``/var/tmp``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tenant_pipelines.local.processes import (
    ClusterError,
    FileIn,
    OSUser,
    chown_tree,
    read_state,
    run_as,
    server_folder,
    server_os_user,
    start_on_free_port,
    write_state,
)
from tenant_pipelines.settings import writable_state_dir

if TYPE_CHECKING:
    from tenant_pipelines.local.pgbackrest import PgBackRest

MIN_SERVER_MAJOR = 15
SUPERUSER = "postgres"
DATABASES = ("billing", "dagster")
# The storage tiers' tablespaces, one folder each under <data_root>/tablespaces.
TABLESPACES = {"hot": "hot_storage", "warm": "warm_storage", "cold": "cold_storage"}

# Settings every embedded cluster gets, on top of initdb's defaults.
BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "200",
    # A query that cannot prune at plan time locks every partition: at 10,000 tenants an
    # RLS-only query takes ~66,000 locks, more than the default lock table (64 per connection).
    "max_locks_per_transaction": "512",
    "shared_buffers": "'256MB'",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

# For throwaway clusters (tests): durability is not needed, speed is.
FAST_UNSAFE_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def _server_major(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def find_bindir() -> Path:
    """The newest PostgreSQL 15+ server bin folder: ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin``."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(debian)
    best: tuple[int, Path] | None = None
    for bindir in candidates:
        if not all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            continue
        major = _server_major(bindir)
        if major is not None and major >= MIN_SERVER_MAJOR and (best is None or major > best[0]):
            best = (major, bindir)
    if best is None:
        raise ClusterError(
            f"PostgreSQL {MIN_SERVER_MAJOR}+ server binaries not found: install them with "
            "'apt-get install -y postgresql' (or run scripts/setup.sh), or set BILLING_DATABASE_URL "
            "to use your own server"
        )
    return best[1]


@dataclass
class EmbeddedCluster:
    """A cluster whose data lives in ``data_root`` and whose state (password, port) in ``state_dir``."""

    data_root: Path
    state_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda message: None
    # WAL archiving into pgBackRest's encrypted repository (local/pgbackrest.py), keyed from the
    # backup key that ``archive_key()`` returns; refused without one.
    archive: bool = False
    archive_key: Callable[[], bytes | None] | None = None
    archive_timeout_s: int = 60

    @classmethod
    def in_state_dir(cls, state_dir: Path, log: Callable[[str], None] = lambda m: None) -> "EmbeddedCluster":
        """The cluster kept in ``state_dir``: its data in ``state_dir/pg`` or, when the server's
        OS user cannot reach that folder, in ``/var/tmp/tenant-pipelines-<hash>``."""
        from tenant_pipelines.local.keys import load_master_key
        from tenant_pipelines.settings import wal_archive_from_env

        return cls(data_root=server_folder(state_dir, "pg"), state_dir=state_dir, log=log,
                   archive=wal_archive_from_env(), archive_key=load_master_key)

    # -- paths -------------------------------------------------------------------------
    datadir = FileIn("data_root", "data")
    logfile = FileIn("data_root", "server.log")
    tablespace_root = FileIn("data_root", "tablespaces")
    # The Unix socket's folder: only the server's OS user may open it (pgBackRest connects there).
    socket_dir = FileIn("data_root", "socket")
    state_file = FileIn("state_dir", "cluster.json")

    # -- state ---------------------------------------------------------------------------
    def _read_state(self) -> dict:
        return read_state(self.state_file, "make it a readable file, or remove it together with the "
                                           "cluster's data folder to start afresh")

    def _write_state(self, state: dict) -> None:
        write_state(self.state_file, state)  # it holds the superuser's password

    def dsn(self, database: str = "billing") -> str:
        state = self._read_state()
        if "port" not in state or "password" not in state:
            raise ClusterError("the embedded cluster is not set up: run 'tenant-pipelines db up'")
        return (
            f"postgresql://{SUPERUSER}:{state['password']}@127.0.0.1:{state['port']}/{database}"
        )

    # -- lifecycle -----------------------------------------------------------------------
    def running_port(self) -> int | None:
        """The port of a server running on this data folder, if there is one."""
        pidfile = self.datadir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (FileNotFoundError, IndexError, ValueError, PermissionError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def _initdb(self, bindir: Path, user: OSUser, password: str) -> None:
        self.log(f"initialising a new cluster in {self.datadir}")
        self.data_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_root, 0o700)
        pwfile = self.data_root / "initdb.pw"
        pwfile.write_text(password + "\n")
        chown_tree(self.data_root, user)
        try:
            run_as(
                [
                    str(bindir / "initdb"),
                    "-D", str(self.datadir),
                    "-U", SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ],
                user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.datadir / "postgresql.conf"
        lines = [f"{key} = {value}" for key, value in {**BASE_SETTINGS, **self.settings}.items()]
        with conf.open("a") as fh:
            fh.write("\n# tenant-pipelines embedded cluster\n" + "\n".join(lines) + "\n")
        chown_tree(self.data_root, user)

    def up(self) -> str:
        """Start the cluster, or reuse the one already running. Returns the billing DSN."""
        writable_state_dir(self.state_dir)  # before anything is created or started
        key = self._archive_key()  # archiving without a key is refused before anything is created
        user = server_os_user()
        bindir = find_bindir()
        state = self._read_state()
        if not (self.datadir / "PG_VERSION").exists():
            if self.datadir.exists() and any(self.datadir.iterdir()):
                raise ClusterError(
                    f"{self.datadir} exists but holds no PostgreSQL cluster: move it away and re-run"
                )
            state = {"password": secrets.token_urlsafe(24)}
            self._initdb(bindir, user, state["password"])
            self._write_state(state)
        elif "password" not in state:
            raise ClusterError(
                f"the cluster in {self.datadir} has no state file {self.state_file}: "
                "remove the folder to start afresh"
            )

        port = self.running_port()
        if port is not None:
            self.log(f"reusing the cluster already running on 127.0.0.1:{port}")
            if self.archive and not self._archiving_configured():
                self.log("this cluster was started without WAL archiving; it archives from its next start "
                         "('tenant-pipelines db down', then 'db up')")
        else:
            self._write_server_include(user, key)
            port = self._start(bindir, user, state.get("port"))
        state["port"] = port
        state["data_root"] = str(self.data_root)
        self._write_state(state)
        self._ensure_databases()
        self._ensure_tablespaces(user)
        if key is not None and self._archiving_configured():
            self._ensure_stanza(user, key, port, state["password"])
        return self.dsn("billing")

    # -- the socket and the WAL archive (local/pgbackrest.py) ---------------------------------
    def _archive_key(self) -> bytes | None:
        if not self.archive:
            return None
        key = self.archive_key() if self.archive_key is not None else None
        if key is None:
            raise ClusterError(
                "the WAL archive must be encrypted but no backup key is configured: set "
                "$TENANT_PIPELINES_BACKUP_KEY or $TENANT_PIPELINES_BACKUP_KEY_FILE (or "
                "TENANT_PIPELINES_WAL_ARCHIVE=off to run without archiving)")
        return key

    def _write_server_include(self, user: OSUser, key: bytes | None) -> None:
        """The socket folder and, with a key, archiving into pgBackRest: written into
        tenant_pipelines.conf at each start, which postgresql.conf includes."""
        from tenant_pipelines.local import pgbackrest

        if len(str(self.socket_dir)) > 90:
            raise ClusterError(f"{self.socket_dir}: too long a path for a Unix socket; set "
                               "TENANT_PIPELINES_HOME to a shorter folder")
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if user.uid != os.geteuid():
            os.chown(self.socket_dir, user.uid, user.gid)
        config = None
        if key is not None:
            folder = pgbackrest.pgbackrest_folder(self.state_dir)
            pgbackrest.prepare_folders(folder, user)
            config = folder / "pgbackrest.conf"
            pgbackrest.write_private(config, pgbackrest.render_config(folder, self.datadir, self.socket_dir, None, key), user)
        include = self.datadir / pgbackrest.SERVER_INCLUDE
        pgbackrest.write_private(include, pgbackrest.server_include(config, self.socket_dir, self.archive_timeout_s), user)
        conf = self.datadir / "postgresql.conf"
        line = f"include_if_exists = '{pgbackrest.SERVER_INCLUDE}'"
        if line not in conf.read_text():
            with conf.open("a") as fh:
                fh.write(f"\n# tenant-pipelines: the socket folder and WAL archiving\n{line}\n")

    def _archiving_configured(self) -> bool:
        from tenant_pipelines.local import pgbackrest

        try:
            return "archive_mode = on" in (self.datadir / pgbackrest.SERVER_INCLUDE).read_text()
        except OSError:
            return False

    def _ensure_stanza(self, user: OSUser, key: bytes, port: int, password: str) -> None:
        from tenant_pipelines.local import pgbackrest

        folder = pgbackrest.pgbackrest_folder(self.state_dir)
        pgbackrest.write_private(folder / "pgbackrest.conf",
                                 pgbackrest.render_config(folder, self.datadir, self.socket_dir, port, key), user)
        pgbackrest.stanza_create(self.pgbackrest())

    def pgbackrest(self) -> "PgBackRest":
        """pgBackRest on this cluster's stanza (local/pgbackrest.py)."""
        from tenant_pipelines.local import pgbackrest

        state = self._read_state()
        return pgbackrest.embedded_engine(pgbackrest.pgbackrest_folder(self.state_dir), self.state_dir,
                                          find_bindir(), state.get("password"))

    def _start(self, bindir: Path, user: OSUser, previous_port: int | None) -> int:
        def start(port: int) -> bool:
            self.log(f"starting PostgreSQL on 127.0.0.1:{port} (data: {self.datadir})")
            proc = run_as(
                [
                    str(bindir / "pg_ctl"),
                    "start", "-w", "-t", "60",
                    "-D", str(self.datadir),
                    "-l", str(self.logfile),
                    "-o", f"-p {port}",
                ],
                user,
                check=False,
            )
            if proc.returncode == 0:
                return True
            tail = self._log_tail()
            if "could not bind" in tail or "Address already in use" in tail:
                return False
            raise ClusterError(f"PostgreSQL did not start: {tail or proc.stderr.strip()} (log: {self.logfile})")

        return start_on_free_port("PostgreSQL", previous_port, start, log=self.log)

    def _log_tail(self) -> str:
        try:
            lines = [l for l in self.logfile.read_text(errors="replace").splitlines() if l.strip()]
        except (FileNotFoundError, PermissionError):
            return ""
        errors = [l for l in lines[-20:] if "FATAL" in l or "ERROR" in l or "could not" in l]
        return (errors or lines[-1:] or [""])[-1].strip()

    def _ensure_databases(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5)
                break
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"cannot connect to the embedded cluster: {exc}") from None
                time.sleep(0.2)
        with conn:
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            from psycopg import sql

            for name in DATABASES:
                if name not in existing:
                    self.log(f"creating database {name}")
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _ensure_tablespaces(self, user: OSUser) -> None:
        """hot_storage, warm_storage and cold_storage, each in a folder the server owns.
        CREATE TABLESPACE cannot run in a transaction block: autocommit."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            existing = {row[0] for row in conn.execute("SELECT spcname FROM pg_tablespace")}
            for tier, name in TABLESPACES.items():
                if name in existing:
                    continue
                folder = self.tablespace_root / tier
                folder.mkdir(parents=True, exist_ok=True)
                for path in (self.tablespace_root, folder):
                    os.chmod(path, 0o700)
                    if user.uid != os.geteuid():
                        os.chown(path, user.uid, user.gid)
                self.log(f"creating tablespace {name} in {folder}")
                conn.execute(
                    sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(name), sql.Literal(str(folder)))
                )

    def down(self) -> bool:
        """Stop the cluster. Returns False when it was not running."""
        if self.running_port() is None:
            return False
        user = server_os_user()
        run_as([str(find_bindir() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.datadir)], user)
        return True

    def destroy(self) -> None:
        """Stop the cluster and remove its data (used by throwaway test clusters)."""
        try:
            self.down()
        finally:
            shutil.rmtree(self.data_root, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
