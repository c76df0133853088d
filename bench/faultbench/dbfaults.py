"""The database's faults (``--database-faults``), and the rows the bench makes for its
row-deleting schedules to delete (whose counts the checks compare with what went).

PostgreSQL: the server restarted (``fast``, or ``immediate``: a crash), every other session of
the bench's database ended with ``pg_terminate_backend``, a lock on the sessions table that
holds writes back for longer than a batch may wait (CLEANUP_LOCK_TIMEOUT_MS), and the server's
``statement_timeout`` and ``idle_in_transaction_session_timeout`` set low for a few seconds. SQLite: the write
lock held by another connection for longer than the busy timeout (SQLITE_TIMEOUT), and the disk
full for the workers and the web process (no file of theirs may grow, RLIMIT_FSIZE).

Each fault is a window, as an engine fault is: samples and deadlines that overlap it do not
count, and the operator waits until it is over (an operator's clicks would answer 503).
"""

from __future__ import annotations

import os
import random
import resource
import sqlite3
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connections
from django.utils import timezone

from bench.faultbench import environment
from bench.faultbench.processes import say
from bench.faultbench.record import Action, Bench

POSTGRES_FAULTS = {
    "restart database fast": 2,
    "restart database immediate": 2,
    "drop database connections": 3,
    "lock sessions table": 2,
    "server timeouts": 2,
}
# The server's limits for a while (ALTER SYSTEM, then a reload): a statement that runs longer,
# or a transaction left idle longer, is ended by the server.
STATEMENT_TIMEOUT_MS, IDLE_IN_TRANSACTION_TIMEOUT_MS = 25, 500
SQLITE_FAULTS = {"lock database": 3, "fill disk": 2}
DATABASE_FAULT_KINDS = {*POSTGRES_FAULTS, *SQLITE_FAULTS}
SESSIONS_TABLE = "django_session"
# Rows arrive this often, each batch this many, expiring from this long ago to this far ahead.
FEED_EVERY, FEED_ROWS, EXPIRES = 0.5, 10, (-3.0, 15.0)


def kinds() -> dict[str, int]:
    return POSTGRES_FAULTS if environment.DATABASE == "postgres" else SQLITE_FAULTS


def _admin_sql(statement: str) -> None:
    import psycopg

    assert environment.POSTGRES is not None
    with psycopg.connect(environment.POSTGRES.url("postgres"), autocommit=True) as admin:
        admin.execute(statement)


def inject(bench: Bench, rng: random.Random, kind: str) -> Action:
    fault = Action(kind, None, timezone.now())
    window = bench.open_window()
    bench.database_down.set()
    try:
        if kind.startswith("restart database"):
            mode = kind.rsplit(" ", 1)[1]
            down = rng.uniform(1.0, 4.0)
            assert environment.POSTGRES is not None
            environment.POSTGRES.halt(mode)
            time.sleep(down)
            environment.POSTGRES.resume()
            fault.outcome = f"pg_ctl stop -m {mode}, started again after {down:.1f} s"
        elif kind == "drop database connections":
            _admin_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'faults' AND pid <> pg_backend_pid()"
            )
            fault.outcome = "every session of the database ended"
        elif kind == "server timeouts":
            held = rng.uniform(3.0, 8.0)
            _admin_sql(f"ALTER SYSTEM SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            _admin_sql(
                "ALTER SYSTEM SET idle_in_transaction_session_timeout = "
                f"{IDLE_IN_TRANSACTION_TIMEOUT_MS}"
            )
            _admin_sql("SELECT pg_reload_conf()")
            try:
                time.sleep(held)
            finally:
                _admin_sql("ALTER SYSTEM RESET statement_timeout")
                _admin_sql("ALTER SYSTEM RESET idle_in_transaction_session_timeout")
                _admin_sql("SELECT pg_reload_conf()")
            fault.outcome = (
                f"statement_timeout {STATEMENT_TIMEOUT_MS} ms and "
                f"idle_in_transaction_session_timeout {IDLE_IN_TRANSACTION_TIMEOUT_MS} ms "
                f"for {held:.1f} s"
            )
        elif kind == "lock sessions table":
            held = rng.uniform(3.0, 6.0)
            _hold_postgres_lock(held)
            fault.outcome = f"LOCK TABLE {SESSIONS_TABLE} IN SHARE MODE for {held:.1f} s"
        elif kind == "fill disk":
            held = rng.uniform(3.0, 6.0)
            size = _fill_disk(bench, held)
            fault.outcome = f"no file may grow past {size:,} bytes for {held:.1f} s"
        else:
            held = environment.SQLITE_BUSY_SECONDS + rng.uniform(1.0, 3.0)
            _hold_sqlite_lock(held)
            fault.outcome = f"the write lock held for {held:.1f} s"
    finally:
        window.end = timezone.now()
        bench.database_down.clear()
    fault.done = timezone.now()
    return fault


