"""The neighbour: another writer on the table a deleting method works on, each operation timed.

It stands for the web process or another worker writing the same table while a cleanup runs:
a thread with its own database connection (Django's, opened in that thread, so with the
project's options: on SQLite WAL, the busy timeout and IMMEDIATE transactions; on PostgreSQL
its own psycopg connection), alternating an insert of a recent row and an update of a random
recent row, each in its own transaction (``atomic()``), at a steady rate. What a write does is
the table's business (``Writes``); this module keeps the pace and the clock.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

from django.db import connections, transaction

RATE_PER_SECOND = 50.0


class Writes(Protocol):
    """The writes a neighbour makes on one table: recent rows only, never an old one."""

    def prepare(self) -> None:
        """Read what the writes need (the recent rows' keys); untimed, before the first."""

    def insert(self) -> int:
        """Insert one recent row (and what goes with it); return the rows added to the table."""

    def update(self) -> None:
        """Update one recent row."""


class Neighbour:
    """``start()`` before a method, ``stop()`` after: the latency of each operation in between.

    An operation is timed from its start to its commit returning, so it includes any wait for
    a lock the method holds. Operations are due every 1/rate seconds; one that overruns its slot
    is followed at once by the next (no burst to catch up), so a blocked neighbour does fewer.
    The thread shares the GIL with the method's Python code; both database drivers release it
    while a statement runs or waits.
    """

    def __init__(self, writes: Writes, rate: float = RATE_PER_SECOND) -> None:
        self.writes, self.interval = writes, 1 / rate
        self.latencies: list[float] = []
        self.inserted = 0
        self.error: BaseException | None = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="neighbour", daemon=True)

    def start(self) -> None:
        """Start the thread and wait until its connection is open and the writes are prepared."""
        self._thread.start()
        self._ready.wait()
        self._raise()

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        self._raise()
        return self.latencies

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the neighbour writer failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            self.writes.prepare()
            self._ready.set()
            self._loop()
        except BaseException as error:  # reported to the main thread by start() or stop()
            self.error = error
        finally:
            self._ready.set()
            connections.close_all()  # this thread's own connection

    def _loop(self) -> None:
        due = time.perf_counter()
        operation = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            with transaction.atomic():
                if operation % 2 == 0:
                    self.inserted += self.writes.insert()
                else:
                    self.writes.update()
            now = time.perf_counter()
            self.latencies.append(now - started)
            operation += 1
            due = max(due + self.interval, now)
            self._stop.wait(due - now)


def percentile(ordered: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least ``share`` of the values at or below it."""
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def summary(latencies: list[float]) -> dict[str, float]:
    """Operations, p50, p99 and max (seconds) of a neighbour's latencies; NaN when it did none."""
    ordered = sorted(latencies)
    if not ordered:
        return {"ops": 0, "p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "ops": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }
