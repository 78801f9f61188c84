"""Waiting on a state, never on a clock: a test that needs another session to have reached a
point (waited for a lock, given up waiting, written a row) polls for that state, with a
generous deadline that only a broken build ever reaches."""

from __future__ import annotations

import time
from typing import Callable

import psycopg

DEADLINE_S = 60.0


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Return as soon as ``condition()`` is true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout_s:.0f}s for {what}")
        time.sleep(0.005)


def waits_for_lock(observer: psycopg.Connection, pid: int, relation_oid: int) -> bool:
    """Whether backend ``pid`` is queued for a lock on ``relation_oid`` (an ungranted request in pg_locks)."""
    return observer.execute(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND relation = %s AND NOT granted)",
        (pid, relation_oid),
    ).fetchone()[0]


def outwait_one_lock_timeout(observer: psycopg.Connection, pid: int, relation: str) -> None:
    """Return once backend ``pid`` has queued for a lock on ``relation`` and then left the
    queue, while the caller's session holds a conflicting lock on it the whole time: the
    request cannot have been granted, so it timed out (lock_timeout) and whatever the backend
    does next with that relation is a retry. ``observer`` is an autocommit connection other
    than the holder's and the waiter's."""
    oid = observer.execute("SELECT %s::regclass::oid", (relation,)).fetchone()[0]
    wait_until(lambda: waits_for_lock(observer, pid, oid), f"backend {pid} to wait for a lock on {relation}")
    wait_until(lambda: not waits_for_lock(observer, pid, oid), f"backend {pid} to give up its wait for {relation}")
