"""The reconciler: the database's desired state wins, dead workers' runs are interrupted."""

from __future__ import annotations

import threading
import time
from datetime import UTC, timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from durabletask import client as dt_client

from cleanups import control
from cleanups.contract import ORCHESTRATION_NAME
from cleanups.durable.reconciler import Reconciler
from cleanups.instances import fetch_runtime_states
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from tests.conftest import is_live, runs_of, timer_created, wait_for_clock, wait_until, waiting

pytestmark = pytest.mark.django_db(transaction=True)
Status = dt_client.OrchestrationStatus


@pytest.fixture
def reconciler():
    return Reconciler(worker="test-host:1:me", interval=0.5)


def _want_running(schedule, **fields):
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running", **fields)
    schedule.refresh_from_db()


def test_a_running_schedule_without_an_orchestration_is_started(
    worker, durable_client, make_schedule, reconciler
):
    schedule = make_schedule()
    _want_running(schedule)

    reconciler.tick()

    wait_until(lambda: len(runs_of(schedule)) >= 2)
    assert is_live(durable_client, schedule)


def test_a_restart_waits_only_the_time_left_and_continues_the_count(
    worker, durable_client, make_schedule, reconciler
):
    schedule = make_schedule(interval=timedelta(seconds=30))
    now = timezone.now()
    CleanupRun.objects.create(
        schedule=schedule, iteration=6, task="sample", status="succeeded", started_at=now
    )
    due = now + timedelta(seconds=2)
    _want_running(schedule, current_iteration=6, next_run_at=due)

    reconciler.tick()

    # Not yet: the restarted loop sits on a timer for the time left, not for a whole interval
    # (it hands the run over that much ahead of its time).
    timer = wait_until(lambda: timer_created(durable_client, schedule.instance_id))
    assert timer.fire_at == due - timedelta(seconds=settings.CLEANUP_DISPATCH_LEAD_SECONDS)
    assert len(runs_of(schedule)) == 1
    wait_until(lambda: len(runs_of(schedule)) == 2, timeout=10)
    new_run = runs_of(schedule)[-1]
    assert new_run.iteration == 7
    assert new_run.started_at >= now + timedelta(seconds=2)


def test_a_failed_orchestration_is_started_again(worker, durable_client, make_schedule, reconciler):
    schedule = make_schedule()
    _want_running(schedule)
    # An input the orchestrator cannot handle makes the orchestration itself fail.
    durable_client.schedule_new_orchestration(
        ORCHESTRATION_NAME, input={"schedule_id": schedule.pk}, instance_id=schedule.instance_id
    )
    failed = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=10)
    assert failed.runtime_status == Status.FAILED

    reconciler.tick()

    wait_until(lambda: len(runs_of(schedule)) >= 1)
    assert is_live(durable_client, schedule)


def test_a_stopped_schedule_with_a_live_orchestration_is_terminated(
    worker, durable_client, make_schedule, reconciler
):
    schedule = make_schedule(interval=timedelta(seconds=30))
    control.start_schedule(schedule)
    wait_until(lambda: runs_of(schedule))
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="stopped")

    reconciler.tick()

    wait_until(
        lambda: (
            durable_client.get_orchestration_state(schedule.instance_id).runtime_status
            == Status.TERMINATED
        )
    )


def test_runs_of_dead_workers_are_interrupted_and_live_ones_are_left(make_schedule, reconciler):
    schedule = make_schedule()
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker="other-host:5:alive", hostname="other-host", pid=5, started_at=now, last_seen=now
    )
    WorkerHeartbeat.objects.create(
        worker="other-host:6:stale",
        hostname="other-host",
        pid=6,
        started_at=now,
        last_seen=now - timedelta(minutes=5),
    )
    WorkerHeartbeat.objects.create(
        worker=f"{reconciler.hostname}:999999:gone",
        hostname=reconciler.hostname,
        pid=999_999,  # no such process on this machine
        started_at=now,
        last_seen=now,
    )
    workers = [
        "test-host:1:me",
        "other-host:5:alive",
        "other-host:6:stale",
        f"{reconciler.hostname}:999999:gone",
        "never-beat:7:x",
    ]
    for iteration, worker_name in enumerate(workers, start=1):
        CleanupRun.objects.create(
            schedule=schedule,
            iteration=iteration,
            task="sample",
            started_at=now,
            worker=worker_name,
        )

    assert reconciler.interrupt_dead_runs() == 3

    statuses = {run.worker: run.status for run in runs_of(schedule)}
    assert statuses == {
        "test-host:1:me": "running",
        "other-host:5:alive": "running",
        "other-host:6:stale": "interrupted",
        f"{reconciler.hostname}:999999:gone": "interrupted",
        "never-beat:7:x": "interrupted",
    }
    interrupted = CleanupRun.objects.filter(status="interrupted").first()
    assert interrupted.finished_at is not None
    assert "stopped before it finished" in interrupted.error


