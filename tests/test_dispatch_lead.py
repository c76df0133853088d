"""A scheduled run is handed to a worker CLEANUP_DISPATCH_LEAD_SECONDS ahead of its planned time
and starts at that time exactly; a pause, a terminate or a run-now in that lead do what they say.
On a real engine and worker."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from cleanups import control
from cleanups.contract import WorkerStopping
from cleanups.control import Outcome
from cleanups.durable.registration import register
from cleanups.engine.config import engine_config
from cleanups.engine.connection import build_worker
from cleanups.engine.ontime import OnTimeWorker
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import worker as this_worker
from cleanups.runs.execute import execute_iteration
from tests.conftest import CountingEngine, wait_for_clock, wait_until
from tests.test_guarantees import run_of, serving

pytestmark = pytest.mark.django_db(transaction=True)
LEAD = 2.5


class HandOverClock(CountingEngine):
    """The embedded engine, noting when it hands each activity to a worker."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.handed: list[tuple[str, int, datetime]] = []  # (instance, task id, when)

    def GetWorkItems(self, request: Any, context: Any) -> Any:
        for work_item in super().GetWorkItems(request, context):
            if work_item.HasField("activityRequest"):
                activity = work_item.activityRequest
                self.handed.append(
                    (activity.orchestrationInstance.instanceId, activity.taskId, timezone.now())
                )
            yield work_item


@pytest.fixture
def lead_engine(engine_port, settings):
    settings.CLEANUP_DISPATCH_LEAD_SECONDS = LEAD
    yield from serving(HandOverClock(engine_port))


def handed_over(engine: HandOverClock, schedule: CleanupSchedule) -> list[datetime]:
    return [when for instance, _, when in engine.handed if instance == schedule.instance_id]


def second_run_in_hand(engine: HandOverClock, schedule: CleanupSchedule) -> datetime:
    """Start the schedule, let its first run end, and wait until its second is in its worker's
    hands, waiting for its time; that time."""
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, iteration=1, status="succeeded"))
    wait_until(lambda: len(handed_over(engine, schedule)) == 2)
    schedule.refresh_from_db()
    assert timezone.now() < schedule.next_run_at and not run_of(schedule, iteration=2)
    return schedule.next_run_at


def test_a_run_is_handed_over_ahead_and_starts_at_its_planned_time(lead_engine, make_schedule):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=4))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, iteration=3, status="succeeded"), timeout=30)

    scheduled = list(
        CleanupRun.objects.filter(schedule=schedule, iteration__gt=1).order_by("iteration")
    )
    assert [run.iteration for run in scheduled] == [2, 3]
    handed = handed_over(lead_engine, schedule)
    for run in scheduled:
        assert run.planned_at <= run.started_at  # never early
        # Handed over in the lead before its plan: its delivery was spent ahead of the slot.
        ahead = [when for when in handed if run.planned_at - timedelta(seconds=LEAD) <= when]
        assert ahead and ahead[0] < run.planned_at, (run.iteration, handed, run.planned_at)


def test_a_pause_in_the_lead_keeps_the_run_from_starting_until_resumed(lead_engine, make_schedule):
    schedule = make_schedule(
        cadence="fixed_rate",
        interval=timedelta(seconds=5),
        missed_runs=CleanupSchedule.MissedRuns.RUN_ONCE,
    )
    planned = second_run_in_hand(lead_engine, schedule)

    assert control.pause_schedule(schedule).outcome is Outcome.PAUSED
    wait_for_clock(planned + timedelta(seconds=1.5))
    assert not run_of(schedule, iteration=2), "a paused schedule ran"

    assert control.resume_schedule(schedule).outcome is Outcome.RESUMED
    # Its slot went by while paused: run once (its policy) on the resume, at once.
    second = wait_until(lambda: run_of(schedule, iteration=2, status="succeeded"))
    assert second.started_at > planned + timedelta(seconds=1.5)
    assert second.planned_at == planned


def test_a_terminate_in_the_lead_means_no_run(lead_engine, make_schedule):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=5))
    planned = second_run_in_hand(lead_engine, schedule)

    assert control.terminate_schedule(schedule).outcome is Outcome.TERMINATED
    wait_for_clock(planned + timedelta(seconds=1))

    assert list(
        CleanupRun.objects.filter(schedule=schedule).values_list("iteration", flat=True)
    ) == [1]


def test_a_run_now_in_the_lead_runs_after_the_handed_over_run(lead_engine, make_schedule):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=5))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, iteration=1, status="succeeded"))
    wait_until(lambda: len(handed_over(lead_engine, schedule)) == 2)

    assert control.run_now(schedule, "alice").outcome is Outcome.RUN_REQUESTED

    manual = wait_until(lambda: run_of(schedule, trigger="manual", status="succeeded"))
    second = run_of(schedule, iteration=2)
    assert second.trigger == "scheduled" and second.finished_at <= manual.started_at
    assert manual.triggered_by == "alice" and manual.planned_at is None


def test_a_worker_asked_to_stop_stops_waiting_for_the_planned_time(make_schedule, monkeypatch):
    schedule = make_schedule(
        interval=timedelta(seconds=30), desired_state=CleanupSchedule.DesiredState.RUNNING
    )
    planned = timezone.now() + timedelta(seconds=30)
    monkeypatch.setattr(this_worker, "STOPPING", threading.Event())
    threading.Timer(0.2, this_worker.STOPPING.set).start()
    with pytest.raises(WorkerStopping):
        execute_iteration(
            schedule.pk, 2, planned_at=planned.isoformat(), generation=schedule.generation
        )
    assert not CleanupRun.objects.filter(schedule=schedule).exists()


