"""The admin: live engine status in the changelist, start/terminate actions, the schedule form,
and read-only run records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib import messages
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from durabletask import client as dt_client

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import form_data, is_live, runs_of, wait_until

RUNNING = dt_client.OrchestrationStatus.RUNNING
TERMINATED = dt_client.OrchestrationStatus.TERMINATED
SCHEDULE_CHANGELIST = "admin:cleanups_cleanupschedule_changelist"
SCHEDULE_ADD = "admin:cleanups_cleanupschedule_add"


def runtime_status_cells(response) -> dict[str, str]:
    """Schedule name -> text of its "Runtime status" cell in the rendered changelist."""
    html = response.content.decode()
    rows = re.findall(r"<tr>(.*?)</tr>", html, flags=re.S)
    cells = {}
    for row in rows:
        name = re.search(r'class="field-name"><a [^>]*>([^<]*)</a>', row)
        status = re.search(r'class="field-runtime_status">([^<]*)</td>', row)
        if name and status:
            cells[name.group(1)] = status.group(1)
    return cells


def sent_messages(response) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in get_messages(response.wsgi_request)]


def post_action(admin_client, action: str, *schedules: CleanupSchedule):
    # Forget messages of earlier requests (kept in a cookie until a page shows them).
    admin_client.cookies.pop("messages", None)
    return admin_client.post(
        reverse(SCHEDULE_CHANGELIST),
        {"action": action, "_selected_action": [s.pk for s in schedules]},
    )


def state_of(durable_client, schedule: CleanupSchedule):
    return durable_client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)


def waiting_for_next_run(durable_client, schedule: CleanupSchedule) -> bool:
    """Running, its iteration done, on the durable timer: a terminate now is race-free.

    (Terminated while its activity runs, the loop may instead end COMPLETED "schedule stopped".)
    """
    state = durable_client.get_orchestration_state(schedule.instance_id, fetch_payloads=True)
    if state is None or state.runtime_status != RUNNING or not state.serialized_custom_status:
        return False
    return json.loads(state.serialized_custom_status).get("state") == "waiting"


# --- changelist ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_changelist_shows_engine_status_read_by_id_for_each_row(
    admin_client, engine, worker, durable_client, make_schedule
):
    # A long interval keeps the started schedule waiting on its timer, i.e. RUNNING.
    running = make_schedule(name="alpha-running", interval=timedelta(minutes=5))
    stopped = make_schedule(name="beta-never-started")
    terminated = make_schedule(name="gamma-terminated", interval=timedelta(minutes=5))
    make_schedule(name="delta-never-started")
    make_schedule(name="epsilon-never-started")
    assert control.start_schedule(running).outcome.value == "started"
    assert control.start_schedule(terminated).outcome.value == "started"
    wait_until(lambda: waiting_for_next_run(durable_client, running))
    wait_until(lambda: waiting_for_next_run(durable_client, terminated))
    assert control.terminate_schedule(terminated).outcome.value == "terminated"
    wait_until(lambda: state_of(durable_client, terminated).runtime_status == TERMINATED)

    engine.calls.clear()
    response = admin_client.get(reverse(SCHEDULE_CHANGELIST))

    assert response.status_code == 200
    # One read by id for each row on screen, none for the rest of the fleet.
    assert engine.calls["QueryInstances"] == 0
    assert engine.calls["GetInstance"] == len(response.context["cl"].result_list) == 5
    cells = runtime_status_cells(response)
    assert cells == {
        "alpha-running": "running",
        "beta-never-started": "not started",
        "delta-never-started": "not started",
        "epsilon-never-started": "not started",
        "gamma-terminated": "terminated",
    }
    labels = {s.pk: s.runtime_status_label for s in response.context["cl"].result_list}
    assert labels[running.pk] == "running"
    assert labels[stopped.pk] == "not started"
    assert not [m for m in sent_messages(response) if m[0] == messages.WARNING]


@pytest.mark.django_db
def test_changelist_reads_the_engine_only_for_the_rows_on_screen(
    admin_client, engine, make_schedule, monkeypatch
):
    from cleanups.admin.schedules import CleanupScheduleAdmin

    monkeypatch.setattr(CleanupScheduleAdmin, "list_per_page", 10)
    for n in range(35):
        make_schedule(name=f"tenant-{n:02d}")

    engine.calls.clear()
    engine.asked_for.clear()
    response = admin_client.get(reverse(SCHEDULE_CHANGELIST), {"p": "2"})

    assert response.status_code == 200
    shown = [s.instance_id for s in response.context["cl"].result_list]
    assert len(shown) == 10 and "tenant-10" in {s.name for s in response.context["cl"].result_list}
    assert (engine.calls["GetInstance"], engine.calls["QueryInstances"]) == (10, 0)
    assert engine.asked_for == set(shown)  # exactly those ids, none of the other 25


@pytest.mark.django_db
def test_changelist_with_engine_unreachable_still_renders(admin_client, engine_port, make_schedule):
    make_schedule(name="one")
    make_schedule(name="two")

    response = admin_client.get(reverse(SCHEDULE_CHANGELIST))

    assert response.status_code == 200
    assert "engine unreachable" in response.content.decode()
    assert runtime_status_cells(response) == {
        "one": "engine unreachable",
        "two": "engine unreachable",
    }
    warnings = [text for level, text in sent_messages(response) if level == messages.WARNING]
    assert len(warnings) == 1
    assert "engine is unreachable" in warnings[0]


def cell(response, schedule_name: str, column: str) -> str:
    """The inner HTML of one changelist cell, found by the schedule's name."""
    html = response.content.decode()
    for row in re.findall(r"<tr>(.*?)</tr>", html, flags=re.S):
        if re.search(rf'class="field-name"><a [^>]*>{re.escape(schedule_name)}</a>', row):
            found = re.search(rf'<td class="field-{column}[^"]*">(.*?)</td>', row, flags=re.S)
            assert found, f"no {column} cell in the row of {schedule_name}"
            return found.group(1)
    raise AssertionError(f"no changelist row for {schedule_name}")


