"""The bounded pool that makes a bulk action's engine calls.

An action on thousands of schedules must answer at once: the request writes what the operator
asked for in one UPDATE and returns; a small pool of threads makes the engine calls. Whatever
the pool does not finish (the process stops, the engine is away), the worker's reconciler does
from the desired state, as after any other action.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from django.db import connections

from cleanups.instances import EngineUnavailable
from cleanups.models import CleanupSchedule

logger = logging.getLogger("cleanups.control")

BULK_ENGINE_THREADS = 8
_BULK_CHUNK = 50
_engine_pool = ThreadPoolExecutor(
    max_workers=BULK_ENGINE_THREADS, thread_name_prefix="cleanups-bulk"
)
_in_flight: set[Future[None]] = set()
_in_flight_lock = threading.Lock()


def wait_for_bulk_engine_calls(timeout: float | None = None) -> bool:
    """Wait until the pool has made every engine call handed to it; False on timeout."""
    with _in_flight_lock:
        pending = set(_in_flight)
    _, not_done = futures_wait(pending, timeout=timeout)
    return not not_done


def in_background(
    pks: list[int], call: Callable[[CleanupSchedule], object], state: str, new_generation: bool
) -> None:
    """``call`` for each schedule, on the pool, as long as it is still as the action left it
    (``state``, and the generation it wrote): a later action supersedes this one."""
    generations = (
        dict(CleanupSchedule.objects.filter(pk__in=pks).values_list("pk", "generation"))
        if new_generation
        else None
    )
    for start in range(0, len(pks), _BULK_CHUNK):
        chunk = pks[start : start + _BULK_CHUNK]
        future = _engine_pool.submit(_engine_calls, chunk, call, state, generations)
        with _in_flight_lock:
            _in_flight.add(future)
        future.add_done_callback(_forget)


def _forget(future: Future[None]) -> None:
    with _in_flight_lock:
        _in_flight.discard(future)


def _engine_calls(
    pks: list[int],
    call: Callable[[CleanupSchedule], object],
    state: str,
    generations: dict[int, int] | None,
) -> None:
    try:
        for schedule in CleanupSchedule.objects.filter(pk__in=pks, desired_state=state):
            if generations is not None and schedule.generation != generations.get(schedule.pk):
                continue
            try:
                call(schedule)
            except EngineUnavailable:
                return  # the reconciler acts on the desired state once the engine is back
            except Exception:  # one schedule's failure must not stop the others'
                logger.exception("bulk action: engine call for %s failed", schedule)
    finally:
        connections.close_all()
