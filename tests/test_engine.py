"""The embedded engine: what it relies on in the SDK, and what it does better than the SDK's own.

The behaviour tests run twice, on the embedded engine and on the SDK's plain
InMemoryOrchestrationBackend, with a real worker and client: the SDK's case asserts the fault the
subclass exists to fix, so the day an SDK upgrade fixes it, that case fails and says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask import worker as dt_worker
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.internal import helpers as dt_helpers
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from durabletask.testing import InMemoryOrchestrationBackend, in_memory_backend
from google.protobuf import wrappers_pb2

from cleanups.contract import WorkerStopping
from cleanups.engine.config import engine_config
from cleanups.engine.connection import build_client, build_worker
from cleanups.engine.embedded import EmbeddedEngine
from cleanups.engine.ontime import _KeepsBackStopping
from tests.conftest import timer_created, wait_until

SDK = InMemoryOrchestrationBackend
Status = dt_client.OrchestrationStatus
REPLACE_TERMINATED = pb.OrchestrationIdReusePolicy(
    replaceableStatus=[pb.ORCHESTRATION_STATUS_TERMINATED]
)


# What the subclass relies on. An SDK upgrade that changes any of it fails here first.


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("StartInstance", ["self", "request", "context"]),
        ("PurgeInstances", ["self", "request", "context"]),
        ("CompleteActivityTask", ["self", "request", "context"]),
        ("GetWorkItems", ["self", "request", "context"]),
        ("AbandonTaskOrchestratorWorkItem", ["self", "request", "context"]),
        ("CompleteOrchestratorTask", ["self", "request", "context"]),
        ("ResumeInstance", ["self", "request", "context"]),
        ("SuspendInstance", ["self", "request", "context"]),
        ("_create_instance_internal", ["self", "instance_id", "name", "encoded_input", "version"]),
        ("_process_complete_orchestration_action", ["self", "instance", "complete_action"]),
        ("_process_schedule_task_action", ["self", "instance", "action"]),
        ("_process_create_timer_action", ["self", "instance", "action"]),
        ("_enqueue_orchestration", ["self", "instance_id"]),
        ("_is_terminal_status", ["self", "status"]),
        ("stop", ["self", "grace"]),
        ("reset", ["self"]),
    ],
)
def test_the_sdk_methods_the_engine_overrides_or_calls_keep_their_signatures(name, parameters):
    assert list(inspect.signature(getattr(SDK, name)).parameters) == parameters


def test_the_sdk_backend_keeps_the_state_the_engine_uses():
    backend = SDK(port=0)
    assert isinstance(backend._lock, type(threading.RLock()))
    assert backend._instances == {}
    assert isinstance(backend._shutdown_event, threading.Event)
    assert isinstance(backend._port, int)
    assert backend._server is None
    assert isinstance(backend._next_completion_token, int)
    assert isinstance(backend._orchestration_in_flight, set)
    instance_fields = {f.name for f in dataclasses.fields(in_memory_backend.OrchestrationInstance)}
    assert {
        "instance_id",
        "status",
        "history",
        "pending_events",
        "dispatched_events",
        "completion_token",
        "last_updated_at",
    } <= instance_fields
    assert "completion_token" in {
        f.name for f in dataclasses.fields(in_memory_backend.ActivityWorkItem)
    }
    for make_event in (dt_helpers.new_timer_created_event, dt_helpers.new_timer_fired_event):
        assert list(inspect.signature(make_event).parameters) == ["timer_id", "fire_at"]
    result_events = {f.name for f in pb.HistoryEvent.DESCRIPTOR.oneofs_by_name["eventType"].fields}
    assert {"timerFired", "taskCompleted", "taskFailed"} <= result_events


def test_the_names_the_engine_adds_are_not_the_sdks():
    added = {
        "_timers",
        "_executions",
        "_generation_sequence",
        "pending_timers",
        "_begin_execution",
        "_current_execution",
        "_fire_timer",
        "_is_live_execution",
        "_is_stale_activity_result",
    }
    assert added <= set(vars(EmbeddedEngine(port=0))) | set(vars(EmbeddedEngine))
    assert not added & (set(vars(SDK(port=0))) | set(dir(SDK)))


def test_the_worker_hooks_the_on_time_start_relies_on_are_the_sdks():
    # OnTimeWorker overrides _execute_activity (run ahead of time on a thread of its own) and
    # hands it a stub whose CompleteActivityTask keeps back a "worker stopping" failure.
    for worker_class in (dt_worker.TaskHubGrpcWorker, DurableTaskSchedulerWorker):
        method = worker_class._execute_activity
        assert list(inspect.signature(method).parameters) == [
            "self",
            "req",
            "stub",
            "completionToken",
        ]
    source = inspect.getsource(dt_worker.TaskHubGrpcWorker._execute_activity)
    assert "stub.CompleteActivityTask(res)" in source
    assert "ph.new_failure_details(" in source  # an activity's exception, reported as failed
    assert "self._execute_activity," in inspect.getsource(dt_worker.TaskHubGrpcWorker)
    assert dt_helpers.get_qualified_name(WorkerStopping) == (_KeepsBackStopping.STOPPING)


def test_activity_results_carry_back_the_completion_token_of_their_work_item():
    # The engine tells an old execution's activity result by this token.
    assert "completionToken" in pb.ActivityResponse.DESCRIPTOR.fields_by_name
    work_item_source = inspect.getsource(SDK.GetWorkItems)
    assert "completionToken=str(matched_activity.completion_token)" in work_item_source
    activity_source = inspect.getsource(dt_worker.TaskHubGrpcWorker._execute_activity)
    assert activity_source.count("completionToken=completionToken") == 2  # result and failure


def _methods_calling(pattern: str) -> set[str]:
    return {
        name
        for name, member in vars(SDK).items()
        if inspect.isfunction(member) and re.search(pattern, inspect.getsource(member))
    }


def test_every_place_the_sdk_starts_an_execution_is_one_the_engine_marks():
    starts = _methods_calling(r"new_execution_started_event\(")
    creates = _methods_calling(r"(?<![.\w])OrchestrationInstance\(")
    assert starts == {
        "StartInstance",
        "_create_instance_internal",
        "_process_complete_orchestration_action",
    }
    assert creates == {"StartInstance", "_create_instance_internal"}
    assert all(name in vars(EmbeddedEngine) for name in starts)


def test_every_place_the_sdk_delivers_a_timer_or_activity_result_is_one_the_engine_guards():
    assert _methods_calling(r"new_timer_fired_event\(") == {"_process_create_timer_action"}
    assert _methods_calling(r"TaskCompletedEvent\(|TaskFailedEvent\(") == {"CompleteActivityTask"}
    assert "self._process_create_timer_action(" in inspect.getsource(SDK._process_action)
    assert "self._process_schedule_task_action(" in inspect.getsource(SDK._process_action)


def test_the_sdk_timer_method_the_engine_replaces_is_unchanged():
    # EmbeddedEngine._process_create_timer_action replaces this method instead of calling it (it
    # starts a thread per timer). If this fails, re-read the SDK's method, carry over what it
    # does besides starting the thread, then update the digest.
    source = inspect.getsource(SDK._process_create_timer_action)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "ba6078bb4db568a1e36d490ff2432f722bda33e7592c8e3a871f3ba777aabeda"
    )


# Behaviour, on the embedded engine and on the SDK's own backend.


class RecordsActivityResults:
    """Remembers each activity result once the backend has handled it."""

    activity_results: list[str]

    def CompleteActivityTask(self, request: Any, context: Any) -> Any:
        response = super().CompleteActivityTask(request, context)  # type: ignore[misc]
        self.activity_results.append(request.result.value)
        return response


class RecordingEngine(RecordsActivityResults, EmbeddedEngine):
    pass


class RecordingSdkBackend(RecordsActivityResults, InMemoryOrchestrationBackend):
    pass


@pytest.fixture(params=["embedded", "sdk"])
def backend(request: pytest.FixtureRequest, engine_port: int) -> Iterator[Any]:
    backend_class = RecordingEngine if request.param == "embedded" else RecordingSdkBackend
    backend = backend_class(port=engine_port)
    backend.activity_results = []
    backend.start()
    yield backend
    backend.stop(grace=0.5)


@pytest.fixture
def sdk_worker(backend: Any) -> Iterator[dt_worker.TaskHubGrpcWorker]:
    """A worker with nothing registered: each test adds its own orchestrations, then starts it."""
    worker = build_worker(engine_config())
    yield worker
    worker.stop()


@pytest.fixture
def client(backend: Any) -> dt_client.TaskHubGrpcClient:
    return build_client(engine_config())


def fixed(backend: Any) -> bool:
    return isinstance(backend, EmbeddedEngine)


def sleep_and_report(ctx: task.OrchestrationContext, seconds: float) -> Any:
    planned = ctx.current_utc_datetime + timedelta(seconds=seconds)
    yield ctx.create_timer(planned)
    return {"planned": planned.isoformat(), "woke": ctx.current_utc_datetime.isoformat()}


def race_a_timer_then_continue(ctx: task.OrchestrationContext, generation: int) -> Any:
    """Generation 1 races a 1 s timer against an event; the event wins and leaves the timer
    pending. Generation 2 sleeps 4 s, its timer with the same id as generation 1's."""
    if generation == 1:
        yield task.when_any(
            [ctx.create_timer(timedelta(seconds=1)), ctx.wait_for_external_event("go")]
        )
        ctx.continue_as_new(2)
        return None
    return (yield from sleep_and_report(ctx, 4))


