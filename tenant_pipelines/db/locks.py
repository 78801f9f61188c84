"""DDL and moves that touch a hot table take the weakest lock that works, with a lock_timeout
and a retry: a statement that cannot get its lock gives up soon (partition_config.lock_timeout,
optionally capped lower) and is tried again after a backoff, instead of queueing every writer
of the table behind it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import psycopg

from tenant_pipelines.errors import TenantPipelinesError

RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)
T = TypeVar("T")


@dataclass
class LockRetries:
    """How many times run_with_lock_retry rolled back and tried again (after a lock timeout or a
    deadlock): pass one to every step of an operation and read ``count`` at the end."""
    count: int = 0


def run_with_lock_retry(
    conn: psycopg.Connection,
    what: str,
    work: Callable[[psycopg.Connection], T],
    *,
    attempts: int = 5,
    backoff_s: float = 0.1,
    max_backoff_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    retries: LockRetries | None = None,
) -> tuple[T, int]:
    """Run ``work`` in its own transaction; on a lock timeout or deadlock, roll back, wait
    (exponential backoff with jitter, each wait at most ``max_backoff_s``) and try again, adding one to ``retries``. Returns the
    result and the tries used. ``conn`` must be idle, so that each call commits on its own."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise TenantPipelinesError(
            f"{what}: the connection is inside a transaction; use an autocommit connection so each step commits"
        )
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                return work(conn), attempt
        except RETRYABLE as exc:
            if attempt == attempts:
                raise TenantPipelinesError(
                    f"{what}: still waiting for a lock after {attempts} tries "
                    f"({exc.diag.message_primary}); a long transaction holds it: find it in "
                    "pg_stat_activity, let it finish, and re-run"
                ) from None
            if retries is not None:
                retries.count += 1
            sleep(min(backoff_s * 2 ** (attempt - 1), max_backoff_s) * (1 + random.random()))
    raise AssertionError("unreachable")


def run_with_lock_timeout(
    conn: psycopg.Connection,
    what: str,
    work: Callable[[psycopg.Connection], T],
    *,
    attempts: int = 5,
    at_most_ms: int | None = None,
    retries: LockRetries | None = None,
    backoff_s: float = 0.1,
    max_backoff_s: float = 5.0,
) -> tuple[T, int]:
    """``work`` in its own transaction with partition_config's lock_timeout (or ``at_most_ms``,
    if that is shorter or lock_timeout is 0, i.e. none: sql/0016's ``fn_cap_lock_timeout``),
    retried on a lock timeout (``run_with_lock_retry``). Returns its result and the tries used."""
    def locked(c: psycopg.Connection) -> T:
        c.execute("SELECT set_config('lock_timeout', lock_timeout, true) FROM partition_config")
        if at_most_ms is not None:
            c.execute("SELECT fn_cap_lock_timeout(%s)", (at_most_ms,))
        return work(c)

    return run_with_lock_retry(conn, what, locked, attempts=attempts, retries=retries,
                               backoff_s=backoff_s, max_backoff_s=max_backoff_s)
