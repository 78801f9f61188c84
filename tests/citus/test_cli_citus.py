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

from tenant_pipelines.db.citus import load_citus_migrations
from tenant_pipelines.db.migrate import SQL_DIR
from tenant_pipelines.local.citus import CitusCluster
from tests.conftest import make_tenant
from tests.citus.conftest import CitusTarget, make_citus_tenant, require_citus
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
    none = run(["db", "up", "--citus", "--workers", "0"], env, check=False)
    assert none.returncode == 2 and "give 1 or more" in none.stderr and "Traceback" not in none.stderr

    citus_migrations = len(load_citus_migrations(SQL_DIR))
    assert (f"a Citus coordinator: {citus_migrations} Citus migrations applied, 0 already applied"
            in run(["db", "migrate"], env).stderr)
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


def test_citus_nodes_placement_isolate_move(citus: CitusTarget) -> None:
    """The citus command group against the session's coordinator (BILLING_DATABASE_URL)."""
    import uuid as _uuid

    env = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    env["BILLING_DATABASE_URL"] = citus.admin_dsn
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        tenant = make_citus_tenant(conn, "Via the CLI")
    nodes = run(["citus", "nodes"], env).stdout.strip().splitlines()
    assert nodes[0] == "node_id\trole\tnode\tactive\tshard_groups\ttenants"
    rows = [line.split("\t") for line in nodes[1:]]
    assert [r[1] for r in rows] == ["coordinator", "worker", "worker"] and all(r[3] == "yes" for r in rows)
    assert sum(int(r[5]) for r in rows) >= 1 and rows[0][4:] == ["0", "0"]

    shown = run(["citus", "placement", "--tenant", str(tenant)], env).stdout.strip()
    assert shown.startswith(f"tenant {tenant}: shared (shard ")
    isolated = run(["citus", "isolate", "--tenant", str(tenant)], env)
    assert isolated.stdout.strip().startswith(f"tenant {tenant}: isolated (shard ") and "isolate:" in isolated.stderr
    here = int(isolated.stdout.split(" on node ")[1].split(",")[0])
    target = next(int(r[0]) for r in rows if r[1] == "worker" and int(r[0]) != here)
    moved = run(["citus", "move", "--tenant", str(tenant), "--to-node", str(target)], env)
    assert f"isolated (shard " in moved.stdout and f" on node {target}, " in moved.stdout and "move:" in moved.stderr
    again = run(["citus", "move", "--tenant", str(tenant), "--to-node", str(target)], env)
    assert "nothing to do" in again.stderr

    for args, code, message in (
            (["citus", "placement", "--tenant", "nope"], 2, "not a valid UUID"),
            (["citus", "placement", "--tenant", str(_uuid.uuid4())], 2, "unknown tenant"),
            (["citus", "move", "--tenant", str(tenant), "--to-node", "999"], 2, "node 999: not an active worker"),
            (["citus", "move", "--tenant", str(tenant), "--to-node", "0"], 2, "0: give 1 or more")):
        proc = run(args, env, check=False)
        assert proc.returncode == code and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_placement_status_and_move_on_a_coordinator(citus: CitusTarget) -> None:
    """The placement command group on Citus: status from Citus's metadata, move --to isolated and
    --to node --node-id done by Citus; single-node kinds refused there, and Citus kinds on one server."""
    env = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    env["BILLING_DATABASE_URL"] = citus.admin_dsn
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        tenant = make_citus_tenant(conn, "Placement CLI")
    status = run(["placement", "status", "--tenant", str(tenant)], env).stdout.strip().splitlines()
    assert status[0] == "tenant\tkind\tnode\tsince\tpolicy\trecorded" and status[1].startswith(f"{tenant}\tshared\t")
    assert status[1].endswith("\t-"), "not onboarded yet: no registry row"
    isolated = run(["placement", "move", "--tenant", str(tenant), "--to", "isolated"], env)
    assert "\nto\tisolated\t" in isolated.stdout and "isolate took" in isolated.stderr
    with psycopg.connect(citus.admin_dsn, autocommit=True) as conn:
        target = conn.execute("SELECT nodeid FROM pg_dist_node WHERE groupid > 0 AND nodeid <> %s ORDER BY 1 LIMIT 1",
                              (int(isolated.stdout.split("\tnode ")[-1].split("\t")[0]),)).fetchone()[0]
    moved = run(["placement", "move", "--tenant", str(tenant), "--to", "node", "--node-id", str(target)], env)
    assert f"\nto\tisolated\tnode {target}\t" in moved.stdout
    after = run(["placement", "status", "--tenant", str(tenant)], env).stdout.splitlines()[1].split("\t")
    assert after[1:3] == ["isolated", str(target)] and after[-1] == "isolated", "the registry follows the move"
    for args, message in ((["--to", "schema"], "on a Citus coordinator give shared, isolated or node"),
                          (["--to", "node"], "placement node on Citus needs node_id")):
        proc = run(["placement", "move", "--tenant", str(tenant), *args], env, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_citus_placements_are_refused_on_one_server(admin_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    env["BILLING_DATABASE_URL"] = admin_dsn
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenant = make_tenant(conn, "One server")
    proc = run(["placement", "move", "--tenant", str(tenant), "--to", "isolated"], env, check=False)
    assert proc.returncode == 2 and "are Citus placements" in proc.stderr and "Traceback" not in proc.stderr


def test_citus_commands_refuse_a_single_node_database(admin_dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    env["BILLING_DATABASE_URL"] = admin_dsn
    proc = run(["citus", "nodes"], env, check=False)
    assert proc.returncode == 4 and "not a Citus coordinator" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["db", "up"], ["db", "status"], ["citus"], ["citus", "nodes"],
                                  ["citus", "placement"], ["citus", "isolate"], ["citus", "move"]], ids=" ".join)
def test_every_citus_command_has_help(args: list[str]) -> None:
    import subprocess

    from tests.test_cli import CLI

    proc = subprocess.run(CLI + args + ["--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: tenant-pipelines" in proc.stdout


def test_fewer_workers_than_recorded_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import json

    from tenant_pipelines.errors import InvalidInput

    require_citus()
    (tmp_path / "citus.json").write_text(json.dumps({"workers": [{"name": "worker1", "nodeid": 2, "port": 1},
                                                                 {"name": "worker2", "nodeid": 3, "port": 2}]}))
    with pytest.raises(InvalidInput, match="has 2 workers: --workers 1 would drop some.*pass --workers 2 or more"):
        CitusCluster.in_state_dir(tmp_path, workers=1).up()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["citus.json"]


def test_without_citus_the_tests_skip_saying_how_to_install_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without Citus's library: citus_installed() says so with the install line, the
    Citus tests skip with it (require_citus), and db up --citus refuses with it."""
    import tenant_pipelines.local.citus as citus_module
    from tenant_pipelines.local.processes import ClusterError

    bindir = tmp_path / "postgresql" / "15" / "bin"
    bindir.mkdir(parents=True)
    monkeypatch.setattr(citus_module, "find_bindir", lambda: bindir)
    hint = ("install Citus for PostgreSQL 15: 'bash vendor/citus/build.sh' as root (scripts/setup.sh does it), "
            "or the PostgreSQL project's postgresql-15-citus package")
    assert citus_module.citus_installed() == (False, hint)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_citus()
    assert str(skipped.value) == f"Citus is not installed: {hint}"
    with pytest.raises(ClusterError) as refused:
        CitusCluster(state_dir=tmp_path / "state").up()
    assert str(refused.value) == f"Citus is not installed: {hint}"
