"""The embedded engine: the SDK's own gRPC backend, fit to run schedules for real."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc
from durabletask.internal import helpers as dt_helpers
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.testing import InMemoryOrchestrationBackend
from durabletask.testing.in_memory_backend import OrchestrationInstance

from cleanups import tracing
from cleanups.engine.config import EMBEDDED_HOST
from cleanups.engine.executions import (
    TASK_RESULT_EVENTS,
    Execution,
    activity_key,
    stamped,
    suspended_after_all,
)
from cleanups.engine.leases import WorkItemLeases
from cleanups.engine.timers import TimerHeap

ENGINE_LOGGER = logging.getLogger("cleanups.engine")


class EngineStartError(RuntimeError):
    pass


class EmbeddedEngine(WorkItemLeases, InMemoryOrchestrationBackend):
    """The SDK's own gRPC backend, fit to run schedules for real.

    It listens on loopback only (the SDK binds every interface). It serves every durable timer
    from one heap on one thread (the SDK sleeps a thread per timer). And it delivers a timer or an
    activity result only to the live execution that asked for it: the SDK matches them by instance
    id and task id, and task ids start again at 0 in every execution, so what a terminated,
    replaced or continued-as-new execution left pending would complete the new one's task early.
    """

    def __init__(self, port: int) -> None:
        super().__init__(port=port)
        self._timers = TimerHeap(self._fire_timer)
        # Orchestration steps handed to a worker: token -> (work item, when (monotonic clock),
        # the stream it went to).
        self._leases: dict[str, tuple[pb.WorkItem, float, int]] = {}
        # Each open work-item stream: when a step it was handed last came back completed.
        self._stream_progress: dict[int, float] = {}
        self._stream_numbers = itertools.count(1)
        self._lease_sweeper: threading.Thread | None = None
        self._executions: dict[str, Execution] = {}
        # One sequence for every instance, so a purged and recreated instance never reuses one.
        self._generation_sequence = itertools.count(1)
        # Activities handed to a worker and not completed yet: (instance, task id, token).
        self._activities_out: set[tuple[str, int, str]] = set()
        # The trace context each scheduled activity is to run in, by the same key.
        self._activity_traces: dict[tuple[str, int, str], pb.TraceContext] = {}

    def start(self) -> str:
        self._shutdown_event.clear()
        server = grpc.server(
            ThreadPoolExecutor(max_workers=16),
            options=[("grpc.so_reuseport", 0)],
        )
        stubs.add_TaskHubSidecarServiceServicer_to_server(self, server)
        address = f"{EMBEDDED_HOST}:{self._port}"
        # Try the port ourselves first: gRPC reports a busy port with a raw C-level log line.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((EMBEDDED_HOST, self._port))
            except OSError:
                raise EngineStartError(_port_in_use(address)) from None
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise EngineStartError(_port_in_use(address))
        self._server = server
        server.start()
        self._timers.start()
        self._lease_sweeper = threading.Thread(
            target=self._sweep_leases, name="embedded-engine-leases", daemon=True
        )
        self._lease_sweeper.start()
        return address

    def stop(self, grace: float | None = None) -> None:
        super().stop(grace)
        self._timers.stop()
        if self._lease_sweeper is not None:
            self._lease_sweeper.join()  # it ends with the shutdown event
            self._lease_sweeper = (
                None  # pending timers stay queued for a start() again; reset() drops them
            )

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._executions.clear()
            self._activity_traces.clear()
            self._timers.clear()
            self._leases.clear()

    @property
    def pending_timers(self) -> int:
        """How many durable timers wait to fire, stale ones included until they come due."""
        return len(self._timers)

    # Where an execution begins: every way the SDK creates an instance, and continue-as-new.
    # Termination, completion and failure need no mark: nothing is delivered to a finished
    # instance, and a failed one may still be rewound, which resumes the same execution.

    def StartInstance(self, request: Any, context: Any) -> Any:
        with self._lock:
            response = super().StartInstance(request, context)
            execution = self._begin_execution(response.instanceId)
            trace_context = (
                request.parentTraceContext
                if request.HasField("parentTraceContext")
                else tracing.execution_trace(
                    "create_orchestration", request.name, response.instanceId
                )
            )
            if trace_context is not None:
                self._trace_execution(response.instanceId, execution, trace_context)
        return response

    def _create_instance_internal(
        self,
        instance_id: str,
        name: str,
        encoded_input: str | None = None,
        version: str | None = None,
    ) -> None:
        # Sub-orchestrations, RestartInstance and entity-started orchestrations come this way.
        with self._lock:
            super()._create_instance_internal(instance_id, name, encoded_input, version)
            self._begin_execution(instance_id)

    def _process_complete_orchestration_action(
        self, instance: OrchestrationInstance, complete_action: Any
    ) -> None:
        super()._process_complete_orchestration_action(instance, complete_action)
        if complete_action.orchestrationStatus == pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW:
            previous = self._current_execution(instance.instance_id)
            execution = self._begin_execution(instance.instance_id)
            # The next run: a trace of its own, linked to this one's (when tracing is on).
            trace_context = tracing.execution_trace(
                "continue_as_new",
                instance.name,
                instance.instance_id,
                previous.parent_trace,
                previous.orchestration_trace.spanID.value if previous.orchestration_trace else "",
            )
            if trace_context is not None:
                self._trace_execution(instance.instance_id, execution, trace_context)
            # The SDK carries over what arrived while the old execution's last step was in
            # flight; a timer or result among it is the old execution's, never the new one's.
            instance.pending_events[:] = [
                event
                for event in instance.pending_events
                if event.WhichOneof("eventType") not in TASK_RESULT_EVENTS
            ]

    def PurgeInstances(self, request: Any, context: Any) -> Any:
        with self._lock:
            response = super().PurgeInstances(request, context)
            for instance_id in [i for i in self._executions if i not in self._instances]:
                del self._executions[instance_id]
        return response

    def _begin_execution(self, instance_id: str) -> Execution:
        execution = Execution(next(self._generation_sequence))
        self._executions[instance_id] = execution
        return execution

    def _current_execution(self, instance_id: str) -> Execution:
        execution = self._executions.get(instance_id)
        return execution if execution is not None else self._begin_execution(instance_id)

    # Trace context (OpenTelemetry, through the SDK), carried as the Durable Task Scheduler
    # does; the SDK's backend drops it. An execution starts under the span that started it (the
    # client's, or execution_trace's); the worker's orchestration span, its start time and
    # id, comes back with each step and goes out with the next; each activity runs under the
    # context its scheduling gave it; and the events the worker times its spans by have times.

    def _trace_execution(
        self, instance_id: str, execution: Execution, trace_context: pb.TraceContext
    ) -> None:
        execution.parent_trace = pb.TraceContext()
        execution.parent_trace.CopyFrom(trace_context)  # not a part of the request: a copy
        instance = self._instances.get(instance_id)
        for event in instance.pending_events if instance is not None else ():
            if event.HasField("executionStarted"):
                event.executionStarted.parentTraceContext.CopyFrom(trace_context)
                break

    def _add_trace_context(self, work_item: pb.WorkItem) -> None:
        """Into a work item on its way to a worker (call with the lock held)."""
        if work_item.HasField("activityRequest"):
            trace_context = self._activity_traces.get(activity_key(work_item))
            if trace_context is not None:
                work_item.activityRequest.parentTraceContext.CopyFrom(trace_context)
        elif work_item.HasField("orchestratorRequest"):
            execution = self._executions.get(work_item.orchestratorRequest.instanceId)
            if execution is not None and execution.orchestration_trace is not None:
                work_item.orchestratorRequest.orchestrationTraceContext.CopyFrom(
                    execution.orchestration_trace
                )

    # Timers: one heap, one thread.

    def _process_create_timer_action(
        self, instance: OrchestrationInstance, action: pb.OrchestratorAction
    ) -> None:
        # Replaces the SDK's method (which starts a thread that sleeps, then fires the timer into
        # whatever execution holds the instance id by then) rather than extending it.
        fire_at = action.createTimer.fireAt.ToDatetime(tzinfo=UTC)
        instance.history.append(stamped(dt_helpers.new_timer_created_event(action.id, fire_at)))
        if instance.status == pb.ORCHESTRATION_STATUS_PENDING:
            instance.status = pb.ORCHESTRATION_STATUS_RUNNING
        generation = self._current_execution(instance.instance_id).generation
        self._timers.push(instance.instance_id, generation, action.id, fire_at)

    def _fire_timer(
        self, instance_id: str, generation: int, timer_id: int, fire_at: datetime
    ) -> None:
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None or not self._is_live_execution(instance, generation):
                ENGINE_LOGGER.debug(
                    "Dropped timer %s of %r: its execution has ended or been replaced.",
                    timer_id,
                    instance_id,
                )
                return
            instance.pending_events.append(dt_helpers.new_timer_fired_event(timer_id, fire_at))
            instance.last_updated_at = datetime.now(UTC)
            self._enqueue_orchestration(instance_id)

    def _is_live_execution(self, instance: OrchestrationInstance, generation: int) -> bool:
        execution = self._executions.get(instance.instance_id)
        return (
            execution is not None
            and execution.generation == generation
            and not self._is_terminal_status(instance.status)
        )

    # Activities: a result counts only for the execution that scheduled the activity.

    def _process_schedule_task_action(
        self, instance: OrchestrationInstance, action: pb.OrchestratorAction
    ) -> None:
        super()._process_schedule_task_action(instance, action)
        # The work item carries the instance's completion token of this step, and the SDK's
        # worker sends it back with the result; tokens are never reused.
        execution = self._current_execution(instance.instance_id)
        execution.activity_tokens.add(str(instance.completion_token))
        scheduled = instance.history[-1]  # the taskScheduled event the SDK just added
        if not scheduled.HasField("taskScheduled"):
            return
        stamped(scheduled)
        if action.scheduleTask.HasField("parentTraceContext"):
            trace_context = pb.TraceContext()
            trace_context.CopyFrom(action.scheduleTask.parentTraceContext)
            scheduled.taskScheduled.parentTraceContext.CopyFrom(trace_context)
            key = (instance.instance_id, action.id, str(instance.completion_token))
            self._activity_traces[key] = trace_context

    def CompleteActivityTask(self, request: Any, context: Any) -> Any:
        with self._lock:
            self._activities_out.discard(
                (request.instanceId, request.taskId, request.completionToken)
            )
            self._activity_traces.pop(
                (request.instanceId, request.taskId, request.completionToken), None
            )
            if self._is_stale_activity_result(request):
                ENGINE_LOGGER.debug(
                    "Dropped the result of activity %s of %r: the execution that scheduled it "
                    "has ended or been replaced.",
                    request.taskId,
                    request.instanceId,
                )
                return pb.CompleteTaskResponse()
            response = super().CompleteActivityTask(request, context)
            instance = self._instances.get(request.instanceId)
            if instance is not None and instance.pending_events:
                stamped(instance.pending_events[-1])  # its taskCompleted or taskFailed event
            return response

    def SuspendInstance(self, request: Any, context: Any) -> Any:
        # The SDK checks only the status, so two suspends before a worker applies the first
        # (every runworker's reconciler pausing one schedule) queue two. The SDK's executor
        # buffers the second while suspended and applies it after the resume: the orchestration
        # suspends itself again while the engine reports it running, and never runs again.
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if instance is not None and suspended_after_all(instance):
                return pb.SuspendResponse()
        return super().SuspendInstance(request, context)

    def ResumeInstance(self, request: Any, context: Any) -> Any:
        # The SDK queues a resume whatever the state, and its executor fails the orchestration
        # on a resume it is not suspended for ("Don't know how to handle event of type
        # 'executionResumed'"): two resumes in a row killed a schedule. A resume of an instance
        # that is not, and will not be, suspended does nothing, as on the other engines.
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if instance is not None and not suspended_after_all(instance):
                if instance.pending_events and instance.instance_id not in (
                    self._orchestration_in_flight
                ):
                    self._enqueue_orchestration(instance.instance_id)  # a resume on its way
                return pb.ResumeResponse()
            return super().ResumeInstance(request, context)

    def CompleteOrchestratorTask(self, request: Any, context: Any) -> Any:
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if instance is not None and str(instance.completion_token) != request.completionToken:
                # A step taken back from its worker and delivered again. The SDK would also
                # clear the instance's in-flight mark, which belongs to the new delivery, and
                # the new delivery's events would be lost with its next dispatch.
                ENGINE_LOGGER.debug("Ignored a stale completion of %r.", request.instanceId)
                return pb.CompleteTaskResponse()
            if instance is not None and request.HasField("orchestrationTraceContext"):
                # The worker's orchestration span (when it began, its id): for the next step.
                execution = self._current_execution(request.instanceId)
                execution.orchestration_trace = pb.OrchestrationTraceContext()
                execution.orchestration_trace.CopyFrom(request.orchestrationTraceContext)
        response = super().CompleteOrchestratorTask(request, context)
        # The SDK leaves an instance whose step ended suspended off the queue, even when a
        # resume arrived during that step: it would stay suspended for ever.
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if (
                instance is not None
                and instance.status == pb.ORCHESTRATION_STATUS_SUSPENDED
                and any(e.HasField("executionResumed") for e in instance.pending_events)
            ):
                self._enqueue_orchestration(request.instanceId)
        return response

    def _is_stale_activity_result(self, request: Any) -> bool:
        instance = self._instances.get(request.instanceId)
        execution = self._executions.get(request.instanceId)
        if instance is None or execution is None or not request.completionToken:
            return False  # nothing to compare with: the SDK's own handling
        if self._is_terminal_status(instance.status):
            return True
        return request.completionToken not in execution.activity_tokens


def _port_in_use(address: str) -> str:
    return (
        f"cannot listen on {address}: the port is in use (is another runworker running?). "
        "Set EMBEDDED_ENGINE_PORT to use another port."
    )
