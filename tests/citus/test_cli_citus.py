"""tenant-pipelines db up --citus | status | migrate | down, as a user runs them (issue 19): a
coordinator and one worker of their own, in a throwaway TENANT_PIPELINES_HOME."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tenant_pipelines.local.citus import CitusCluster
from tests.citus.conftest import require_citus
from tests.test_cli import run


@pytest.fixture
def citus_cli_env() -> Iterator[dict[str, str]]:
    require_citus()
    home = Path(tempfile.mkdtemp(prefix="tp-cli-citus-", dir="/tmp"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("BILLING_DATABASE_URL", "BILLING_APP_DATABASE_URL")}
    env["TENANT_PIPELINES_HOME"] = str(home)
    env["TENANT_PIPELINES_WAL_ARCHIVE"] = "off"
    try:
        yield env
    finally:
        CitusCluster.in_state_dir(home).destroy()
        shutil.rmtree(home, ignore_errors=True)


def status(env: dict[str, str]) -> tuple[int, dict[str, tuple[str, str]]]:
    proc = run(["db", "status"], env, check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "name\trole\tport\tdata"
    return proc.returncode, {name: (role, port) for name, role, port, _ in (line.split("\t") for line in lines[1:])}


def test_db_up_citus_status_migrate_down(citus_cli_env: dict[str, str]) -> None:
    env = citus_cli_env
    refused = run(["db", "up", "--workers", "1"], env, check=False)
    assert refused.returncode == 2 and "only with --citus" in refused.stderr and "Traceback" not in refused.stderr

    first = run(["db", "up", "--citus", "--workers", "1"], env)
    dsn = first.stdout.strip().splitlines()[-1]
    assert dsn.startswith("postgresql://postgres:") and "@127.0.0.1:" in dsn
    code, nodes = status(env)
    assert code == 0 and set(nodes) == {"single-node", "coordinator", "worker1"}
    assert nodes["coordinator"][0] == "coordinator" and nodes["worker1"][0] == "worker"
    assert nodes["single-node"][1] == "stopped" and nodes["worker1"][1].isdigit()

    again = run(["db", "up"], env)  # without --citus: the Citus cluster set up here
    assert again.stdout.strip().splitlines()[-1] == dsn and "reusing" in again.stderr
    fewer = run(["db", "up", "--citus", "--workers", "0"], env, check=False)
    assert fewer.returncode == 2 and "Traceback" not in fewer.stderr

    run(["db", "migrate"], env)
    assert "0 migrations applied" in run(["db", "migrate"], env).stderr
    with psycopg.connect(dsn) as conn:
        workers = conn.execute("SELECT nodeport::text FROM pg_dist_node WHERE groupid > 0 AND isactive").fetchall()
        assert workers == [(nodes["worker1"][1],)]
        assert conn.execute("SELECT count(*) FROM citus_tables WHERE citus_table_type = 'distributed'"
                            " AND table_name::text !~ '^usage_events_mt_(p[0-9]{4}_|outside)'").fetchone()[0] == 10
    run(["demo", "seed", "--tenants", "4", "--events-per-tenant", "20", "--seed", "3"], env)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(DISTINCT organization_id), count(*) FROM usage_events_mt").fetchone() == (4, 80)

    down = run(["db", "down"], env)
    assert "worker1" in down.stderr and "coordinator" in down.stderr
    code, nodes = status(env)
    assert code == 1 and {port for _, port in nodes.values()} == {"stopped"}
    assert run(["db", "up"], env).stdout.strip().splitlines()[-1].startswith("postgresql://postgres:")
    run(["db", "down"], env)
