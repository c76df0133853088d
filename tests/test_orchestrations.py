"""The periodic_cleanup orchestration on the SDK's in-memory gRPC backend with a real worker."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from durabletask import client as dt_client
from durabletask import history as history_events

from cleanups import control
from cleanups.contract import ORCHESTRATION_NAME
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import is_live, runs_of, timer_created, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
COMPLETED = dt_client.OrchestrationStatus.COMPLETED


def test_iterations_are_counted_by_run_records(worker, durable_client, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=0.3) + timedelta(seconds=0.7))
    control.start_schedule(schedule)

    wait_until(lambda: len(runs_of(schedule)) >= 3)
    runs = runs_of(schedule)
    assert [run.iteration for run in runs[:3]] == [1, 2, 3]
    assert all(run.status == CleanupRun.Status.SUCCEEDED for run in runs[:2])
    gap = runs[1].started_at - runs[0].finished_at
    assert timedelta(seconds=0.9) <= gap < timedelta(seconds=3)
    schedule.refresh_from_db()
    assert schedule.current_iteration >= 3
    assert is_live(durable_client, schedule)


def test_continue_as_new_resets_history(worker, durable_client, make_schedule):
    schedule = make_schedule()
    control.start_schedule(schedule)
    wait_until(lambda: len(runs_of(schedule)) >= 4)

    history = durable_client.get_orchestration_history(schedule.instance_id)
    # One generation only: start, the activity, its timer; never the earlier iterations.
    assert len([e for e in history if isinstance(e, history_events.TaskScheduledEvent)]) <= 1
    assert len(history) < 15


def test_stops_after_max_iterations(worker, durable_client, make_schedule):
    schedule = make_schedule(max_iterations=3)
    control.start_schedule(schedule)

    state = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=20)
    assert state.runtime_status == COMPLETED
    assert state.get_output() == {"iterations": 3, "reason": "iteration limit reached"}
    assert [run.iteration for run in runs_of(schedule)] == [1, 2, 3]
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert schedule.next_run_at is None


def test_a_new_start_continues_the_iteration_count(worker, durable_client, make_schedule):
    schedule = make_schedule(max_iterations=2)
    control.start_schedule(schedule)
    durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=20)

    outcome = control.start_schedule(schedule)
    assert outcome.outcome.value == "started"
    state = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=20)
    assert state.get_output()["iterations"] == 4
    assert [run.iteration for run in runs_of(schedule)] == [1, 2, 3, 4]


def test_interval_edit_applies_from_the_next_iteration(worker, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: len(runs_of(schedule)) >= 1)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(interval=timedelta(seconds=3))

    wait_until(lambda: len(runs_of(schedule)) >= 3, timeout=20)
    first, second, third = runs_of(schedule)[:3]
    # Run 1 ended before the edit (1 s wait); run 2 read the new interval when it ended.
    assert second.started_at - first.finished_at < timedelta(seconds=2)
    assert third.started_at - second.finished_at >= timedelta(seconds=2.9)


def test_a_failing_task_is_a_failed_run_and_the_loop_goes_on(worker, durable_client, make_schedule):
    schedule = make_schedule(task="sample", params={"seconds": "not a number"}, max_iterations=2)
    control.start_schedule(schedule)

    state = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=20)
    assert state.runtime_status == COMPLETED
    runs = runs_of(schedule)
    assert [run.status for run in runs] == [CleanupRun.Status.FAILED] * 2
    assert "seconds must be a number" in runs[0].error
    assert "Traceback (most recent call last)" in runs[0].traceback


def test_bare_integer_start_runs_the_sample_loop(worker, durable_client, settings, caplog):
    # The sample's 15 s timer, shortened by configuration only.
    settings.SAMPLE_TIMER_SECONDS = 0.2
    caplog.set_level(logging.INFO, logger="cleanups.runs")
    instance_id = durable_client.schedule_new_orchestration(ORCHESTRATION_NAME, input=1)

    state = durable_client.wait_for_orchestration_completion(instance_id, timeout=20)
    assert state.runtime_status == COMPLETED
    assert state.get_output() == "Completed 5 iterations"
    iterations = [r.getMessage() for r in caplog.records if "sample iteration" in r.getMessage()]
    assert iterations == [
        f"Performing periodic cleanup (sample iteration {n})" for n in range(1, 6)
    ]
    assert CleanupRun.objects.count() == 0


def test_sample_timer_defaults_to_fifteen_seconds(worker, durable_client):
    before = datetime.now(UTC)
    instance_id = durable_client.schedule_new_orchestration(ORCHESTRATION_NAME, input=1)

    timer = wait_until(lambda: timer_created(durable_client, instance_id))
    assert timedelta(seconds=14.9) < timer.fire_at - before < timedelta(seconds=17)
    durable_client.terminate_orchestration(instance_id, recursive=False)
