"""A batch never waits long for a lock someone else holds (CLEANUP_LOCK_TIMEOUT_MS).

A batch that cannot have its locks within the limit gives up (its transaction rolls back:
nothing deleted, nothing counted, no lock kept), the run waits outside any transaction, a
little longer each time, and tries that batch again. Each wait is counted on the run
(``lock wait``, as the pacer's waits are) and logged with the table; a run whose time runs out
meanwhile ends its part as it would between two batches, and the next part tries again.

PostgreSQL: ``SET LOCAL lock_timeout`` in the batch's transaction (SQLSTATE 55P03 when it
expires). SQLite: the connection's busy timeout, lowered to the limit around the batch (its
write lock is taken when the transaction begins: "database is locked").

A batch the server cancels (PostgreSQL's ``statement_timeout``, SQLSTATE 57014: a server or a
role that allows each statement less than a batch takes) rolls back too, and goes again at half
the size, down to one row; the run keeps the smaller size, and counts the time the cancelled
batches took (``batch cancelled``). A single row the server cancels is the database's error.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

from django.db import OperationalError, connections, transaction

from cleanups.conf import settings
from cleanups.tasks.pacing import hold_back

logger = logging.getLogger("cleanups.runs")
LOCK_WAIT = "lock wait"
# Between two tries of a batch that found its table locked: 0.5 s, 1 s, 2 s ... at most 10 s.
FIRST_WAIT_SECONDS, MAX_WAIT_SECONDS = 0.5, 10.0
STEP_SECONDS = 0.25  # a wait checks this often whether the run must stop
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's lock_not_available
CANCELLED = "batch cancelled"
QUERY_CANCELED = "57014"  # PostgreSQL's query_canceled: statement_timeout, or pg_cancel_backend
T = TypeVar("T")


class BatchCancelled(Exception):
    """The server cancelled the batch's statement; its transaction rolled back."""


def is_lock_timeout(error: BaseException) -> bool:
    cause = error.__cause__
    if getattr(cause, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        return True
    return "database is locked" in str(error) or "database table is locked" in str(error)


@contextlib.contextmanager
def _busy_timeout(db: str, milliseconds: int) -> Iterator[None]:
    """SQLite: the connection's busy timeout at ``milliseconds`` while the block runs."""
    connection = connections[db]
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        before = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA busy_timeout = {int(milliseconds)}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {int(before)}")


def _limit_lock_wait(db: str, milliseconds: int) -> None:
    """PostgreSQL, inside the batch's transaction: its lock waits end after ``milliseconds``."""
    connection = connections[db]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {int(milliseconds)}")


def in_batch_transaction(ctx: Any, db: str, label: str, batch: Callable[[], T]) -> T | None:
    """``batch()`` in one transaction whose lock waits are limited; tried again after a wait
    while it times out on a lock. None when the run ran out of time before it could go."""
    limit = int(settings.CLEANUP_LOCK_TIMEOUT_MS)
    wait = FIRST_WAIT_SECONDS
    while True:
        counted = copy.deepcopy(ctx.targets)  # a batch rolled back counts nothing
        try:
            quick = _busy_timeout(db, limit) if limit else contextlib.nullcontext()
            with quick, transaction.atomic(using=db):
                if limit:
                    _limit_lock_wait(db, limit)
                return batch()
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) == QUERY_CANCELED:
                ctx.targets = counted
                raise BatchCancelled(str(error)) from error
            if not limit or not is_lock_timeout(error):
                raise
            ctx.targets = counted
        logger.info(
            "run %s: a batch of %s waited %d ms for a lock held elsewhere; trying again in %.1f s",
            getattr(ctx.run, "pk", "?"),
            label,
            limit,
            wait,
        )
        ctx.hold_back(LOCK_WAIT, limit / 1000)  # the time the batch itself waited
        hold_back(ctx, LOCK_WAIT, wait, step=STEP_SECONDS)  # holding no transaction
        if ctx.out_of_time():
            return None
        wait = min(wait * 2, MAX_WAIT_SECONDS)


def in_smaller_batches(
    ctx: Any, db: str, label: str, batch: Callable[[int], T], size: int
) -> tuple[int, T] | None:
    """``batch(size)`` as ``in_batch_transaction`` runs it; while the server cancels it, at
    half the size. The size that went and what it returned; None when out of time."""
    while True:
        began = time.monotonic()
        try:
            done = in_batch_transaction(ctx, db, label, partial(batch, size))
        except BatchCancelled as cancelled:
            ctx.hold_back(CANCELLED, time.monotonic() - began)
            if size <= 1:
                raise cancelled.__cause__ from None  # type: ignore[misc]
            logger.info(
                "run %s: the server cancelled a batch of %d %s (%s); going on at %d",
                getattr(ctx.run, "pk", "?"),
                size,
                label,
                cancelled,
                size // 2,
            )
            size //= 2
            continue
        return None if done is None else (size, done)
