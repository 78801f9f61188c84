"""The OS side of the local stack: who runs the servers, which folders they can reach, free
loopback ports, running a command as the server's OS user.

PostgreSQL and PgBouncer refuse to run as root: invoked as root, they run as the ``postgres`` OS
user. Used by the embedded cluster (cluster.py) and the project's PgBouncer (pgbouncer.py).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from tenant_pipelines.errors import TenantPipelinesError
from tenant_pipelines.files import write_json_atomic

SERVER_OS_USER = "postgres"


class ClusterError(TenantPipelinesError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class OSUser:
    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> "OSUser":
        uid = os.geteuid()
        return cls(pwd.getpwuid(uid).pw_name, uid, os.getegid())


def server_os_user() -> OSUser:
    """Who runs the server: ourselves, or the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return OSUser.current()
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ClusterError(
            "running as root needs the 'postgres' OS user to run the server: "
            "'apt-get install -y postgresql' creates it"
        ) from None
    return OSUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def can_reach(user: OSUser, path: Path) -> bool:
    """Whether ``user`` could create and use a folder at ``path`` (search rights on every ancestor)."""
    if user.uid == os.geteuid():
        return True
    groups = {user.gid} | {g.gr_gid for g in grp.getgrall() if user.name in g.gr_mem}
    existing = path
    while not existing.exists():
        existing = existing.parent
    for folder in [existing, *existing.parents]:
        st = folder.stat()
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def run_as(
    cmd: list[str], user: OSUser, *, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    kwargs: dict = {}
    if user.uid != os.geteuid():
        kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    if env:
        full_env.update(env)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd="/", env=full_env, **kwargs
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterError(f"{Path(cmd[0]).name} failed: {detail[-1] if detail else proc.returncode}")
    return proc


def chown_tree(path: Path, user: OSUser) -> None:
    if user.uid == os.geteuid():
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def server_folder(state_dir: Path, name: str, suffix: str = "") -> Path:
    """Where a server of the local stack keeps its files: ``state_dir/name`` when the server's
    OS user can reach it, else ``/var/tmp/tenant-pipelines-<hash of state_dir><suffix>`` (as
    root, the ``postgres`` user cannot enter a project under ``/root``)."""
    preferred = state_dir / name
    if can_reach(server_os_user(), preferred):
        return preferred
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"tenant-pipelines-{digest}{suffix}"


class FileIn:
    """A path attribute of a local server: the file ``name`` in the folder its attribute
    ``folder`` holds (``logfile = FileIn("folder", "pgbouncer.log")``)."""

    def __init__(self, folder: str, name: str) -> None:
        self.folder, self.name = folder, name

    def __get__(self, obj: object, owner: type | None = None) -> Path:
        if obj is None:
            return self  # type: ignore[return-value]
        return getattr(obj, self.folder) / self.name


def read_state(path: Path, fix: str) -> dict:
    """A server's JSON state file: {} when it is missing (or not JSON); one that cannot be read
    is refused, saying so and ``fix``."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ClusterError(f"{path}: cannot read it ({reason}); {fix}") from None


def write_state(path: Path, state: dict) -> None:
    """Write a server's state file, mode 0600 (it holds a generated password), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, state)


def start_on_free_port(
    what: str,
    preferred_port: int | None,
    start: Callable[[int], bool],
    *,
    error: type[TenantPipelinesError] = ClusterError,
    log: Callable[[str], None] = lambda message: None,
    attempts: int = 5,
) -> int:
    """Start a server on ``preferred_port`` (when given), else on free loopback ports, trying
    ``attempts`` ports in all. ``start(port)`` is True once the server runs there, False when the
    port turned out to be taken; a port already in use is skipped. Returns the port."""
    tried: list[int] = []
    for attempt in range(attempts):
        port = preferred_port if attempt == 0 and preferred_port else free_port()
        if port_in_use(port):
            log(f"port {port} is taken, picking another")
            tried.append(port)
            continue
        if start(port):
            return port
        tried.append(port)
    raise error(f"{what} did not start: ports {tried} were all taken")