@pytest.mark.django_db
def test_changelist_shows_the_last_run(admin_client, engine_port, make_schedule):
    schedule = make_schedule(name="with-runs", interval=timedelta(seconds=90))
    make_schedule(name="without-runs")
    started = timezone.now().replace(microsecond=0) - timedelta(minutes=3)
    CleanupRun.objects.bulk_create(
        [
            CleanupRun(
                schedule=schedule,
                iteration=1,
                status=CleanupRun.Status.SUCCEEDED,
                task="sample",
                started_at=started - timedelta(hours=1),
            ),
            CleanupRun(
                schedule=schedule,
                iteration=2,
                status=CleanupRun.Status.FAILED,
                task="sample",
                started_at=started,
            ),
        ]
    )

    response = admin_client.get(reverse(SCHEDULE_CHANGELIST))

    assert response.status_code == 200
    last_run = cell(response, "with-runs", "last_run")
    assert '<span class="run-status run-status-failed">Failed</span>' in last_run
    assert "run-status-succeeded" not in last_run  # the newest run, not the first
    assert f'title="{started.isoformat(timespec="seconds")}"' in last_run
    assert "3\xa0minutes ago" in last_run
    assert cell(response, "without-runs", "last_run") == "–"
    assert cell(response, "with-runs", "every") == "1 min 30 s"
    assert reverse("cleanups:schedule_runs", args=[schedule.pk]) in response.content.decode()


@pytest.mark.django_db
def test_a_paused_schedule_has_no_next_run(admin_client, engine_port, make_schedule):
    planned = timezone.now() + timedelta(minutes=10)
    for name, state in (("runs", "running"), ("rests", "paused"), ("ended", "stopped")):
        schedule = make_schedule(name=name)
        CleanupSchedule.objects.filter(pk=schedule.pk).update(
            desired_state=state, next_run_at=planned
        )

    response = admin_client.get(reverse(SCHEDULE_CHANGELIST))

    assert f'title="{planned.isoformat(timespec="seconds")}"' in cell(response, "runs", "next_run")
    assert cell(response, "rests", "next_run") == "paused"  # its old plan is not a promise
    assert cell(response, "ended", "next_run") == "–"
    dashboard = admin_client.get(reverse("cleanups:dashboard")).content.decode()
    assert dashboard.count("<td>paused</td>") == 1


@pytest.mark.django_db
def test_changelist_last_run_names_the_exact_instant_in_any_time_zone(
    admin_client, engine_port, make_schedule, settings
):
    settings.TIME_ZONE = "Asia/Tokyo"  # UTC+9 all year
    schedule = make_schedule(name="tokyo")
    started = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        status=CleanupRun.Status.SUCCEEDED,
        task="sample",
        started_at=started,
    )

    response = admin_client.get(reverse(SCHEDULE_CHANGELIST))
    history = admin_client.get(reverse("cleanups:schedule_runs", args=[schedule.pk]))

    # The run history page shows the start in local time (the |date filter converts) ...
    assert "2026-01-01 09:00:00" in history.content.decode()
    # ... and the changelist's "Last run" tooltip names the same instant, with its offset.
    title = re.search(r'title="([^"]+)"', cell(response, "tokyo", "last_run")).group(1)
    assert datetime.fromisoformat(title) == started


