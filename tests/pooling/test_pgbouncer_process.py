"""Starting, reusing, reloading and stopping the project's PgBouncer; and what happens when
PgBouncer is not installed."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines import cli
from tenant_pipelines.core.pooling import connect_pooled
from tenant_pipelines.local.pgbouncer import start_pgbouncer_for, stop_pgbouncer
from tenant_pipelines.local import pgbouncer, processes
from tenant_pipelines.local.processes import port_in_use
from tenant_pipelines.local.pgbouncer import PgBouncerError, PgBouncerProcess, find_pgbouncer


@pytest.fixture
def no_pgbouncer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without PgBouncer: nothing on PATH, nothing in the sbin folders."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pgbouncer, "SEARCH_DIRS", ())


def test_missing_pgbouncer_is_one_clear_error(no_pgbouncer: None) -> None:
    with pytest.raises(PgBouncerError) as exc:
        find_pgbouncer()
    assert str(exc.value) == "PgBouncer is not installed: install it with 'apt-get install -y pgbouncer' (or run scripts/setup.sh)"


def test_the_cli_says_how_to_install_it(
    no_pgbouncer: None, admin_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL", admin_dsn)
    monkeypatch.setenv("TENANT_PIPELINES_HOME", str(tmp_path))
    assert cli.main(["pgbouncer", "up"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "tenant-pipelines: error: PgBouncer is not installed: install it with 'apt-get install -y pgbouncer' "
        "(or run scripts/setup.sh)"
    ]


def test_up_twice_reuses_then_reloads_then_down(admin_dsn: str, start_pooler) -> None:
    pooler = start_pooler(default_pool_size=2)
    process = PgBouncerProcess.in_state_dir(pooler.state_dir)
    pid = process.running_pid()

    messages: list[str] = []
    same = start_pgbouncer_for(admin_dsn, state_dir=pooler.state_dir, default_pool_size=2, log=messages.append)
    assert f":{pooler.port}/" in same and process.running_pid() == pid
    assert messages == [f"reusing the PgBouncer running on 127.0.0.1:{pooler.port}"]

    messages.clear()
    start_pgbouncer_for(admin_dsn, state_dir=pooler.state_dir, default_pool_size=2, pool_overrides={"free": 1},
                        log=messages.append)
    assert messages == [f"reloaded the PgBouncer running on 127.0.0.1:{pooler.port} with the new configuration"]
    assert "billing_free = " in process.config_file.read_text() and "pool_size=1\n" in process.config_file.read_text()
    assert process.running_pid() == pid, "reloaded, not restarted"
    with connect_pooled(pooler.dsn("billing_free")) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "billing_app"

    assert stop_pgbouncer(pooler.state_dir) is True
    assert process.running_pid() is None and not port_in_use(pooler.port)
    assert stop_pgbouncer(pooler.state_dir) is False


def test_a_stale_pid_file_does_not_stop_it_starting(admin_dsn: str, start_pooler) -> None:
    pooler = start_pooler()
    process = PgBouncerProcess.in_state_dir(pooler.state_dir)
    stop_pgbouncer(pooler.state_dir, immediate=True)
    process.pidfile.write_text("999999\n")  # a pid that is not running

    dsn = start_pgbouncer_for(admin_dsn, state_dir=pooler.state_dir)
    assert f":{pooler.port}/" in dsn, "the previous port is reused when free"
    assert process.running_pid() is not None


def test_a_port_taken_after_the_check_is_skipped(admin_dsn: str, start_pooler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process can take the port between the free-port check and PgBouncer's bind.
    PgBouncer logs that as a WARNING, then "FATAL nowhere to listen on"; the start moves on to
    another port instead of failing."""
    pooler = start_pooler()
    stop_pgbouncer(pooler.state_dir, immediate=True)
    monkeypatch.setattr(processes, "port_in_use", lambda port: False)  # the check misses the race
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", pooler.port))
        taken.listen()
        dsn = start_pgbouncer_for(admin_dsn, state_dir=pooler.state_dir)
    port = int(conninfo_to_dict(dsn)["port"])
    assert port != pooler.port
    with connect_pooled(replace(pooler, port=port).dsn()) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "billing_app"
