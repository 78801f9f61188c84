"""Reading the tier pool sizes back from a pgbouncer.ini, and finding the configuration in force
(for the tier-limit drift check, tenant_pipelines.core.security.audit_pool_sizes)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tenant_pipelines.core.pooling import (
    SEED_POOL_SIZES,
    PoolerConfig,
    ServerAddress,
    pgbouncer_tier_pool_sizes,
    render_pgbouncer_ini,
)
from tenant_pipelines.local.pgbouncer import pgbouncer_ini_in_force
from tenant_pipelines.local.pgbouncer import PgBouncerProcess
from tenant_pipelines.errors import TenantPipelinesError


def test_a_rendered_config_reads_back_as_its_pool_sizes() -> None:
    cfg = PoolerConfig(server=ServerAddress("127.0.0.1", 5432, "it's billing"), listen_port=6432,
                       auth_file="/tmp/userlist.txt", pool_sizes={"enterprise": 80, "free": 2}, default_pool_size=7)
    assert pgbouncer_tier_pool_sizes(render_pgbouncer_ini(cfg)) == {"enterprise": 80, "free": 2}
    assert pgbouncer_tier_pool_sizes(render_pgbouncer_ini(PoolerConfig(
        server=ServerAddress("127.0.0.1", 5432, "billing"), listen_port=6432, auth_file="/tmp/u.txt"))) == SEED_POOL_SIZES


def test_an_entry_without_pool_size_gets_the_default_pool_size() -> None:
    text = """%include /etc/pgbouncer/common.ini
; a hand-written config
[databases]
billing_free = host=127.0.0.1 port=5432 dbname=billing
  billing_growth=host='db one' dbname='it''s' pool_size = 30
# not pools of a tier: ignored
billing = host=127.0.0.1 pool_size=oops
* = host=127.0.0.1
Billing_Starter = host=127.0.0.1 pool_size=1

[pgbouncer]
%include /etc/pgbouncer/more.ini
listen_port = 6432
default_pool_size = 12
"""
    assert pgbouncer_tier_pool_sizes(text) == {"free": 12, "growth": 30}
    # Without default_pool_size (or without [pgbouncer] at all), PgBouncer's own default: 20.
    assert pgbouncer_tier_pool_sizes(text.replace("default_pool_size = 12", "")) == {"free": 20, "growth": 30}
    assert pgbouncer_tier_pool_sizes(text.split("[pgbouncer]")[0]) == {"free": 20, "growth": 30}
    assert pgbouncer_tier_pool_sizes("[pgbouncer]\nlisten_port = 6432\n") == {}


MALFORMED = [
    ("no section", "billing_free = host=127.0.0.1 pool_size=5\n", "File contains no section headers"),
    ("no '='", "[databases]\nbilling_free\n", "parsing errors"),
    ("a blank instead of ' = '", "[databases]\nbilling_free host=127.0.0.1 pool_size=5\n", "'billing_free host'"),
    ("size not a number", "[databases]\nbilling_free = host=127.0.0.1 pool_size=five\n", "pool_size of billing_free is 'five'"),
    ("unclosed quote", "[databases]\nbilling_free = host='127.0.0.1 pool_size=5\n", "not a connection string"),
    ("default not a number", "[databases]\nbilling_free = host=x\n[pgbouncer]\ndefault_pool_size = -1\n",
     "default_pool_size is '-1'"),
]


@pytest.mark.parametrize("text, problem", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_is_an_error_naming_it_and_the_fix(text: str, problem: str) -> None:
    with pytest.raises(TenantPipelinesError) as error:
        pgbouncer_tier_pool_sizes(text, "/etc/pgbouncer/pgbouncer.ini")
    message = str(error.value)
    assert message.startswith("/etc/pgbouncer/pgbouncer.ini: ") and problem in message
    assert "'tenant-pipelines pgbouncer up'" in message and "\n" not in message


@pytest.fixture
def state_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project state folder the server's OS user can reach, with no PgBouncer config yet."""
    home = Path(tempfile.mkdtemp(prefix="tp-home-", dir="/tmp"))
    os.chmod(home, 0o755)
    monkeypatch.setenv("TENANT_PIPELINES_HOME", str(home))
    monkeypatch.delenv("TENANT_PIPELINES_PGBOUNCER_INI", raising=False)
    process = PgBouncerProcess.in_state_dir(home)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(process.folder, ignore_errors=True)


def test_the_config_in_force(state_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pgbouncer_ini_in_force() is None
    own = PgBouncerProcess.in_state_dir(state_home).config_file
    own.parent.mkdir(parents=True)
    own.write_text("[databases]\n")
    assert pgbouncer_ini_in_force() == own
    # An explicit path wins, and must exist.
    explicit = tmp_path / "pgbouncer.ini"
    explicit.write_text("[databases]\n")
    monkeypatch.setenv("TENANT_PIPELINES_PGBOUNCER_INI", str(explicit))
    assert pgbouncer_ini_in_force() == explicit
    monkeypatch.setenv("TENANT_PIPELINES_PGBOUNCER_INI", str(tmp_path / "gone.ini"))
    with pytest.raises(TenantPipelinesError, match=re.escape(f"TENANT_PIPELINES_PGBOUNCER_INI names {tmp_path / 'gone.ini'}")):
        pgbouncer_ini_in_force()