def woke_early_by(state: Any) -> timedelta:
    assert state is not None and state.runtime_status == Status.COMPLETED, state
    output = state.get_output()
    return datetime.fromisoformat(output["planned"]) - datetime.fromisoformat(output["woke"])


def test_a_timer_left_by_the_previous_generation_does_not_wake_the_next(
    backend, sdk_worker, client
):
    sdk_worker.add_orchestrator(race_a_timer_then_continue)
    sdk_worker.start()
    instance_id = client.schedule_new_orchestration(race_a_timer_then_continue, input=1)
    wait_until(lambda: timer_created(client, instance_id))
    client.raise_orchestration_event(instance_id, "go")

    early = woke_early_by(client.wait_for_orchestration_completion(instance_id, timeout=20))

    if fixed(backend):
        assert early <= timedelta(0)
    else:  # generation 1's timer fired into generation 2, about 3 s early
        assert early > timedelta(seconds=1)


@pytest.mark.parametrize("purge", [False, True], ids=["terminated", "terminated-and-purged"])
def test_a_terminated_instances_timer_does_not_wake_its_successor(
    backend, sdk_worker, client, purge
):
    sdk_worker.add_orchestrator(sleep_and_report)
    sdk_worker.start()
    instance_id = client.schedule_new_orchestration(sleep_and_report, input=2, instance_id="again")
    wait_until(lambda: timer_created(client, instance_id))
    client.terminate_orchestration(instance_id)
    state = client.wait_for_orchestration_completion(instance_id, timeout=20)
    assert state is not None and state.runtime_status == Status.TERMINATED
    if purge:
        assert client.purge_orchestration(instance_id).deleted_instance_count == 1

    client.schedule_new_orchestration(
        sleep_and_report, input=4, instance_id=instance_id, reuse_id_policy=REPLACE_TERMINATED
    )
    early = woke_early_by(client.wait_for_orchestration_completion(instance_id, timeout=20))

    if fixed(backend):
        assert early <= timedelta(0)
    else:
        assert early > timedelta(seconds=1)


