"""A project-local Citus cluster (issue 19): a coordinator and N workers, each an embedded
PostgreSQL cluster (local/cluster.py) on a free loopback port, with Citus loaded.

Clients reach the coordinator as they reach the single-node cluster: 127.0.0.1, scram-sha-256,
the coordinator's generated superuser password. The nodes reach each other through their Unix
sockets instead, each in ``<node data>/socket`` (mode 0700, owned by the server's OS user) and
trusted there: only that OS user (and root) can open such a socket at all, so the folder's
permissions are the authentication, and Citus can connect as any role (billing_app's
distributed queries run as billing_app on the workers) without a password kept anywhere. Each
node is registered under its socket folder as its host name (``citus_add_node``), and
``citus.local_hostname`` names its own. Over TCP a worker lets in its superuser only:
applications reach the coordinator, never a worker (a worker cannot check the stamp of a
tenant context: sql/citus/functions/fn_current_tenant_id.sql).

State: ``<state dir>/citus.json`` records the workers (name, node id); each node keeps its own
``cluster.json`` (password, port) under ``<state dir>/citus/<name>/``, like the single-node
cluster. While ``citus.json`` exists, the embedded target of every command is the coordinator
(``local/target.py``). Restarting on other ports updates the nodes' registration.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tenant_pipelines.errors import InvalidInput
from tenant_pipelines.local.cluster import EmbeddedCluster, find_bindir
from tenant_pipelines.local.processes import (
    ClusterError, OSUser, read_state, server_folder, server_os_user, write_state)

COORDINATOR = "coordinator"
DEFAULT_WORKERS = 2
MAX_WORKERS = 16
STATE_FILE = "citus.json"
EXTENSION = "citus"
HBA_MARKER = "# tenant-pipelines citus: the nodes reach each other through their private Unix sockets"
INSTALL_HINT = ("install Citus for PostgreSQL {major}: 'bash vendor/citus/build.sh' as root (scripts/setup.sh "
                "does it), or the PostgreSQL project's postgresql-{major}-citus package")

# On top of the embedded cluster's settings, every node of a Citus cluster.
CITUS_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "'citus'",
    # Multi-shard writes commit with two-phase commit on the workers.
    "max_prepared_transactions": "200",
    "wal_level": "logical",  # shard moves use logical replication
    # Per-tenant queries, reads and CPU in citus_stat_tenants (tenant_metrics shows them); the
    # tracking samples statements that route to one tenant, at a small cost per statement.
    "citus.stat_tenants_track": "'all'",
}


def citus_control_file(bindir: Path | None = None) -> Path:
    """Where the Citus extension's control file is when Citus is installed for this server."""
    bindir = bindir or find_bindir()
    major = bindir.parent.name if bindir.parent.name.isdigit() else "15"
    return Path("/usr/share/postgresql") / major / "extension" / "citus.control"


def citus_installed() -> tuple[bool, str]:
    """(installed, how to install it) for the server binaries local/cluster.py uses."""
    try:
        bindir = find_bindir()
    except ClusterError as exc:
        return False, str(exc)
    major = bindir.parent.name if bindir.parent.name.isdigit() else "15"
    lib = bindir.parent / "lib" / "citus.so"
    ok = citus_control_file(bindir).is_file() and lib.is_file()
    return ok, INSTALL_HINT.format(major=major)


@dataclass
class CitusNode:
    name: str
    cluster: EmbeddedCluster

    @property
    def socket_dir(self) -> Path:
        return self.cluster.data_root / "socket"


