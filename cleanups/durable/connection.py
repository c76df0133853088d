"""The one place that builds Durable Task clients, workers and the embedded engine from settings."""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import grpc
from durabletask import client as dt_client
from durabletask import worker as dt_worker
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.grpc_options import GrpcChannelOptions
from durabletask.internal import helpers as dt_helpers
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.internal.grpc_interceptor import _ClientCallDetails
from durabletask.testing import InMemoryOrchestrationBackend
from durabletask.testing.in_memory_backend import ActivityWorkItem, OrchestrationInstance

from cleanups import tracing
from cleanups.conf import settings

EMBEDDED_HOST = "127.0.0.1"
# The SDK's loggers, named so Django's LOGGING settings govern them.
_CLIENT_LOGGER = logging.getLogger("durabletask.client")
_WORKER_LOGGER = logging.getLogger("durabletask.worker")
_ENGINE_LOGGER = logging.getLogger("cleanups.engine")


class EngineMode(enum.StrEnum):
    EMBEDDED = "embedded"
    EMULATOR = "emulator"
    AZURE = "azure"


class EngineConfigError(ValueError):
    """The engine settings cannot work; the message says which one and why."""


@dataclass(frozen=True)
class EngineConfig:
    mode: EngineMode
    address: str  # what the SDK connects to: host:port, or the http(s):// endpoint
    taskhub: str
    secure: bool
    port: int | None = None  # embedded engine only
    azure_client_id: str = ""

    @property
    def display_endpoint(self) -> str:
        return f"http://{self.address}" if self.mode is EngineMode.EMBEDDED else self.address


def engine_config() -> EngineConfig:
    """Read ENDPOINT, TASKHUB and EMBEDDED_ENGINE_PORT; raise EngineConfigError if malformed."""
    endpoint = (settings.ENDPOINT or "").strip()
    taskhub = (settings.TASKHUB or "").strip()
    if not taskhub:
        raise EngineConfigError("TASKHUB must not be empty (the sample's default is 'default').")
    if not endpoint:
        port = _parse_port(str(settings.EMBEDDED_ENGINE_PORT), "EMBEDDED_ENGINE_PORT")
        return EngineConfig(
            EngineMode.EMBEDDED, f"{EMBEDDED_HOST}:{port}", taskhub, secure=False, port=port
        )
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineConfigError(
            f"ENDPOINT {endpoint!r} is not an http:// or https:// URL "
            "(e.g. http://localhost:8080 for the emulator)."
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EngineConfigError(f"ENDPOINT {endpoint!r} must not have a path, query or fragment.")
    try:
        _ = parts.port  # urlsplit only checks the port when asked
    except ValueError:
        raise EngineConfigError(f"ENDPOINT {endpoint!r} has an invalid port.") from None
    address = endpoint.rstrip("/")
    if parts.scheme == "http":
        return EngineConfig(EngineMode.EMULATOR, address, taskhub, secure=False)
    return EngineConfig(
        EngineMode.AZURE, address, taskhub, secure=True, azure_client_id=settings.AZURE_CLIENT_ID
    )


def _parse_port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise EngineConfigError(f"{name} must be a port number, not {value!r}.") from None
    if not 1 <= port <= 65535:
        raise EngineConfigError(f"{name} must be between 1 and 65535, not {port}.")
    return port


class _DeadlineInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Give every unary call without a deadline one, so a dead engine fails fast."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = _ClientCallDetails(
                client_call_details.method,
                self.timeout,
                client_call_details.metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
                client_call_details.compression,
            )
        return continuation(client_call_details, request)


def _credential(config: EngineConfig) -> Any:
    if config.mode is not EngineMode.AZURE:
        return None
    from azure.identity import DefaultAzureCredential

    if config.azure_client_id:
        return DefaultAzureCredential(managed_identity_client_id=config.azure_client_id)
    return DefaultAzureCredential()


