"""Never early, a start is a start, nothing stuck, one execution at a time: on real engines, a
real worker and runworker processes."""

from __future__ import annotations

import signal
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.urls import reverse
from django.utils import timezone
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.testing import InMemoryOrchestrationBackend

from cleanups import control
from cleanups.control import Outcome
from cleanups.durable import orchestrations
from cleanups.durable.reconciler import Reconciler
from cleanups.durable.registration import register
from cleanups.engine.config import engine_config
from cleanups.engine.connection import build_worker, get_client
from cleanups.formatting import seconds_label
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import worker as this_worker
from cleanups.runs.execute import execute_iteration
from cleanups.runs.worker import worker_id
from tests.conftest import CountingEngine, is_live, runs_of, wait_for_clock, wait_until, waiting
from tests.testapp import cleanup_tasks as testapp_tasks
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
READY = "Press Ctrl+C to stop"


def run_of(schedule, **lookups):
    return CleanupRun.objects.filter(schedule=schedule, **lookups).order_by("iteration").first()


# 1. Never early ------------------------------------------------------------------------------


@pytest.fixture(params=["embedded engine", "the SDK's own backend"])
def any_engine(request, engine_port):
    """Our engine, and the SDK's unpatched one, whose stale timers fire into new executions:
    on it, only the orchestration's own defence keeps runs from starting early."""
    kind = InMemoryOrchestrationBackend if "SDK" in request.param else CountingEngine
    yield from serving(kind(port=engine_port))


def serving(backend):
    """The engine started, with a real worker of every orchestrator and activity on it."""
    backend.start()
    dt_worker = register(build_worker(engine_config()))
    dt_worker.start()
    yield backend
    dt_worker.stop()
    backend.stop(grace=0.5)


def test_a_restart_never_brings_the_next_run_forward(any_engine, make_schedule):
    # The case, shortened: fixed delay, restarted soon after its first run. The first
    # execution's timer (due first.finished_at + 4 s) must not start the run after the restart.
    durable_client = get_client()
    interval = timedelta(seconds=4)
    schedule = make_schedule(interval=interval)
    control.start_schedule(schedule)
    first = wait_until(lambda: run_of(schedule, status="succeeded"))
    wait_until(lambda: waiting(durable_client, schedule))

    assert control.restart_schedule(schedule).outcome is Outcome.STARTED
    restarted = wait_until(lambda: run_of(schedule, trigger="restart", status="succeeded"))
    following = wait_until(
        lambda: run_of(schedule, iteration=restarted.iteration + 1), timeout=first_timeout(interval)
    )

    assert restarted.iteration == first.iteration + 1
    assert following.started_at >= restarted.finished_at + interval
    assert following.planned_at <= following.started_at
    assert CleanupRun.objects.filter(schedule=schedule).count() == 3


def first_timeout(interval: timedelta) -> float:
    return interval.total_seconds() * 3 + 10


def test_each_run_records_its_plan_and_the_run_page_shows_its_lateness(
    worker, durable_client, make_schedule, admin_client
):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: len(runs_of(schedule)) >= 3)
    assert control.run_now(schedule, "alice").outcome is Outcome.RUN_REQUESTED
    manual = wait_until(lambda: run_of(schedule, trigger="manual"))

    scheduled = [run for run in runs_of(schedule) if run.trigger == "scheduled"]
    assert len(scheduled) >= 3
    for run in scheduled:
        assert run.planned_at is not None
        assert run.planned_at <= run.started_at  # never early
    grid = [(run.planned_at - scheduled[0].planned_at).total_seconds() for run in scheduled]
    assert grid[:3] == [0.0, 1.0, 2.0]  # on the fixed-rate grid
    assert manual.planned_at is None

    run = scheduled[1]
    html = admin_client.get(reverse("cleanups:run_detail", args=[run.pk])).content.decode()
    late = seconds_label((run.started_at - run.planned_at).total_seconds())
    assert f"planned {run.planned_at:%Y-%m-%d %H:%M:%S}, started {run.started_at:%H:%M:%S}." in html
    assert f"(+{late})" in html


