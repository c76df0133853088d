"""The embedded engine's work-item leases: a worker that dies, or wedges, takes no work with it.

The SDK's backend would keep an orchestration step a worker held in flight for ever (the instance
never runs again) and never deliver its activity again. Both go back to the queue, as a real
engine redelivers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.testing.in_memory_backend import ActivityWorkItem

from cleanups.engine.executions import activity_key

ENGINE_LOGGER = logging.getLogger("cleanups.engine")


class WorkItemLeases:
    """Mixed into the embedded engine (an InMemoryOrchestrationBackend): every work item handed
    to a worker is leased to that worker's stream, and taken back when the stream ends or the
    lease expires."""

    # An orchestration step takes milliseconds; one a worker holds longer than this while that
    # worker completes nothing at all is taken back and delivered again (a worker whose stream
    # lives on but that stopped processing would otherwise hold it for ever), as a real
    # engine's work-item lock expires. A worker that keeps completing steps is busy, not wedged:
    # under a herd its queue can hold a step far longer, and delivering that step again would
    # only double its work (a 10,000-schedule start on a loaded machine re-delivered 36,000
    # steps that way). Such a step is taken back only after the longer limit below.
    ORCHESTRATION_LEASE_SECONDS = 10.0
    BUSY_WORKER_LEASE_SECONDS = 120.0

    # Set by the engine: see EmbeddedEngine.__init__.
    _lock: Any
    _leases: dict[str, tuple[pb.WorkItem, float, int]]
    _stream_progress: dict[int, float]
    _stream_numbers: Any
    _activities_out: set[tuple[str, int, str]]

    def GetWorkItems(self, request: Any, context: Any) -> Any:
        held: list[pb.WorkItem] = []
        prune_at = 1000  # a long-lived stream forgets what was completed, from this many on
        stream = next(self._stream_numbers)
        with self._lock:
            self._stream_progress[stream] = time.monotonic()
        try:
            for work_item in super().GetWorkItems(request, context):
                with self._lock:
                    self._add_trace_context(work_item)
                    if work_item.HasField("activityRequest"):
                        self._activities_out.add(activity_key(work_item))
                    elif work_item.HasField("orchestratorRequest"):
                        self._leases[work_item.completionToken] = (
                            work_item,
                            time.monotonic(),
                            stream,
                        )
                held.append(work_item)
                if len(held) > prune_at:
                    with self._lock:
                        held = [item for item in held if self._outstanding(item)]
                    # Twice what is still out: under a herd most of it is, and pruning at every
                    # new item would cost a scan of them all each time.
                    prune_at = max(1000, 2 * len(held))
                yield work_item
        finally:
            with self._lock:
                self._stream_progress.pop(stream, None)
            self._take_back(held)

    def _sweep_leases(self) -> None:
        period = min(5.0, self.ORCHESTRATION_LEASE_SECONDS / 4)
        while not self._shutdown_event.wait(period):
            self._expire_leases()

    def _expire_leases(self) -> None:
        now = time.monotonic()
        with self._lock:
            for token, (work_item, _, stream) in list(self._leases.items()):
                if not self._outstanding(work_item):
                    del self._leases[token]
                    if stream in self._stream_progress:
                        self._stream_progress[stream] = now  # (to within a sweep period)
            for token, (work_item, since, stream) in list(self._leases.items()):
                progress = self._stream_progress.get(stream, since)
                wedged = now - max(since, progress) > self.ORCHESTRATION_LEASE_SECONDS
                if wedged or now - since > self.BUSY_WORKER_LEASE_SECONDS:
                    del self._leases[token]
                    instance_id = work_item.orchestratorRequest.instanceId
                    self._deliver_again(work_item)
                    ENGINE_LOGGER.warning(
                        "Delivering a step of %r again: its worker held it %.0f s without "
                        "completing it.",
                        instance_id,
                        now - since,
                    )

    def _deliver_again(self, work_item: pb.WorkItem) -> None:
        """Put an orchestration step a worker holds back in the queue (call with the lock
        held). It gets a new completion token: a late completion by the worker that held it
        would otherwise count, made from fewer events than the engine then moves to history."""
        self.AbandonTaskOrchestratorWorkItem(
            pb.AbandonOrchestrationTaskRequest(completionToken=work_item.completionToken), None
        )
        instance = self._instances.get(work_item.orchestratorRequest.instanceId)
        if instance is not None:
            instance.completion_token = self._next_completion_token
            self._next_completion_token += 1

    def _outstanding(self, work_item: pb.WorkItem) -> bool:
        """Handed out and not completed (call with the lock held)."""
        if work_item.HasField("activityRequest"):
            return activity_key(work_item) in self._activities_out
        instance_id = work_item.orchestratorRequest.instanceId
        instance = self._instances.get(instance_id)
        return (
            instance is not None
            and instance_id in self._orchestration_in_flight
            and str(instance.completion_token) == work_item.completionToken
        )

    def _take_back(self, held: list[pb.WorkItem]) -> None:
        with self._lock:
            for work_item in held:
                if not self._outstanding(work_item):
                    continue
                if work_item.HasField("orchestratorRequest"):
                    self._deliver_again(work_item)
                elif work_item.HasField("activityRequest"):
                    self._activities_out.discard(activity_key(work_item))
                    activity = work_item.activityRequest
                    self._activity_queue.append(
                        ActivityWorkItem(
                            instance_id=activity.orchestrationInstance.instanceId,
                            name=activity.name,
                            task_id=activity.taskId,
                            input=activity.input.value if activity.HasField("input") else None,
                            completion_token=int(work_item.completionToken),
                            version=activity.version.value
                            if activity.HasField("version")
                            else None,
                        )
                    )
                    ENGINE_LOGGER.info(
                        "Delivering activity %s of %r again: its worker went away.",
                        activity.taskId,
                        activity.orchestrationInstance.instanceId,
                    )
            self._work_available.set()
