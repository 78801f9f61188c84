"""The tenant-pipelines command end to end, as a user runs it: separate processes, a real cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tenant_pipelines.local.cluster import EmbeddedCluster

CLI = [sys.executable, "-m", "tenant_pipelines.cli"]


def run(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="tp-cli-", dir="/tmp"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"}
    env["TENANT_PIPELINES_HOME"] = str(home)
    try:
        yield env
    finally:
        EmbeddedCluster.in_state_dir(home).destroy()


def test_db_up_migrate_seed_down(cli_env: dict[str, str]) -> None:
    first = run(["db", "up"], cli_env)
    dsn = first.stdout.strip().splitlines()[-1]
    assert dsn.startswith("postgresql://postgres:") and "@127.0.0.1:" in dsn
    second = run(["db", "up"], cli_env)
    assert second.stdout.strip().splitlines()[-1] == dsn, "db up twice reuses the running cluster"
    assert "reusing" in second.stderr

    migrated = run(["db", "migrate"], cli_env)
    assert "migrations applied, 0 already applied" in migrated.stderr
    again = run(["db", "migrate"], cli_env)
    assert "0 migrations applied" in again.stderr

    run(["demo", "seed", "--tenants", "8", "--events-per-tenant", "50", "--seed", "7"], cli_env)
    with psycopg.connect(dsn) as conn:
        tiers = dict(conn.execute("SELECT tier, count(*) FROM tenant_classifications GROUP BY tier").fetchall())
        events = conn.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0]
        first_ids = [r[0] for r in conn.execute("SELECT id FROM organizations ORDER BY id")]
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
    assert tiers == {"free": 2, "starter": 2, "growth": 2, "enterprise": 2}
    assert events == 400
    assert wal_level == "logical"

    reseed = run(["demo", "seed", "--tenants", "8", "--events-per-tenant", "50", "--seed", "7"], cli_env)
    assert "0 tenants created, 8 already there" in reseed.stderr
    with psycopg.connect(dsn) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM organizations ORDER BY id")] == first_ids
        assert conn.execute("SELECT count(*) FROM usage_events_mt").fetchone()[0] == 400

    tiers = run(["tiering", "configure", "--warm", "warm_storage"], cli_env)
    assert "warm\twarm_storage" in tiers.stdout
    refused = run(["tiering", "configure", "--cold", "no_such_space"], cli_env, check=False)
    assert refused.returncode == 2 and "no_such_space" in refused.stderr and "CREATE TABLESPACE" in refused.stderr
    assert run(["tiering", "plan"], cli_env).stdout.startswith("partition\t")
    with psycopg.connect(dsn) as conn:
        tenant = conn.execute("SELECT organization_id FROM tenant_classifications WHERE tier = 'enterprise'"
                              " ORDER BY organization_id LIMIT 1").fetchone()[0]
    moved = run(["tiering", "run", "--tenant", str(tenant)], cli_env)
    assert moved.stdout.startswith("partition\tfrom\tto\tbytes") and "still misplaced" in moved.stderr
    assert run(["tiering", "run", "--tenant", str(tenant)], cli_env).stdout.count("\n") == 1, "a re-run moves nothing"
    bad = run(["tiering", "run", "--tenant", "not-a-uuid"], cli_env, check=False)
    assert bad.returncode == 2 and "not-a-uuid" in bad.stderr and "Traceback" not in bad.stderr
    status = run(["partitions", "status"], cli_env)
    assert status.stdout.startswith("leaves\t") and "dedicated tenants\t0" in status.stdout
    ensured = run(["partitions", "ensure", "--tenant", str(tenant)], cli_env)
    assert f"{tenant}\tmonthly\t" in ensured.stdout and "\tTrue" in ensured.stdout
    assert "dedicated tenants\t1" in run(["partitions", "status"], cli_env).stdout
    hostile = run(["partitions", "ensure", "--tenant", "x'; DROP TABLE usage_events_mt; --"], cli_env, check=False)
    assert hostile.returncode == 2 and "not a valid UUID" in hostile.stderr and "Traceback" not in hostile.stderr
    pool = run(["tiering", "run", "--pool"], cli_env)
    assert pool.stdout.startswith("partition\tfrom") and "the pool: " in pool.stderr
    both = run(["tiering", "run", "--pool", "--tenant", str(tenant)], cli_env, check=False)
    assert both.returncode == 2 and "not allowed with" in both.stderr

    down = run(["db", "down"], cli_env)
    assert "stopped" in down.stderr
    assert "not running" in run(["db", "down"], cli_env).stderr


def test_db_up_picks_another_port_when_its_port_is_taken(cli_env: dict[str, str]) -> None:
    dsn = run(["db", "up"], cli_env).stdout.strip().splitlines()[-1]
    port = int(dsn.rsplit(":", 1)[1].split("/")[0])
    run(["db", "down"], cli_env)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc = run(["db", "up"], cli_env)
    new_dsn = proc.stdout.strip().splitlines()[-1]
    assert new_dsn != dsn and f":{port}/" not in new_dsn
    assert "taken" in proc.stderr


def test_same_seed_gives_the_same_tenants(cli_env: dict[str, str]) -> None:
    dsn = run(["db", "up"], cli_env).stdout.strip().splitlines()[-1]
    run(["db", "migrate"], cli_env)
    run(["demo", "seed", "--tenants", "3", "--events-per-tenant", "5", "--seed", "11", "--as-of", "2026-01-31"], cli_env)
    with psycopg.connect(dsn) as conn:
        snapshot = conn.execute(
            "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM usage_events_mt t"
        ).fetchone()[0]
        conn.execute("TRUNCATE organizations, subscriptions, invoices, payment_methods, usage_events_mt, "
                     "tenant_classifications, tenant_backup_config, tenant_schemas, tenant_metrics_history")
        conn.commit()
    run(["demo", "seed", "--tenants", "3", "--events-per-tenant", "5", "--seed", "11", "--as-of", "2026-01-31"], cli_env)
    with psycopg.connect(dsn) as conn:
        again = conn.execute(
            "SELECT md5(string_agg(t::text, ',' ORDER BY t.id)) FROM usage_events_mt t"
        ).fetchone()[0]
    assert again == snapshot


def test_unreachable_database_url_is_one_line_with_host_and_port(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "BILLING_DATABASE_URL": "postgresql://someone:pw@127.0.0.1:1/billing"}
    proc = run(["db", "migrate"], env, check=False)
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "Traceback" not in proc.stderr
    assert "pw" not in lines[0].replace("postgresql", "")


def test_commands_before_db_up_say_what_to_do(cli_env: dict[str, str]) -> None:
    proc = run(["demo", "seed", "--tenants", "1"], cli_env, check=False)
    assert proc.returncode == 1
    assert "tenant-pipelines db up" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args", [[], ["db"], ["db", "up"], ["db", "down"], ["db", "migrate"], ["demo", "seed"], ["dev"],
             ["tiering"], ["tiering", "configure"], ["tiering", "plan"], ["tiering", "run"],
             ["partitions"], ["partitions", "status"], ["partitions", "ensure"]]
)
def test_every_command_has_help(args: list[str]) -> None:
    proc = subprocess.run(CLI + args + ["--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: tenant-pipelines" in proc.stdout


def test_bad_arguments_exit_2() -> None:
    proc = subprocess.run(CLI + ["demo", "seed", "--tenants", "-3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "negative" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback is for a server OS user that cannot reach the project")
def test_unreachable_project_folder_falls_back_to_a_reachable_one() -> None:
    private = Path(tempfile.mkdtemp(prefix="tp-private-", dir="/tmp"))  # 0700, root-owned
    env = {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"}
    env["TENANT_PIPELINES_HOME"] = str(private / "state")
    try:
        proc = run(["db", "up"], env)
        assert "its data lives in /var/tmp/tenant-pipelines-" in proc.stderr
        with psycopg.connect(proc.stdout.strip().splitlines()[-1]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        EmbeddedCluster.in_state_dir(private / "state").destroy()