def test_an_activity_result_of_the_previous_generation_does_not_complete_the_next(
    backend, sdk_worker, client
):
    slow_started, release_slow = threading.Event(), threading.Event()
    fast_started, release_fast = threading.Event(), threading.Event()

    def slow(ctx: task.ActivityContext, _: Any) -> str:
        slow_started.set()
        release_slow.wait(15)
        return "from generation 1"

    def fast(ctx: task.ActivityContext, _: Any) -> str:
        fast_started.set()
        release_fast.wait(15)
        return "from generation 2"

    def race_an_activity_then_continue(ctx: task.OrchestrationContext, generation: int) -> Any:
        # Task ids: generation 1's activity is 0, its timer 1; generation 2's activity is 0 again.
        if generation == 1:
            yield task.when_any([ctx.call_activity(slow), ctx.create_timer(timedelta(seconds=0.2))])
            ctx.continue_as_new(2)
            return None
        return (yield ctx.call_activity(fast))

    sdk_worker.add_orchestrator(race_an_activity_then_continue)
    sdk_worker.add_activity(slow)
    sdk_worker.add_activity(fast)
    sdk_worker.start()
    try:
        instance_id = client.schedule_new_orchestration(race_an_activity_then_continue, input=1)
        wait_until(fast_started.is_set)
        assert slow_started.is_set()
        release_slow.set()
        wait_until(lambda: "from generation 1" in str(backend.activity_results))
        release_fast.set()
        state = client.wait_for_orchestration_completion(instance_id, timeout=20)
    finally:
        release_slow.set()
        release_fast.set()

    assert state is not None and state.runtime_status == Status.COMPLETED
    if fixed(backend):
        assert state.get_output() == "from generation 2"
    else:
        assert state.get_output() == "from generation 1"


