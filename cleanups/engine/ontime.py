"""A worker that starts each cleanup run on time, on threads of its own, and that leaves the
runs it does not begin (because it is stopping) to the engine."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from durabletask import worker as dt_worker
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import helpers as dt_helpers
from durabletask.internal import orchestrator_service_pb2 as pb

from cleanups.contract import RUN_CLEANUP_ACTIVITY, WorkerStopping

WORKER_LOGGER = logging.getLogger("durabletask.worker")
RUN_THREAD_NAME = "cleanup-run"


class _StartsOnTime:
    """A worker that runs every cleanup run on threads of its own, never on the SDK's pool.

    The SDK's pool is small (CPUs + 4 threads) and steps every orchestration too. A run that
    held one of its threads (for its database work, or for as long as its cleanup takes) held
    up the next orchestration steps, and so the hand-over of the runs after it: under load, once
    runs began to arrive late they ran on the pool, which made the next ones later still.

    A run handed over ahead of its planned time (the orchestration hands it over
    CLEANUP_DISPATCH_LEAD_SECONDS early) does what it can before its time, waits, and starts at
    that time exactly, so a whole fleet due at one instant starts at that instant. These
    threads exist only around runs: at most MOST_AT_ONCE at once (fewer if the worker's
    activity limit is lower); more runs queue, the one due first taken first, by the next
    thread whose run ends. A thread whose run ends waits IDLE_SECONDS for another before it
    ends: a busy worker reuses its threads (and what each keeps, its database connection)
    rather than starting one per run."""

    MOST_AT_ONCE = 128
    IDLE_SECONDS = 10.0
    ACTIVITY = RUN_CLEANUP_ACTIVITY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runs_lock = threading.Condition()
        self._run_threads = 0
        self._idle_run_threads = 0
        # (when it is due, arrival order, the work): due now is 0.0, ahead of any planned time.
        self._run_queue: list[tuple[float, int, tuple[Any, ...]]] = []
        self._arrivals = itertools.count()
        self._runs_closed = False

    def _execute_activity(self, req: pb.ActivityRequest, stub: Any, completionToken: Any) -> None:
        stub = _KeepsBackStopping(stub)
        if req.name != self.ACTIVITY or self._runs_closed:
            super()._execute_activity(req, stub, completionToken)  # type: ignore[misc]
            return
        planned = _planned_start(req, self.ACTIVITY)
        ahead = planned is not None and planned > datetime.now(UTC)
        # The stream a run handed over ahead came on: if that ends before its time, its engine
        # takes the work back (or is gone), and another delivery, not this one, runs it.
        stream = getattr(self, "_response_stream", None) if ahead else None
        work = (req, stub, completionToken, stream)
        with self._runs_lock:
            # An idle thread takes it, unless the idle ones have more queued than they are.
            spare = self._idle_run_threads > len(self._run_queue)
            if spare or self._run_threads >= self._most_runs_at_once():
                due = planned.timestamp() if ahead and planned is not None else 0.0
                heapq.heappush(self._run_queue, (due, next(self._arrivals), work))
                self._runs_lock.notify()  # an idle thread, if one waits, takes it
                return
            self._run_threads += 1
        threading.Thread(
            target=self._run_runs, args=(work,), name=RUN_THREAD_NAME, daemon=True
        ).start()

    def _most_runs_at_once(self) -> int:
        """MOST_AT_ONCE, or fewer if the worker was built with a lower activity limit
        (``runworker --max-activities``)."""
        options = getattr(self, "_concurrency_options", None)
        limit = getattr(options, "maximum_concurrent_activity_work_items", None)
        return min(self.MOST_AT_ONCE, limit) if limit else self.MOST_AT_ONCE

    def _run_runs(self, work: tuple[Any, ...] | None) -> None:
        try:
            while work is not None:
                self._run_one(work)
                work = self._next_run()
        finally:
            for callback in _RUN_THREAD.__dict__.pop("at_end", {}).values():
                callback()

    def _run_one(self, work: tuple[Any, ...]) -> None:
        req, stub, completionToken, stream = work
        _HANDED_OVER.still_held = lambda: stream is None or stream.is_active()
        try:
            super()._execute_activity(req, stub, completionToken)  # type: ignore[misc]
        except Exception:
            WORKER_LOGGER.exception("A cleanup run failed outside its activity.")
        finally:
            _HANDED_OVER.still_held = None

    def _next_run(self) -> tuple[Any, ...] | None:
        """The queued run due first, waiting IDLE_SECONDS for one; None: this thread ends."""
        with self._runs_lock:
            if not self._run_queue and not self._runs_closed:
                self._idle_run_threads += 1
                self._runs_lock.wait_for(
                    lambda: self._run_queue or self._runs_closed, self.IDLE_SECONDS
                )
                self._idle_run_threads -= 1
            if self._run_queue and not self._runs_closed:
                return heapq.heappop(self._run_queue)[2]
            self._run_threads -= 1
            self._runs_lock.notify_all()
            return None

    def stop(self) -> None:
        """Stop as the SDK's worker does, waiting for the runs in progress too (the SDK waits
        for its own pool only). Queued runs are not begun: their engine delivers them again."""
        with self._runs_lock:
            self._runs_closed = True
            self._run_queue.clear()
            self._runs_lock.notify_all()  # idle threads end
            while self._run_threads:
                self._runs_lock.wait()
        super().stop()  # type: ignore[misc]


# Per thread: whether the run this thread holds ahead of its time is still this worker's.
_HANDED_OVER = threading.local()


# Per cleanup-run thread: what to do when the thread ends (it runs run after run till then).
_RUN_THREAD = threading.local()


def at_run_thread_end(callback: Callable[[], None]) -> bool:
    """Call ``callback`` when this cleanup-run thread ends (once, however often asked); False,
    and nothing registered, on any other thread."""
    if threading.current_thread().name != RUN_THREAD_NAME:
        return False
    at_end = _RUN_THREAD.__dict__.setdefault("at_end", {})
    at_end.setdefault(id(callback), callback)
    return True


def delivery_lost() -> bool:
    """The run this thread waited for was handed over on a stream that has ended since: its
    engine delivers it again (or is gone), so running it here would run it twice."""
    still_held = getattr(_HANDED_OVER, "still_held", None)
    return still_held is not None and not still_held()


class _KeepsBackStopping:
    """The worker's stub, but a run that did not begin (or stopped waiting for its time)
    because its worker is stopping is not reported: the SDK would report it failed, and the
    orchestration would fail with it. The engine delivers it again, to a worker that stays."""

    # The SDK reports a failure by its exception's qualified name: computed from the class,
    # so moving the class cannot silently turn a clean stop into a failed orchestration.
    STOPPING = dt_helpers.get_qualified_name(WorkerStopping)

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def CompleteActivityTask(self, response: pb.ActivityResponse, *args: Any, **kwargs: Any) -> Any:
        if (
            response.HasField("failureDetails")
            and response.failureDetails.errorType == self.STOPPING
        ):
            WORKER_LOGGER.info(
                "Left activity %s of %r to the engine: this worker is stopping.",
                response.taskId,
                response.instanceId,
            )
            return None
        return self._stub.CompleteActivityTask(response, *args, **kwargs)


def _planned_start(req: pb.ActivityRequest, activity: str) -> datetime | None:
    """When a scheduled run of the cleanup activity is to start; None for anything else."""
    if req.name != activity or not req.HasField("input"):
        return None
    try:
        step = json.loads(req.input.value)
        if step.get("part") or step.get("trigger") == "manual" or not step.get("planned_at"):
            return None
        planned = datetime.fromisoformat(step["planned_at"])
    except (ValueError, TypeError, AttributeError):
        return None
    return planned if planned.tzinfo else planned.replace(tzinfo=UTC)


class OnTimeWorker(_StartsOnTime, dt_worker.TaskHubGrpcWorker):
    """The SDK's worker (the embedded engine), starting runs on time."""


class OnTimeSchedulerWorker(_StartsOnTime, DurableTaskSchedulerWorker):
    """The Durable Task Scheduler's worker (Azure, its emulator), starting runs on time."""
