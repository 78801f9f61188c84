"""``tenant-pipelines placement status | move | abandon`` as a user runs it: a subprocess against
the test database (BILLING_DATABASE_URL)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from tenant_pipelines.core import moves, placement
from tests.conftest import make_tenant
from tests.core.test_moves import fill, snapshot
from tests.test_cli import run
from tests.test_cli_refusals import assert_refused

UNKNOWN = "00000000-0000-4000-8000-00000000abcd"


@pytest.fixture
def env(admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "BILLING_APP_DATABASE_URL"}
    return {**base, "BILLING_DATABASE_URL": admin_dsn, "TENANT_PIPELINES_HOME": str(tmp_path / "home")}


@pytest.fixture
def tenant(admin_conn: psycopg.Connection, app_dsn: str) -> uuid.UUID:
    tenant = make_tenant(admin_conn, "Mover", "growth")
    fill(admin_conn, app_dsn, tenant, events=30)
    return tenant


def override(conn: psycopg.Connection, tenant: uuid.UUID) -> str | None:
    return conn.execute("SELECT placement_override FROM tenant_classifications WHERE organization_id = %s",
                        (tenant,)).fetchone()[0]


def rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0] == "tenant\tkind\tlocation\tsince\tpolicy\tmove"
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}


def test_move_records_the_override_and_reports_and_status_shows_it(
    admin_conn: psycopg.Connection, app_dsn: str, env: dict[str, str], tenant: uuid.UUID
) -> None:
    other = make_tenant(admin_conn, "Other", "free")
    admin_conn.execute("UPDATE tier_limits SET placement = NULL")
    before = snapshot(app_dsn, tenant)
    status = rows(run(["placement", "status"], env).stdout)
    assert status[str(tenant)][:2] == ["pooled", placement.SHARED_PARTITION] and status[str(tenant)][3:] == ["-", "-"]
    assert str(other) in status

    moved = run(["placement", "move", "--tenant", str(tenant), "--to", "schema", "--max-mb-per-s", "0",
                 "--batch-rows", "10"], env)
    assert placement.placement_of(admin_conn, tenant).kind == "schema" and override(admin_conn, tenant) == "schema"
    assert snapshot(app_dsn, tenant) == before
    assert "placement override set to schema" in moved.stderr
    assert "cut over to schema" in moved.stderr and "verified" in moved.stderr
    out = dict(line.split("\t", 1) for line in moved.stdout.strip().splitlines() if not line.startswith(("step", "rows_copied", "hash")))
    assert out["from"] == f"pooled\t{placement.SHARED_PARTITION}"
    assert out["to"] == f"schema\t{placement.schema_name(tenant)}" and out["moved"] == "True"
    assert "hash\tusage_events\t30 rows\t" in moved.stdout and "step\tcutover\t" in moved.stdout
    assert out["cutover"].startswith("lock waited ") and int(out["bytes_copied"]) > 0

    line = rows(run(["placement", "status", "--tenant", str(tenant)], env).stdout)
    assert list(line) == [str(tenant)]
    kind, location, since, policy, move = line[str(tenant)]
    assert (kind, location, policy, move) == ("schema", placement.schema_name(tenant), "schema (override)", "-")

    again = run(["placement", "move", "--tenant", str(tenant), "--to", "schema"], env)
    assert "already schema" in again.stderr and "moved\tFalse" in again.stdout

    back = run(["placement", "move", "--tenant", str(tenant), "--to", "pooled", "--pace", "fixed",
                "--max-mb-per-s", "50"], env)
    assert "moved\tTrue" in back.stdout and placement.placement_of(admin_conn, tenant).kind == "pooled"
    assert "pace: fixed: 50 MB/s" in back.stderr and "pace: adaptive: writers' p99 within 1.2x" in moved.stderr
    assert snapshot(app_dsn, tenant) == before


def test_abandon_rolls_back_a_move_and_keeps_the_tenant_where_it_stays(
    admin_conn: psycopg.Connection, app_dsn: str, env: dict[str, str], tenant: uuid.UUID
) -> None:
    admin_conn.execute("UPDATE tier_limits SET placement = 'schema' WHERE tier = 'growth'")
    before = snapshot(app_dsn, tenant)
    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=10, stop_after="copy")
    (_, _, _, _, move) = rows(run(["placement", "status", "--tenant", str(tenant)], env).stdout)[str(tenant)]
    assert move.startswith("to schema, copying since ")

    refused = run(["placement", "move", "--tenant", str(tenant), "--to", "partition"], env, check=False)
    assert_refused(refused, "a move to schema is in progress", "--to schema")

    abandoned = run(["placement", "abandon", "--tenant", str(tenant)], env)
    assert abandoned.stdout.strip() == f"{tenant}\tpooled\t{placement.SHARED_PARTITION}\tabandoned move to schema"
    assert "was abandoned" in abandoned.stderr and "placement override set to pooled" in abandoned.stderr
    assert override(admin_conn, tenant) == "pooled", "the sensor would move it again otherwise"
    assert moves.moves_in_progress(admin_conn) == [] and snapshot(app_dsn, tenant) == before
    assert placement.placement_of(admin_conn, tenant).kind == "pooled"

    nothing = run(["placement", "abandon", "--tenant", str(tenant)], env)
    assert nothing.stdout == "" and "no move in progress" in nothing.stderr

    moves.move_tenant(admin_conn, tenant, "schema", batch_rows=10, stop_after="cutover")
    past = run(["placement", "abandon", "--tenant", str(tenant)], env, check=False)
    assert_refused(past, "has cut over", "re-run it to finish")


@pytest.mark.parametrize("args, needles", [
    (["placement", "status", "--tenant", "not-a-uuid"], ("not a valid UUID",)),
    (["placement", "status", "--tenant", UNKNOWN], (UNKNOWN, "unknown tenant")),
    (["placement", "move", "--tenant", "not-a-uuid", "--to", "schema"], ("not a valid UUID",)),
    (["placement", "move", "--tenant", UNKNOWN, "--to", "schema"], (UNKNOWN, "unknown tenant")),
    (["placement", "move", "--tenant", "{tenant}", "--to", "nowhere"], ("invalid choice: 'nowhere'",)),
    (["placement", "move", "--tenant", "{tenant}"], ("--to",)),
    (["placement", "move", "--tenant", "{tenant}", "--to", "schema", "--batch-rows", "0"], ("give 1 to",)),
    (["placement", "move", "--tenant", "{tenant}", "--to", "schema", "--max-mb-per-s", "-1"], ("negative",)),
    (["placement", "abandon", "--tenant", UNKNOWN], (UNKNOWN, "unknown tenant")),
    (["placement", "abandon"], ("--tenant",)),
])
def test_refusals_are_one_line_exit_2_and_change_nothing(
    admin_conn: psycopg.Connection, env: dict[str, str], tenant: uuid.UUID, args: list[str], needles: tuple[str, ...]
) -> None:
    proc = run([a.replace("{tenant}", str(tenant)) for a in args], env, check=False)
    assert_refused(proc, *needles)
    assert placement.placement_of(admin_conn, tenant).kind == "pooled" and override(admin_conn, tenant) is None


@pytest.mark.parametrize("action", [[], ["status"], ["move"], ["abandon"]])
def test_help(action: list[str]) -> None:
    proc = run(["placement", *action, "--help"], dict(os.environ))
    assert proc.stdout.startswith("usage: tenant-pipelines placement") and "--help" in proc.stdout
