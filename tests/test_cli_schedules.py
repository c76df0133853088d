"""`manage.py schedules`: the admin's control actions from a shell, against the real embedded
engine and worker, and the exit statuses scripts read."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from durabletask import client as dt_client

from cleanups.control import Outcome
from cleanups.control import acting as control_act
from cleanups.management.commands import schedules as command
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import database_url, is_live, manage, runs_of, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
Status = dt_client.OrchestrationStatus
RUNNING = CleanupSchedule.DesiredState.RUNNING
PAUSED = CleanupSchedule.DesiredState.PAUSED
STOPPED = CleanupSchedule.DesiredState.STOPPED
HOUR = timedelta(hours=1)


def schedules(*args: str) -> tuple[int, str, str]:
    """The command in this process: its exit status, stdout and stderr."""
    out, err = StringIO(), StringIO()
    try:
        call_command("schedules", *args, stdout=out, stderr=err)
    except CommandError as error:
        return error.returncode, out.getvalue(), str(error)
    return 0, out.getvalue(), err.getvalue()


def state_of(durable_client: Any, schedule: CleanupSchedule) -> Any:
    return durable_client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)


def waiting(durable_client: Any, schedule: CleanupSchedule) -> bool:
    """Its orchestration is on the timer to its next run: an action now meets no run."""
    state = durable_client.get_orchestration_state(schedule.instance_id)
    status = state.get_custom_status() if state else None
    return bool(status) and status.get("state") == "waiting"


def desired(schedule: CleanupSchedule) -> str:
    schedule.refresh_from_db()
    return schedule.desired_state


def started(durable_client: Any, schedule: CleanupSchedule) -> CleanupSchedule:
    """The schedule started through the command, its first run done: on its timer."""
    assert schedules("start", schedule.name)[0] == 0
    wait_until(lambda: any(r.status == "succeeded" for r in runs_of(schedule)))
    wait_until(lambda: waiting(durable_client, schedule))
    schedule.refresh_from_db()
    return schedule


def add_run(schedule: CleanupSchedule, iteration: int, status: str, **fields: Any) -> CleanupRun:
    return CleanupRun.objects.create(
        schedule=schedule,
        iteration=iteration,
        status=status,
        task=schedule.task,
        started_at=timezone.now() - timedelta(minutes=10 - iteration),
        **fields,
    )


# --- exit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "outcomes", "status"),
    [
        ("start", [Outcome.STARTED, Outcome.ALREADY_RUNNING], 0),
        ("terminate", [Outcome.TERMINATED, Outcome.NOT_RUNNING], 0),
        ("pause", [Outcome.PAUSED, Outcome.NOT_RUNNING], 1),
        ("run-now", [Outcome.NOT_RUNNING], 1),
        ("start", [Outcome.STARTED, Outcome.REFUSED], 1),
        ("start", [Outcome.REFUSED, Outcome.ENGINE_UNREACHABLE], 2),
        ("pause", [], 0),
    ],
)
def test_exit_status_maps_outcomes_to_what_scripts_read(action, outcomes, status):
    assert command.exit_status(action, outcomes) == status


# --- list, show, runs ------------------------------------------------------------------------


def test_list_shows_each_schedule_with_its_engine_state(worker, durable_client, make_schedule):
    live = started(durable_client, make_schedule(name="nightly", interval=HOUR))
    make_schedule(name="weekly", interval=timedelta(days=7), dry_run=True)

    status, out, _ = schedules("list")

    assert status == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["NAME", "TASK", "CADENCE", "DESIRED", "ENGINE"]
    nightly, weekly = rows
    assert nightly.startswith("nightly ") and "every 1 h (delay)" in nightly
    assert " running " in nightly and "succeeded" in nightly
    assert weekly.startswith("weekly ") and "sample (dry run)" in weekly
    assert "every 7 d (delay)" in weekly and " stopped " in weekly and "not started" in weekly

    status, out, _ = schedules("list", "--json")

    assert status == 0
    listed = {row["name"]: row for row in json.loads(out)}
    assert listed["nightly"]["engine_state"] in {"running", "pending", "continued as new"}
    assert listed["nightly"]["desired_state"] == "running"
    assert listed["nightly"]["last_run_status"] == "succeeded"
    assert listed["nightly"]["iteration"] == live.current_iteration == 1
    assert listed["nightly"]["next_run_at"] is not None
    assert listed["weekly"] == {
        "name": "weekly",
        "task": "sample",
        "dry_run": True,
        "cadence": "fixed_delay",
        "interval_seconds": 604800.0,
        "cron": "",
        "timezone": "UTC",
        "desired_state": "stopped",
        "engine_state": "not started",
        "status_reason": "",
        "iteration": 0,
        "last_run_status": None,
        "last_run_started_at": None,
        "next_run_at": None,
    }


def test_list_with_the_engine_unreachable_still_lists_and_exits_2(engine_port, make_schedule):
    make_schedule(name="nightly")

    status, out, error = schedules("list", "--json")

    assert status == 2
    assert [(r["name"], r["engine_state"]) for r in json.loads(out)] == [("nightly", "unreachable")]
    assert "engine is unreachable" in error


def test_show_tells_configuration_engine_state_and_last_runs(worker, durable_client, make_schedule):
    schedule = started(
        durable_client, make_schedule(name="nightly", interval=HOUR, params={"seconds": 0})
    )

    status, out, _ = schedules("show", "nightly")

    assert status == 0
    lines = out.splitlines()
    assert "name:" in lines[0] and lines[0].endswith("nightly")
    assert any(line.startswith("params:") and '{"seconds": 0}' in line for line in lines)
    assert any(line.startswith("desired_state:") and line.endswith("running") for line in lines)
    assert any(line.startswith("instance_id:") and schedule.instance_id in line for line in lines)
    assert "Last 10 runs:" in lines
    assert any(line.split()[:2] == ["1", "succeeded"] for line in lines)

    status, out, _ = schedules("show", "nightly", "--json")

    assert status == 0
    shown = json.loads(out)
    assert shown["interval_seconds"] == 3600.0
    assert shown["engine_state"] in {"running", "pending", "continued as new"}
    assert [(r["iteration"], r["status"]) for r in shown["runs"]] == [(1, "succeeded")]


def test_runs_lists_newest_first_and_filters_by_status(make_schedule):
    schedule = make_schedule(name="nightly")
    add_run(schedule, 1, "succeeded", items_deleted=3)
    add_run(schedule, 2, "failed", error="disk full\nTraceback ...")
    add_run(schedule, 3, "succeeded")
    add_run(schedule, 4, "failed", error="no route to host")

    status, out, _ = schedules("runs", "nightly")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == ["#", "4", "3", "2", "1"]

    status, out, _ = schedules("runs", "nightly", "--status", "failed")
    assert status == 0
    _, newest, older = out.splitlines()
    assert newest.split()[:2] == ["4", "failed"] and newest.endswith("no route to host")
    assert older.split()[:2] == ["2", "failed"] and older.endswith("disk full")

    status, out, _ = schedules("runs", "nightly", "--status", "failed", "--json", "--limit", "1")
    assert status == 0
    (run,) = json.loads(out)
    assert (run["iteration"], run["status"], run["error"]) == (4, "failed", "no route to host")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["runs", "nightly", "--status", "broken"], "invalid choice: 'broken'"),
        (["runs", "nightly", "--limit", "0"], "must be at least 1, not 0"),
        (["start"], "one of the arguments NAME --all --task is required"),
        (["start", "nightly", "--all"], "--all: not allowed with argument NAME"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["show", "nobody"], "No schedule is named 'nobody'."),
        (["pause", "--task", "no_such_task"], "No task is named 'no_such_task'"),
    ],
)
def test_a_bad_argument_is_refused_with_status_1(make_schedule, args, expected):
    make_schedule(name="nightly")

    status, out, error = schedules(*args)

    assert (status, out) == (1, "")
    assert expected in error
    assert desired(CleanupSchedule.objects.get(name="nightly")) == STOPPED


# --- actions ---------------------------------------------------------------------------------


def test_start_by_name_starts_its_orchestration(worker, durable_client, make_schedule):
    nightly = make_schedule(name="nightly", interval=HOUR)
    other = make_schedule(name="other", interval=HOUR)

    status, out, _ = schedules("start", "nightly")

    assert status == 0
    assert out == "“nightly” started at iteration 1.\n"
    assert desired(nightly) == RUNNING
    wait_until(lambda: is_live(durable_client, nightly))
    wait_until(lambda: runs_of(nightly))
    assert desired(other) == STOPPED and state_of(durable_client, other) is None

    status, out, _ = schedules("start", "nightly")

    assert status == 0  # already as asked
    assert out == "“nightly” is already running; nothing new started.\n"


def test_task_selects_the_schedules_of_one_task(worker, durable_client, make_schedule):
    first = make_schedule(name="a-sample", interval=HOUR)
    second = make_schedule(name="b-sample", interval=HOUR)
    sessions = make_schedule(name="sessions", task="expired_sessions", params={}, interval=HOUR)

    status, out, _ = schedules("start", "--task", "sample")

    assert status == 0
    assert out.splitlines() == [
        "“a-sample” started at iteration 1.",
        "“b-sample” started at iteration 1.",
    ]
    for schedule in (first, second):
        wait_until(lambda schedule=schedule: is_live(durable_client, schedule))
    assert desired(sessions) == STOPPED and state_of(durable_client, sessions) is None


def test_all_terminates_every_schedule(worker, durable_client, make_schedule):
    running = started(durable_client, make_schedule(name="a-running", interval=HOUR))
    idle = make_schedule(name="b-idle", interval=HOUR)

    status, out, _ = schedules("terminate", "--all")

    assert status == 0  # a stopped schedule is as terminate asks
    assert out.splitlines() == ["“a-running” terminated.", "“b-idle” was not running."]
    assert desired(running) == STOPPED and desired(idle) == STOPPED
    wait_until(lambda: not is_live(durable_client, running))


def test_pause_then_resume(worker, durable_client, make_schedule):
    schedule = started(durable_client, make_schedule(name="nightly", interval=HOUR))

    status, out, _ = schedules("pause", "nightly")

    assert (status, out) == (0, "“nightly” paused.\n")
    assert desired(schedule) == PAUSED
    wait_until(lambda: state_of(durable_client, schedule).runtime_status == Status.SUSPENDED)

    status, out, _ = schedules("resume", "nightly")

    assert (status, out) == (0, "“nightly” resumed.\n")
    assert desired(schedule) == RUNNING
    wait_until(
        lambda: (
            state_of(durable_client, schedule).runtime_status
            in {Status.RUNNING, Status.PENDING, Status.CONTINUED_AS_NEW}
        )
    )


def test_run_now_runs_once_recorded_as_asked_from_the_shell(worker, durable_client, make_schedule):
    schedule = started(durable_client, make_schedule(name="nightly", interval=HOUR))
    planned = schedule.next_run_at

    status, out, _ = schedules("run-now", "nightly")

    assert (status, out) == (0, "“nightly”: run requested.\n")
    manual = wait_until(lambda: [r for r in runs_of(schedule) if r.trigger == "manual"])
    assert "manage.py schedules" in manual[0].triggered_by
    schedule.refresh_from_db()
    assert schedule.next_run_at == planned


def test_restart_starts_a_fresh_orchestration(worker, durable_client, make_schedule):
    schedule = started(durable_client, make_schedule(name="nightly", interval=HOUR))
    generation = schedule.generation

    status, out, _ = schedules("restart", "nightly")

    assert (status, out) == (0, "“nightly” restarted.\n")
    wait_until(lambda: [r for r in runs_of(schedule) if r.trigger == "restart"])
    schedule.refresh_from_db()
    assert schedule.generation == generation + 1
    assert is_live(durable_client, schedule)


def test_an_action_that_does_not_apply_exits_1(worker, durable_client, make_schedule):
    make_schedule(name="idle")

    status, out, error = schedules("pause", "idle")

    assert (status, out) == (1, "“idle” is not running.\n")
    assert error == "pause: not every schedule is as asked (see above)."

    status, out, _ = schedules("run-now", "idle")

    assert (status, out) == (1, "“idle” is not running; start or resume it first.\n")


def test_an_unknown_name_changes_nothing_and_exits_1(worker, durable_client, make_schedule):
    known = make_schedule(name="known")

    status, out, error = schedules("start", "known", "missing", "also\nmissing")

    assert (status, out) == (1, "")
    assert error == "No schedule named 'missing', 'also\\nmissing'; nothing was done."
    assert desired(known) == STOPPED
    assert state_of(durable_client, known) is None


def test_with_the_engine_unreachable_the_state_is_recorded_and_it_exits_2(
    engine_port, make_schedule
):
    schedule = make_schedule(name="nightly")

    status, out, error = schedules("start", "nightly")

    assert status == 2
    assert out == (
        "“nightly”: engine unreachable. Recorded as running; the worker acts on it when the "
        "engine is back.\n"
    )
    assert "engine is unreachable" in error
    assert desired(schedule) == RUNNING


def test_many_schedules_go_the_bulk_way_with_one_message(
    worker, durable_client, make_schedule, monkeypatch
):
    monkeypatch.setattr(control_act, "ONE_BY_ONE", 1)
    first = make_schedule(name="first", interval=HOUR)
    second = make_schedule(name="second", interval=HOUR)

    status, out, _ = schedules("start", "--all")

    assert (status, out) == (0, "2 schedules starting.\n")
    # The command ends once the engine calls are made: the orchestrations exist.
    assert is_live(durable_client, first) and is_live(durable_client, second)

    CleanupSchedule.objects.filter(pk=second.pk).update(desired_state=STOPPED)
    status, out, _ = schedules("pause", "--all")

    assert (status, out) == (1, "1 schedule pausing; 1 schedule not running.\n")
    wait_until(lambda: state_of(durable_client, first).runtime_status == Status.SUSPENDED)


def test_many_schedules_with_the_engine_unreachable_exit_2(engine_port, make_schedule, monkeypatch):
    monkeypatch.setattr(control_act, "ONE_BY_ONE", 1)
    first = make_schedule(name="first")
    second = make_schedule(name="second")

    status, out, error = schedules("start", "first", "second")

    assert (status, out) == (2, "2 schedules starting.\n")
    assert "engine is unreachable" in error
    assert desired(first) == RUNNING and desired(second) == RUNNING


# --- through manage.py -----------------------------------------------------------------------


def _manage(*args: str, **env: str) -> Any:
    return manage("schedules", *args, DATABASE_URL=database_url(), ENDPOINT="", **env)


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["start"],
        ["start", "nobody"],
        ["pause", "--task", "no_such_task"],
        ["runs", "nightly", "--status", "broken"],
    ],
)
def test_a_bad_argument_is_one_line_on_stderr(make_schedule, args):
    make_schedule(name="nightly")

    result = _manage(*args)

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_start_through_manage_py(engine_port, worker, durable_client, make_schedule):
    schedule = make_schedule(name="nightly", interval=HOUR)

    result = _manage("start", "nightly", EMBEDDED_ENGINE_PORT=str(engine_port))

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "“nightly” started at iteration 1.\n"
    wait_until(lambda: is_live(durable_client, schedule))
    wait_until(lambda: runs_of(schedule))