def _hold_postgres_lock(seconds: float) -> None:
    import psycopg

    with psycopg.connect(environment.DATABASE_URL) as other:  # a transaction until the end
        other.execute(f"LOCK TABLE {SESSIONS_TABLE} IN SHARE MODE")
        time.sleep(seconds)


def _hold_sqlite_lock(seconds: float) -> None:
    path = environment.DATABASE_URL.removeprefix("sqlite:///")
    other = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        other.execute("COMMIT")
    finally:
        other.close()


def _fill_disk(bench: Bench, seconds: float) -> int:
    """The disk full for the workers and the web process: none of their files may grow past
    the database file's size now (RLIMIT_FSIZE, set from here: a process of the same user may;
    CPython ignores SIGXFSZ, so a write past it fails with EFBIG and SQLite's with "disk I/O
    error"). Their output reaches the logs through pipes, which it does not limit. It needs no
    privileges, where a small file system would (a tmpfs, a loop device)."""
    size = os.path.getsize(environment.DATABASE_URL.removeprefix("sqlite:///"))
    pids = [c.process.pid for c in [bench.web, *bench.workers] if c.process and c.running]
    limited = []
    try:
        for pid in pids:
            try:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
            except ProcessLookupError:
                continue
            limited.append(pid)
        time.sleep(seconds)
    finally:
        for pid in limited:
            try:
                unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
            except ProcessLookupError:
                pass
    return size


# The rows to delete ---------------------------------------------------------------------------


class Rows:
    """The sessions the bench made: key -> when it expires."""

    def __init__(self) -> None:
        self.made: dict[str, Any] = {}
        # Inserts that raised (the database went away): made or not, the check finds out.
        self.uncertain: dict[str, Any] = {}
        self.found: list[str] = []  # the check's findings, made before the bench stops
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"made": self.made, "uncertain": self.uncertain, "found": self.found}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.made, self.uncertain, self.found = state["made"], state["uncertain"], state["found"]


def feed(bench: Bench) -> None:
    """Sessions arriving all the time, some already expired, most expiring during the run."""
    from django.contrib.sessions.models import Session

    rng = random.Random(f"{bench.seed}:rows")
    number = 0
    try:
        while not bench.stop_operating.wait(FEED_EVERY):
            now = timezone.now()
            rows = []
            for _ in range(FEED_ROWS):
                number += 1
                expires = now + timedelta(seconds=rng.uniform(*EXPIRES))
                rows.append(Session(f"faults{number:08d}", "e30:1:faults", expires))
            try:
                Session.objects.bulk_create(rows)
            except DatabaseError:  # the database went away: committed or not, unknown
                with bench.rows.lock:
                    bench.rows.uncertain.update((r.session_key, r.expire_date) for r in rows)
                continue
            with bench.rows.lock:
                bench.rows.made.update((row.session_key, row.expire_date) for row in rows)
    finally:
        connections.close_all()


def check_counts(bench: Bench) -> list[str]:
    """Every row the bench made is still there, or gone and counted by exactly one run: the
    deleting runs' counts add up to the rows that went, and no row went before it expired."""
    from django.contrib.sessions.models import Session

    from cleanups.models import CleanupRun

    made = dict(bench.rows.made)
    if not made:
        return []
    present = set(
        Session.objects.filter(session_key__startswith="faults").values_list(
            "session_key", flat=True
        )
    )
    gone = [key for key in made if key not in present]
    # An insert that raised and left no row: made and deleted since, or never made.
    unknown = [key for key in bench.rows.uncertain if key not in present]
    made.update((key, at) for key, at in bench.rows.uncertain.items() if key in present)
    counted = sum(
        CleanupRun.objects.filter(schedule__task="expired_sessions").values_list(
            "items_deleted", flat=True
        )
    )
    found = []
    if not len(gone) <= counted <= len(gone) + len(unknown):
        found.append(
            f"the expired_sessions runs counted {counted} rows deleted; {len(gone)} of the "
            f"{len(made)} rows the bench made went"
            + (f" (and {len(unknown)} whose insert raised may have)" if unknown else "")
        )
    early = [key for key in gone if made[key] > bench.checked_at]
    if early:
        found.append(f"{len(early)} rows went before they expired, e.g. {early[0]}")
    say(f"rows: {len(made)} made, {len(gone)} gone, {counted} counted by the runs")
    return found