# gRPC waits up to 120 s between attempts to reach an engine that was down, and fails every call
# in between at once: a web process would report an engine that is back as unreachable for
# minutes after a runworker restart. Retry the connection at least once a second instead.
# And give each client connections of its own: gRPC shares them between channels to the same
# address by default, so a new client for an engine that is up would inherit the failing state
# of an older client's connection to an engine that was on that port before, and fail at once.
_CLIENT_CHANNEL = GrpcChannelOptions(
    raw_options=[
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
)


def build_client(
    config: EngineConfig | None = None, call_timeout: float | None = None
) -> dt_client.TaskHubGrpcClient:
    """A new client for the configured engine. Most code wants the shared `get_client()`."""
    config = config or engine_config()
    interceptors = [_DeadlineInterceptor(call_timeout or settings.ENGINE_CALL_TIMEOUT)]
    if config.mode is EngineMode.EMBEDDED:
        return dt_client.TaskHubGrpcClient(
            host_address=config.address,
            secure_channel=False,
            interceptors=interceptors,
            channel_options=_CLIENT_CHANNEL,
            logger=_CLIENT_LOGGER,
        )
    return DurableTaskSchedulerClient(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        interceptors=interceptors,
        channel_options=_CLIENT_CHANNEL,
        logger=_CLIENT_LOGGER,
    )


@functools.lru_cache(maxsize=8)
def _cached_client(config: EngineConfig, call_timeout: float) -> dt_client.TaskHubGrpcClient:
    return build_client(config, call_timeout)


def get_client(call_timeout: float | None = None) -> dt_client.TaskHubGrpcClient:
    """The process-wide client for the configured engine (gRPC channels are thread-safe)."""
    return _cached_client(engine_config(), call_timeout or settings.ENGINE_CALL_TIMEOUT)


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
    thread whose run ends."""

    MOST_AT_ONCE = 128
    ACTIVITY = "run_cleanup"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runs_lock = threading.Condition()
        self._run_threads = 0
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
            if self._run_threads >= self._most_runs_at_once():
                due = planned.timestamp() if ahead and planned is not None else 0.0
                heapq.heappush(self._run_queue, (due, next(self._arrivals), work))
                return
            self._run_threads += 1
        threading.Thread(
            target=self._run_runs, args=(work,), name="cleanup-run", daemon=True
        ).start()

    def _most_runs_at_once(self) -> int:
        """MOST_AT_ONCE, or fewer if the worker was built with a lower activity limit
        (``runworker --max-activities``)."""
        options = getattr(self, "_concurrency_options", None)
        limit = getattr(options, "maximum_concurrent_activity_work_items", None)
        return min(self.MOST_AT_ONCE, limit) if limit else self.MOST_AT_ONCE

    def _run_runs(self, work: tuple[Any, ...] | None) -> None:
        while work is not None:
            req, stub, completionToken, stream = work
            _HANDED_OVER.still_held = lambda stream=stream: stream is None or stream.is_active()
            try:
                super()._execute_activity(req, stub, completionToken)  # type: ignore[misc]
            except Exception:
                _WORKER_LOGGER.exception("A cleanup run failed outside its activity.")
            finally:
                _HANDED_OVER.still_held = None
            with self._runs_lock:
                work = heapq.heappop(self._run_queue)[2] if self._run_queue else None
                if work is None:
                    self._run_threads -= 1
                    self._runs_lock.notify_all()

    def stop(self) -> None:
        """Stop as the SDK's worker does, waiting for the runs in progress too (the SDK waits
        for its own pool only). Queued runs are not begun: their engine delivers them again."""
        with self._runs_lock:
            self._runs_closed = True
            self._run_queue.clear()
            while self._run_threads:
                self._runs_lock.wait()
        super().stop()  # type: ignore[misc]


# Per thread: whether the run this thread holds ahead of its time is still this worker's.
_HANDED_OVER = threading.local()


def delivery_lost() -> bool:
    """The run this thread waited for was handed over on a stream that has ended since: its
    engine delivers it again (or is gone), so running it here would run it twice."""
    still_held = getattr(_HANDED_OVER, "still_held", None)
    return still_held is not None and not still_held()


class _KeepsBackStopping:
    """The worker's stub, but a run that did not begin (or stopped waiting for its time)
    because its worker is stopping is not reported: the SDK would report it failed, and the
    orchestration would fail with it. The engine delivers it again, to a worker that stays."""

    STOPPING = "cleanups.durable.activities.WorkerStopping"

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def CompleteActivityTask(self, response: pb.ActivityResponse, *args: Any, **kwargs: Any) -> Any:
        if (
            response.HasField("failureDetails")
            and response.failureDetails.errorType == self.STOPPING
        ):
            _WORKER_LOGGER.info(
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


def build_worker(
    config: EngineConfig | None = None,
    concurrency: dt_worker.ConcurrencyOptions | None = None,
) -> dt_worker.TaskHubGrpcWorker:
    """A new worker for the configured engine, with nothing registered yet."""
    config = config or engine_config()
    if config.mode is EngineMode.EMBEDDED:
        return OnTimeWorker(
            host_address=config.address,
            secure_channel=False,
            concurrency_options=concurrency,
            channel_options=_CLIENT_CHANNEL,
            logger=_WORKER_LOGGER,
        )
    return OnTimeSchedulerWorker(
        host_address=config.address,
        taskhub=config.taskhub,
        token_credential=_credential(config),
        secure_channel=config.secure,
        concurrency_options=concurrency,
        channel_options=_CLIENT_CHANNEL,
        logger=_WORKER_LOGGER,
    )


class EngineStartError(RuntimeError):
    pass


class EmbeddedEngine(InMemoryOrchestrationBackend):
    """The SDK's own gRPC backend, fit to run schedules for real.

    It listens on loopback only (the SDK binds every interface). It serves every durable timer
    from one heap on one thread (the SDK sleeps a thread per timer). And it delivers a timer or an
    activity result only to the live execution that asked for it: the SDK matches them by instance
    id and task id, and task ids start again at 0 in every execution, so what a terminated,
    replaced or continued-as-new execution left pending would complete the new one's task early.
    """

    # An orchestration step takes milliseconds; one a worker holds longer than this while that
    # worker completes nothing at all is taken back and delivered again (a worker whose stream
    # lives on but that stopped processing would otherwise hold it for ever), as a real
    # engine's work-item lock expires. A worker that keeps completing steps is busy, not wedged:
    # under a herd its queue can hold a step far longer, and delivering that step again would
    # only double its work (a 10,000-schedule start on a loaded machine re-delivered 36,000
    # steps that way). Such a step is taken back only after the longer limit below.
    ORCHESTRATION_LEASE_SECONDS = 10.0
    BUSY_WORKER_LEASE_SECONDS = 120.0

    def __init__(self, port: int) -> None:
        super().__init__(port=port)
        self._timers = _TimerHeap(self._fire_timer)
        # Orchestration steps handed to a worker: token -> (work item, when (monotonic clock),
        # the stream it went to).
        self._leases: dict[str, tuple[pb.WorkItem, float, int]] = {}
        # Each open work-item stream: when a step it was handed last came back completed.
        self._stream_progress: dict[int, float] = {}
        self._stream_numbers = itertools.count(1)
        self._lease_sweeper: threading.Thread | None = None
        self._executions: dict[str, _Execution] = {}
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
                if event.WhichOneof("eventType") not in _TASK_RESULT_EVENTS
            ]

    def PurgeInstances(self, request: Any, context: Any) -> Any:
        with self._lock:
            response = super().PurgeInstances(request, context)
            for instance_id in [i for i in self._executions if i not in self._instances]:
                del self._executions[instance_id]
        return response

    def _begin_execution(self, instance_id: str) -> _Execution:
        execution = _Execution(next(self._generation_sequence))
        self._executions[instance_id] = execution
        return execution

    def _current_execution(self, instance_id: str) -> _Execution:
        execution = self._executions.get(instance_id)
        return execution if execution is not None else self._begin_execution(instance_id)

    # Trace context (OpenTelemetry, through the SDK), carried as the Durable Task Scheduler
    # does; the SDK's backend drops it. An execution starts under the span that started it (the
    # client's, or execution_trace's); the worker's orchestration span, its start time and
    # id, comes back with each step and goes out with the next; each activity runs under the
    # context its scheduling gave it; and the events the worker times its spans by have times.

    def _trace_execution(
        self, instance_id: str, execution: _Execution, trace_context: pb.TraceContext
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
            trace_context = self._activity_traces.get(_activity_key(work_item))
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
        instance.history.append(_stamped(dt_helpers.new_timer_created_event(action.id, fire_at)))
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
                _ENGINE_LOGGER.debug(
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
        _stamped(scheduled)
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
                _ENGINE_LOGGER.debug(
                    "Dropped the result of activity %s of %r: the execution that scheduled it "
                    "has ended or been replaced.",
                    request.taskId,
                    request.instanceId,
                )
                return pb.CompleteTaskResponse()
            response = super().CompleteActivityTask(request, context)
            instance = self._instances.get(request.instanceId)
            if instance is not None and instance.pending_events:
                _stamped(instance.pending_events[-1])  # its taskCompleted or taskFailed event
            return response

    # A worker that dies (its stream ends) takes no work with it: the SDK's backend would keep an
    # orchestration step it held in flight for ever (the instance never runs again) and never
    # deliver its activity again. Both go back to the queue, as a real engine redelivers.

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
                        self._activities_out.add(_activity_key(work_item))
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
                    _ENGINE_LOGGER.warning(
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
            return _activity_key(work_item) in self._activities_out
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
                    self._activities_out.discard(_activity_key(work_item))
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
                    _ENGINE_LOGGER.info(
                        "Delivering activity %s of %r again: its worker went away.",
                        activity.taskId,
                        activity.orchestrationInstance.instanceId,
                    )
            self._work_available.set()

    def SuspendInstance(self, request: Any, context: Any) -> Any:
        # The SDK checks only the status, so two suspends before a worker applies the first
        # (every runworker's reconciler pausing one schedule) queue two. The SDK's executor
        # buffers the second while suspended and applies it after the resume: the orchestration
        # suspends itself again while the engine reports it running, and never runs again.
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if instance is not None and _suspended_after_all(instance):
                return pb.SuspendResponse()
        return super().SuspendInstance(request, context)

    def ResumeInstance(self, request: Any, context: Any) -> Any:
        # The SDK queues a resume whatever the state, and its executor fails the orchestration
        # on a resume it is not suspended for ("Don't know how to handle event of type
        # 'executionResumed'"): two resumes in a row killed a schedule. A resume of an instance
        # that is not, and will not be, suspended does nothing, as on the other engines.
        with self._lock:
            instance = self._instances.get(request.instanceId)
            if instance is not None and not _suspended_after_all(instance):
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
                _ENGINE_LOGGER.debug("Ignored a stale completion of %r.", request.instanceId)
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


def _suspended_after_all(instance: OrchestrationInstance) -> bool:
    """Whether the instance will be suspended once the events on their way to a worker, or
    waiting for one, are applied to its status now."""
    suspended = instance.status == pb.ORCHESTRATION_STATUS_SUSPENDED
    for event in (*instance.dispatched_events, *instance.pending_events):
        if event.HasField("executionSuspended"):
            suspended = True
        elif event.HasField("executionResumed"):
            suspended = False
    return suspended


def _stamped(event: pb.HistoryEvent) -> pb.HistoryEvent:
    """The event, with the time it happened if the SDK's backend left it at 0 (the worker times
    the spans of activities and timers by these)."""
    if not event.timestamp.seconds and not event.timestamp.nanos:
        event.timestamp.GetCurrentTime()
    return event


def _activity_key(work_item: pb.WorkItem) -> tuple[str, int, str]:
    activity = work_item.activityRequest
    return (activity.orchestrationInstance.instanceId, activity.taskId, work_item.completionToken)


_TASK_RESULT_EVENTS = frozenset({"timerFired", "taskCompleted", "taskFailed"})


@dataclass(eq=False)
class _Execution:
    """One execution of an instance: from its start or continue-as-new to the next."""

    generation: int
    activity_tokens: set[str] = field(default_factory=set)
    parent_trace: pb.TraceContext | None = None  # the span it started under
    orchestration_trace: pb.OrchestrationTraceContext | None = None  # the worker's span


class _TimerHeap:
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
                _ENGINE_LOGGER.exception("Could not fire timer %s of %r.", timer_id, instance_id)


def _port_in_use(address: str) -> str:
    return (
        f"cannot listen on {address}: the port is in use (is another runworker running?). "
        "Set EMBEDDED_ENGINE_PORT to use another port."
    )


def build_embedded_engine(config: EngineConfig) -> EmbeddedEngine:
    assert config.port is not None
    return EmbeddedEngine(config.port)
