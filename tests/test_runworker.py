"""`manage.py runworker` as a real child process: start-up, clean stop, crash recovery, bad input."""

from __future__ import annotations

import signal
import socket
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, transaction

from cleanups import control
from cleanups.control import Outcome
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from tests.conftest import runs_of, wait_for_clock, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.subprocess]

READY = "Press Ctrl+C to stop"
RUNNING = CleanupSchedule.DesiredState.RUNNING


def exit_code(worker, timeout: float = 20.0) -> int:
    """Wait for a worker process that should end by itself; its exit code."""
    code = worker.process.wait(timeout=timeout)
    worker._reader.join(timeout=5)
    return code


def succeeded(schedule: CleanupSchedule) -> list[CleanupRun]:
    return [run for run in runs_of(schedule) if run.status == CleanupRun.Status.SUCCEEDED]


def assert_clean_stop(worker, sig: int) -> None:
    code = worker.stop(sig)
    assert code == 0, worker.output
    assert f"Received {signal.Signals(sig).name}, stopping..." in worker.output
    assert worker.output.rstrip().endswith("Worker stopped."), worker.output
    assert "Traceback" not in worker.output, worker.output


# 1. Start-up output, runs, clean stop ---------------------------------------------------------


def test_startup_output_runs_and_sigterm_stops_cleanly(
    engine_port, start_worker_process, make_schedule
):
    worker = start_worker_process()
    worker.wait_for_output(READY)
    assert "Mode: embedded" in worker.output
    assert "Using taskhub: default" in worker.output
    assert f"Using endpoint: http://127.0.0.1:{engine_port}" in worker.output
    assert f"Embedded engine listening on 127.0.0.1:{engine_port}" in worker.output

    schedule = make_schedule(interval=timedelta(seconds=1))
    outcome = control.start_schedule(schedule)  # the test's client talks to the subprocess's engine
    assert outcome.outcome in (Outcome.STARTED, Outcome.ALREADY_RUNNING), outcome.message

    wait_until(lambda: len(succeeded(schedule)) >= 2, timeout=15)
    for run in succeeded(schedule)[:2]:
        worker.wait_for_output(
            f"run schedule={schedule.name} iteration={run.iteration} status=succeeded", timeout=5
        )
    assert [run.iteration for run in succeeded(schedule)[:2]] == [1, 2]
    # One log line per run: never a second line for the same iteration.
    for iteration in (1, 2):
        line = f"run schedule={schedule.name} iteration={iteration} status="
        assert worker.output.count(line) == 1, worker.output
    assert WorkerHeartbeat.objects.count() == 1

    assert_clean_stop(worker, signal.SIGTERM)
    # A clean stop takes its heartbeat away and leaves no run of its own "running".
    assert not WorkerHeartbeat.objects.exists()
    assert not CleanupRun.objects.running().exists()
    schedule.refresh_from_db()
    assert schedule.desired_state == RUNNING  # stopping the worker is not stopping the schedule


def test_sigterm_stops_within_its_limit_even_mid_run(start_worker_process, make_schedule):
    """A cleanup that would run for a minute does not hold the worker's stop: past
    WORKER_STOP_SECONDS it leaves, its run interrupted, for the engine to deliver again."""
    worker = start_worker_process(env={"WORKER_STOP_SECONDS": "1"})
    worker.wait_for_output(READY)
    schedule = make_schedule(params={"seconds": 60})
    control.start_schedule(schedule)
    wait_until(lambda: CleanupRun.objects.running().filter(schedule=schedule).exists())

    began = time.monotonic()
    code = worker.stop(signal.SIGTERM)

    assert code == 0, worker.output
    assert time.monotonic() - began < 15, worker.output
    assert "stopping without waiting longer for the work in progress" in worker.output
    assert "Traceback" not in worker.output, worker.output
    (run,) = runs_of(schedule)
    assert run.status == CleanupRun.Status.INTERRUPTED
    assert not WorkerHeartbeat.objects.exists()


def test_sigint_stops_cleanly(start_worker_process):
    worker = start_worker_process()
    worker.wait_for_output(READY)
    assert_clean_stop(worker, signal.SIGINT)


# 2. The reconciler starts what the database says should run -----------------------------------


def test_reconciler_starts_schedules_marked_running(start_worker_process, make_schedule):
    schedule = make_schedule(interval=timedelta(seconds=1))
    # Desired state only, no engine call: as if the engine was down when the operator started it.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state=RUNNING)

    worker = start_worker_process()
    worker.wait_for_output(READY)
    wait_until(lambda: len(succeeded(schedule)) >= 1, timeout=15)
    assert runs_of(schedule)[0].iteration == 1
    worker.wait_for_output(f"reconciler: schedule {schedule.name} had missing orchestration")

    assert_clean_stop(worker, signal.SIGTERM)