@pytest.mark.subprocess
def test_a_worker_stopped_while_its_run_waits_leaves_the_run_to_the_engine(
    engine_port, make_schedule, start_worker_process
):
    """A deploy stops a runworker holding a run in its lead: the run is not reported failed
    (which would fail the orchestration); the engine delivers it to the worker that stays."""
    engine = HandOverClock(engine_port)
    engine.start()
    try:
        leaving = start_worker_process(
            env={
                "ENDPOINT": f"http://127.0.0.1:{engine_port}",
                "CLEANUP_DISPATCH_LEAD_SECONDS": str(LEAD),
            }
        )
        leaving.wait_for_output("Press Ctrl+C to stop")
        schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=6))
        planned = second_run_in_hand(engine, schedule)

        assert leaving.stop() == 0
        assert not run_of(schedule, iteration=2)

        staying = register(build_worker(engine_config()))
        staying.start()
        try:
            second = wait_until(lambda: run_of(schedule, iteration=2, status="succeeded"))
        finally:
            staying.stop()
    finally:
        engine.stop(grace=0.5)
    assert second.planned_at == planned <= second.started_at
    assert len(handed_over(engine, schedule)) >= 3  # delivered again


def test_a_run_held_on_a_stream_that_ended_is_left_to_its_next_delivery(
    engine_port, settings, make_schedule
):
    """The engine that handed a run over went away before its time (an engine host restarted):
    it, or the orchestration restarted from the database, delivers it again; the run held here
    must not run beside that one."""
    settings.CLEANUP_DISPATCH_LEAD_SECONDS = LEAD
    engine = HandOverClock(engine_port)
    engine.start()
    dt_worker = register(build_worker(engine_config()))
    dt_worker.start()
    try:
        schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=6))
        planned = second_run_in_hand(engine, schedule)

        engine.stop(grace=0.5)  # the worker's stream ends; the run stays in its hands
        assert timezone.now() < planned
        wait_for_clock(planned + timedelta(seconds=1))
    finally:
        dt_worker.stop()
    assert not run_of(schedule, iteration=2), "a run its engine took back ran all the same"


def test_a_herd_larger_than_its_threads_queues_and_every_run_starts_in_time(
    lead_engine, make_schedule, monkeypatch
):
    """More runs due at one instant than threads to hold them: the rest queue (never blocking
    the SDK's pool, which steps the orchestrations too), and each runs, never early."""
    monkeypatch.setattr(OnTimeWorker, "MOST_AT_ONCE", 2)
    schedules = [
        make_schedule(name=f"herd-{n}", cadence="fixed_rate", interval=timedelta(seconds=5))
        for n in range(6)
    ]
    most = 0
    done = threading.Event()

    def count_threads() -> None:
        nonlocal most
        while not done.wait(0.01):
            ahead = [t for t in threading.enumerate() if t.name == "cleanup-run"]
            most = max(most, len(ahead))

    counter = threading.Thread(target=count_threads)
    counter.start()
    try:
        control.start_schedules(CleanupSchedule.objects.filter(name__startswith="herd-"))
        control.wait_for_bulk_engine_calls(timeout=20)
        for schedule in schedules:
            wait_until(lambda s=schedule: run_of(s, iteration=2, status="succeeded"), timeout=30)
    finally:
        done.set()
        counter.join()

    seconds = CleanupRun.objects.filter(iteration=2, schedule__in=schedules)
    assert seconds.count() == 6
    assert all(run.planned_at <= run.started_at for run in seconds)
    assert 1 <= most <= 2


def test_runs_never_hold_the_sdks_pool(worker, make_schedule):
    """Every run executes on the worker's own run threads, never on the SDK's pool (CPUs + 4
    threads, which also step every orchestration): more runs in progress than the pool has
    threads do not hold up another schedule's run."""
    from tests.testapp.cleanup_tasks import BLOCKING, RELEASE

    blocking = (os.cpu_count() or 1) + 6
    RELEASE.clear()
    try:
        for n in range(blocking):
            control.start_schedule(
                make_schedule(name=f"blocks-{n}", task="testapp_blocks", params={})
            )
        wait_until(lambda: BLOCKING["now"] == blocking, timeout=30)
        other = make_schedule(name="other")
        control.start_schedule(other)
        wait_until(lambda: run_of(other, iteration=1, status="succeeded"), timeout=15)
        assert BLOCKING["now"] == blocking
    finally:
        RELEASE.set()


def test_a_lower_activity_limit_bounds_the_runs_at_once(engine, make_schedule):
    """`runworker --max-activities 2`: at most two runs at once; the others wait their turn."""
    from durabletask.worker import ConcurrencyOptions

    from tests.testapp.cleanup_tasks import BLOCKING, RELEASE

    limited = register(
        build_worker(engine_config(), ConcurrencyOptions(maximum_concurrent_activity_work_items=2))
    )
    limited.start()
    RELEASE.clear()
    schedules = [
        make_schedule(name=f"blocks-{n}", task="testapp_blocks", params={}) for n in range(4)
    ]
    try:
        for schedule in schedules:
            control.start_schedule(schedule)
        # All four handed to the worker: two running, two queued behind them.
        wait_until(lambda: BLOCKING["now"] == 2 and len(limited._run_queue) == 2, timeout=30)
        assert CleanupRun.objects.filter(status="running").count() == 2
    finally:
        RELEASE.set()
    for schedule in schedules:
        wait_until(lambda s=schedule: run_of(s, iteration=1, status="succeeded"), timeout=30)
    limited.stop()
