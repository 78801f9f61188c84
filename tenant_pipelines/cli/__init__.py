"""The ``tenant-pipelines`` command: one module per command group, each adding its parsers.

Exit codes (README.md says the same): 0 success, 1 operation failed, 2 bad input, 3 database
unreachable, 4 the database does not match this checkout's sql/ (db migrate refused or failed,
or a restore target is not migrated), 5 backup damaged, incomplete or another tenant's, 6 backup
key missing or wrong, 130 interrupted.

The commands parse, call the core (or the local stack), and print: no SQL and no logic here.
"""

from __future__ import annotations

import argparse
from typing import Callable, NoReturn, Sequence

from tenant_pipelines import __version__
from tenant_pipelines.cli import backup, citus, db, demo, dev, partitions, pgbouncer, placement, tiering
from tenant_pipelines.cli.common import log
from tenant_pipelines.errors import TenantPipelinesError
from tenant_pipelines.settings import DATABASE_URL_ENV

GROUPS = (db, tiering, partitions, placement, backup, demo, dev, pgbouncer, citus)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (usage stays in --help), exit 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        command = self.prog.removeprefix("tenant-pipelines").strip()
        self.exit(2, f"tenant-pipelines: error: {command + ': ' if command else ''}{message} "
                     f"(see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tenant-pipelines",
        description="Run the multi-tenant storage layer of the billing database. "
        f"Uses ${DATABASE_URL_ENV} (an admin DSN) when set, else a project-local PostgreSQL cluster.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TenantPipelinesError as exc:
        log(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        log("interrupted")
        return 130