def test_a_run_now_that_comes_in_with_the_timer_is_not_lost(worker, durable_client, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=3))  # longer than the hand-over lead
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, status="succeeded") and waiting(durable_client, schedule))
    # Suspended, the orchestration holds what arrives: its timer firing, then the request. On
    # resuming it sees both at once, and the timer wins the race.
    durable_client.suspend_orchestration(schedule.instance_id)
    schedule.refresh_from_db()
    wait_for_clock(schedule.next_run_at + timedelta(seconds=0.5))
    assert control.run_now(schedule, "bob").outcome is Outcome.RUN_REQUESTED
    durable_client.resume_orchestration(schedule.instance_id)

    manual = wait_until(lambda: run_of(schedule, trigger="manual"))
    assert manual.triggered_by == "bob"
    assert manual.planned_at is None


# 2. A start is a start -----------------------------------------------------------------------


class ReconcilerFirstEngine(CountingEngine):
    """The embedded engine, where a reconciler pass reaches the engine between an operator's
    start writing its desired state and its own StartInstance call: the issue's race, made
    to happen every time."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.reconciler = Reconciler(worker=worker_id(), interval=0.5)
        self.raced = False
        self.reconciler_was_first = False

    def StartInstance(self, request, context):
        if not self.raced:  # the operator's call: the reconciler's own comes in meanwhile
            self.raced = True
            try:
                self.reconciler.reconcile()
            finally:
                connections.close_all()  # a gRPC server thread: its connection goes back
            self.reconciler_was_first = request.instanceId in self._instances
        return super().StartInstance(request, context)


@pytest.fixture
def racing_engine(engine_port):
    yield from serving(ReconcilerFirstEngine(engine_port))


def test_a_start_that_the_reconciler_reaches_the_engine_with_first_is_still_a_fresh_start(
    racing_engine, make_schedule
):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(minutes=5))
    # It ran before (iterations 1-6), and its old plan is far off: a non-fresh start would
    # keep the old grid and wait for that plan.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        current_iteration=6, next_run_at="2999-01-01T00:00:00Z", anchor_at="2020-01-01T00:00:00Z"
    )
    schedule.refresh_from_db()

    outcome = control.start_schedule(schedule)

    assert racing_engine.reconciler_was_first
    assert outcome.outcome is Outcome.STARTED, outcome.message
    first = wait_until(lambda: run_of(schedule, status="succeeded"))
    schedule.refresh_from_db()
    assert first.iteration == 7
    assert schedule.start_iteration == 7
    assert first.planned_at == schedule.anchor_at  # the new grid starts at the start
    assert first.started_at - schedule.anchor_at < timedelta(seconds=5)
    assert is_live(get_client(), schedule)


def test_starts_racing_a_reconciler_always_apply_the_operators_start(
    worker, durable_client, make_schedule
):
    reconciler = Reconciler(worker=worker_id(), interval=0.05)  # the in-process worker's
    stop = threading.Event()

    def reconcile_all_the_time():
        while not stop.is_set():
            reconciler.tick()

    schedules = [make_schedule(interval=timedelta(minutes=5)) for _ in range(20)]
    thread = threading.Thread(target=reconcile_all_the_time)
    thread.start()
    try:
        outcomes = [control.start_schedule(schedule) for schedule in schedules]
    finally:
        stop.set()
        thread.join()

    assert [o.outcome for o in outcomes] == [Outcome.STARTED] * 20
    for schedule in schedules:
        first = wait_until(lambda schedule=schedule: run_of(schedule, status="succeeded"))
        schedule.refresh_from_db()
        assert (first.iteration, schedule.start_iteration) == (1, 1)
        assert first.planned_at == schedule.anchor_at


def test_an_orchestration_of_an_older_generation_never_runs(make_schedule):
    schedule = make_schedule()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running", generation=3)

    result = execute_iteration(schedule.pk, 1, generation=2)

    assert result["continue"] is False
    assert result["reason"] == "superseded by a newer start"
    assert runs_of(schedule) == []


def test_a_restart_while_a_run_executes_waits_for_it(worker, make_schedule):
    schedule = make_schedule(params={"seconds": 1.5}, interval=timedelta(minutes=5))
    control.start_schedule(schedule)
    old = wait_until(lambda: run_of(schedule, status="running"))

    assert control.restart_schedule(schedule).outcome is Outcome.STARTED
    new = wait_until(lambda: run_of(schedule, trigger="restart", status="succeeded"))

    old.refresh_from_db()
    assert old.status == "succeeded"
    assert new.started_at >= old.finished_at  # one run of a schedule at a time


def test_starting_a_paused_schedule_resumes_it(worker, durable_client, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, status="succeeded"))
    assert control.pause_schedule(schedule).outcome is Outcome.PAUSED

    assert control.start_schedule(schedule).outcome is Outcome.RESUMED
    count = len(runs_of(schedule))
    wait_until(lambda: len(runs_of(schedule)) > count)
    assert durable_client.get_orchestration_state(schedule.instance_id).runtime_status.name != (
        "SUSPENDED"
    )


def suspend_by_hand(client, schedule) -> None:
    """Suspend the orchestration behind the database's back, as an engine that loses a resume
    leaves it, and wait until the engine says so."""
    client.suspend_orchestration(schedule.instance_id)
    wait_until(
        lambda: (
            client.get_orchestration_state(schedule.instance_id).runtime_status.name == "SUSPENDED"
        )
    )


def test_the_reconciler_resumes_a_running_schedule_the_engine_left_suspended(
    worker, durable_client, make_schedule
):
    # The SDK's in-memory engine drops a resume that arrives during a step: paused, then
    # resumed at once, the orchestration stayed suspended forever.
    schedule = make_schedule(interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, status="succeeded"))
    suspend_by_hand(durable_client, schedule)
    count = len(runs_of(schedule))

    Reconciler(worker=worker_id(), interval=0.5).tick()

    wait_until(lambda: len(runs_of(schedule)) > count)


# 3. Nothing stuck ----------------------------------------------------------------------------


def test_a_run_past_its_limit_is_timed_out_keeps_its_counts_and_the_schedule_goes_on(
    worker, make_schedule, settings
):
    settings.CLEANUP_PART_SECONDS = 0.3  # long runs in short parts: the limit spans them
    Event.objects.bulk_create(Event(created_at="2020-01-01T00:00:00Z") for _ in range(200))
    schedule = make_schedule(
        task="testapp_slow_deleter",
        params={"pause": 0.02},
        interval=timedelta(seconds=1),
        max_run_seconds=1,
    )
    control.start_schedule(schedule)

    timed_out = wait_until(lambda: run_of(schedule, status="timed_out"))
    assert 0 < timed_out.items_deleted < 200  # what it did delete is on the record
    assert "longer than its limit of 1 s" in timed_out.error
    # Timed out at its limit counted from its planned start (its time limit's timer never fires
    # early), not before: its record began a moment after that start, so its own duration may
    # be a little under the limit.
    assert timed_out.planned_at is not None
    assert timed_out.finished_at >= timed_out.planned_at + timedelta(seconds=1)
    assert timed_out.duration < timedelta(seconds=5)
    wait_until(lambda: run_of(schedule, iteration=timed_out.iteration + 1))  # goes on


def test_the_late_result_of_an_abandoned_run_changes_nothing(worker, make_schedule):
    schedule = make_schedule(
        task="sample", params={"seconds": 2}, interval=timedelta(seconds=30), max_run_seconds=1
    )
    control.start_schedule(schedule)

    timed_out = wait_until(lambda: run_of(schedule, status="timed_out"))
    # The abandoned call sleeps on, and finishes 2 s after it began.
    wait_for_clock(timed_out.started_at + timedelta(seconds=3))
    wait_until(lambda: not CleanupRun.objects.filter(schedule=schedule, status="running"))
    timed_out.refresh_from_db()
    assert timed_out.status == "timed_out"
    assert timed_out.message == ""
    schedule.refresh_from_db()
    assert schedule.next_run_at is not None


def test_no_limit_when_the_site_default_is_zero(worker, make_schedule, settings):
    settings.CLEANUP_MAX_RUN_SECONDS = 0
    schedule = make_schedule(params={"seconds": 0.2}, max_iterations=1)
    control.start_schedule(schedule)
    run = wait_until(lambda: run_of(schedule, status="succeeded"))
    assert run.duration >= timedelta(seconds=0.2)


def kill_a_worker_mid_run(engine_port, make_schedule, start_worker_process):
    """Two runworker processes reach the engine hosted here, as they would the emulator or
    Azure: one is killed while it runs the schedule's first run; the other starts after."""
    env = {
        "ENDPOINT": f"http://127.0.0.1:{engine_port}",
        "STUCK_RUN_GRACE_SECONDS": "1",
        "RECONCILE_INTERVAL": "0.3",
    }
    doomed = start_worker_process(env=env)
    doomed.wait_for_output(READY)
    schedule = make_schedule(params={"seconds": 30}, interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, status="running"))
    doomed.stop(signal.SIGKILL)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(params={"seconds": 0})
    start_worker_process(env=env).wait_for_output(READY)
    return schedule


