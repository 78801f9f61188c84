"""What every command group shares: the progress line on stderr, and argument types that turn
bad input into one line (exit 2) before anything runs."""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timezone
from typing import Callable

from tenant_pipelines.errors import InvalidInput


def command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
            **kwargs: object) -> argparse.ArgumentParser:
    """Add the command ``name`` (``help=``, ``description=`` in ``kwargs``) that runs ``func(args)``."""
    p = sub.add_parser(name, **kwargs)
    p.set_defaults(func=func)
    return p


def command_group(sub: argparse._SubParsersAction, name: str, **kwargs: object) -> argparse._SubParsersAction:
    """Add the command group ``name`` (db, tiering, ...): one of its actions must follow it."""
    group = sub.add_parser(name, **kwargs)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def log(message: str) -> None:
    print(f"tenant-pipelines: {message}", file=sys.stderr, flush=True)


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def positive_int(text: str) -> int:
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0: give 1 or more")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
    return value


def target_ratio(text: str) -> float:
    value = non_negative_float(text)
    if not 1.0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text}: give a ratio above 1 (e.g. 1.2)")
    return value


def add_pace_arguments(p: argparse.ArgumentParser, fixed_mb_per_s: float) -> None:
    """--pace, --max-mb-per-s and --target-p99-ratio: how a mover paces its copy (db/pacing.py)."""
    p.add_argument("--pace", choices=("adaptive", "fixed"), default="adaptive",
                   help="adaptive (default): as fast as the writers allow, measured live by probe commits "
                   "against their baseline; full speed while no other client is active. fixed: --max-mb-per-s "
                   "all the time")
    p.add_argument("--max-mb-per-s", type=non_negative_float, default=None, metavar="MB",
                   help=f"adaptive: a ceiling (default: none); fixed: the rate (default: {fixed_mb_per_s:g}); "
                   "0: no limit")
    p.add_argument("--target-p99-ratio", type=target_ratio, default=1.2, metavar="R",
                   help="adaptive: keep the writers' p99 commit within R times their baseline (default: 1.2)")


def pace_from_args(args: argparse.Namespace, fixed_mb_per_s: float, batch_blocks: int | None = None):
    from tenant_pipelines.db.pacing import Pace

    if args.max_mb_per_s is None:
        rate = fixed_mb_per_s if args.pace == "fixed" else None
    else:
        rate = args.max_mb_per_s or None
    return Pace(rate, batch_blocks, args.pace, args.target_p99_ratio)


def log_pace(report) -> None:
    """The pace a mover ran at, on stderr: its figures and why it slowed down."""
    if report is None:
        return
    baseline = ("" if report.baseline_p99_ms is None else
                f"; writers' baseline p99 {report.baseline_p99_ms:.1f} ms, probe p99 "
                f"{report.probe_p99_ms or 0:.1f} ms ({report.crossings} of {report.probes} over the line)")
    log(f"pace: {report.describe}: {report.mb_per_s:.2f} MB/s over {report.seconds:.1f} s, "
        f"{len(report.slowdowns)} slowdowns{baseline}")
    if report.fallback:
        log(f"pace: {report.fallback}")
    for s in report.slowdowns[:10]:
        log(f"pace: at {s.at_s:.1f} s: {s.reason}")


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-30") from None


def timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2026-11-30T12:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _figure(n: int) -> str:
    return f"{n:,}" if n >= 100_000 else str(n)


def bounded(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, else one line with the range
    (and ``why``, the reason for the bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {low} to {_figure(high)}") from None
        if not low <= value <= high:
            shown = text if len(text) <= 30 else text[:27] + "..."
            wrong = "is negative" if value < 0 <= low else "is out of range"
            raise argparse.ArgumentTypeError(f"{shown} {wrong}; give {low} to {_figure(high)}{why}")
        return value
    return parse


port = bounded(1, 65535, " (a TCP port)")


def demo_tenants(text: str) -> int:
    from tenant_pipelines.local.demo import MAX_TENANTS

    return bounded(0, MAX_TENANTS, " (the demo numbers its tenants with five digits)")(text)


def demo_events(text: str) -> int:
    from tenant_pipelines.local.demo import MAX_EVENTS_PER_TENANT

    return bounded(0, MAX_EVENTS_PER_TENANT, " (each tenant's events are written in one transaction)")(text)


def demo_day(text: str) -> date:
    from tenant_pipelines.local.demo import check_as_of

    value = day(text)
    try:
        check_as_of(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
    return value


def admin_dsn(*, start: bool = False) -> str:
    """The billing database's admin DSN: $BILLING_DATABASE_URL, else the embedded cluster
    (started first with ``start``)."""
    from tenant_pipelines.local.target import admin_dsn as resolve

    return resolve(start=start, log=log)
