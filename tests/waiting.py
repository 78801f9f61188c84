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


def waits_for_lock(observer: psycopg.Connection, pid: int, relation_oid: int | None = None) -> bool:
    """Whether backend ``pid`` is queued for a lock (an ungranted request in pg_locks) on
    ``relation_oid``, or on any table when it is None."""
    return observer.execute(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = %s AND relation = COALESCE(%s, relation) AND NOT granted)",
        (pid, relation_oid),
    ).fetchone()[0]


def lock_waiter(observer: psycopg.Connection, relation: str) -> int:
    """The backend that queues for a lock on ``relation`` or on one of its partitions (a
    partitioned table's lock takes its partitions'), once there is one.

    The partitions are read from pg_inherits, which takes no lock: pg_partition_tree() takes
    ACCESS SHARE on each of them, and that request would queue behind the very waiter it looks
    for (behind an ACCESS EXCLUSIVE request), until that one is granted or gives up."""
    found: list[int] = []

    def queued() -> bool:
        found[:] = [r[0] for r in observer.execute(
            "WITH RECURSIVE tree(relid) AS (SELECT %s::regclass::oid UNION ALL"
            " SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid)"
            " SELECT l.pid FROM pg_locks l WHERE NOT l.granted AND l.relation IN (SELECT relid FROM tree)",
            (relation,))]
        return bool(found)

    wait_until(queued, f"a session to wait for a lock on {relation}")
    return found[0]


def outwait_one_lock_timeout(observer: psycopg.Connection, pid: int, relation: str | None = None) -> None:
    """Return once backend ``pid`` has queued for a lock on ``relation`` (or any table) and
    then left the queue, while the caller's session holds a conflicting lock on it the whole
    time: the request cannot have been granted, so it timed out (lock_timeout) and whatever the
    backend does next with that table is a retry. ``observer`` is an autocommit connection
    other than the holder's and the waiter's."""
    oid = None if relation is None else observer.execute("SELECT %s::regclass::oid", (relation,)).fetchone()[0]
    where = relation or "a table"
    wait_until(lambda: waits_for_lock(observer, pid, oid), f"backend {pid} to wait for a lock on {where}")
    wait_until(lambda: not waits_for_lock(observer, pid, oid), f"backend {pid} to give up its wait for {where}")