@pytest.mark.subprocess
def test_a_dead_workers_run_is_delivered_again_to_another(
    engine, engine_port, durable_client, make_schedule, start_worker_process
):
    schedule = kill_a_worker_mid_run(engine_port, make_schedule, start_worker_process)

    wait_until(lambda: run_of(schedule, iteration=2, status="succeeded"), timeout=30)
    first = run_of(schedule, iteration=1)
    assert (first.status, first.attempts) == ("succeeded", 2)  # the same record, run again
    assert is_live(durable_client, schedule)


class EngineThatLosesWork(CountingEngine):
    """An engine that, like the SDK's own, never delivers a dead worker's work again."""

    def _take_back(self, held):
        pass


@pytest.mark.subprocess
def test_the_watchdog_restarts_a_schedule_whose_run_the_engine_lost(
    engine_port, make_schedule, start_worker_process
):
    yield_engine = serving_without_worker(EngineThatLosesWork(engine_port))
    next(yield_engine)
    try:
        schedule = kill_a_worker_mid_run(engine_port, make_schedule, start_worker_process)
        after = wait_until(lambda: run_of(schedule, iteration__gt=1, status="succeeded"), 30)
    finally:
        next(yield_engine, None)

    assert run_of(schedule, iteration=1).status == "interrupted"
    # The count goes on: what the restart found overdue is a catch-up, or a skipped row and one.
    between = CleanupRun.objects.filter(
        schedule=schedule, iteration__range=(2, after.iteration - 1)
    )
    assert {run.status for run in between} <= {"skipped"}
    assert after.iteration == 2 + between.count()
    schedule.refresh_from_db()
    assert "Restarted: run 1 was interrupted" in schedule.status_reason


