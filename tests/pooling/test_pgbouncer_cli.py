"""`tenant-pipelines pgbouncer up|down|config` as a user runs them, in front of the embedded
cluster: separate processes, a real PostgreSQL and a real PgBouncer."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tenant_pipelines.core.pooling import connect_pooled
from tests.conftest import embedded_cli_env
from tests.test_cli import run


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    with embedded_cli_env("tp-pgb-cli-") as env:
        yield env


def test_pgbouncer_up_config_down_in_front_of_the_embedded_cluster(cli_env: dict[str, str], tmp_path: Path) -> None:
    run(["db", "up"], cli_env)
    run(["db", "migrate"], cli_env)

    first = run(["pgbouncer", "up"], cli_env)
    dsn = first.stdout.strip().splitlines()[-1]
    assert dsn.startswith("postgresql://billing_app:") and "@127.0.0.1:" in dsn and dsn.endswith("/billing")
    assert "gave billing_app a generated password" in first.stderr
    with connect_pooled(dsn) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("billing_app", "billing")
    with connect_pooled(make_conninfo(dsn, dbname="billing_enterprise")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "billing_app"

    second = run(["pgbouncer", "up"], cli_env)
    assert second.stdout.strip().splitlines()[-1] == dsn, "up twice reuses the running PgBouncer"
    assert "reusing the PgBouncer" in second.stderr

    config = run(["pgbouncer", "config", "--port", "6432", "--pool-size", "free=3"], cli_env).stdout
    assert "billing_free = host=127.0.0.1" in config and "pool_size=3" in config
    assert "listen_port = 6432" in config and "pool_mode = transaction" in config
    assert "logfile" not in config and "pidfile" not in config
    userlist = tmp_path / "userlist.txt"
    config = run(["pgbouncer", "config", "--userlist", str(userlist)], cli_env).stdout
    assert f"auth_file = {userlist}" in config
    assert stat.S_IMODE(userlist.stat().st_mode) == 0o600
    assert userlist.read_text().splitlines()[-1].startswith('"billing_app" "SCRAM-SHA-256$')

    bad = run(["pgbouncer", "up", "--pool-size", "free tier=1"], cli_env, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "cannot name a PgBouncer pool" in bad.stderr

    assert "stopped PgBouncer" in run(["pgbouncer", "down"], cli_env).stderr
    assert "PgBouncer was not running" in run(["pgbouncer", "down"], cli_env).stderr
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()
    run(["db", "down"], cli_env)
