"""Cadence, control and failures on the SDK's in-memory backend with a real worker."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from durabletask import client as dt_client

from cleanups import control
from cleanups.models import CleanupRun
from tests.conftest import is_live, runs_of, wait_for_clock, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
Status = dt_client.OrchestrationStatus
CHANGELIST = "admin:cleanups_cleanupschedule_changelist"


@pytest.fixture(autouse=True)
def _quick(settings):
    settings.MISSED_RUN_GRACE_SECONDS = 0.4


def executed(schedule):
    return [r for r in runs_of(schedule) if r.status != "skipped"]


def post_action(admin_client, action, schedule):
    return admin_client.post(
        reverse(CHANGELIST), {"action": action, "_selected_action": [schedule.pk]}
    )


def waiting(durable_client, schedule):
    state = durable_client.get_orchestration_state(schedule.instance_id)
    status = state.get_custom_status() if state else None
    return bool(status) and status.get("state") == "waiting"


def test_fixed_rate_stays_on_the_grid_and_never_overlaps(worker, make_schedule):
    schedule = make_schedule(
        cadence="fixed_rate",
        interval=timedelta(seconds=1),
        params={"seconds": 1.3},  # longer than its one-second share
        missed_runs="skip",
    )
    control.start_schedule(schedule)
    wait_until(lambda: len(executed(schedule)) >= 3, timeout=20)
    schedule.refresh_from_db()

    runs = executed(schedule)[:3]
    for run in runs:
        offset = (run.started_at - schedule.anchor_at).total_seconds()
        assert abs(offset - round(offset)) < 0.2, f"run {run.iteration} started off the grid"
        assert run.trigger == "scheduled"
    for earlier, later in itertools.pairwise(runs):
        assert later.started_at >= earlier.finished_at
    skipped = [r for r in runs_of(schedule) if r.status == "skipped"]
    assert skipped and all(r.reason == "overran" for r in skipped)


def test_fixed_delay_drifts_by_the_time_the_cleanup_takes(worker, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=1), params={"seconds": 0.5})
    control.start_schedule(schedule)
    wait_until(lambda: len(executed(schedule)) >= 3, timeout=20)
    first, second, third = executed(schedule)[:3]
    for earlier, later in ((first, second), (second, third)):
        gap = (later.started_at - earlier.started_at).total_seconds()
        assert 1.45 < gap < 1.9  # the interval plus the half second the cleanup took


def test_run_now_runs_once_and_keeps_the_next_scheduled_run(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(cadence="fixed_rate", interval=timedelta(seconds=4))
    control.start_schedule(schedule)
    wait_until(lambda: executed(schedule) and waiting(durable_client, schedule))
    schedule.refresh_from_db()
    planned = schedule.next_run_at

    assert post_action(admin_client, "run_now", schedule).status_code == 302
    manual = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, trigger="manual").first()
    )
    assert manual.triggered_by == "admin"
    wait_until(lambda: waiting(durable_client, schedule))
    schedule.refresh_from_db()
    assert schedule.next_run_at == planned

    scheduled = wait_until(
        lambda: CleanupRun.objects.filter(
            schedule=schedule, trigger="scheduled", iteration__gt=manual.iteration
        ).first(),
        timeout=10,
    )
    assert abs((scheduled.started_at - planned).total_seconds()) < 0.3
    assert [r.iteration for r in runs_of(schedule)] == [1, 2, 3]


def test_pause_and_resume_apply_the_missed_run_policy(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(interval=timedelta(seconds=1), missed_runs="run_once")
    control.start_schedule(schedule)
    wait_until(lambda: executed(schedule) and waiting(durable_client, schedule))

    assert post_action(admin_client, "pause_schedules", schedule).status_code == 302
    wait_until(
        lambda: (
            durable_client.get_orchestration_state(schedule.instance_id).runtime_status
            == Status.SUSPENDED
        )
    )
    schedule.refresh_from_db()
    assert schedule.desired_state == "paused"
    count = len(runs_of(schedule))
    # Three of its planned times pass while it is paused; none of them runs.
    wait_for_clock(schedule.next_run_at + 2 * schedule.interval + timedelta(seconds=0.5))
    assert len(runs_of(schedule)) == count
    assert "paused" in admin_client.get(reverse(CHANGELIST)).content.decode()

    assert post_action(admin_client, "resume_schedules", schedule).status_code == 302
    catch_up = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, trigger="catch_up").first()
    )
    skipped = CleanupRun.objects.get(schedule=schedule, status="skipped")
    assert skipped.reason == "paused"
    assert skipped.details["slots"] >= 2
    assert skipped.iteration == catch_up.iteration - 1
    assert CleanupRun.objects.filter(schedule=schedule, trigger="catch_up").count() == 1


def test_restart_starts_a_fresh_orchestration_and_counts_on(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(interval=timedelta(seconds=30))
    control.start_schedule(schedule)
    wait_until(lambda: executed(schedule) and waiting(durable_client, schedule))
    created = durable_client.get_orchestration_state(schedule.instance_id).created_at

    assert post_action(admin_client, "restart_schedules", schedule).status_code == 302
    restarted = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, trigger="restart").first()
    )
    assert restarted.iteration == 2
    assert durable_client.get_orchestration_state(schedule.instance_id).created_at > created
    assert is_live(durable_client, schedule)


def test_consecutive_failures_pause_the_schedule_and_send_one_email(
    worker, durable_client, make_schedule
):
    schedule = make_schedule(
        task="testapp_always_fails",
        params={},
        interval=timedelta(seconds=1),
        pause_after_failures=3,
        notify_email="ops@example.com",
    )
    control.start_schedule(schedule)
    state = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=30)

    assert state.get_output()["reason"] == "Paused after 3 failed runs in a row."
    assert [r.status for r in runs_of(schedule)] == ["failed"] * 3
    schedule.refresh_from_db()
    assert schedule.desired_state == "paused"
    assert schedule.status_reason == "Paused after 3 failed runs in a row."
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.com"]
    assert "the disk is on fire" in mail.outbox[0].body


def test_a_failing_cleanup_is_retried_before_it_counts_as_failed(worker, make_schedule):
    schedule = make_schedule(
        task="testapp_flaky", params={"failures": 2}, max_retries=2, max_iterations=1
    )
    control.start_schedule(schedule)
    run = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status="succeeded").first(), timeout=20
    )
    assert run.attempts == 3
    assert run.message == "Worked this time."
    assert len(runs_of(schedule)) == 1


def test_runs_record_their_trigger_and_configuration(worker, make_schedule):
    schedule = make_schedule(max_iterations=1, params={"seconds": 0})
    control.start_schedule(schedule)
    run = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status="succeeded").first()
    )
    assert run.trigger == "scheduled"
    assert run.config["task"] == "sample"
    assert run.config["params"] == {"seconds": 0}
    assert run.config["cadence"] == "fixed_delay"


def test_a_schedule_past_its_end_completes(worker, durable_client, make_schedule):
    from django.utils import timezone

    schedule = make_schedule(
        interval=timedelta(seconds=1), end_at=timezone.now() + timedelta(seconds=2.5)
    )
    control.start_schedule(schedule)
    state = durable_client.wait_for_orchestration_completion(schedule.instance_id, timeout=20)
    assert state.get_output()["reason"] == "end_at reached"
    schedule.refresh_from_db()
    assert schedule.desired_state == "stopped"
    assert 2 <= len(executed(schedule)) <= 3


def test_control_functions_say_when_there_is_nothing_to_do(engine, make_schedule):
    schedule = make_schedule()
    assert control.run_now(schedule).outcome is control.Outcome.NOT_RUNNING
    assert control.resume_schedule(schedule).outcome is control.Outcome.NOT_RUNNING
    assert control.pause_schedule(schedule).outcome is control.Outcome.NOT_RUNNING