def serving_without_worker(backend):
    backend.start()
    yield backend
    backend.stop(grace=0.5)


# 4. One iteration, one execution at a time ---------------------------------------------------


def test_a_second_delivery_waits_for_the_first_and_does_not_run_it_again(make_schedule):
    testapp_tasks.EXECUTING.update(now=0, most=0)
    schedule = make_schedule(task="testapp_counts_overlap", params={"seconds": 1})
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    results = []

    def deliver():
        try:
            results.append(execute_iteration(schedule.pk, 1))
        finally:
            connections.close_all()  # as the activity does: the thread's connection goes back

    first = threading.Thread(target=deliver)
    first.start()
    wait_until(lambda: run_of(schedule, status="running"))
    second = threading.Thread(target=deliver)
    second.start()
    first.join()
    second.join()

    assert testapp_tasks.EXECUTING["most"] == 1
    (run,) = runs_of(schedule)
    assert run.attempts == 1 and run.status == "succeeded"
    assert results[0] == results[1]


@pytest.mark.parametrize("late", [False, True], ids=["on time", "late: a catch-up"])
def test_deliveries_that_arrive_together_execute_an_iteration_once(make_schedule, late):
    """Two deliveries of each iteration released at the same instant, as a redelivery racing the
    first delivery does: whoever claims the record runs it, the other returns its outcome."""
    testapp_tasks.EXECUTING.update(now=0, most=0)
    schedule = make_schedule(
        task="testapp_counts_overlap", params={"seconds": 0.2}, interval=timedelta(seconds=1)
    )
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    for iteration in range(2, 12, 2):
        planned = timezone.now() - timedelta(seconds=5 if late else 0)
        gate = threading.Barrier(2)
        results = []

        def deliver(iteration=iteration, planned=planned, gate=gate, results=results):
            gate.wait()
            try:
                results.append(
                    execute_iteration(schedule.pk, iteration, planned_at=planned.isoformat())
                )
            finally:
                connections.close_all()  # as the activity does: the thread's connection goes back

        pair = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
        assert results[0]["iteration"] == results[1]["iteration"]

    assert testapp_tasks.EXECUTING["most"] == 1
    executed = CleanupRun.objects.filter(schedule=schedule).exclude(status="skipped")
    assert executed.count() == 5
    assert {run.attempts for run in executed} == {1}
    assert {run.trigger for run in executed} == {"catch_up" if late else "scheduled"}