@dataclass
class CitusCluster:
    """A coordinator and ``workers`` workers whose state lives under ``state_dir``."""

    state_dir: Path
    workers: int = DEFAULT_WORKERS
    settings: dict[str, str] = field(default_factory=dict)  # extra settings for every node (tests: fsync off)
    data_root: Path | None = None  # tests: every node's data under this folder
    log: Callable[[str], None] = lambda message: None

    # -- state ----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def recorded(self) -> dict:
        return read_state(self.state_file, "remove it (and 'tenant-pipelines db down' first) to forget the "
                                           "Citus cluster")

    @classmethod
    def in_state_dir(cls, state_dir: Path, workers: int | None = None,
                     log: Callable[[str], None] = lambda m: None) -> "CitusCluster":
        """The Citus cluster kept in ``state_dir``: as many workers as recorded, unless ``workers``
        says otherwise (more are added; fewer is refused)."""
        cluster = cls(state_dir=state_dir, log=log)
        recorded = len(cluster.recorded().get("workers", []))
        cluster.workers = workers if workers is not None else (recorded or DEFAULT_WORKERS)
        return cluster

    def node(self, name: str) -> CitusNode:
        if self.data_root is not None:
            root = self.data_root / name
        else:
            root = server_folder(self.state_dir, f"citus/{name}", f"-citus-{name}")
        settings = {**CITUS_SETTINGS, **self.settings,
                    "unix_socket_directories": f"'{root / 'socket'}'",
                    "citus.local_hostname": f"'{root / 'socket'}'"}
        return CitusNode(name, EmbeddedCluster(data_root=root, state_dir=self.state_dir / "citus" / name,
                                               settings=settings, log=self.log))

    @property
    def coordinator(self) -> CitusNode:
        return self.node(COORDINATOR)

    def worker_names(self) -> list[str]:
        recorded = [w["name"] for w in self.recorded().get("workers", [])]
        wanted = [f"worker{i}" for i in range(1, self.workers + 1)]
        return recorded + [w for w in wanted if w not in recorded]

    def nodes(self) -> list[CitusNode]:
        return [self.coordinator] + [self.node(name) for name in self.worker_names()]

    def dsn(self, database: str = "billing") -> str:
        return self.coordinator.cluster.dsn(database)

    def exists(self) -> bool:
        return self.state_file.is_file()

    # -- lifecycle --------------------------------------------------------------------------
    def up(self) -> str:
        """Start every node (or reuse the running ones), load Citus into the billing database of
        each, register the coordinator and the workers. Idempotent. Returns the coordinator's
        billing DSN."""
        installed, hint = citus_installed()
        if not installed:
            raise ClusterError(f"Citus is not installed: {hint}")
        recorded = self.recorded().get("workers", [])
        if self.workers < len(recorded):
            raise InvalidInput(
                f"the Citus cluster in {self.state_dir} has {len(recorded)} workers: --workers {self.workers} "
                "would drop some, which this command does not do; pass --workers "
                f"{len(recorded)} or more")
        user = server_os_user()
        nodes = self.nodes()
        ports: dict[str, int] = {}
        for node in nodes:
            self._prepare_socket(node, user)
            node.cluster.up()
            self._trust_socket(node, user)
            ports[node.name] = node.cluster.running_port() or 0
        for node in nodes:
            self._create_extension(node)
        workers = self._register(nodes[0], nodes[1:], ports)
        for worker in nodes[1:]:
            self._adopt_coordinator_password(nodes[0], worker)
        write_state(self.state_file, {"workers": workers, "coordinator": str(nodes[0].cluster.data_root)})
        return self.dsn("billing")

    def _prepare_socket(self, node: CitusNode, user: OSUser) -> None:
        if len(str(node.socket_dir)) > 90:
            raise ClusterError(f"{node.socket_dir}: too long a path for a Unix socket; set TENANT_PIPELINES_HOME "
                               "to a shorter folder")
        node.cluster.data_root.mkdir(parents=True, exist_ok=True)
        os.chmod(node.cluster.data_root, 0o700)
        node.socket_dir.mkdir(exist_ok=True)
        os.chmod(node.socket_dir, 0o700)
        if user.uid != os.geteuid():
            for path in (node.cluster.data_root, node.socket_dir):
                os.chown(path, user.uid, user.gid)

    def _trust_socket(self, node: CitusNode, user: OSUser) -> None:
        """Connections through the node's private socket are trusted (its folder is the server's
        OS user's alone); TCP keeps scram-sha-256. Written once, then the server reloads."""
        hba = node.cluster.datadir / "pg_hba.conf"
        text = hba.read_text()
        if HBA_MARKER in text:
            return
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("local")]
        head = [HBA_MARKER, "local all all trust"]
        if node.name != COORDINATOR:
            # Applications reach the coordinator only. A worker cannot check the stamp of a tenant
            # context (fn_current_tenant_id), so no role but the superuser may log in to it over TCP.
            head += ["host all postgres 127.0.0.1/32 scram-sha-256", "host all all 0.0.0.0/0 reject",
                     "host all all ::/0 reject"]
        hba.write_text("\n".join(head + lines) + "\n")
        if user.uid != os.geteuid():
            os.chown(hba, user.uid, user.gid)
        self._execute(node, "postgres", "SELECT pg_reload_conf()")
        # The reload is asynchronous: wait until the postmaster has read the new file.
        self._wait_for_trust(node)

    def _wait_for_trust(self, node: CitusNode) -> None:
        import time

        import psycopg

        port = node.cluster.running_port()
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(host=str(node.socket_dir), port=port, user="postgres", dbname="postgres",
                                connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"Citus node {node.name}: its socket in {node.socket_dir} does not accept "
                                       f"connections after a reload: {exc}") from None
                time.sleep(0.1)

    def _execute(self, node: CitusNode, database: str, statement: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(node.cluster.dsn(database), autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def _create_extension(self, node: CitusNode) -> None:
        if not self._execute(node, "billing", "SELECT 1 FROM pg_extension WHERE extname = %s", (EXTENSION,)):
            self.log(f"loading Citus into the billing database of {node.name}")
            self._execute(node, "billing", f"CREATE EXTENSION {EXTENSION}")
        # Citus columnar, for cold months (core/citus.py compress_cold_months): shipped with Citus.
        # Checked first: a worker refuses even CREATE EXTENSION IF NOT EXISTS once it is registered.
        if not self._execute(node, "billing", "SELECT 1 FROM pg_extension WHERE extname = 'citus_columnar'"):
            self._execute(node, "billing", "CREATE EXTENSION citus_columnar")

    def _register(self, coordinator: CitusNode, workers: list[CitusNode], ports: dict[str, int]) -> list[dict]:
        """The coordinator's host and every worker in pg_dist_node, under its socket folder and
        current port (updated when a node came back on another port)."""
        import psycopg

        with psycopg.connect(coordinator.cluster.dsn("billing"), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host(%s, %s)",
                         (str(coordinator.socket_dir), ports[coordinator.name]))
            recorded = {w["name"]: w.get("nodeid") for w in self.recorded().get("workers", [])}
            result = []
            for worker in workers:
                host, port = str(worker.socket_dir), ports[worker.name]
                row = conn.execute("SELECT nodeid, nodename, nodeport FROM pg_dist_node WHERE nodename = %s "
                                   "OR nodeid = %s", (host, recorded.get(worker.name) or -1)).fetchone()
                if row is None:
                    self.log(f"adding {worker.name} (port {port}) to the Citus cluster")
                    nodeid = conn.execute("SELECT citus_add_node(%s, %s)", (host, port)).fetchone()[0]
                else:
                    nodeid = row[0]
                    if (row[1], row[2]) != (host, port):
                        self.log(f"{worker.name} is on port {port} now: updating its registration")
                        conn.execute("SELECT citus_update_node(%s, %s, %s)", (nodeid, host, port))
                result.append({"name": worker.name, "nodeid": nodeid, "port": port})
        return result

    def _adopt_coordinator_password(self, coordinator: CitusNode, worker: CitusNode) -> None:
        """Citus gives every node the coordinator's roles, passwords included, when it registers
        it: the worker's superuser then logs in with the coordinator's password, which its state
        file records from then on (checked over TCP first; kept as it is when it does not work)."""
        import psycopg

        from tenant_pipelines.local.cluster import SUPERUSER

        password = coordinator.cluster._read_state()["password"]
        state = worker.cluster._read_state()
        if state.get("password") == password:
            return
        try:
            psycopg.connect(host="127.0.0.1", port=state["port"], user=SUPERUSER, password=password,
                            dbname="postgres", connect_timeout=5).close()
        except psycopg.OperationalError:
            return
        state["password"] = password
        write_state(worker.cluster.state_file, state)

    def down(self, *, immediate: bool = False) -> list[str]:
        """Stop every node that runs (workers first). Returns the names of those stopped."""
        stopped = []
        for node in reversed(self.nodes()):
            if node.cluster.running_port() is None:
                continue
            if immediate:
                from tenant_pipelines.local.processes import run_as

                run_as([str(find_bindir() / "pg_ctl"), "stop", "-w", "-m", "immediate", "-D",
                        str(node.cluster.datadir)], server_os_user())
            else:
                node.cluster.down()
            stopped.append(node.name)
        return stopped

    def status(self) -> list[tuple[str, str, int | None, str]]:
        """(name, role, port or None when stopped, data folder) of every node."""
        return [(node.name, "coordinator" if node.name == COORDINATOR else "worker", node.cluster.running_port(),
                 str(node.cluster.data_root)) for node in self.nodes()]

    def destroy(self) -> None:
        """Stop every node and remove its data and state (throwaway clusters)."""
        try:
            self.down(immediate=True)
        finally:
            for node in self.nodes():
                shutil.rmtree(node.cluster.data_root, ignore_errors=True)
                shutil.rmtree(node.cluster.state_dir, ignore_errors=True)
            self.state_file.unlink(missing_ok=True)
