"""A real PgBouncer (Debian's package) in front of each test's fresh database.

It is the project's own PgBouncer code (core/pooling.py, db/pgbouncer.py) in a throwaway folder
under /tmp that the server's OS user can reach (as root, PgBouncer runs as ``postgres``), on a
free loopback port. When PgBouncer is not installed, the tests using it fail with the install
hint: CI installs it (scripts/setup.sh), so a silent skip would hide a broken set-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from psycopg.conninfo import conninfo_to_dict

from tenant_pipelines.core.pooling import pooled_dsn, start_pgbouncer_for, stop_pgbouncer
from tests.conftest import APP_PASSWORD


@dataclass(frozen=True)
class Pooler:
    port: int
    state_dir: Path

    def dsn(self, database: str = "billing") -> str:
        """billing_app's DSN to one of the pools (``billing`` or ``billing_<tier>``)."""
        return pooled_dsn(self.port, database=database, password=APP_PASSWORD)


@pytest.fixture
def start_pooler(admin_dsn: str) -> Iterator[Callable[..., Pooler]]:
    """Start PgBouncer in front of ``admin_dsn``'s database: ``start_pooler(default_pool_size=2,
    pool_overrides={"free": 1})``. Stopped and removed after the test."""
    homes: list[Path] = []

    def start(**kwargs: object) -> Pooler:
        home = Path(tempfile.mkdtemp(prefix="tp-pgb-", dir="/tmp"))
        os.chmod(home, 0o755)
        homes.append(home)
        dsn = start_pgbouncer_for(admin_dsn, state_dir=home, **kwargs)
        return Pooler(port=int(conninfo_to_dict(dsn)["port"]), state_dir=home)

    try:
        yield start
    finally:
        for home in homes:
            stop_pgbouncer(home, immediate=True)
            shutil.rmtree(home, ignore_errors=True)