def test_a_catch_up_that_comes_late_records_the_slots_that_went_by(make_schedule):
    """A catch-up is planned for at once; if the engine delivers it seconds later (it was down,
    or frozen), the slots of those seconds are a skipped row, not a silent gap."""
    schedule = make_schedule(
        interval=timedelta(seconds=1), cadence="fixed_rate", missed_runs="run_once"
    )
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    planned = timezone.now() - timedelta(seconds=5)

    result = execute_iteration(schedule.pk, 3, trigger="catch_up", planned_at=planned.isoformat())

    skipped, ran = runs_of(schedule)
    assert (skipped.iteration, skipped.status) == (3, "skipped")
    assert skipped.details["slots"] >= 4 and skipped.started_at == planned
    assert (ran.iteration, ran.status, ran.trigger) == (4, "succeeded", "catch_up")
    assert result["iteration"] == 4


def test_a_catch_up_within_the_grace_runs_as_planned(make_schedule):
    schedule = make_schedule(
        interval=timedelta(seconds=1), cadence="fixed_rate", missed_runs="run_once"
    )
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")

    execute_iteration(schedule.pk, 3, trigger="catch_up", planned_at=timezone.now().isoformat())

    (ran,) = runs_of(schedule)
    assert (ran.iteration, ran.status, ran.trigger) == (3, "succeeded", "catch_up")


def test_a_run_never_overwrites_a_slot_recorded_as_missed(make_schedule):
    """A restart's first run waited for the old orchestration's run, whose planning then
    recorded the next slot as missed: the record stays, and the run takes the next iteration."""
    schedule = make_schedule(interval=timedelta(seconds=1))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    now = timezone.now()
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=3,
        task="sample",
        status="skipped",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        reason="overran",
        details={"slots": 1},
    )

    result = execute_iteration(schedule.pk, 3, trigger="restart")

    skipped, ran = runs_of(schedule)
    assert (skipped.iteration, skipped.status, skipped.details) == (3, "skipped", {"slots": 1})
    assert (ran.iteration, ran.status, ran.trigger, ran.attempts) == (4, "succeeded", "restart", 1)
    assert result["iteration"] == 4 and result["next_iteration"] == 5


def overdue(make_schedule, seconds: float = 5):
    """Running, its next run planned ``seconds`` ago and nothing run for it: its worker, or the
    engine, was down."""
    schedule = make_schedule(interval=timedelta(seconds=1))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state="running",
        current_iteration=2,
        next_run_at=timezone.now() - timedelta(seconds=seconds),
    )
    schedule.refresh_from_db()
    return schedule


@pytest.mark.parametrize("action", ["pause", "terminate", "restart"])
def test_an_action_on_an_overdue_schedule_records_the_slots_it_missed(
    worker, durable_client, make_schedule, action
):
    schedule = overdue(make_schedule)
    planned = schedule.next_run_at

    {
        "pause": control.pause_schedule,
        "terminate": control.terminate_schedule,
        "restart": control.restart_schedule,
    }[action](schedule)

    skipped = run_of(schedule, iteration=3)
    assert (skipped.status, skipped.reason, skipped.started_at) == (
        "skipped",
        "worker down",
        planned,
    )
    assert skipped.details["slots"] >= 5
    if action == "restart":  # the fresh orchestration's first run comes after it
        ran = wait_until(lambda: run_of(schedule, iteration=4, status="succeeded"))
        assert ran.trigger == "restart"


def test_an_action_on_a_schedule_whose_run_executes_records_nothing(make_schedule):
    schedule = overdue(make_schedule)
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=3,
        task="sample",
        status="running",
        planned_at=schedule.next_run_at,
        started_at=timezone.now(),
    )

    control.terminate_schedule(schedule)

    assert [(r.iteration, r.status) for r in runs_of(schedule)] == [(3, "running")]