# 3. A killed worker: the next one interrupts its run and goes on with the next iteration ------


def test_killed_worker_run_is_interrupted_and_schedule_continues(
    start_worker_process, make_schedule
):
    schedule = make_schedule(task="sample", params={"seconds": 3}, interval=timedelta(seconds=1))
    first = start_worker_process()
    first.wait_for_output(READY)
    control.start_schedule(schedule)
    wait_until(
        lambda: CleanupRun.objects.filter(
            schedule=schedule, iteration=1, status=CleanupRun.Status.RUNNING
        ).exists(),
        timeout=15,
    )
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_worker = CleanupRun.objects.get(schedule=schedule, iteration=1).worker
    assert killed_worker

    # Fast runs from here on, so the test does not wait on the sample's sleep.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(params={"seconds": 0})
    second = start_worker_process()
    second.wait_for_output(READY)

    wait_until(
        lambda: (
            CleanupRun.objects.get(schedule=schedule, iteration=1).status
            == CleanupRun.Status.INTERRUPTED
        ),
        timeout=15,
    )
    wait_until(
        lambda: CleanupRun.objects.filter(
            schedule=schedule, iteration=2, status=CleanupRun.Status.SUCCEEDED
        ).exists(),
        timeout=15,
    )

    runs = runs_of(schedule)
    iterations = [run.iteration for run in runs]
    assert len(iterations) == len(set(iterations)), iterations
    assert iterations == list(range(1, len(iterations) + 1)), iterations
    first_run, second_run = runs[0], runs[1]
    assert first_run.status == CleanupRun.Status.INTERRUPTED
    assert first_run.attempts == 1  # iteration 1 was not run again
    assert first_run.finished_at is not None
    assert second_run.worker != killed_worker
    # The run's log line follows its record's update: wait for the line, not only the row.
    second.wait_for_output("status=succeeded")
    assert f"run schedule={schedule.name} iteration=1 " not in second.output
    schedule.refresh_from_db()
    assert schedule.desired_state == RUNNING
    assert schedule.current_iteration >= 2

    assert_clean_stop(second, signal.SIGTERM)


# 4. Bad input: non-zero exit, one readable line, no traceback -------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-activities", "0"], {}, "argument --max-activities: must be at least 1, not 0"),
        (["--threads", "abc"], {}, "argument --threads: must be a whole number, not 'abc'"),
        ([], {"ENDPOINT": "ftp://nope"}, "ENDPOINT 'ftp://nope' is not an http:// or https:// URL"),
        (
            [],
            {"EMBEDDED_ENGINE_PORT": "99999"},
            "EMBEDDED_ENGINE_PORT must be between 1 and 65535, not 99999",
        ),
    ],
    ids=["max-activities-0", "threads-abc", "endpoint-ftp", "port-99999"],
)
def test_bad_input_exits_non_zero_with_one_line(start_worker_process, args, env, message):
    worker = start_worker_process(*args, env=env)
    assert exit_code(worker) != 0, worker.output
    assert "Traceback" not in worker.output, worker.output
    # The message is one line of its own (argparse's usage may precede it), not the end of a
    # stack dump.
    assert len([line for line in worker.lines if message in line]) == 1, worker.output
    assert not [line for line in worker.lines if line.lstrip().startswith('File "')]
    assert READY not in worker.output
    if env:  # a bad setting is exactly one line, not a system-check report
        (line,) = [line for line in worker.lines if line.strip()]
        assert line.startswith(f"CommandError: {message}")


# 5. --help ---------------------------------------------------------------------------------


def test_help_explains_the_options(start_worker_process):
    worker = start_worker_process("--help")
    assert exit_code(worker) == 0, worker.output
    text = " ".join(worker.output.split())  # argparse wraps lines
    assert "--max-activities" in text
    assert "Most cleanup activities this worker runs at once" in text
    assert "--max-orchestrations" in text
    assert "Most orchestration work items processed at once" in text
    assert "--threads" in text
    assert "Size of the SDK's thread pool, which steps the orchestrations" in text
    assert "Cleanup runs have threads of their own" in text
    assert "Traceback" not in worker.output


# 6. The worker and another process write at the same time ------------------------------------