# --- actions ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_start_action_starts_each_selected_schedule(admin_client, engine, worker, make_schedule):
    first = make_schedule(name="first")
    second = make_schedule(name="second")
    engine.calls.clear()

    response = post_action(admin_client, "start_schedules", first, second)

    assert response.status_code == 302
    # The action's POST asks the engine about the selected schedules only, never the whole page.
    assert engine.calls["QueryInstances"] == 0
    assert engine.calls["GetInstance"] == 2
    assert response.url == reverse(SCHEDULE_CHANGELIST)
    sent = sent_messages(response)
    started = [text for level, text in sent if level == messages.SUCCESS]
    assert len(started) == 2
    assert any("first" in text and "started at iteration 1" in text for text in started)
    assert any("second" in text and "started at iteration 1" in text for text in started)
    for schedule in (first, second):
        schedule.refresh_from_db()
        assert schedule.desired_state == CleanupSchedule.DesiredState.RUNNING
        wait_until(lambda schedule=schedule: len(runs_of(schedule)) >= 1)
        assert runs_of(schedule)[0].iteration == 1


@pytest.mark.django_db(transaction=True)
def test_start_action_on_a_running_schedule_starts_nothing_new(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(name="busy", interval=timedelta(seconds=1))
    assert post_action(admin_client, "start_schedules", schedule).status_code == 302
    wait_until(lambda: len(runs_of(schedule)) >= 1 and is_live(durable_client, schedule))
    created_at = state_of(durable_client, schedule).created_at

    response = post_action(admin_client, "start_schedules", schedule)

    assert response.status_code == 302
    assert response.url == reverse(SCHEDULE_CHANGELIST)
    sent = sent_messages(response)
    assert [text for _, text in sent if "busy" in text] == [
        "“busy” is already running; nothing new started."
    ]
    assert (messages.INFO, "“busy” is already running; nothing new started.") in sent
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.RUNNING
    assert schedule.start_iteration == 1

    wait_until(lambda: len(runs_of(schedule)) >= 3)
    runs = runs_of(schedule)
    iterations = [run.iteration for run in runs]
    assert iterations[:3] == [1, 2, 3]
    assert iterations == list(range(1, len(iterations) + 1))  # no gaps, no duplicates
    assert all(run.attempts == 1 for run in runs)  # no second orchestration re-ran any
    query = dt_client.OrchestrationQuery(instance_id_prefix="cleanup-schedule-")
    instances = [
        state
        for state in durable_client.get_all_orchestration_states(query)
        if state.instance_id == schedule.instance_id
    ]
    assert len(instances) == 1
    assert state_of(durable_client, schedule).created_at == created_at


@pytest.mark.django_db(transaction=True)
def test_terminate_action_terminates_the_orchestration(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(name="doomed", interval=timedelta(minutes=5))
    assert control.start_schedule(schedule).outcome.value == "started"
    wait_until(lambda: waiting_for_next_run(durable_client, schedule))

    response = post_action(admin_client, "terminate_schedules", schedule)

    assert response.status_code == 302
    assert response.url == reverse(SCHEDULE_CHANGELIST)
    sent = sent_messages(response)
    assert (messages.SUCCESS, "“doomed” terminated.") in sent
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert schedule.next_run_at is None
    wait_until(lambda: state_of(durable_client, schedule).runtime_status == TERMINATED)


@pytest.mark.django_db(transaction=True)
def test_terminate_action_on_a_stopped_schedule_says_not_running(
    admin_client, worker, durable_client, make_schedule
):
    schedule = make_schedule(name="idle")

    response = post_action(admin_client, "terminate_schedules", schedule)

    assert response.status_code == 302
    assert (messages.INFO, "“idle” was not running.") in sent_messages(response)
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert state_of(durable_client, schedule) is None


@pytest.mark.django_db
def test_start_action_with_engine_unreachable_records_running(
    admin_client, engine_port, make_schedule
):
    first = make_schedule(name="first")
    second = make_schedule(name="second")

    response = post_action(admin_client, "start_schedules", first, second)

    assert response.status_code == 302
    assert response.url == reverse(SCHEDULE_CHANGELIST)
    sent = sent_messages(response)
    for name in ("first", "second"):
        about = [(level, text) for level, text in sent if f"“{name}”" in text]
        assert len(about) == 1
        level, text = about[0]
        assert level == messages.WARNING
        assert "engine unreachable" in text
        assert "Recorded as running" in text
    for schedule in (first, second):
        schedule.refresh_from_db()
        assert schedule.desired_state == CleanupSchedule.DesiredState.RUNNING


@pytest.mark.django_db
def test_terminate_action_with_engine_unreachable_records_stopped(
    admin_client, engine_port, make_schedule
):
    schedule = make_schedule(name="lost")
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=CleanupSchedule.DesiredState.RUNNING, next_run_at=timezone.now()
    )

    response = post_action(admin_client, "terminate_schedules", schedule)

    assert response.status_code == 302
    assert response.url == reverse(SCHEDULE_CHANGELIST)
    about = [(level, text) for level, text in sent_messages(response) if "“lost”" in text]
    assert len(about) == 1
    level, text = about[0]
    assert level == messages.WARNING
    assert "engine unreachable" in text
    assert "Recorded as stopped" in text
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert schedule.next_run_at is None


@pytest.mark.django_db
def test_action_with_engine_unreachable_warns_once_about_runtime_status(
    admin_client, engine_port, make_schedule
):
    schedule = make_schedule(name="lonely")
    admin_client.cookies.pop("messages", None)

    response = admin_client.post(
        reverse(SCHEDULE_CHANGELIST),
        {"action": "start_schedules", "_selected_action": [schedule.pk]},
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert sum("engine unreachable" in text for text in shown) == 1
    # Django builds the ChangeList before it runs an action: if that POST asked the engine too,
    # the "runtime status is unknown" warning would be queued twice (POST and redirected GET).
    unknown = [text for text in shown if "runtime status is unknown" in text]
    assert len(unknown) == 1, f"runtime-status warning shown {len(unknown)} times: {shown}"


# --- the schedule form --------------------------------------------------------------------


def add_form_errors(admin_client, **overrides: str) -> dict[str, list[str]]:
    response = admin_client.post(reverse(SCHEDULE_ADD), form_data(**overrides))
    assert response.status_code == 200, "an invalid form must be shown again, not saved"
    return {
        field: list(errors) for field, errors in response.context["adminform"].form.errors.items()
    }


@pytest.mark.django_db
def test_add_form_asks_only_for_what_the_operator_fills_in(admin_client):
    response = admin_client.get(reverse(SCHEDULE_ADD))

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert set(form.fields) == {
        "name",
        "task",
        "params",
        "dry_run",
        "cadence",
        "interval",
        "cron",
        "timezone",
        "start_at",
        "end_at",
        "window_start",
        "window_end",
        "max_iterations",
        "missed_runs",
        "max_retries",
        "max_run_seconds",
        "pause_after_failures",
        "notify_email",
        "alert_webhooks",
        "max_rows_per_run",
        "max_table_fraction",
        "archive",
        "max_rows_per_second",
        "vacuum",
    }
    html = response.content.decode()
    assert "<code>sample</code>" in html
    assert "<code>expired_sessions</code>" in html
    assert "field-instance_id" not in html


@pytest.mark.django_db
def test_add_form_creates_a_stopped_schedule(admin_client):
    response = admin_client.post(reverse(SCHEDULE_ADD), form_data(max_iterations="3"))

    assert response.status_code == 302
    schedule = CleanupSchedule.objects.get(name="nightly")
    assert schedule.instance_id == f"cleanup-schedule-{schedule.pk}"
    assert schedule.desired_state == CleanupSchedule.DesiredState.STOPPED
    assert schedule.interval == timedelta(seconds=5)
    assert schedule.params == {"seconds": 0}
    assert schedule.max_iterations == 3
    assert schedule.current_iteration == 0
    assert schedule.next_run_at is None


@pytest.mark.django_db
def test_add_form_fills_in_default_params(admin_client):
    response = admin_client.post(reverse(SCHEDULE_ADD), form_data(params="{}"))

    assert response.status_code == 302
    assert CleanupSchedule.objects.get(name="nightly").params == {"seconds": 5}


@pytest.mark.django_db
@pytest.mark.parametrize("interval", ["0", "00:00:00", "00:00:00.500000", "-00:00:05"])
def test_add_form_rejects_an_interval_under_one_second(admin_client, interval):
    errors = add_form_errors(admin_client, interval=interval)

    assert set(errors) == {"interval"}
    assert "The interval must be at least 1 second." in errors["interval"]
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_add_form_rejects_params_that_are_not_json(admin_client):
    errors = add_form_errors(admin_client, params='{"seconds": ')

    assert set(errors) == {"params"}
    assert "valid JSON" in " ".join(errors["params"])
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_add_form_rejects_params_that_are_not_an_object(admin_client):
    errors = add_form_errors(admin_client, params="[1, 2]")

    assert set(errors) == {"params"}
    assert "JSON object" in " ".join(errors["params"])


@pytest.mark.django_db
def test_add_form_rejects_a_non_numeric_seconds(admin_client):
    errors = add_form_errors(admin_client, params=json.dumps({"seconds": "x"}))

    assert set(errors) == {"params"}
    assert errors["params"] == ["seconds must be a number."]
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_add_form_names_an_unknown_parameter(admin_client):
    errors = add_form_errors(admin_client, params=json.dumps({"bogus": 1}))

    assert set(errors) == {"params"}
    assert "bogus" in errors["params"][0]
    assert "Unknown parameter" in errors["params"][0]
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_add_form_checks_params_against_the_chosen_task(admin_client):
    errors = add_form_errors(
        admin_client, task="expired_sessions", params=json.dumps({"seconds": 1})
    )

    assert set(errors) == {"params"}
    assert "seconds" in errors["params"][0]


@pytest.mark.django_db
def test_add_form_rejects_zero_max_iterations(admin_client):
    errors = add_form_errors(admin_client, max_iterations="0")

    assert set(errors) == {"max_iterations"}
    assert "Leave blank to run forever, or give at least 1." in errors["max_iterations"]
    assert not CleanupSchedule.objects.exists()


@pytest.mark.django_db
def test_add_form_rejects_a_duplicate_name(admin_client, make_schedule):
    make_schedule(name="nightly")

    errors = add_form_errors(admin_client)

    assert set(errors) == {"name"}
    assert "already exists" in errors["name"][0]
    assert CleanupSchedule.objects.count() == 1


@pytest.mark.django_db
def test_add_form_rejects_an_unknown_task(admin_client):
    # Params that the default task would refuse: the one error is the task's.
    errors = add_form_errors(admin_client, task="no_such_task", params=json.dumps({"seconds": 1}))

    assert set(errors) == {"task"}
    assert "Select a valid choice" in errors["task"][0]
    assert not CleanupSchedule.objects.exists()


# --- runs are read-only, the admin is staff-only --------------------------------------------


@pytest.fixture
def run(make_schedule) -> CleanupRun:
    schedule = make_schedule(name="has-a-run")
    return CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        status=CleanupRun.Status.SUCCEEDED,
        task="sample",
        started_at=timezone.now(),
        items_deleted=7,
        message="done",
    )


@pytest.mark.django_db
def test_runs_cannot_be_added(admin_client):
    assert admin_client.get(reverse("admin:cleanups_cleanuprun_add")).status_code == 403
    response = admin_client.post(
        reverse("admin:cleanups_cleanuprun_add"), {"iteration": "1", "task": "sample"}
    )
    assert response.status_code == 403
    assert not CleanupRun.objects.exists()


@pytest.mark.django_db
def test_run_changelist_has_no_add_button(admin_client, run):
    response = admin_client.get(reverse("admin:cleanups_cleanuprun_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "has-a-run" in html
    assert reverse("admin:cleanups_cleanuprun_add") not in html


@pytest.mark.django_db
def test_run_change_view_is_read_only(admin_client, run):
    url = reverse("admin:cleanups_cleanuprun_change", args=[run.pk])

    response = admin_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "_save" not in html
    assert "_continue" not in html
    assert "done" in html

    response = admin_client.post(
        url,
        {"iteration": "99", "status": "failed", "task": "sample", "items_deleted": "0"},
    )
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.iteration == 1
    assert run.status == CleanupRun.Status.SUCCEEDED
    assert run.items_deleted == 7


@pytest.mark.django_db
def test_runs_cannot_be_deleted(admin_client, run):
    url = reverse("admin:cleanups_cleanuprun_delete", args=[run.pk])

    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    response = admin_client.post(
        reverse("admin:cleanups_cleanuprun_changelist"),
        {"action": "delete_selected", "_selected_action": [run.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert CleanupRun.objects.filter(pk=run.pk).exists()


@pytest.mark.django_db
def test_non_staff_user_is_sent_to_the_login_page(django_user_model):
    user = django_user_model.objects.create_user(username="visitor", password="pw")
    browser = Client()
    browser.force_login(user)

    response = browser.get(reverse(SCHEDULE_CHANGELIST))

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))
    assert "next=" in response.url


@pytest.mark.django_db
def test_changelist_marks_dry_run_schedules(admin_client, engine_port, make_schedule):
    make_schedule(name="counting-only", task="expired_sessions", params={}, dry_run=True)
    make_schedule(name="for-real", task="sample")

    html = admin_client.get(reverse(SCHEDULE_CHANGELIST)).content.decode()

    assert "expired_sessions <em>(dry run)</em>" in html
    assert "sample <em>(dry run)</em>" not in html