def test_an_action_within_the_grace_records_nothing(engine, make_schedule):
    schedule = overdue(make_schedule, seconds=0.5)

    control.terminate_schedule(schedule)

    assert runs_of(schedule) == []


def test_a_pause_between_two_attempts_leaves_no_run_running_and_resume_goes_on(
    worker, durable_client, make_schedule, monkeypatch
):
    """Paused right after a failed attempt: the run waits for nothing while paused (not
    "running" for as long as the pause lasts); resumed, its retry reuses the record."""
    monkeypatch.setattr(orchestrations, "RETRY_FIRST_SECONDS", 3.0)  # the pause comes first
    schedule = make_schedule(params={"seconds": "x"}, max_retries=1, interval=timedelta(hours=1))
    control.start_schedule(schedule)
    waiting = wait_until(lambda: run_of(schedule, iteration=1, finished_at__isnull=False))
    assert waiting.status == "running"  # its first attempt failed; the retry comes in 1 s

    control.pause_schedule(schedule)

    paused = run_of(schedule, iteration=1)
    assert paused.status == "interrupted" and "goes on when resumed" in paused.error
    control.resume_schedule(schedule)
    done = wait_until(lambda: run_of(schedule, iteration=1, status="failed"))
    assert done.attempts == 2


@pytest.mark.parametrize(
    ("worker_started", "reason"),
    [(timedelta(hours=-1), "late"), (timedelta(0), "worker down")],
    ids=["up before the slots: busy", "started after them: down"],
)
def test_slots_missed_say_whether_the_worker_was_busy_or_down(
    make_schedule, monkeypatch, worker_started, reason
):
    """A worker that was up when the slots were due and ran them late was too busy: the run
    history says so, apart from slots missed while no worker was up."""
    monkeypatch.setattr(this_worker, "PROCESS_STARTED_AT", timezone.now() + worker_started)
    schedule = make_schedule(interval=timedelta(seconds=1), missed_runs="run_once")
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    planned = timezone.now() - timedelta(seconds=5)

    execute_iteration(schedule.pk, 3, planned_at=planned.isoformat())

    skipped = run_of(schedule, iteration=3)
    assert (skipped.status, skipped.reason) == ("skipped", reason)
    assert run_of(schedule, iteration=4).trigger == "catch_up"


@pytest.mark.parametrize("action", ["terminate", "restart"])
def test_ending_an_orchestration_between_two_attempts_leaves_no_run_running(
    worker, durable_client, make_schedule, monkeypatch, action
):
    """The retry would have come from the orchestration that terminate or restart ends."""
    monkeypatch.setattr(orchestrations, "RETRY_FIRST_SECONDS", 3.0)  # the action comes first
    schedule = make_schedule(params={"seconds": "x"}, max_retries=1, interval=timedelta(hours=1))
    control.start_schedule(schedule)
    wait_until(lambda: run_of(schedule, iteration=1, finished_at__isnull=False))

    {"terminate": control.terminate_schedule, "restart": control.restart_schedule}[action](schedule)

    ended = run_of(schedule, iteration=1)
    assert ended.status == "interrupted" and "was ended" in ended.error


class EngineThatLosesResumes(CountingEngine):
    """An engine that answers a resume and never applies it."""

    def ResumeInstance(self, request, context):
        return pb.ResumeResponse()


def test_a_running_schedule_its_engine_keeps_suspended_is_restarted(
    engine_port, make_schedule, settings
):
    settings.STUCK_RUN_GRACE_SECONDS = 0.5
    engine = serving(EngineThatLosesResumes(engine_port))  # with a worker
    next(engine)
    try:
        client = get_client()
        schedule = make_schedule(interval=timedelta(hours=1))
        control.start_schedule(schedule)
        wait_until(lambda: run_of(schedule, status="succeeded"))
        suspend_by_hand(client, schedule)
        reconciler = Reconciler(worker=worker_id(), interval=0.5)

        reconciler.tick()  # resumes: lost
        wait_for_clock(timezone.now() + timedelta(seconds=0.6))
        reconciler.tick()  # still suspended after the grace: restarted

        wait_until(
            lambda: (
                client.get_orchestration_state(schedule.instance_id).runtime_status.name
                in ("RUNNING", "PENDING")
            )
        )
        schedule.refresh_from_db()
        assert "kept it suspended" in schedule.status_reason
    finally:
        next(engine, None)