def wait_for_go(ctx: task.OrchestrationContext, _: Any) -> Any:
    yield ctx.wait_for_external_event("go")
    return "went"


def test_a_second_resume_does_not_fail_the_orchestration(backend, sdk_worker, client):
    """What a reconciler and an operator both resuming a paused schedule do."""
    sdk_worker.add_orchestrator(wait_for_go)
    sdk_worker.start()
    instance_id = client.schedule_new_orchestration(wait_for_go)
    client.wait_for_orchestration_start(instance_id, timeout=20)
    client.suspend_orchestration(instance_id)
    wait_until(
        lambda: client.get_orchestration_state(instance_id).runtime_status == Status.SUSPENDED
    )

    client.resume_orchestration(instance_id)
    client.resume_orchestration(instance_id)
    client.raise_orchestration_event(instance_id, "go")
    state = client.wait_for_orchestration_completion(instance_id, timeout=20)

    assert state is not None
    if fixed(backend):
        assert state.runtime_status == Status.COMPLETED and state.get_output() == "went"
    else:  # the SDK's executor fails on the resume it is not suspended for
        assert state.runtime_status == Status.FAILED
        assert "executionResumed" in state.failure_details.message


def test_two_suspends_then_a_resume_leave_the_orchestration_running(backend, sdk_worker, client):
    """What every runworker's reconciler pausing one schedule at once, then one resume, do."""
    sdk_worker.add_orchestrator(wait_for_go)
    instance_id = client.schedule_new_orchestration(wait_for_go)
    # No worker yet: both suspends wait in the queue together, as when the reconcilers of
    # several runworkers suspend within one orchestration step.
    client.suspend_orchestration(instance_id)
    client.suspend_orchestration(instance_id)

    with backend._lock:
        queued = backend._instances[instance_id].pending_events
        suspends = sum(event.HasField("executionSuspended") for event in queued)
    if not fixed(backend):
        # The SDK queues both. Its executor buffers the second while suspended and, on the
        # resume, replays it while iterating the very list it buffers into: the worker thread
        # loops for ever and eats the machine's memory (seen: 23 GB in a minute). Not run here.
        assert suspends == 2
        return
    assert suspends == 1

    sdk_worker.start()
    wait_until(
        lambda: client.get_orchestration_state(instance_id).runtime_status == Status.SUSPENDED
    )
    client.resume_orchestration(instance_id)
    client.raise_orchestration_event(instance_id, "go")
    state = client.wait_for_orchestration_completion(instance_id, timeout=20)

    assert state is not None
    assert state.runtime_status == Status.COMPLETED and state.get_output() == "went"