def test_an_unreachable_engine_is_survived(engine_port, make_schedule, reconciler, caplog):
    schedule = make_schedule()
    _want_running(schedule)

    reconciler.tick()
    reconciler.tick()

    # Said once, not on every pass.
    assert sum("engine unreachable" in r.getMessage() for r in caplog.records) == 1
    assert WorkerHeartbeat.objects.filter(worker="test-host:1:me").exists()


@pytest.mark.parametrize("its_worker", ["alive", "dead"])
def test_a_restart_waits_for_the_plan_of_a_run_just_finished_only_while_its_worker_lives(
    worker, durable_client, make_schedule, reconciler, its_worker
):
    """A run records its outcome, then plans the next: a worker that died in between never
    writes the plan, and its schedule must not wait for it."""
    schedule = make_schedule(interval=timedelta(seconds=30))
    now = timezone.now()
    pid = 5 if its_worker == "alive" else 999_999  # no such process on this machine
    hostname = "other-host" if its_worker == "alive" else reconciler.hostname
    WorkerHeartbeat.objects.create(
        worker=f"{hostname}:{pid}:x", hostname=hostname, pid=pid, started_at=now, last_seen=now
    )
    planned = now - timedelta(seconds=1)
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=4,
        task="sample",
        status="succeeded",
        planned_at=planned,
        started_at=planned,
        finished_at=now,
        worker=f"{hostname}:{pid}:x",
    )
    _want_running(schedule, current_iteration=4, next_run_at=planned)  # its own plan still

    reconciler.tick()

    if its_worker == "alive":
        assert not is_live(durable_client, schedule)  # the next pass looks again
    else:
        assert is_live(durable_client, schedule)


def test_a_pass_ends_at_once_when_the_worker_is_stopping(engine, durable_client, make_schedule):
    """SIGTERM sets the worker's stop event: a pass in progress starts nothing more, so a
    worker with thousands of schedules to recover still stops promptly."""
    schedules = [make_schedule() for _ in range(3)]
    for schedule in schedules:
        _want_running(schedule)
    stopping = threading.Event()
    stopping.set()

    Reconciler(worker="test-host:1:me", interval=0.5, stopping=stopping).reconcile()

    assert not any(is_live(durable_client, schedule) for schedule in schedules)
    Reconciler(worker="test-host:1:me", interval=0.5).reconcile()
    assert all(is_live(durable_client, schedule) for schedule in schedules)


def test_the_watchdog_trusts_only_the_stall_it_saw_itself(
    worker, durable_client, make_schedule, settings
):
    """An instance the engine has not touched since before the grace, on the first pass that
    sees it (the engine was frozen, or this worker just started), is not restarted yet."""
    grace = timedelta(seconds=1)
    settings.STUCK_RUN_GRACE_SECONDS = grace.total_seconds()
    schedule = make_schedule(interval=timedelta(seconds=60))
    control.start_schedule(schedule)
    wait_until(lambda: waiting(durable_client, schedule))
    # The database says its run is overdue; the engine has it waiting, untouched.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        next_run_at=timezone.now() - timedelta(seconds=5)
    )
    touched = durable_client.get_orchestration_state(schedule.instance_id).last_updated_at
    wait_for_clock(touched.replace(tzinfo=UTC) + grace + timedelta(seconds=0.2))
    reconciler = Reconciler(worker="test-host:1:me", interval=0.5)

    first_sight = time.monotonic()
    assert reconciler.restart_stuck(fetch_runtime_states()) == 0  # first sight
    # Then, pass after pass, it restarts it once it has seen it unchanged for the grace (a
    # loaded machine may still be finishing the first run's bookkeeping at the first pass).
    wait_until(lambda: reconciler.restart_stuck(fetch_runtime_states()) == 1, timeout=15)
    assert time.monotonic() - first_sight >= grace.total_seconds()
    schedule.refresh_from_db()
    assert "made no progress" in schedule.status_reason
    assert is_live(durable_client, schedule)


