"""What the embedded engine keeps of each execution, and small helpers on the SDK's records."""

from __future__ import annotations

from dataclasses import dataclass, field

from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.testing.in_memory_backend import OrchestrationInstance


def suspended_after_all(instance: OrchestrationInstance) -> bool:
    """Whether the instance will be suspended once the events on their way to a worker, or
    waiting for one, are applied to its status now."""
    suspended = instance.status == pb.ORCHESTRATION_STATUS_SUSPENDED
    for event in (*instance.dispatched_events, *instance.pending_events):
        if event.HasField("executionSuspended"):
            suspended = True
        elif event.HasField("executionResumed"):
            suspended = False
    return suspended


def stamped(event: pb.HistoryEvent) -> pb.HistoryEvent:
    """The event, with the time it happened if the SDK's backend left it at 0 (the worker times
    the spans of activities and timers by these)."""
    if not event.timestamp.seconds and not event.timestamp.nanos:
        event.timestamp.GetCurrentTime()
    return event


def activity_key(work_item: pb.WorkItem) -> tuple[str, int, str]:
    activity = work_item.activityRequest
    return (activity.orchestrationInstance.instanceId, activity.taskId, work_item.completionToken)


TASK_RESULT_EVENTS = frozenset({"timerFired", "taskCompleted", "taskFailed"})


@dataclass(eq=False)
class Execution:
    """One execution of an instance: from its start or continue-as-new to the next."""

    generation: int
    activity_tokens: set[str] = field(default_factory=set)
    parent_trace: pb.TraceContext | None = None  # the span it started under
    orchestration_trace: pb.OrchestrationTraceContext | None = None  # the worker's span
