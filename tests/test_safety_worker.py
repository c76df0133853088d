"""The guard, an approval and the archive with `manage.py runworker` as a real child process."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import wait_until
from tests.testapp.models import Event

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.subprocess]
Status = CleanupRun.Status


def test_a_held_run_approved_is_carried_out_by_the_worker(
    start_worker_process, make_schedule, django_user_model, settings, tmp_path
):
    old = timezone.now() - timedelta(days=40)
    Event.objects.bulk_create([Event(created_at=old) for _ in range(3000)])
    Event.objects.bulk_create([Event(created_at=timezone.now()) for _ in range(100)])
    media = tmp_path / "media"
    worker = start_worker_process(env={"MEDIA_ROOT": str(media)})
    worker.wait_for_output("Press Ctrl+C to stop")  # its engine is up
    settings.MEDIA_ROOT = str(media)
    schedule = make_schedule(
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 0.3},
        interval=timedelta(hours=1),
        archive=True,
    )
    control.start_schedule(schedule)
    held = wait_until(
        lambda: CleanupRun.objects.filter(schedule=schedule, status=Status.HELD).first(),
        timeout=20,
    )
    assert Event.objects.count() == 3100  # held: nothing deleted
    assert set(held.review["rules"]) == {"max_table_fraction"}
    worker.wait_for_output(f"run schedule={schedule.name} iteration=1 held:", timeout=5)

    user = django_user_model.objects.create_user("approver", is_staff=True)
    for codename in ("approve_cleanuprun", "delete_event"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    message = control.approve_run(held, django_user_model.objects.get(pk=user.pk))
    assert message.endswith("it runs now.")

    carried = wait_until(
        lambda: CleanupRun.objects.filter(
            approval_of=held, status__in=[Status.SUCCEEDED, Status.FAILED]
        ).first(),
        timeout=20,
    )
    assert carried.status == Status.SUCCEEDED, carried.error
    assert carried.trigger == CleanupRun.Trigger.MANUAL and carried.triggered_by == "approver"
    assert carried.items_deleted == 3000 == sum(p["rows"] for p in carried.archive_parts)
    assert Event.objects.count() == 100
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.RUNNING
    assert worker.stop(signal.SIGTERM) == 0
