"""Definitions that cannot work are refused and never loop; no input is a 500; no log line can
be forged. Each case acts as a person would: the admin form, the preview endpoint, an admin
action, or a real worker (in-process or `runworker`) against the real engine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import messages
from django.contrib.messages import get_messages
from django.urls import reverse

from cleanups import control
from cleanups.durable.reconciler import Reconciler
from cleanups.models import CleanupSchedule
from tests.conftest import form_data, is_live, runs_of, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ADD = "admin:cleanups_cleanupschedule_add"
CHANGELIST = "admin:cleanups_cleanupschedule_changelist"
PREVIEW = "cleanups:cadence_preview"
NEVER_FIRES = "0 0 30 2 *"  # 30 February: croniter cannot find a next time
FORGED = "run schedule=x iteration=1 status=succeeded"
READY = "started. Press Ctrl+C to stop."


def add_form_errors(admin_client, **overrides: str) -> dict[str, list[str]]:
    response = admin_client.post(reverse(ADD), form_data(**overrides))
    assert response.status_code == 200, "an invalid form must be shown again, not saved"
    assert not CleanupSchedule.objects.exists()
    return {
        field: list(errors) for field, errors in response.context["adminform"].form.errors.items()
    }


def preview(admin_client, **params: str):
    return admin_client.get(reverse(PREVIEW), params)


def post_action(admin_client, action: str, schedule: CleanupSchedule):
    admin_client.cookies.pop("messages", None)
    return admin_client.post(
        reverse(CHANGELIST), {"action": action, "_selected_action": [schedule.pk]}
    )


def messages_of(response) -> list[str]:
    """The messages of the response; a refusal is shown as an error."""
    shown = list(get_messages(response.wsgi_request))
    assert all(m.level == messages.ERROR for m in shown if "cannot run" in str(m))
    return [str(m) for m in shown]


def never_firing(make_schedule, desired_state: str) -> CleanupSchedule:
    """A schedule made valid, then given a cron that never fires behind validation's back."""
    schedule = make_schedule(cadence="cron", cron="* * * * *", timezone="UTC")
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        cron=NEVER_FIRES, desired_state=desired_state
    )
    schedule.refresh_from_db()
    return schedule


def stopped_for_its_cadence(schedule: CleanupSchedule) -> bool:
    schedule.refresh_from_db()
    return (
        schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
        and "cannot compute the next run" in schedule.status_reason
    )


# --- the admin form refuses what cannot run -----------------------------------------------


def test_form_refuses_a_cron_that_never_fires(admin_client):
    errors = add_form_errors(admin_client, cadence="cron", cron=NEVER_FIRES)

    assert set(errors) == {"cron"}
    assert "never fires" in " ".join(errors["cron"])


def test_form_refuses_an_interval_above_366_days(admin_client):
    errors = add_form_errors(admin_client, interval="367 00:00:00")

    assert set(errors) == {"interval"}
    assert "at most 366 days" in " ".join(errors["interval"])


def test_form_refuses_the_largest_interval_instead_of_overflowing(admin_client):
    errors = add_form_errors(admin_client, interval="999999999 00:00:00")

    assert set(errors) == {"interval"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "greater than or equal to 0"),
        ("31622401", "less than or equal to 31622400"),
        ("1" + "0" * 30, "less than or equal to 31622400"),
        ("an hour", "whole number"),
    ],
)
def test_form_refuses_a_run_limit_out_of_range(admin_client, value, message):
    errors = add_form_errors(admin_client, max_run_seconds=value)

    assert set(errors) == {"max_run_seconds"}
    assert message in " ".join(errors["max_run_seconds"])


def test_form_refuses_a_start_at_the_end_of_the_calendar(admin_client):
    errors = add_form_errors(admin_client, start_at_0="9999-12-31", start_at_1="23:59:59")

    assert set(errors) == {"start_at"}
    assert "before the year 9000" in " ".join(errors["start_at"])


def test_form_refuses_an_end_at_beyond_the_year_9000(admin_client):
    errors = add_form_errors(admin_client, end_at_0="9001-01-01", end_at_1="00:00:00")

    assert set(errors) == {"end_at"}


def test_form_refuses_params_nested_too_deep_to_read(admin_client):
    errors = add_form_errors(admin_client, params="[" * 100_000 + "]" * 100_000)

    assert set(errors) == {"params"}
    assert "nested too deeply" in " ".join(errors["params"])


