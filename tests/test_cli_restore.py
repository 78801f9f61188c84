"""`tenant-pipelines backup` and `restore` as a user runs them: separate processes, one-line
errors with their exit codes, never a traceback."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_tenant

CLI = [sys.executable, "-m", "tenant_pipelines.cli"]
KEY = base64.b64encode(bytes(range(32))).decode()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def env(admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANT_PIPELINES_")}
    return {**base, "BILLING_DATABASE_URL": admin_dsn, "TENANT_PIPELINES_HOME": str(tmp_path / "home"),
            "TENANT_PIPELINES_BACKUP_ROOT": str(tmp_path / "backups"), "TENANT_PIPELINES_BACKUP_KEY": KEY}


def events(conn: psycopg.Connection, tenant: uuid.UUID) -> int:
    return conn.execute("SELECT count(*) FROM usage_events_mt WHERE organization_id = %s", (tenant,)).fetchone()[0]


def test_backup_then_restore_end_to_end(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant, other = make_tenant(admin_conn), make_tenant(admin_conn)
    for t in (tenant, other):
        admin_conn.execute('INSERT INTO usage_events_mt (organization_id, metric_name, quantity, "timestamp") '
                           "SELECT %s, 'api', g, now() FROM generate_series(1, 25) g", (t,))

    backup = run(["backup", "--tenant", str(tenant), "--verify"], env)
    assert backup.returncode == 0, backup.stderr
    path = Path(backup.stdout.strip().splitlines()[-1])
    assert path.name.startswith("backup=") and (path / "verified.json").is_file()
    assert "restore drill passed" in backup.stderr

    admin_conn.execute("DELETE FROM usage_events_mt WHERE organization_id = %s", (tenant,))
    restored = run(["restore", "--tenant", str(tenant), "--backup", str(path)], env)
    assert restored.returncode == 0, restored.stderr
    assert "usage_events_mt\t25" in restored.stdout.splitlines()
    assert "usage_events_mt: 25 rows restored" in restored.stderr, "progress on stderr"
    assert events(admin_conn, tenant) == 25 and events(admin_conn, other) == 25

    # --as-of: the newest verified backup taken at or before that time, and it says so.
    as_of = run(["restore", "--tenant", str(tenant), "--as-of", "2999-01-01T00:00:00Z"], env)
    assert as_of.returncode == 0, as_of.stderr
    assert path.name in as_of.stderr and "not point-in-time recovery" in as_of.stderr

    scratch = run(["restore", "--tenant", str(tenant), "--backup", str(path), "--into-schema", "look_here"], env)
    assert scratch.returncode == 0, scratch.stderr
    assert admin_conn.execute("SELECT count(*) FROM look_here.usage_events_mt").fetchone()[0] == 25


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_refusals_are_one_line_with_their_exit_code(admin_conn: psycopg.Connection, env: dict[str, str],
                                                    empty_dsn: str) -> None:
    tenant, other = make_tenant(admin_conn), make_tenant(admin_conn)
    path = Path(run(["backup", "--tenant", str(tenant)], env).stdout.strip().splitlines()[-1])

    foreign = one_line_error(run(["restore", "--tenant", str(other), "--backup", str(path)], env), 5)
    assert f"not of tenant {other}" in foreign

    no_key = {k: v for k, v in env.items() if k != "TENANT_PIPELINES_BACKUP_KEY"}
    assert "TENANT_PIPELINES_BACKUP_KEY" in one_line_error(run(["restore", "--tenant", str(tenant), "--backup", str(path)], no_key), 6)
    line = one_line_error(run(["backup", "--tenant", str(tenant)], no_key), 6)
    assert str(tenant) in line and "TENANT_PIPELINES_BACKUP_KEY" in line

    unmigrated = one_line_error(run(["restore", "--tenant", str(tenant), "--backup", str(path), "--into-database", empty_dsn], env), 4)
    assert "db migrate" in unmigrated

    assert "no verified backup" in one_line_error(run(["restore", "--tenant", str(tenant), "--as-of", "2999-01-01"], env), 5)
    assert "not a valid UUID" in one_line_error(run(["restore", "--tenant", "nope", "--backup", str(path)], env), 2)

    part = next(path.rglob("part-00000.parquet"))
    part.write_bytes(part.read_bytes()[:-10] + b"0123456789")
    damaged = one_line_error(run(["restore", "--tenant", str(tenant), "--backup", str(path)], env), 5)
    assert "sha256" in damaged


def test_help() -> None:
    proc = subprocess.run(CLI + ["restore", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--into-schema" in proc.stdout and "--as-of" in proc.stdout
