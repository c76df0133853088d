"""The cleanup activity: run records, idempotent redelivery, stops, failures."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from cleanups.durable.activities import run_cleanup
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import cleanup_task
from cleanups.runs.execute import execute_iteration
from tests.conftest import runs_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(make_schedule):
    def make(**fields):
        schedule = make_schedule(**fields)
        CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
        schedule.refresh_from_db()
        return schedule

    return make


@pytest.mark.django_db(transaction=True)  # the activity closes its thread's connection
def test_a_run_is_recorded_with_status_counts_and_duration(running):
    schedule = running(task="sample", params={"seconds": 0.05}, interval=timedelta(seconds=30))

    result = run_cleanup(None, {"schedule_id": schedule.pk, "iteration": 1})

    (run,) = runs_of(schedule)
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert run.iteration == 1
    assert run.task == "sample"
    assert run.duration >= timedelta(seconds=0.05)
    assert run.finished_at >= run.started_at
    assert run.items_deleted == 0
    assert run.message == "Sample cleanup waited 0.05 s."
    assert run.worker
    schedule.refresh_from_db()
    assert schedule.current_iteration == 1
    assert result["continue"] is True
    assert result["next_run_at"] == schedule.next_run_at.isoformat()
    assert timedelta(seconds=29) < schedule.next_run_at - run.finished_at <= timedelta(seconds=30)


def test_a_redelivered_finished_iteration_is_not_run_again(running):
    # The engine delivers at least once: a delivery whose result was lost comes again.
    schedule = running()

    first = execute_iteration(schedule.pk, 4)
    again = execute_iteration(schedule.pk, 4)

    (run,) = runs_of(schedule)
    assert run.iteration == 4
    assert run.attempts == 1
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert again == first  # the same plan: the same next run


def test_a_redelivered_interrupted_iteration_runs_again_in_its_own_record(running):
    schedule = running()
    execute_iteration(schedule.pk, 4)
    CleanupRun.objects.filter(schedule=schedule).update(status="interrupted")

    execute_iteration(schedule.pk, 4)

    (run,) = runs_of(schedule)
    assert run.attempts == 2
    assert run.status == CleanupRun.Status.SUCCEEDED


@cleanup_task("test_explodes", "A task that always raises (registered by the tests).")
def explode(params):
    raise RuntimeError("disk on fire")


def test_a_task_that_raises_is_a_failed_run_and_the_loop_goes_on(running):
    schedule = running(task="test_explodes", params={})

    result = execute_iteration(schedule.pk, 1)

    (run,) = runs_of(schedule)
    assert run.status == CleanupRun.Status.FAILED
    assert run.error == "RuntimeError: disk on fire"
    assert 'raise RuntimeError("disk on fire")' in run.traceback
    assert result["continue"] is True
    assert result["status"] == "failed"


def test_a_task_no_longer_registered_fails_the_run_with_a_clear_message(running):
    schedule = running()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(task="removed_task")

    result = execute_iteration(schedule.pk, 1)

    (run,) = runs_of(schedule)
    assert run.status == CleanupRun.Status.FAILED
    assert "No cleanup task named 'removed_task' is registered" in run.error
    assert result["continue"] is True


def test_a_stopped_or_deleted_schedule_ends_the_loop_without_a_run(running):
    schedule = running()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="stopped")
    assert execute_iteration(schedule.pk, 1)["continue"] is False
    assert execute_iteration(schedule.pk, 1)["reason"] == "schedule stopped"
    assert CleanupRun.objects.count() == 0

    schedule.delete()
    assert execute_iteration(schedule.pk, 1) == {
        "continue": False,
        "reason": "schedule deleted",
        "status": "",
        "iteration": 1,
        "next_run_at": None,
    }


def test_the_last_iteration_of_a_start_stops_the_schedule(running):
    schedule = running(max_iterations=2)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(start_iteration=5)

    assert execute_iteration(schedule.pk, 5)["continue"] is True
    result = execute_iteration(schedule.pk, 6)

    assert result["continue"] is False
    assert result["reason"] == "iteration limit reached"
    schedule.refresh_from_db()
    assert schedule.desired_state == "stopped"
    assert schedule.next_run_at is None


def test_expired_sessions_deletes_only_expired_sessions(running):
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    now = timezone.now()
    for n in range(25):
        Session.objects.create(
            session_key=f"old{n:03}",
            session_data=SessionStore().encode({}),
            expire_date=now - timedelta(days=1),
        )
    for n in range(5):
        Session.objects.create(
            session_key=f"live{n:03}",
            session_data=SessionStore().encode({}),
            expire_date=now + timedelta(days=1),
        )
    schedule = running(task="expired_sessions", params={"batch_size": 10})

    execute_iteration(schedule.pk, 1)

    (run,) = runs_of(schedule)
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert run.items_deleted == 25
    assert sorted(Session.objects.values_list("session_key", flat=True)) == [
        f"live{n:03}" for n in range(5)
    ]