def test_concurrent_writes_never_hit_database_is_locked(start_worker_process, make_schedule):
    busy = make_schedule(name="busy", interval=timedelta(seconds=0.5), params={"seconds": 0})
    edited = make_schedule(name="edited")
    CleanupSchedule.objects.filter(pk=busy.pk).update(desired_state=RUNNING)

    worker = start_worker_process()
    worker.wait_for_output(READY)
    wait_until(lambda: len(succeeded(busy)) >= 1, timeout=15)

    writes = 0
    errors: list[OperationalError] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            CleanupSchedule.objects.filter(pk=edited.pk).update(
                name=f"edited-{writes}", params={"seconds": writes % 5}
            )
            with transaction.atomic():  # read, then write: the lock upgrade case
                schedule = CleanupSchedule.objects.get(pk=edited.pk)
                schedule.params = {"seconds": writes % 7}
                schedule.save()
            CleanupSchedule.objects.create(name=f"made-{writes}", interval=timedelta(seconds=60))
        except OperationalError as error:
            errors.append(error)
        writes += 1

    assert errors == []
    assert writes >= 100
    runs_before = len(succeeded(busy))
    wait_until(lambda: len(succeeded(busy)) >= runs_before + 1, timeout=10)
    assert not CleanupRun.objects.filter(schedule=busy, status=CleanupRun.Status.FAILED).exists()
    assert "database is locked" not in worker.output, worker.output
    assert "database error" not in worker.output, worker.output
    assert_clean_stop(worker, signal.SIGTERM)
    assert "database is locked" not in worker.output, worker.output


# 4b. The port is taken ----------------------------------------------------------------------


def test_port_in_use_exits_non_zero_with_one_line(engine_port, start_worker_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", engine_port))
        taken.listen()
        worker = start_worker_process()
        assert exit_code(worker) != 0, worker.output
    assert "Traceback" not in worker.output, worker.output
    assert READY not in worker.output
    assert (
        f"CommandError: cannot listen on 127.0.0.1:{engine_port}: the port is in use"
        in worker.output
    ), worker.output
    assert "Set EMBEDDED_ENGINE_PORT to use another port." in worker.output
    # One readable line about the failure: not also gRPC's own C-level "add_port" log line.
    about_the_port = [line for line in worker.lines if "in use" in line]
    assert about_the_port == [
        f"CommandError: cannot listen on 127.0.0.1:{engine_port}: the port is in use "
        "(is another runworker running?). Set EMBEDDED_ENGINE_PORT to use another port."
    ], worker.output


# Missed runs: the worker is down for three intervals ------------------------------------------


@pytest.mark.parametrize("policy", ["run_once", "skip"])
def test_missed_runs_after_the_worker_was_down(start_worker_process, make_schedule, policy):
    # The grace is a third of the interval: a run that comes late on a loaded machine (a worker
    # starting up, a catch-up under way) is still on time, and an outage still misses slots.
    grace = timedelta(seconds=1)
    schedule = make_schedule(cadence="fixed_rate", interval=3 * grace, missed_runs=policy)
    env = {"MISSED_RUN_GRACE_SECONDS": str(grace.total_seconds())}
    worker = start_worker_process(env=env)
    worker.wait_for_output(READY)
    control.start_schedule(schedule)
    wait_until(lambda: len(succeeded(schedule)) >= 1)
    assert worker.stop(signal.SIGTERM) == 0
    down_since = len(runs_of(schedule))
    schedule.refresh_from_db()
    # Down for three of its planned times, each past the grace period.
    wait_for_clock(schedule.next_run_at + 2 * schedule.interval + grace + timedelta(seconds=0.5))

    second = start_worker_process(env=env)
    wait_until(lambda: CleanupRun.objects.filter(schedule=schedule, status="skipped").exists())
    skipped = CleanupRun.objects.get(schedule=schedule, status="skipped")
    assert skipped.reason == "worker down"
    catch_ups = CleanupRun.objects.filter(schedule=schedule, trigger="catch_up")
    if policy == "run_once":
        wait_until(catch_ups.exists)
        assert skipped.details["slots"] in (2, 3)
    else:
        assert skipped.details["slots"] in (3, 4)
    recovered = max([skipped.iteration, *catch_ups.values_list("iteration", flat=True)])
    # Two scheduled runs on the grid after the recovery, and nothing missed or caught up again.
    after = CleanupRun.objects.filter(schedule=schedule, iteration__gt=recovered)
    wait_until(lambda: after.filter(status="succeeded").count() >= 2, timeout=30)
    assert [run.trigger for run in after.order_by("iteration")[:2]] == ["scheduled"] * 2
    assert catch_ups.count() == (1 if policy == "run_once" else 0)
    assert CleanupRun.objects.filter(schedule=schedule, status="skipped").count() == 1
    assert len(runs_of(schedule)) > down_since
    assert second.stop(signal.SIGTERM) == 0
