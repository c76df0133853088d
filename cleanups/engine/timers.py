"""The embedded engine's durable timers: one heap, one thread."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

ENGINE_LOGGER = logging.getLogger("cleanups.engine")


class TimerHeap:
    """Durable timers in due order, fired by one thread that sleeps until the earliest is due."""

    def __init__(self, fire: Callable[[str, int, int, datetime], None]) -> None:
        self._fire = fire
        # (due on the monotonic clock, sequence, instance id, generation, timer id, fire at)
        self._heap: list[tuple[float, int, str, int, int, datetime]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._condition:
            return len(self._heap)

    def push(self, instance_id: str, generation: int, timer_id: int, fire_at: datetime) -> None:
        with self._condition:
            self._push(instance_id, generation, timer_id, fire_at)

    def _push(self, instance_id: str, generation: int, timer_id: int, fire_at: datetime) -> None:
        delay = max(0.0, (fire_at - datetime.now(UTC)).total_seconds())
        entry = (
            time.monotonic() + delay,
            next(self._sequence),
            instance_id,
            generation,
            timer_id,
            fire_at,
        )
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._condition.notify_all()  # the thread sleeps for a later timer

    def start(self) -> None:
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="embedded-engine-timers", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._condition:
            thread, self._thread = self._thread, None
            self._condition.notify_all()
        if thread is not None:
            thread.join()

    def clear(self) -> None:
        with self._condition:
            self._heap.clear()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            with self._condition:
                while self._thread is me and (
                    not self._heap or self._heap[0][0] > time.monotonic()
                ):
                    self._condition.wait(
                        self._heap[0][0] - time.monotonic() if self._heap else None
                    )
                if self._thread is not me:
                    return
                _, _, instance_id, generation, timer_id, fire_at = heapq.heappop(self._heap)
                if datetime.now(UTC) < fire_at:
                    # The wall clock was set back since the timer was pushed: never fire early.
                    self._push(instance_id, generation, timer_id, fire_at)
                    continue
            try:
                self._fire(instance_id, generation, timer_id, fire_at)
            except Exception:
                ENGINE_LOGGER.exception("Could not fire timer %s of %r.", timer_id, instance_id)
