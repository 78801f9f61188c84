"""`tenant-pipelines cluster-backup` and `restore --to-time` as a user runs them, on an embedded
cluster that archives its WAL into pgBackRest (`db up`): separate processes, killed at each step
of a restore and run again. The live data is then as it was or exactly as at T, never in between,
and no sandbox (folder or server) is left."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tenant_pipelines.local.cluster import EmbeddedCluster
from tests.conftest import embedded_cli_env
from tests.core.test_backups import seed_tenant
from tests.core.test_backups_placement import dump_placed
from tests.core.test_pitr import archived, change, enable_pitr  # noqa: F401 (a fixture)
from tests.waiting import wait_until

CLI = [sys.executable, "-m", "tenant_pipelines.cli"]
KEY = base64.b64encode(bytes(range(32, 64))).decode()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=600)


class Stack:
    def __init__(self, env: dict[str, str], dsn: str) -> None:
        self.env, self.dsn = env, dsn
        self.home = Path(env["TENANT_PIPELINES_HOME"])
        self.cluster = EmbeddedCluster.in_state_dir(self.home)

    def sandboxes(self) -> list[Path]:
        root = self.cluster.pgbackrest().sandbox_root
        return sorted(root.glob("sandbox-*")) if root.exists() else []

    def now(self, conn: psycopg.Connection) -> datetime:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with embedded_cli_env("tp-pitr-cli-", archive=True) as env:
        env["TENANT_PIPELINES_BACKUP_KEY"] = KEY
        up = run(["db", "up"], env)
        assert up.returncode == 0, up.stderr
        migrated = run(["db", "migrate"], env)
        assert migrated.returncode == 0, migrated.stderr
        yield Stack(env, up.stdout.strip().splitlines()[-1])


def sandbox_servers(stack: Stack) -> list[int]:
    """postgres processes whose data folder is a sandbox of this stack."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"postgres") and any(b"/sandbox-" in part for part in cmd) \
                    and any(str(stack.home).encode() in part or b"tenant-pipelines-" in part for part in cmd):
                pids.append(int(entry.name))
    return pids


def test_cluster_backup_then_restore_to_time_and_refusals(stack: Stack) -> None:
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        tenant, other = seed_tenant(conn), seed_tenant(conn, tier="free")
        enable_pitr(conn, tenant)
        backup = run(["cluster-backup", "--type", "full"], stack.env)
        assert backup.returncode == 0, backup.stderr
        label = backup.stdout.strip().splitlines()[-1]
        assert label.endswith("F") and "cluster backup" in backup.stderr
        stopped = stack.cluster.pgbackrest().info().newest.stopped_at
        assert stack.cluster.pgbackrest().info().newest.label == label
        wait_until(lambda: stack.now(conn) > stopped + timedelta(seconds=1), "the backup's stop second to pass")
        change(conn, tenant, 1)
        at = stack.now(conn)
        at_t = dump_placed(conn, tenant)
        change(conn, tenant, 2)
        other_before = dump_placed(conn, other)

        # Refused in one line, exit 2, nothing changed.
        live = dump_placed(conn, tenant)
        for args, says in [
            (["--to-time", "2999-01-01T00:00:00Z"], "is in the future"),
            (["--to-time", "2000-01-01T00:00:00Z"], "before the oldest cluster backup"),
            (["--to-time", at.isoformat(), "--root", "/tmp"], "--root is for --as-of"),
        ]:
            refused = run(["restore", "--tenant", str(tenant), *args], stack.env)
            assert refused.returncode == 2, refused.stderr
            assert says in refused.stderr and "Traceback" not in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        refused = run(["restore", "--tenant", str(other), "--to-time", at.isoformat()], stack.env)
        assert refused.returncode == 2 and "point_in_time_recovery" in refused.stderr
        assert dump_placed(conn, tenant) == live and stack.sandboxes() == []

        # Killed at each step, then run again.
        for step in ("step 1/3: pgBackRest restores", "step 1/3: sandbox holds", "step 2/3", "step 3/3"):
            before = dump_placed(conn, tenant)
            assert before != at_t
            proc = subprocess.Popen(CLI + ["restore", "--tenant", str(tenant), "--to-time", at.isoformat()],
                                    env=stack.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            seen = []
            for line in proc.stderr:
                seen.append(line)
                if step in line:
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=600)
            assert any(step in line for line in seen), "".join(seen)
            after_kill = dump_placed(conn, tenant)
            assert after_kill in (before, at_t), step
            again = run(["restore", "--tenant", str(tenant), "--to-time", at.isoformat()], stack.env)
            assert again.returncode == 0, again.stderr
            assert "step 3/3" in again.stderr and "MB of WAL" in again.stderr
            assert dump_placed(conn, tenant) == at_t, step
            assert dump_placed(conn, other) == other_before
            assert stack.sandboxes() == [], step
            assert sandbox_servers(stack) == [], step
            change(conn, tenant, 3)  # live differs from T again for the next kill


def test_the_same_commands_on_a_stanza_of_your_own(archived, tmp_path: Path) -> None:  # noqa: F811
    """BILLING_DATABASE_URL plus TENANT_PIPELINES_PGBACKREST_CONFIG and _STANZA: the commands run
    pgBackRest on that stanza (here the module cluster's, as if it were a server of the user's)."""
    home = Path(tempfile.mkdtemp(prefix="tp-pitr-own-", dir="/tmp"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_PIPELINES_")}
    env.update(BILLING_DATABASE_URL=archived.dsn, TENANT_PIPELINES_HOME=str(home),
               TENANT_PIPELINES_BACKUP_KEY=KEY,
               TENANT_PIPELINES_PGBACKREST_CONFIG=str(archived.engine.config),
               TENANT_PIPELINES_PGBACKREST_STANZA=archived.engine.stanza)
    try:
        half = {k: v for k, v in env.items() if k != "TENANT_PIPELINES_PGBACKREST_STANZA"}
        refused = run(["cluster-backup"], half)
        assert refused.returncode == 2 and "TENANT_PIPELINES_PGBACKREST_STANZA" in refused.stderr
        with psycopg.connect(archived.dsn, autocommit=True) as conn:
            tenant = seed_tenant(conn)
            enable_pitr(conn, tenant)
            backup = run(["cluster-backup", "--type", "full"], env)
            assert backup.returncode == 0, backup.stderr
            stopped = archived.engine.info().newest.stopped_at
            wait_until(lambda: archived.now(conn) > stopped + timedelta(seconds=1), "the backup's stop second to pass")
            change(conn, tenant, 1)
            at, at_t = archived.now(conn), dump_placed(conn, tenant)
            change(conn, tenant, 2)
            restored = run(["restore", "--tenant", str(tenant), "--to-time", at.isoformat()], env)
            assert restored.returncode == 0, restored.stderr
            assert dump_placed(conn, tenant) == at_t
        assert not list((home / "pitr").glob("sandbox-*"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
