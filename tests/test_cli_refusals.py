"""Every refusal of the command line is one line on stderr with exit 2, no traceback, and
leaves the database as it found it: roles (pg_authid, passwords included), tablespaces, the
policy tables, the relations and the tenant tables' rows (tests/snapshots.py).

The CLI runs in a subprocess, as a user runs it, against the test database
(BILLING_DATABASE_URL), except where the embedded cluster is the point.

Root ignores mode bits, and CI runs as root, so "a path that cannot be written" is one no
one can write: under /proc (nothing can be created there), under /sys, or below a regular file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tenant_pipelines.local.pgbouncer import stop_pgbouncer
from tests.conftest import embedded_cli_env, make_tenant
from tests.snapshots import assert_unchanged, snapshot
from tests.test_cli import run

UNKNOWN = "00000000-0000-4000-8000-00000000abcd"
KNOWN = "{known}"  # replaced by a tenant the fixture creates


def assert_refused(proc, *needles: str, after_progress: bool = False) -> None:
    """Exit 2, exactly one line on stderr that says ``needles``, no traceback. With
    ``after_progress``, progress lines may come before it (the embedded cluster's "reusing")."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    if after_progress:
        assert sum("error" in line for line in lines) == 1, proc.stderr
        lines = lines[-1:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and lines[0].startswith("tenant-pipelines: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


@pytest.fixture
def billing(admin_dsn: str, admin_conn: psycopg.Connection) -> Iterator[tuple[str, dict[str, str], uuid.UUID]]:
    """The test database with a pooled and an enterprise tenant (a few events each), and the
    environment of a CLI run against it with a private state folder."""
    make_tenant(admin_conn, "Pooled", "free")
    enterprise = make_tenant(admin_conn, "Big", "enterprise")
    admin_conn.execute(
        "INSERT INTO usage_events_mt (id, organization_id, metric_name, quantity, \"timestamp\")"
        " SELECT gen_random_uuid(), organization_id, 'api_calls', 1, now() - make_interval(days => g)"
        " FROM tenant_classifications, generate_series(1, 5) g")
    home = Path(tempfile.mkdtemp(prefix="tp-refuse-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    env.update({"BILLING_DATABASE_URL": admin_dsn, "TENANT_PIPELINES_HOME": str(home)})
    try:
        yield admin_dsn, env, enterprise
    finally:
        stop_pgbouncer(home, immediate=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


REFUSALS: list[tuple[list[str], tuple[str, ...]]] = [
    # 4: wrong successes
    (["tiering", "configure", "--warm", "pg_global"], ("pg_global", "warm tier", "name another tablespace")),
    (["tiering", "configure", "--warm", ""], ("warm tier", "empty")),
    (["tiering", "configure", "--hot", "hot_storage", "--cold", "no_such_space"], ("no_such_space", "CREATE TABLESPACE")),
    (["partitions", "ensure", "--tenant", UNKNOWN], (UNKNOWN, "unknown tenant", "onboard")),
    (["tiering", "run", "--tenant", UNKNOWN], (UNKNOWN, "unknown tenant")),
    (["tiering", "run", "--tenant", UNKNOWN, "--method", "set-tablespace"], (UNKNOWN, "unknown tenant")),
    (["tiering", "plan", "--tenant", UNKNOWN], (UNKNOWN, "unknown tenant")),
    (["tiering", "run", "--tenant", KNOWN, "--pace", "fast"], ("--pace", "fast", "adaptive", "fixed")),
    (["tiering", "run", "--tenant", KNOWN, "--target-p99-ratio", "1"], ("--target-p99-ratio", "above 1")),
    (["placement", "move", "--tenant", KNOWN, "--to", "schema", "--target-p99-ratio", "0.5"],
     ("--target-p99-ratio", "above 1")),
    (["pgbouncer", "config", "--port", "-1"], ("--port", "-1", "give 1 to 65535")),
    (["pgbouncer", "config", "--port", "70000"], ("--port", "70000", "give 1 to 65535")),
    (["pgbouncer", "config", "--port", "0"], ("--port", "give 1 to 65535")),
    (["demo", "seed", "--tenants", "999999999999"], ("--tenants", "give 0 to 99999", "five digits")),
    (["demo", "seed", "--events-per-tenant", "1000001"], ("--events-per-tenant", "1,000,000")),
    (["dev", "--tenants", "999999999999"], ("--tenants", "give 0 to 99999")),
    (["dev", "--port", "70000"], ("--port", "give 1 to 65535")),
    # 5: what was a traceback
    (["partitions", "ensure", "--tenant", KNOWN, "--premake-months", "-1"], ("--premake-months", "give 0 to 36")),
    (["partitions", "ensure", "--tenant", KNOWN, "--premake-months", "1000"], ("--premake-months", "give 0 to 36")),
    (["partitions", "ensure", "--tenant", KNOWN, "--premake-months", str(10**20)], ("--premake-months", "give 0 to 36")),
    (["demo", "seed", "--tenants", "1", "--as-of", "0001-01-01"], ("--as-of", "0002-05-01 to 9999-12-17")),
    (["demo", "seed", "--tenants", "1", "--as-of", "9999-12-31"], ("--as-of", "0002-05-01 to 9999-12-17")),
    # 3: validate first (the embedded cluster's case, where a password was set, is below)
    (["pgbouncer", "up", "--pool-size", "bogus=5"], ("bogus", "not in tier_limits")),
    (["pgbouncer", "up", "--pool-size", "free=0"], ("free", "give 1 to 10000")),
    (["pgbouncer", "up", "--default-pool-size", "0"], ("--default-pool-size", "give 1 to 10000")),
    (["pgbouncer", "config", "--pool-size", "bogus=5"], ("bogus", "not in tier_limits")),
]


@pytest.mark.parametrize("args,needles", REFUSALS, ids=[" ".join(a) or "''" for a, _ in REFUSALS])
def test_refused_in_one_line_and_nothing_changes(billing, args: list[str], needles: tuple[str, ...]) -> None:
    dsn, env, known = billing
    args = [str(known) if a == KNOWN else a for a in args]
    before = snapshot(dsn)
    proc = run(args, env, check=False)
    assert_refused(proc, *needles)
    assert proc.stdout == ""
    assert_unchanged(before, snapshot(dsn), " ".join(args))
    assert os.listdir(env["TENANT_PIPELINES_HOME"]) == [], "no state written"


def test_the_refused_tiering_configure_keeps_the_mapping_and_tiering_still_runs(billing) -> None:
    dsn, env, known = billing
    assert_refused(run(["tiering", "configure", "--warm", "pg_global"], env, check=False), "pg_global")
    assert "warm\twarm_storage" in run(["tiering", "configure"], env).stdout
    assert run(["tiering", "run", "--tenant", str(known)], env).returncode == 0


def test_a_tenant_known_only_by_its_events_is_not_refused(billing) -> None:
    """The onboarding sensor picks up events of a tenant before its organization exists: so
    may the command line."""
    dsn, env, _ = billing
    stray = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO usage_events_mt (id, organization_id, metric_name, quantity, \"timestamp\")"
                     " VALUES (gen_random_uuid(), %s, 'api_calls', 1, now())", (stray,))
    assert run(["tiering", "plan", "--tenant", str(stray)], env).stdout.startswith("partition\t")
    assert f"{stray}\tpooled" in run(["partitions", "ensure", "--tenant", str(stray)], env).stdout


def userlist_paths(a_file: Path, tmp_path: Path) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (str(tmp_path / "missing" / "userlist.txt"), ("does not exist", "create it")),
        (str(tmp_path), ("is a folder", "userlist.txt")),
        (str(a_file / "userlist.txt"), ("is a file, not a folder",)),
        ("/proc/tenant-pipelines-userlist.txt", ("cannot write it",)),  # procfs: no new files, root or not
        ("/sys/tenant-pipelines-userlist.txt", ("cannot write it",)),
    ]


def test_pgbouncer_config_userlist_that_cannot_be_written(billing, a_file: Path, tmp_path: Path) -> None:
    dsn, env, _ = billing
    before = snapshot(dsn)
    for path, needles in userlist_paths(a_file, tmp_path):
        proc = run(["pgbouncer", "config", "--userlist", path], env, check=False)
        assert_refused(proc, "auth file", path, *needles)
        assert proc.stdout == "", "no config printed for an auth file that was not written"
    assert not (tmp_path / "missing").exists()
    assert a_file.read_text() == "not a folder\n"
    assert_unchanged(before, snapshot(dsn), "pgbouncer config --userlist")
    good = tmp_path / "userlist.txt"
    assert f"auth_file = {good}" in run(["pgbouncer", "config", "--userlist", str(good)], env).stdout


def bad_homes(a_file: Path) -> list[tuple[Path, str]]:
    """TENANT_PIPELINES_HOME values that cannot be a state folder, and what the refusal says."""
    return [
        (a_file, "it is a file, not a folder"),
        (a_file / "state", f"{a_file} is a file, not a folder"),
        (Path("/proc/tenant-pipelines-state"), "cannot create it"),  # procfs: no new folders, root or not
        (Path("/sys"), "cannot write in it"),
    ]


def test_pgbouncer_up_refuses_a_state_folder_it_cannot_write(billing, a_file: Path) -> None:
    """With BILLING_DATABASE_URL set, the state folder holds PgBouncer's files and pgbouncer.json."""
    dsn, env, _ = billing
    before = snapshot(dsn)
    for home, needle in bad_homes(a_file):
        proc = run(["pgbouncer", "up"], {**env, "TENANT_PIPELINES_HOME": str(home)}, check=False)
        assert_refused(proc, "state folder", str(home), "TENANT_PIPELINES_HOME", needle)
    assert a_file.read_text() == "not a folder\n"
    assert_unchanged(before, snapshot(dsn), "pgbouncer up")


@pytest.mark.parametrize("command", [["db", "up"], ["db", "migrate"], ["pgbouncer", "up"], ["dev", "--no-ui"]])
def test_embedded_commands_refuse_a_state_folder_they_cannot_write_before_starting_anything(
        a_file: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"}
    for home, needle in bad_homes(a_file):
        proc = run(command, {**env, "TENANT_PIPELINES_HOME": str(home)}, check=False)
        assert_refused(proc, "state folder", str(home), "TENANT_PIPELINES_HOME", needle)
    assert a_file.read_text() == "not a folder\n"
    assert not Path("/proc/tenant-pipelines-state").exists()


@pytest.mark.parametrize("command", [["db", "down"], ["demo", "seed"], ["tiering", "plan"], ["pgbouncer", "down"]])
def test_embedded_commands_that_only_read_state(a_file: Path, command: list[str]) -> None:
    """A state folder that is a file is refused (2). One that cannot be written holds no cluster:
    the commands that need one say to run db up, which then refuses the folder."""
    env = {k: v for k, v in os.environ.items() if k != "BILLING_DATABASE_URL"}
    for home, needle in bad_homes(a_file)[:2]:
        proc = run(command, {**env, "TENANT_PIPELINES_HOME": str(home)}, check=False)
        assert_refused(proc, "state folder", str(home), needle)
    proc = run(command, {**env, "TENANT_PIPELINES_HOME": "/sys"}, check=False)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    if command[-1] == "down":
        assert proc.returncode == 0 and "not running" in lines[0]
    else:
        assert proc.returncode == 1 and "tenant-pipelines db up" in lines[0]


@pytest.fixture
def embedded_env() -> Iterator[dict[str, str]]:
    with embedded_cli_env("tp-refuse-emb-") as env:
        yield env


def test_embedded_pgbouncer_up_refused_sets_no_password(embedded_env: dict[str, str]) -> None:
    """Issue 15, 3: `pgbouncer up --pool-size bogus=5` gave billing_app a generated password it
    never saved, so the next `up` found 'a password tenant-pipelines did not set'."""
    dsn = run(["db", "up"], embedded_env).stdout.strip().splitlines()[-1]
    run(["db", "migrate"], embedded_env)
    before = snapshot(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'billing_app'").fetchone() == (None,)
    for bad in (["--pool-size", "bogus=5"], ["--pool-size", "free=0"], ["--default-pool-size", "0"]):
        assert_refused(run(["pgbouncer", "up", *bad], embedded_env, check=False), after_progress=bad[0] == "--pool-size")
        assert_unchanged(before, snapshot(dsn), f"pgbouncer up {' '.join(bad)}")
    up = run(["pgbouncer", "up"], embedded_env)
    assert "gave billing_app a generated password" in up.stderr and "did not set" not in up.stderr
    pooled = up.stdout.strip().splitlines()[-1]
    assert pooled.startswith("postgresql://billing_app:")
    again = run(["pgbouncer", "up", "--pool-size", "bogus=5"], embedded_env, check=False)
    assert_refused(again, "bogus", after_progress=True)
    assert run(["pgbouncer", "up"], embedded_env).stdout.strip().splitlines()[-1] == pooled
    run(["pgbouncer", "down"], embedded_env)
    run(["db", "down"], embedded_env)
