"""Pacing a run's batches so that the database it shares with the site stays responsive: a
pause after each batch, a cap on rows a second, and a wait while a replica lags behind."""

from __future__ import annotations

import time
from typing import Any

from django.db import connections

from cleanups.conf import settings
from cleanups.tasks.throttle import ReplicaLag

# While it waits for a replica, a run looks again this often (s).
LAG_CHECK_SECONDS = 1.0
# A run that waits ends this long before its run limit, so its outcome is recorded before the
# orchestration's own deadline marks it timed out (s).
RUN_END_MARGIN_SECONDS = 2.0

REPLICA_LAG, RATE, PAUSE = "replica lag", "max_rows_per_second", "batch pause"


class Pacer:
    """Called by the batch deleter after every batch; it sleeps as its settings ask, counting
    each wait on the run (``ctx.hold_back``), and stops the run (``ctx.stop``) when it would
    otherwise wait past the run's limit."""

    def __init__(
        self,
        using: str,
        *,
        rows_per_second: int | None = None,
        pause_ms: float | None = None,
        max_lag: float | None = None,
        lag: Any = None,
    ) -> None:
        self.rows_per_second = rows_per_second or 0
        self.pause = (settings.CLEANUP_BATCH_PAUSE_MS if pause_ms is None else pause_ms) / 1000
        self.max_lag = float(
            settings.CLEANUP_MAX_REPLICA_LAG_SECONDS if max_lag is None else max_lag
        )
        self.using = using
        # Read only on PostgreSQL, and only once a batch has gone (a run that deletes nothing
        # asks nothing).
        self.lag = lag
        self.watches_replicas = self.max_lag > 0 and (
            lag is not None or connections[using].vendor == "postgresql"
        )
        self.started = time.monotonic()
        self.rows = 0
        self.last_lag: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.rows_per_second or self.pause or self.watches_replicas)

    def after_batch(self, ctx: Any, rows: int) -> None:
        """Hold back after a batch of ``rows`` as the settings ask."""
        self.rows += rows
        if self.pause:
            self._sleep(ctx, PAUSE, self.pause)
        if self.rows_per_second:
            due = self.started + self.rows / self.rows_per_second
            self._sleep(ctx, RATE, due - time.monotonic())
        if self.watches_replicas:
            if self.lag is None:
                self.lag = ReplicaLag(self.using)
            self._wait_for_replicas(ctx)

    def _wait_for_replicas(self, ctx: Any) -> None:
        """While a replica is further behind than the limit, wait (checking every second) until
        it is back under half of it; at the run's end, stop the run as a closing window does."""
        lag = self.last_lag = self.lag.seconds()
        if lag is None or lag <= self.max_lag:
            return
        counted = time.monotonic()

        def count_wait() -> None:  # on the run's record as it goes, a second at a time
            nonlocal counted
            now = time.monotonic()
            ctx.hold_back(REPLICA_LAG, now - counted)
            counted = now

        try:
            while lag is not None and lag > self.max_lag / 2:
                if ctx.out_of_time():
                    return
                if ctx.run_ends is not None and time.monotonic() >= (
                    ctx.run_ends - RUN_END_MARGIN_SECONDS
                ):
                    ctx.stop(f"replica lag above {self.max_lag:g} s until the run's limit")
                    return
                if ctx.check_stop is not None:
                    ctx.check_stop()
                time.sleep(LAG_CHECK_SECONDS)
                count_wait()
                lag = self.last_lag = self.lag.seconds()
        finally:
            count_wait()

    def _sleep(self, ctx: Any, reason: str, seconds: float) -> None:
        hold_back(ctx, reason, seconds)


def hold_back(ctx: Any, reason: str, seconds: float, step: float = LAG_CHECK_SECONDS) -> None:
    """Sleep up to ``seconds`` between batches in steps, ending early when the run must stop,
    and count the wait on the run for ``reason``."""
    if seconds <= 0:
        return
    began = time.monotonic()
    until = began + seconds
    while (left := until - time.monotonic()) > 0 and not ctx.out_of_time():
        if ctx.check_stop is not None:
            ctx.check_stop()
        time.sleep(min(left, step))
    ctx.hold_back(reason, time.monotonic() - began)
