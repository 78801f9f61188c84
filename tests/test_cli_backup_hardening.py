"""Issue 15 through the command line: every refusal is one line on stderr with its documented exit
code, no traceback, and the tenant's live rows unchanged (row counts and a content fingerprint)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.core.test_backup_hardening import fingerprint, tenant_with_rows
from tests.test_cli_restore import CLI, KEY, env, one_line_error, run  # noqa: F401  (env is a fixture)


def backup(env: dict[str, str], tenant: uuid.UUID, *extra: str) -> Path:
    proc = run(["backup", "--tenant", str(tenant), *extra], env)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def edit(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def refused(conn: psycopg.Connection, tenant: uuid.UUID, args: list[str], env: dict[str, str], code: int) -> str:
    before = fingerprint(conn, tenant)
    schemas = conn.execute("SELECT count(*) FROM pg_namespace").fetchone()[0]
    line = one_line_error(run(args, env), code)
    assert fingerprint(conn, tenant) == before, "nothing changed in the live tables"
    assert conn.execute("SELECT count(*) FROM pg_namespace").fetchone()[0] == schemas, "no schema created"
    return line


def restore(tenant: uuid.UUID, path: Path | str, *extra: str) -> list[str]:
    return ["restore", "--tenant", str(tenant), "--backup", str(path), *extra]


def test_an_edited_manifest_exits_5_naming_the_backup(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant = tenant_with_rows(admin_conn)
    path = backup(env, tenant)
    pristine = (path / "manifest.json").read_text()

    edit(path, lambda m: m["tables"]["usage_events_mt"].update(files=[], rows=0))
    shutil.rmtree(path / "table=usage_events_mt")
    assert str(path) in refused(admin_conn, tenant, restore(tenant, path), env, 5)

    (path / "manifest.json").write_text(pristine)
    edit(path, lambda m: m["tables"]["invoices"].update(content_hash="0" * 64))
    assert "MAC" in refused(admin_conn, tenant, restore(tenant, path), env, 5)
    assert "MAC" in refused(admin_conn, tenant, restore(tenant, path, "--into-schema", "scratch_cli"), env, 5)


def test_a_malformed_cleartext_manifest_exits_5(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    path = backup(env, tenant)
    pristine = (path / "manifest.json").read_text()
    for change in (lambda m: m["tables"]["invoices"].update(rows="abc"),
                   lambda m: m["tables"]["invoices"].update(files="x"),
                   lambda m: m["tables"]["invoices"]["files"][0].pop("sha256"),
                   lambda m: m.pop("encryption"),
                   lambda m: m["tables"]["invoices"].update(arrow_schema_ipc="bm90IGEgc2NoZW1h")):
        (path / "manifest.json").write_text(pristine)
        edit(path, change)
        assert str(path) in refused(admin_conn, tenant, restore(tenant, path), env, 5)

    (path / "manifest.json").write_text(pristine)
    import hashlib
    part = path / "table=usage_events_mt" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    edit(path, lambda m: m["tables"]["usage_events_mt"]["files"][0].update(sha256=hashlib.sha256(part.read_bytes()).hexdigest()))
    assert "Parquet" in refused(admin_conn, tenant, restore(tenant, path), env, 5)


def test_an_unverified_cleartext_backup_is_restored_and_says_so(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    path = backup(env, tenant)
    proc = run(restore(tenant, path), env)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "no restore drill has verified it" in proc.stderr and "NOT verified" in proc.stderr

    verified = backup(env, tenant, "--verify")
    proc = run(restore(tenant, verified), env)
    assert proc.returncode == 0 and "matched its restore drill" in proc.stderr and "warning" not in proc.stderr
    edit(verified, lambda m: m["tables"]["invoices"].update(rows=m["tables"]["invoices"]["rows"]))  # re-serialized: other bytes
    assert "restore drill" in refused(admin_conn, tenant, restore(tenant, verified), env, 5)


def test_a_cleartext_backup_of_an_encrypted_tenant_needs_allow_cleartext(admin_conn: psycopg.Connection,
                                                                         env: dict[str, str]) -> None:
    """Written in cleartext while the tenant was configured so, then the tenant's backups
    encrypted: the old backup is refused (exit 5) until --allow-cleartext says it is meant."""
    tenant = tenant_with_rows(admin_conn, encrypted=False)
    path = backup(env, tenant)
    admin_conn.execute("UPDATE tenant_backup_config SET encryption_enabled = true WHERE organization_id = %s", (tenant,))
    assert "--allow-cleartext" in refused(admin_conn, tenant, restore(tenant, path), env, 5)
    proc = run(restore(tenant, path, "--allow-cleartext"), env)
    assert proc.returncode == 0, proc.stderr
    assert "--allow-cleartext is for a restore from a backup folder" in one_line_error(
        run(["restore", "--tenant", str(tenant), "--to-time", "2026-01-01T00:00:00Z", "--allow-cleartext"], env), 2)


def test_key_fingerprint_altered_exits_5_a_wrong_key_6(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant = tenant_with_rows(admin_conn)
    path = backup(env, tenant)
    edit(path, lambda m: m["encryption"].update(master_key_fingerprint="0123456789abcdef"))
    assert "was altered" in refused(admin_conn, tenant, restore(tenant, path), env, 5)
    import base64
    wrong = {**env, "TENANT_PIPELINES_BACKUP_KEY": base64.b64encode(bytes(32)).decode()}
    assert "fingerprint" in refused(admin_conn, tenant, restore(tenant, path), wrong, 6)


def test_empty_or_invalid_restore_input_exits_2(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    tenant = tenant_with_rows(admin_conn)
    path = backup(env, tenant)
    admin_conn.execute("DELETE FROM usage_events_mt WHERE organization_id = %s", (tenant,))  # what a restore would put back
    for target in ("", "  ", "definitely not a DSN"):
        assert "DSN" in refused(admin_conn, tenant, restore(tenant, path, "--into-database", target), env, 2)
    assert "--backup is empty" in refused(admin_conn, tenant, ["restore", "--tenant", str(tenant), "--backup", ""], env, 2)


def test_an_unusable_backup_root_exits_2(admin_conn: psycopg.Connection, env: dict[str, str], tmp_path: Path) -> None:
    tenant = tenant_with_rows(admin_conn)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for root in (str(a_file), "/proc/self", "/dev/null", ""):
        line = refused(admin_conn, tenant, ["backup", "--tenant", str(tenant), "--root", root], env, 2)
        assert "--root" in line
    for root in ("/dev/null", "/proc/self", str(a_file)):
        line = refused(admin_conn, tenant, ["backup", "--tenant", str(tenant)], {**env, "TENANT_PIPELINES_BACKUP_ROOT": root}, 2)
        assert "TENANT_PIPELINES_BACKUP_ROOT" in line


def test_a_read_only_backup_root_exits_2(admin_conn: psycopg.Connection, env: dict[str, str]) -> None:
    """Root writes through mode bits (CAP_DAC_OVERRIDE), so as root the command runs without
    that capability (setpriv), which makes a 0555 folder read-only for it too. (A read-only
    mount or chattr +i would stop root outright, but need privileges CI lacks; /proc above is
    the case root itself cannot write into.)"""
    tenant = tenant_with_rows(admin_conn)
    folder = Path(tempfile.mkdtemp(prefix="tp-readonly-", dir="/tmp"))
    try:
        folder.chmod(0o555)
        args = ["backup", "--tenant", str(tenant), "--root", str(folder)]
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("as root, a read-only folder needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
            before = fingerprint(admin_conn, tenant)
            proc = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"] + CLI + args,
                                  env=env, capture_output=True, text=True, timeout=180)
            line = one_line_error(proc, 2)
            assert fingerprint(admin_conn, tenant) == before
        else:
            line = refused(admin_conn, tenant, args, env, 2)
        assert "Permission denied" in line and str(folder) in line
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_binary_or_directory_key_file_exits_6(admin_conn: psycopg.Connection, env: dict[str, str], tmp_path: Path) -> None:
    tenant = tenant_with_rows(admin_conn)
    path = backup(env, tenant)
    binary = tmp_path / "binary.key"
    binary.write_bytes(bytes(range(256)))
    base = {k: v for k, v in env.items() if k != "TENANT_PIPELINES_BACKUP_KEY"}
    for key_file, said in ((binary, "not base64 text"), (tmp_path, "is a directory")):
        key_env = {**base, "TENANT_PIPELINES_BACKUP_KEY_FILE": str(key_file)}
        assert said in refused(admin_conn, tenant, restore(tenant, path), key_env, 6)
        assert said in refused(admin_conn, tenant, ["backup", "--tenant", str(tenant)], key_env, 6)