class ShortLeaseEngine(EmbeddedEngine):
    ORCHESTRATION_LEASE_SECONDS = 1.0


def add_one(ctx: task.OrchestrationContext, value: int) -> Any:
    return value + 1
    yield  # an orchestrator is a generator


def test_a_step_held_by_a_worker_that_stopped_processing_is_delivered_again(engine_port):
    """A worker whose stream stays open but that never completes what it took (wedged) does
    not hold the instance for ever: past the lease, another worker gets the step."""
    backend = ShortLeaseEngine(port=engine_port)
    backend.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{engine_port}")
    try:
        wedged = stubs.TaskHubSidecarServiceStub(channel).GetWorkItems(pb.GetWorkItemsRequest())
        client = build_client(engine_config())
        instance_id = client.schedule_new_orchestration(add_one, input=41)
        taken = next(wedged)  # the wedged worker takes the step, and does nothing with it
        assert taken.orchestratorRequest.instanceId == instance_id
        worker = build_worker(engine_config())
        worker.add_orchestrator(add_one)
        worker.start()
        try:
            state = client.wait_for_orchestration_completion(instance_id, timeout=20)
        finally:
            worker.stop()
    finally:
        channel.close()
        backend.stop(grace=0.5)

    assert state is not None and state.runtime_status == Status.COMPLETED
    assert state.get_output() == 42


def complete_with(token: str, instance_id: str, output: str) -> pb.OrchestratorResponse:
    done = pb.CompleteOrchestrationAction(
        orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED,
        result=wrappers_pb2.StringValue(value=json.dumps(output)),
    )
    return pb.OrchestratorResponse(
        instanceId=instance_id,
        completionToken=token,
        actions=[pb.OrchestratorAction(id=0, completeOrchestration=done)],
    )


def test_the_late_completion_of_a_step_delivered_again_does_not_count(engine_port):
    """Two workers, raw gRPC: the first holds a step past its lease, the second gets it with a
    new token; the first one's late completion is ignored and the second one's stands."""
    backend = ShortLeaseEngine(port=engine_port)
    backend.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{engine_port}")
    try:
        sidecar = stubs.TaskHubSidecarServiceStub(channel)
        first = sidecar.GetWorkItems(pb.GetWorkItemsRequest())
        client = build_client(engine_config())
        instance_id = client.schedule_new_orchestration(add_one, input=1)
        held = next(first)
        second = sidecar.GetWorkItems(pb.GetWorkItemsRequest())
        again = next(second)  # after the lease
        assert again.orchestratorRequest.instanceId == instance_id
        assert again.completionToken != held.completionToken

        sidecar.CompleteOrchestratorTask(complete_with(held.completionToken, instance_id, "late"))
        # Still the second worker's: the SDK's backend would clear the mark, and dispatch the
        # instance's next events to a third worker beside it.
        assert instance_id in backend._orchestration_in_flight
        sidecar.CompleteOrchestratorTask(complete_with(again.completionToken, instance_id, "new"))
        state = client.wait_for_orchestration_completion(instance_id, timeout=20)
    finally:
        channel.close()
        backend.stop(grace=0.5)

    assert state is not None and state.get_output() == "new"


class BusyLeaseEngine(EmbeddedEngine):
    ORCHESTRATION_LEASE_SECONDS = 0.5
    BUSY_WORKER_LEASE_SECONDS = 4.0


