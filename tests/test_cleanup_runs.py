"""Cleanup tasks through a real worker: custom tasks, long runs in parts, purge, a killed worker."""

from __future__ import annotations

import signal
import time
from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, get_task
from tests.conftest import is_live, runs_of, wait_for_clock, wait_until
from tests.testapp.models import Child, Event, Parent

pytestmark = pytest.mark.django_db(transaction=True)
READY = "Press Ctrl+C to stop."


def _running(schedule: CleanupSchedule) -> None:
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")


@pytest.mark.subprocess
def test_a_custom_task_from_an_apps_cleanup_tasks_module_runs_in_runworker(
    start_worker_process, make_schedule
):
    listing = start_worker_process("--list-tasks")
    assert listing.process.wait(timeout=30) == 0
    assert "testapp_events_of_kind" in listing.output
    assert "Delete every Event of one kind" in listing.output

    now = timezone.now()
    Event.objects.bulk_create(
        [Event(created_at=now, kind="spam") for _ in range(4)] + [Event(created_at=now)]
    )
    schedule = make_schedule(
        task="testapp_events_of_kind", params={"kind": "spam"}, interval=timedelta(minutes=5)
    )
    _running(schedule)  # the worker's reconciler starts it
    worker = start_worker_process()

    run = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status="succeeded").first()
    )
    assert run.items_deleted == 4
    assert run.details == {"targets": {"testapp.Event": {"items": 4, "bytes": 0}}}
    assert run.message == "Deleted 4 spam event(s)."
    assert list(Event.objects.values_list("kind", flat=True)) == ["info"]
    assert worker.stop() == 0


def test_a_long_run_goes_in_parts_with_progress_in_the_custom_status(
    worker, durable_client, make_schedule, settings
):
    settings.CLEANUP_PART_SECONDS = 0.2
    settings.CLEANUP_FIRST_RUN_REVIEW_ROWS = 0  # a whole table on purpose: the guard would hold
    old = timezone.now() - timedelta(days=10)
    Event.objects.bulk_create(Event(created_at=old) for _ in range(20_000))
    schedule = make_schedule(
        max_rows_per_run=0,
        max_table_fraction=0,
        task="delete_old_rows",
        params={
            "model": "testapp.Event",
            "field": "created_at",
            "older_than_days": 1,
            "batch_size": 20,
        },
        interval=timedelta(minutes=5),
    )
    control.start_schedule(schedule)

    progress: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = durable_client.get_orchestration_state(schedule.instance_id)
        status = state.get_custom_status() if state else None
        if status and status.get("items_so_far"):
            progress.append(status["items_so_far"])
        if status and status.get("state") == "waiting":
            break
        time.sleep(0.02)

    (run,) = runs_of(schedule)
    assert run.status == "succeeded"
    assert run.parts > 1
    assert run.items_deleted == 20_000
    assert Event.objects.count() == 0
    assert progress, "no progress was ever shown in the custom status"
    assert 0 < progress[0] < 20_000
    assert progress == sorted(progress)


def test_purge_orchestrations_purges_finished_instances_only(worker, durable_client, make_schedule):
    finished = [make_schedule(max_iterations=1) for _ in range(3)]
    alive = make_schedule(interval=timedelta(minutes=5))
    for schedule in [*finished, alive]:
        control.start_schedule(schedule)
    created = [
        durable_client.wait_for_orchestration_completion(s.instance_id, timeout=20).created_at
        for s in finished
    ]
    wait_until(lambda: runs_of(alive))
    # The engine's times are naive UTC. All three older than 0.1 s:
    wait_for_clock(max(created).replace(tzinfo=UTC) + timedelta(seconds=0.2))
    task = get_task("purge_orchestrations")
    params = task.clean_params({"older_than_days": 0.1 / 86400})  # older than 0.1 s

    dry = CleanupContext(params, dry_run=True)
    task.function(dry)
    assert dry.targets == {"orchestrations": {"items": 3, "bytes": 0}}

    ctx = CleanupContext(params)
    assert task.function(ctx) == "Purged 3 orchestration(s)."
    for schedule in finished:
        assert durable_client.get_orchestration_state(schedule.instance_id) is None
    assert is_live(durable_client, alive)


# The worker deletes a whole table on purpose: its guard must not hold the first run.
WHOLE_TABLE = {"CLEANUP_FIRST_RUN_REVIEW_ROWS": "0"}


@pytest.mark.subprocess
def test_a_worker_killed_midway_leaves_no_half_deleted_batch(start_worker_process, make_schedule):
    old = timezone.now() - timedelta(days=10)
    parents = Parent.objects.bulk_create(Parent(created_at=old) for _ in range(20_000))
    Child.objects.bulk_create(Child(parent=p) for p in parents for _ in range(3))
    Parent.objects.bulk_create(Parent(created_at=timezone.now()) for _ in range(10))
    schedule = make_schedule(
        max_rows_per_run=0,  # a whole table on purpose: the guard would hold it
        max_table_fraction=0,
        task="delete_old_rows",
        params={
            "model": "testapp.Parent",
            "field": "created_at",
            "older_than_days": 1,
            "batch_size": 5,
        },
        interval=timedelta(minutes=5),
    )
    _running(schedule)
    worker = start_worker_process(env=WHOLE_TABLE)
    wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, items_deleted__gte=200).exists(),
        timeout=30,
    )
    worker.stop(signal.SIGKILL)

    (run,) = runs_of(schedule)
    assert run.status == "running"  # what the dead worker left; the next worker says otherwise
    parents_left = Parent.objects.count()
    assert 10 < parents_left < 20_010, "the kill came too late to test anything"
    targets = run.details["targets"]
    # The record says exactly how far it got, and every batch went whole or not at all.
    assert targets["testapp.Parent"]["items"] == 20_010 - parents_left
    assert targets["testapp.Child"]["items"] == 3 * targets["testapp.Parent"]["items"]
    assert Child.objects.count() == 3 * (parents_left - 10)
    assert not Child.objects.exclude(parent__in=Parent.objects.all()).exists()

    # The next worker marks the run interrupted, and the next iteration finishes the job.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        params={
            "model": "testapp.Parent",
            "field": "created_at",
            "older_than_days": 1,
            "batch_size": 1000,
        }
    )
    second = start_worker_process(env=WHOLE_TABLE)
    wait_until(
        lambda: CleanupRun.objects.filter(
            schedule=schedule, iteration=2, status="succeeded"
        ).exists(),
        timeout=60,
    )
    first, again = runs_of(schedule)
    assert first.status == "interrupted"
    assert first.details == run.details  # nothing was lost or counted twice
    assert first.items_deleted == 4 * (20_010 - parents_left)  # parents and their children
    assert Parent.objects.count() == 10
    assert Child.objects.count() == 0
    assert again.details["targets"]["testapp.Parent"]["items"] == parents_left - 10
    assert second.stop() == 0