def test_form_refuses_a_number_too_long_to_read_in_params(admin_client):
    errors = add_form_errors(admin_client, params='{"seconds": ' + "1" * 5000 + "}")

    assert set(errors) == {"params"}
    assert "too many digits" in " ".join(errors["params"])


@pytest.mark.parametrize("control", ["\n", "\r", "\x1b", "\u2028"])
def test_form_refuses_control_characters_in_the_name(admin_client, control):
    errors = add_form_errors(admin_client, name=f"evil{control}{FORGED}")

    assert set(errors) == {"name"}
    assert "control characters" in " ".join(errors["name"])


# --- the preview endpoint answers 400 naming the parameter --------------------------------


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"interval": "00:05:00", "start_at": "2026-99-99T00:00"}, "start_at"),
        ({"interval": "999999999 00:00:00"}, "interval"),
        ({"interval": "9999999999 00:00:00"}, "interval"),
        ({"interval": "00:05:00", "start_at": "9999-12-31T23:59:59"}, "start_at"),
        ({"cadence": "cron", "cron": NEVER_FIRES, "timezone": "UTC"}, "cron"),
    ],
    ids=["impossible-date", "largest-interval", "overflowing-interval", "year-9999", "never"],
)
def test_preview_answers_400_naming_the_parameter(admin_client, params, parameter):
    response = preview(admin_client, **params)

    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == parameter
    assert body["error"]


# --- admin actions on a schedule that cannot run ------------------------------------------


@pytest.mark.parametrize(
    ("action", "desired_state"),
    [
        ("start_schedules", "stopped"),
        ("resume_schedules", "paused"),
        ("restart_schedules", "running"),
        ("run_now", "running"),
    ],
)
def test_action_refuses_a_schedule_that_cannot_compute_its_next_run(
    admin_client, engine, durable_client, make_schedule, action, desired_state
):
    schedule = never_firing(make_schedule, desired_state)

    response = post_action(admin_client, action, schedule)

    assert response.status_code == 302
    assert any("never fires" in m for m in messages_of(response))
    assert stopped_for_its_cadence(schedule)
    assert not is_live(durable_client, schedule)


# --- the worker records the run, stops the schedule, and nothing re-runs it ----------------


def test_worker_records_the_run_and_stops_a_schedule_whose_cron_stopped_firing(
    worker, durable_client, make_schedule
):
    schedule = make_schedule(interval=timedelta(seconds=1))
    control.start_schedule(schedule)
    wait_until(lambda: any(r.status == "succeeded" for r in runs_of(schedule)))
    # Edited behind validation's back while it runs (or a cron library that changed its mind).
    CleanupSchedule.objects.filter(pk=schedule.pk).update(cadence="cron", cron=NEVER_FIRES)

    wait_until(lambda: stopped_for_its_cadence(schedule))
    wait_until(lambda: not is_live(durable_client, schedule))
    runs = runs_of(schedule)
    assert runs[-1].status == "succeeded", "the run that could not plan its successor is kept"
    assert "never fires" in schedule.status_reason

    reconciler = Reconciler(worker="test-host:1:me", interval=0.5)
    for _ in range(3):
        reconciler.tick()
    assert len(runs_of(schedule)) == len(runs)
    assert not is_live(durable_client, schedule)
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED


def test_reconciler_stops_instead_of_recovering_a_schedule_that_cannot_compute_its_next_run(
    worker, durable_client, make_schedule
):
    schedule = never_firing(make_schedule, "running")
    reconciler = Reconciler(worker="test-host:1:me", interval=0.5)

    reconciler.tick()

    wait_until(lambda: stopped_for_its_cadence(schedule))
    runs = len(runs_of(schedule))
    for _ in range(3):
        reconciler.tick()
    assert not is_live(durable_client, schedule)
    assert len(runs_of(schedule)) == runs
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED


# --- log lines cannot be forged ------------------------------------------------------------


def test_a_name_with_a_newline_stays_on_its_log_line(start_worker_process, make_schedule):
    schedule = make_schedule(name=f"evil\n{FORGED}", max_iterations=1)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")

    worker = start_worker_process()
    worker.wait_for_output(READY)
    wait_until(lambda: any(r.status == "succeeded" for r in runs_of(schedule)))
    worker.wait_for_output("status=succeeded duration=")
    worker.wait_for_output("had missing orchestration")
    worker.stop()

    run_lines = [line for line in worker.lines if "status=succeeded duration=" in line]
    assert len(run_lines) == 1
    assert "run schedule=evil\\nrun schedule=x iteration=1 status=succeeded" in run_lines[0]
    assert not any(line.startswith(FORGED) for line in worker.lines), worker.output
