"""Schedules declared in code (CLEANUP_SCHEDULES, cleanup_schedules modules): syncschedules,
runworker --sync and the admin's view of them, on a real database, engine and worker."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from durabletask import client as dt_client

from cleanups import control, declared
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import database_url, form_data, is_live, manage, runs_of, wait_until
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
Status = dt_client.OrchestrationStatus
SOURCE = "settings.CLEANUP_SCHEDULES"
CHANGELIST = "admin:cleanups_cleanupschedule_changelist"
READY = "Press Ctrl+C to stop"

# Waits on its timer after its first run: a state seen in a test stays until the test changes it.
NIGHTLY = {"task": "sample", "params": {"seconds": 0}, "interval": "01:00:00"}


def sync(*args: str) -> str:
    """syncschedules in this process; its standard output."""
    out = io.StringIO()
    call_command("syncschedules", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def sync_in_child(
    schedules: dict[str, Any], *args: str, module: dict[str, Any] | None = None
) -> Any:
    """syncschedules as a deploy pipeline runs it: its own process, on the test database."""
    return manage(
        "syncschedules",
        *args,
        DJANGO_SETTINGS_MODULE="tests.settings_declared",
        DATABASE_URL=database_url(),
        CLEANUP_SCHEDULES=json.dumps(schedules),
        DECLARED_APP_SCHEDULES=json.dumps(module or {}),
    )


def schedule(name: str) -> CleanupSchedule:
    return CleanupSchedule.objects.get(name=name)


def engine_status(durable_client: Any, sched: CleanupSchedule) -> Any:
    state = durable_client.get_orchestration_state(sched.instance_id, fetch_payloads=False)
    return None if state is None else state.runtime_status


def waits_for_its_next_run(durable_client: Any, sched: CleanupSchedule) -> bool:
    state = durable_client.get_orchestration_state(sched.instance_id)
    status = state.get_custom_status() if state else None
    return bool(status) and status.get("state") == "waiting"


def ran(sched: CleanupSchedule) -> list[CleanupRun]:
    return [r for r in runs_of(sched) if r.status == CleanupRun.Status.SUCCEEDED]


# --- create, update, idempotence ---------------------------------------------------------------


def test_sync_creates_and_starts_declared_schedules(settings, worker, durable_client):
    settings.CLEANUP_SCHEDULES = {
        "nightly": NIGHTLY,
        "weekly": {**NIGHTLY, "interval": timedelta(days=7), "state": "stopped"},
    }

    output = sync()

    assert output.splitlines() == [
        f"create nightly [{SOURCE}]: task 'sample', params {{\"seconds\": 0}}, "
        "interval 1:00:00, state running",
        f"create weekly [{SOURCE}]: task 'sample', params {{\"seconds\": 0}}, "
        "interval 7 days, 0:00:00, state stopped",
        "Synced 2 schedules: 2 created.",
    ]
    nightly, weekly = schedule("nightly"), schedule("weekly")
    assert (nightly.managed_by, nightly.declared_state, nightly.changed_by) == (
        SOURCE,
        "running",
        None,
    )
    assert nightly.desired_state == "running"
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))
    # Fields it leaves out have the model's defaults, as on the admin's add form.
    assert (nightly.cadence, nightly.max_retries, nightly.timezone) == ("fixed_delay", 0, "UTC")
    assert weekly.desired_state == "stopped"
    assert engine_status(durable_client, weekly) is None


def test_a_second_sync_changes_nothing(settings, engine_port):
    settings.CLEANUP_SCHEDULES = {"weekly": {**NIGHTLY, "state": "stopped"}}
    sync()
    before = schedule("weekly")

    assert sync() == "No changes: the database matches the code (1 declared schedule).\n"
    after = schedule("weekly")
    assert after.updated_at == before.updated_at
    assert after.generation == before.generation


def test_an_edit_in_code_updates_a_running_schedule_in_place(settings, worker, durable_client):
    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY}
    sync()
    nightly = schedule("nightly")
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))

    settings.CLEANUP_SCHEDULES = {
        "nightly": {**NIGHTLY, "interval": "02:00:00", "max_retries": 2, "params": {"seconds": 1}}
    }
    output = sync()

    assert output.splitlines() == [
        'update nightly: params {"seconds": 0} -> {"seconds": 1}',
        "update nightly: interval 1:00:00 -> 2:00:00",
        "update nightly: max_retries 0 -> 2",
        "Synced 1 schedule: 1 updated.",
    ]
    edited = schedule("nightly")
    assert (edited.interval, edited.max_retries, edited.params) == (
        timedelta(hours=2),
        2,
        {"seconds": 1},
    )
    # As an admin save: the same orchestration goes on and reads the change at its next run.
    assert edited.generation == nightly.generation
    assert edited.desired_state == "running"
    assert is_live(durable_client, edited)


# --- removal ---------------------------------------------------------------------------------


def test_a_schedule_removed_from_code_is_stopped_and_kept_with_its_runs(
    settings, worker, durable_client
):
    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY, "other": {**NIGHTLY, "state": "stopped"}}
    sync()
    nightly = schedule("nightly")
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))
    runs = len(runs_of(nightly))

    settings.CLEANUP_SCHEDULES = {}
    output = sync()

    assert output.splitlines() == [
        f"stop nightly: no longer declared in code (was {SOURCE}); running -> stopped, "
        f"orchestration terminated; its {runs} run{'' if runs == 1 else 's'} kept; managed in "
        "the admin from now on",
        f"release other: no longer declared in code (was {SOURCE}); already stopped; its 0 runs "
        "kept; managed in the admin from now on",
        "Synced 2 schedules: 2 stopped (no longer declared).",
    ]
    wait_until(lambda: engine_status(durable_client, nightly) == Status.TERMINATED)
    stopped = schedule("nightly")
    assert (stopped.desired_state, stopped.managed_by, stopped.declared_state) == (
        "stopped",
        "",
        "",
    )
    assert stopped.status_reason.startswith(f"Stopped: no longer declared in {SOURCE}")
    assert len(runs_of(stopped)) == runs
    assert sync() == "No changes: the database matches the code (0 declared schedules).\n"


# --- dry run and check -----------------------------------------------------------------------


def test_dry_run_prints_the_difference_and_changes_nothing(settings, engine_port):
    settings.CLEANUP_SCHEDULES = {"weekly": {**NIGHTLY, "state": "stopped"}}
    sync()
    settings.CLEANUP_SCHEDULES = {
        "weekly": {**NIGHTLY, "interval": 60, "state": "paused"},
        "nightly": NIGHTLY,
    }
    before = list(CleanupSchedule.objects.values())

    output = sync("--dry-run")

    assert output.splitlines() == [
        "update weekly: interval 1:00:00 -> 0:01:00",
        "pause weekly: state stopped -> paused (declared paused)",
        f"create nightly [{SOURCE}]: task 'sample', params {{\"seconds\": 0}}, "
        "interval 1:00:00, state running",
        "2 schedules differ from the code: 1 to create, 1 to update.",
    ]
    assert list(CleanupSchedule.objects.values()) == before


def test_check_exits_1_while_the_database_differs_and_0_once_synced(engine_port):
    declared_in_code = {"weekly": {**NIGHTLY, "state": "stopped"}}

    differs = sync_in_child(declared_in_code, "--check")
    assert differs.returncode == 1, differs.stderr
    assert differs.stdout.splitlines()[-1] == "1 schedule differs from the code: 1 to create."
    assert "Traceback" not in differs.stderr
    assert not CleanupSchedule.objects.exists()

    applied = sync_in_child(declared_in_code)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == "Synced 1 schedule: 1 created."

    matches = sync_in_child(declared_in_code, "--check")
    assert matches.returncode == 0, matches.stderr
    assert (
        matches.stdout.strip() == "No changes: the database matches the code (1 declared schedule)."
    )


# --- invalid declarations: one line each, nothing applied --------------------------------------


def test_invalid_declarations_are_one_line_each_and_nothing_is_applied(engine_port):
    result = sync_in_child(
        {
            "good": {**NIGHTLY, "state": "stopped"},
            "nightly": {**NIGHTLY, "interval": "soon", "retries": 3},
            "files": {
                "task": "delete_old_files",
                "params": {"directory": "/etc", "older_than_days": 1},
                "interval": 60,
                "state": "asleep",
            },
            "users": {
                "task": "delete_old_rows",
                "params": {"model": "auth.User", "field": "last_login", "older_than_days": 1},
                "interval": 60,
            },
        }
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(
        "CLEANUP_SCHEDULES['nightly']: unknown field 'retries' (the fields are alert_webhooks, "
        "archive, cadence, cron,"
    )
    assert lines[1:] == [
        "CLEANUP_SCHEDULES['nightly']: interval: Enter a valid duration.",
        "CLEANUP_SCHEDULES['files']: state: 'asleep' is not one of running, paused, stopped.",
        "CLEANUP_SCHEDULES['files']: params: No directory may be cleaned: set "
        "CLEANUP_ALLOWED_DIRS to the directories allowed.",
        # Code has every permission, within the site's limits.
        "CLEANUP_SCHEDULES['users']: params: You may not delete auth.User: auth.User is not "
        "allowed here (CLEANUP_ALLOWED_MODELS does not list it).",
        "CommandError: 5 problems in the declared schedules; nothing was applied.",
    ]
    assert not CleanupSchedule.objects.exists()  # not even the good one


def test_form_errors_are_the_admins_messages(settings, engine_port, admin_client):
    settings.CLEANUP_ALLOWED_DIRS = ["/var/tmp"]
    settings.CLEANUP_SCHEDULES = {
        "nightly": {**NIGHTLY, "params": {"seconds": 1, "when": "now"}},
        "files": {"task": "delete_old_files", "params": {"directory": "/etc"}, "interval": 60},
        "cron": {**NIGHTLY, "cadence": "cron", "cron": "every night"},
        "untasked": {"interval": 60},
        "odd": [1],
    }

    with pytest.raises(CommandError) as raised:
        call_command("syncschedules", stdout=io.StringIO(), stderr=(err := io.StringIO()))

    assert raised.value.returncode == 2
    assert err.getvalue().splitlines() == [
        "CLEANUP_SCHEDULES['odd']: must be a dict of fields, not list.",
        "CLEANUP_SCHEDULES['nightly']: params: Unknown parameter(s): when. Allowed: seconds.",
        "CLEANUP_SCHEDULES['files']: params: /etc is outside the allowed directories (/var/tmp).",
        "CLEANUP_SCHEDULES['cron']: cron: 'every night' is not a valid 5-field cron expression "
        '(e.g. "*/15 * * * *").',
        "CLEANUP_SCHEDULES['untasked']: task: This field is required.",
    ]
    assert not CleanupSchedule.objects.exists()
    page = admin_client.post(
        reverse("admin:cleanups_cleanupschedule_add"),
        form_data(task="delete_old_files", params='{"directory": "/etc"}'),
    ).content.decode()
    assert "/etc is outside the allowed directories (/var/tmp)." in page


# --- state: the operator's pause survives, a declared change applies ---------------------------


def test_an_operators_pause_survives_syncs_until_the_code_declares_a_state(
    settings, worker, durable_client
):
    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY}
    sync()
    nightly = schedule("nightly")
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))

    control.pause_schedule(nightly)  # an operator, in the admin
    wait_until(lambda: engine_status(durable_client, nightly) == Status.SUSPENDED)
    assert sync() == "No changes: the database matches the code (1 declared schedule).\n"
    settings.CLEANUP_SCHEDULES = {"nightly": {**NIGHTLY, "interval": "03:00:00"}}
    assert sync().splitlines()[0] == "update nightly: interval 1:00:00 -> 3:00:00"
    assert schedule("nightly").desired_state == "paused"
    assert engine_status(durable_client, nightly) == Status.SUSPENDED

    # The code now says stopped: applied.
    settings.CLEANUP_SCHEDULES = {
        "nightly": {**NIGHTLY, "interval": "03:00:00", "state": "stopped"}
    }
    assert sync().splitlines()[0] == "stop nightly: state paused -> stopped (declared stopped)"
    wait_until(lambda: engine_status(durable_client, nightly) == Status.TERMINATED)
    stopped = schedule("nightly")
    assert stopped.desired_state == "stopped"
    assert stopped.status_reason == f"Stopped: declared stopped in {SOURCE}."

    # An operator starts it again: that stands too, while the code keeps saying stopped.
    control.start_schedule(stopped)
    assert sync().startswith("No changes")
    assert schedule("nightly").desired_state == "running"


def test_a_declared_state_change_is_applied(settings, worker, durable_client):
    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY}
    sync()
    nightly = schedule("nightly")
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))

    settings.CLEANUP_SCHEDULES = {"nightly": {**NIGHTLY, "state": "paused"}}
    assert sync().splitlines() == [
        "pause nightly: state running -> paused (declared paused)",
        "Synced 1 schedule: 1 updated.",
    ]
    wait_until(lambda: engine_status(durable_client, nightly) == Status.SUSPENDED)
    paused = schedule("nightly")
    assert (paused.desired_state, paused.declared_state) == ("paused", "paused")
    assert paused.status_reason == f"Paused: declared paused in {SOURCE}."

    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY}
    assert sync().splitlines()[0] == "resume nightly: state paused -> running (declared running)"
    wait_until(lambda: engine_status(durable_client, nightly) in (Status.RUNNING, Status.PENDING))
    assert schedule("nightly").desired_state == "running"


def test_a_new_schedule_declared_paused_never_runs_until_resumed(settings, worker, durable_client):
    settings.CLEANUP_SCHEDULES = {"later": {**NIGHTLY, "state": "paused"}}
    sync()
    later = schedule("later")
    assert later.desired_state == "paused"
    assert control.wait_for_bulk_engine_calls(timeout=10)
    assert engine_status(durable_client, later) is None
    assert not runs_of(later)

    control.resume_schedule(later)  # an operator, in the admin
    wait_until(lambda: ran(later))
    assert sync().startswith("No changes")  # the resume stands


def test_a_schedule_from_code_deletes_with_codes_rights_within_the_sites_limits(
    settings, worker, durable_client
):
    # No person behind it: the declaration is validated, and its runs delete, as the code.
    Event.objects.create(created_at="2020-01-01T00:00:00Z", kind="export")
    Event.objects.create(created_at="2020-01-01T00:00:00Z", kind="keep")
    settings.CLEANUP_SCHEDULES = {
        "exports": {
            "task": "testapp_events_of_kind",
            "params": {"kind": "export"},
            "interval": 3600,
        }
    }
    sync()
    exports = schedule("exports")

    run = wait_until(lambda: ran(exports))[0]
    assert run.items_deleted == 1
    assert list(Event.objects.values_list("kind", flat=True)) == ["keep"]
    assert exports.changed_by is None


# --- name clashes ------------------------------------------------------------------------------


def test_a_name_made_in_the_admin_is_refused_unless_adopted(settings, engine_port, make_schedule):
    made = make_schedule(name="nightly", interval=timedelta(minutes=5))
    settings.CLEANUP_SCHEDULES = {"nightly": {**NIGHTLY, "state": "stopped"}}

    with pytest.raises(CommandError):
        call_command("syncschedules", stdout=io.StringIO(), stderr=(err := io.StringIO()))
    assert err.getvalue().splitlines() == [
        "CLEANUP_SCHEDULES['nightly']: a schedule named 'nightly' already exists and is "
        "managed in the admin; rename the declaration, or run syncschedules --adopt to manage "
        "it in code (its definition is replaced by the declaration)."
    ]
    assert schedule("nightly").managed_by == ""

    assert sync("--adopt").splitlines() == [
        f"adopt nightly: managed by {SOURCE} from now on (was managed in the admin)",
        "update nightly: interval 0:05:00 -> 1:00:00",
        "update nightly: declared state -> stopped (already stopped; nothing to do in the engine)",
        "Synced 1 schedule: 1 adopted.",
    ]
    adopted = schedule("nightly")
    assert adopted.pk == made.pk
    assert (adopted.managed_by, adopted.changed_by) == (SOURCE, None)
    assert sync().startswith("No changes")


# --- cleanup_schedules modules -----------------------------------------------------------------


def test_an_apps_cleanup_schedules_module_is_discovered(engine_port):
    module = "tests.declaredapp.cleanup_schedules"
    result = sync_in_child({}, module={"from-app": {**NIGHTLY, "state": "stopped"}})
    assert result.returncode == 0, result.stderr
    assert schedule("from-app").managed_by == module

    twice = sync_in_child(
        {"from-app": {**NIGHTLY, "state": "stopped"}},
        module={"from-app": {**NIGHTLY, "state": "stopped"}},
    )
    assert twice.returncode == 2
    assert twice.stderr.splitlines()[0] == (
        f"{module}.SCHEDULES['from-app']: the name 'from-app' is declared twice "
        "(also CLEANUP_SCHEDULES['from-app'])."
    )


# --- the admin ---------------------------------------------------------------------------------


def test_the_admin_shows_a_schedule_from_code_read_only_with_its_actions(
    settings, admin_client, worker, durable_client, make_schedule
):
    settings.CLEANUP_SCHEDULES = {"nightly": NIGHTLY}
    sync()
    nightly = schedule("nightly")
    by_hand = make_schedule(name="by-hand")
    wait_until(lambda: ran(nightly) and waits_for_its_next_run(durable_client, nightly))
    url = reverse("admin:cleanups_cleanupschedule_change", args=[nightly.pk])

    page = admin_client.get(url).content.decode()
    assert "Managed in code" in page
    assert f"<strong>{SOURCE}</strong>" in page
    assert 'name="interval"' not in page  # read-only: shown, not a form field
    assert "1:00:00" in page
    own = admin_client.get(
        reverse("admin:cleanups_cleanupschedule_change", args=[by_hand.pk])
    ).content.decode()
    assert 'name="interval"' in own
    assert "Managed in code:" not in own

    data = {"name": "renamed", "task": "sample", "params": "{}", "interval": "00:00:05"}
    assert admin_client.post(url, data).status_code == 403
    assert schedule("nightly").name == "nightly"
    delete = reverse("admin:cleanups_cleanupschedule_delete", args=[nightly.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403

    listed = admin_client.get(reverse(CHANGELIST) + "?managed_in_code=yes").content.decode()
    assert "field-managed_in_code" in listed
    assert ">nightly</a>" in listed
    assert ">by-hand</a>" not in listed

    # The actions work as for any schedule.
    response = admin_client.post(
        reverse(CHANGELIST), {"action": "pause_schedules", "_selected_action": [nightly.pk]}
    )
    assert response.status_code == 302
    wait_until(lambda: engine_status(durable_client, nightly) == Status.SUSPENDED)
    admin_client.post(
        reverse(CHANGELIST), {"action": "resume_schedules", "_selected_action": [nightly.pk]}
    )
    wait_until(lambda: engine_status(durable_client, nightly) != Status.SUSPENDED)
    admin_client.post(reverse(CHANGELIST), {"action": "run_now", "_selected_action": [nightly.pk]})
    wait_until(lambda: CleanupRun.objects.filter(schedule=nightly, trigger="manual").exists())


# --- runworker --sync --------------------------------------------------------------------------


@pytest.mark.subprocess
def test_runworker_sync_syncs_at_start_up(start_worker_process):
    worker = start_worker_process(
        "--sync",
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings_declared",
            "CLEANUP_SCHEDULES": json.dumps({"nightly": NIGHTLY}),
        },
    )
    worker.wait_for_output(READY)
    assert "Synced 1 schedule: 1 created." in worker.output
    nightly = schedule("nightly")
    assert nightly.managed_by == SOURCE
    wait_until(lambda: ran(nightly), timeout=20)
    assert worker.stop() == 0, worker.output


@pytest.mark.subprocess
def test_runworker_sync_with_an_invalid_declaration_does_not_start(start_worker_process):
    worker = start_worker_process(
        "--sync",
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings_declared",
            "CLEANUP_SCHEDULES": json.dumps({"nightly": {**NIGHTLY, "interval": "soon"}}),
        },
    )
    assert worker.process.wait(timeout=30) == 2
    worker._reader.join(timeout=5)
    assert "CLEANUP_SCHEDULES['nightly']: interval: Enter a valid duration." in worker.lines
    assert "Traceback" not in worker.output
    assert READY not in worker.output
    assert not CleanupSchedule.objects.exists()


def test_declarations_are_read_from_the_setting_and_modules():
    class Module:
        SCHEDULES = {"b": {"task": "sample", "interval": 5}}

    found, problems = declared.collect(
        {"a": {"task": "sample"}}, [("app.cleanup_schedules", Module)]
    )
    assert problems == []
    assert [(d.name, d.source, d.state) for d in found] == [
        ("a", SOURCE, "running"),
        ("b", "app.cleanup_schedules", "running"),
    ]
    _, problems = declared.collect(["a"], [("app.cleanup_schedules", object())])
    assert problems == [
        "CLEANUP_SCHEDULES: must be a dict of schedule name -> fields, not list.",
        "app.cleanup_schedules: defines no SCHEDULES dict.",
    ]