def test_a_step_held_by_a_busy_worker_is_not_delivered_again_until_the_longer_limit(engine_port):
    """A worker that keeps completing steps has a backlog, not a wedge: the step it holds stays
    its own past the short lease (delivering it again would only double the work under a
    herd), and goes back to the queue once that worker completes nothing for the short lease."""
    backend = BusyLeaseEngine(port=engine_port)
    backend.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{engine_port}")
    try:
        sidecar = stubs.TaskHubSidecarServiceStub(channel)
        stream = sidecar.GetWorkItems(pb.GetWorkItemsRequest())
        client = build_client(engine_config())
        held_id = client.schedule_new_orchestration(add_one, input=1)
        held = next(stream)
        assert held.orchestratorRequest.instanceId == held_id

        busy_until = time.monotonic() + 4 * BusyLeaseEngine.ORCHESTRATION_LEASE_SECONDS
        completed = 0
        while time.monotonic() < busy_until:  # the worker keeps completing other steps
            other_id = client.schedule_new_orchestration(add_one, input=2)
            other = next(stream)
            assert other.orchestratorRequest.instanceId == other_id  # never the held step
            sidecar.CompleteOrchestratorTask(complete_with(other.completionToken, other_id, "x"))
            completed += 1
            time.sleep(0.1)
        assert completed >= 10
        assert held.completionToken in backend._leases, "a busy worker's step was taken back"

        # Now it completes nothing: the held step goes to a worker that asks.
        again = next(sidecar.GetWorkItems(pb.GetWorkItemsRequest()))
        assert again.orchestratorRequest.instanceId == held_id
        assert again.completionToken != held.completionToken
    finally:
        channel.close()
        backend.stop(grace=0.5)


class CountingOutstanding(EmbeddedEngine):
    ORCHESTRATION_LEASE_SECONDS = 600.0  # its sweep (which checks each lease) stays out of it
    checks = 0

    def _outstanding(self, work_item: pb.WorkItem) -> bool:
        type(self).checks += 1
        return super()._outstanding(work_item)


def test_a_stream_holding_thousands_of_steps_is_not_scanned_at_every_new_one(engine_port):
    """Under a herd a worker holds thousands of steps at once; the stream's bookkeeping must
    stay linear (scanning all it holds at every new step made a 10,000-schedule start quadratic:
    a quarter of the worker's time)."""
    backend = CountingOutstanding(port=engine_port)
    backend.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{engine_port}")
    try:
        stream = stubs.TaskHubSidecarServiceStub(channel).GetWorkItems(pb.GetWorkItemsRequest())
        client = build_client(engine_config())
        count = 2500
        for n in range(count):
            client.schedule_new_orchestration(add_one, input=n)
        taken = [next(stream) for _ in range(count)]  # held, none completed
    finally:
        channel.close()
        backend.stop(grace=0.5)

    assert len({item.completionToken for item in taken}) == count
    # Linear: a few scans in all (quadratic was millions of checks).
    assert CountingOutstanding.checks < 5 * count, CountingOutstanding.checks


# Scale: one thread serves every timer.


def test_many_waiting_timers_need_no_thread_each_and_short_ones_still_fire_in_order(engine):
    worker = build_worker(engine_config())
    worker.add_orchestrator(sleep_and_report)
    worker.start()
    client = build_client(engine_config())
    try:
        # Warm the worker's and the server's thread pools before counting.
        warm_up = client.schedule_new_orchestration(sleep_and_report, input=0)
        assert client.wait_for_orchestration_completion(warm_up, timeout=20) is not None
        threads_before = threading.active_count()

        for _ in range(500):
            client.schedule_new_orchestration(sleep_and_report, input=60)
        wait_until(lambda: engine.pending_timers >= 500, timeout=60)
        assert threading.active_count() - threads_before < 20

        # Each pushed after the 60 s timers, the earliest last: the timer thread must wake early.
        short = [
            client.schedule_new_orchestration(sleep_and_report, input=s) for s in (1.5, 1, 0.5)
        ]
        outputs = [
            client.wait_for_orchestration_completion(instance_id, timeout=20)
            for instance_id in short
        ]
    finally:
        worker.stop()

    assert all(woke_early_by(state) <= timedelta(0) for state in outputs)
    woke = [datetime.fromisoformat(state.get_output()["woke"]) for state in outputs]
    assert woke[2] < woke[1] < woke[0]
    assert engine.pending_timers == 500