def test_a_paused_schedule_whose_orchestration_was_lost_leaves_no_run_waiting(
    engine, make_schedule, reconciler
):
    """Its run failed once and waited for the retry the lost orchestration would have sent."""
    schedule = make_schedule()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="paused")
    now = timezone.now()
    beat = {"hostname": "other-host", "pid": 5, "started_at": now, "last_seen": now}
    WorkerHeartbeat.objects.create(worker="other-host:5:alive", **beat)
    for iteration, finished_at in [(1, now), (2, None)]:  # waiting for a retry; executing
        CleanupRun.objects.create(
            schedule=schedule,
            iteration=iteration,
            task="sample",
            status="running",
            started_at=now,
            finished_at=finished_at,
            worker="other-host:5:alive",
        )

    reconciler.reconcile()

    waiting, executing = runs_of(schedule)
    assert waiting.status == "interrupted" and "waited for a retry" in waiting.error
    assert executing.status == "running"


def test_the_watchdog_restarts_a_few_a_pass_and_never_one_an_operator_acted_on_meanwhile(
    worker, durable_client, make_schedule, settings, monkeypatch, caplog
):
    """Hundreds looking stuck at once is more often a backlog than lost steps: a pass restarts
    a few, and each only if nothing changed since the pass read it (a pass over many takes a
    while, and an operator's pause in between wins)."""
    from cleanups.durable import watchdog

    monkeypatch.setattr(watchdog, "STUCK_RESTARTS_PER_PASS", 1)
    grace = timedelta(seconds=1)
    settings.STUCK_RUN_GRACE_SECONDS = grace.total_seconds()
    schedules = [make_schedule(interval=timedelta(seconds=60)) for _ in range(4)]
    for schedule in schedules:
        control.start_schedule(schedule)
    for schedule in schedules:
        wait_until(lambda s=schedule: waiting(durable_client, s))
    CleanupSchedule.objects.update(next_run_at=timezone.now() - timedelta(seconds=5))
    reconciler = Reconciler(worker="test-host:1:me", interval=0.5)

    def all_untouched_past_the_grace() -> bool:
        states = fetch_runtime_states()
        cutoff = timezone.now() - grace
        return len(states) == 4 and all(
            state.last_updated_at.replace(tzinfo=UTC) < cutoff for state in states.values()
        )

    # One pass sees all four at once for the first time; a pass a grace later finds all four
    # stuck, restarts one and holds the other three back.
    wait_until(all_untouched_past_the_grace)
    assert reconciler.restart_stuck(fetch_runtime_states()) == 0  # first sight
    wait_for_clock(timezone.now() + grace)
    assert reconciler.restart_stuck(fetch_runtime_states()) == 1
    assert "3 more schedules look stuck; restarting at most 1 a pass" in caplog.text
    restarted = [s for s in schedules if "made no progress" in _reason(s)]
    assert len(restarted) == 1

    # An operator pauses one of the others after the watchdog read its state: not restarted.
    others = [s for s in schedules if s not in restarted]
    states = fetch_runtime_states()
    paused = others[0]
    paused.refresh_from_db()
    assert control.pause_schedule(paused).outcome is control.Outcome.PAUSED
    assert not watchdog.still_due(paused, states[paused.instance_id])
    other = CleanupSchedule.objects.get(pk=others[1].pk)
    assert watchdog.still_due(other, states[other.instance_id])


def _reason(schedule: CleanupSchedule) -> str:
    schedule.refresh_from_db()
    return schedule.status_reason
