"""Legal holds: every deleting path leaves held rows and files alone, and says how many."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupHold, CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, delete_in_batches, get_task
from tests.conftest import run_iteration
from tests.testapp.models import Child, Event, Parent

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)
Status = CleanupRun.Status
OLD_ROWS = {"model": "testapp.Event", "field": "created_at", "older_than_days": 30}


def old_events(count: int, **fields: Any) -> None:
    created = timezone.now() - 40 * DAY
    Event.objects.bulk_create([Event(created_at=created, **fields) for _ in range(count)])


def hold(reason: str = "litigation 42", **fields: Any) -> CleanupHold:
    made = CleanupHold(reason=reason, **fields)
    made.full_clean()
    made.save()
    return made


def running(make_schedule: Any, **fields: Any) -> CleanupSchedule:
    fields.setdefault("task", "delete_old_rows")
    fields.setdefault("params", OLD_ROWS)
    return make_schedule(desired_state=CleanupSchedule.DesiredState.RUNNING, **fields)


run = run_iteration


def test_a_scheduled_run_keeps_held_rows_and_reports_them(make_schedule):
    old_events(30, kind="debug")
    old_events(5, kind="audit")
    hold(model_label="testapp.Event", filter={"kind": "audit"})
    done = run(running(make_schedule))
    assert done.status == Status.SUCCEEDED and done.items_deleted == 30
    assert sorted(Event.objects.values_list("kind", flat=True)) == ["audit"] * 5
    assert "5 kept by hold 'litigation 42'." in done.message
    assert done.details["kept"] == {"litigation 42": 5}


def test_a_dry_run_and_a_run_now_leave_held_rows_alone(make_schedule):
    old_events(10, kind="debug")
    old_events(4, kind="audit")
    hold(model_label="testapp.Event", filter={"kind": "audit"})
    counted = run(running(make_schedule, dry_run=True))
    assert counted.items_deleted == 10 and counted.details["kept"] == {"litigation 42": 4}
    manual = run(running(make_schedule), trigger=CleanupRun.Trigger.MANUAL)
    assert manual.items_deleted == 10
    assert Event.objects.count() == 4


def test_an_ended_hold_keeps_nothing_and_a_whole_model_hold_keeps_all(make_schedule):
    old_events(6)
    hold("expired", model_label="testapp.Event", ends_at=timezone.now() - DAY)
    whole = hold("everything", model_label="testapp.Event")
    assert run(running(make_schedule)).items_deleted == 0
    assert Event.objects.count() == 6
    whole.delete()
    assert run(running(make_schedule)).items_deleted == 6


def test_a_held_child_keeps_the_parent_it_would_cascade_from():
    created = timezone.now() - 40 * DAY
    parents = Parent.objects.bulk_create([Parent(created_at=created) for _ in range(5)])
    Child.objects.bulk_create([Child(parent=parent) for parent in parents])
    kept = Child.objects.get(parent=parents[2])
    hold("child", model_label="testapp.Child", filter={"id": kept.pk})
    ctx = CleanupContext({})
    delete_in_batches(ctx, Parent.objects.all())
    assert list(Parent.objects.values_list("pk", flat=True)) == [parents[2].pk]
    assert list(Child.objects.values_list("pk", flat=True)) == [kept.pk]
    assert ctx.kept == {"child": 1}


class HoldAfterFirstBatch(CleanupContext):
    """Adds a hold while the run is in progress, after its first batch."""

    def deleted(self, target: str, count: int, bytes: int = 0) -> None:
        super().deleted(target, count, bytes)
        if not CleanupHold.objects.exists():
            hold("late", model_label="testapp.Event", filter={"kind": "audit"})


def test_a_hold_added_during_a_run_applies_from_its_next_batch():
    old_events(20, kind="audit")
    ctx = HoldAfterFirstBatch({})
    delete_in_batches(ctx, Event.objects.order_by(), batch_size=5)
    assert ctx.items == 5  # the first batch went before the hold; none after it
    assert Event.objects.count() == 15
    assert ctx.kept == {"late": 15}


def test_an_approved_run_keeps_rows_held_since_the_hold(make_schedule, django_user_model):
    old_events(1500, kind="debug")
    old_events(600, kind="audit")
    schedule = running(make_schedule)
    held = run(schedule)
    assert held.status == Status.HELD
    hold(model_label="testapp.Event", filter={"kind": "audit"})
    user = django_user_model.objects.create_user("approver", is_staff=True)
    for codename in ("approve_cleanuprun", "delete_event"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    control.approve_run(held, django_user_model.objects.get(pk=user.pk))
    carried = run(schedule, 2, trigger=CleanupRun.Trigger.MANUAL)
    assert carried.items_deleted == 1500
    assert Event.objects.filter(kind="audit").count() == 600


def test_a_directory_hold_keeps_its_files(make_schedule, settings, tmp_path):
    settings.CLEANUP_ALLOWED_DIRS = [str(tmp_path)]
    (tmp_path / "case").mkdir()
    old = time.time() - 40 * 86400
    for path in [tmp_path / "a.log", tmp_path / "case" / "b.log", tmp_path / "case" / "c.log"]:
        path.write_text("x")
        os.utime(path, (old, old))
    hold("case files", directory=str(tmp_path / "case"))
    schedule = running(
        make_schedule,
        task="delete_old_files",
        params={"directory": str(tmp_path), "older_than_days": 30, "recursive": True},
    )
    done = run(schedule)
    assert done.items_deleted == 1
    assert sorted(p.name for p in tmp_path.rglob("*.log")) == ["b.log", "c.log"]
    assert "2 kept by hold 'case files'." in done.message


def test_a_custom_task_through_delete_in_batches_honours_holds():
    old_events(8, kind="audit")
    old_events(2, kind="debug")
    hold(model_label="testapp.Event", filter={"kind__in": ["audit"]})
    task = get_task("delete_old_rows")
    ctx = CleanupContext(task.clean_params(OLD_ROWS))
    task.function(ctx)
    assert ctx.items == 2 and Event.objects.count() == 8


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"model_label": "auth.User", "filter": {"password": "x"}}, "holds secrets"),
        ({"model_label": "testapp.Event", "filter": {"kind__regex": "."}}, "not allowed"),
        ({"model_label": "testapp.Nope"}, "not an installed model"),
        ({"model_label": "testapp.Event", "directory": "/tmp"}, "either a model or a directory"),
        ({}, "either a model or a directory"),
        ({"directory": "relative/dir"}, "absolute path"),
    ],
)
def test_a_bad_hold_is_a_field_error(fields, error):
    with pytest.raises(ValidationError, match=error):
        hold(**fields)


def test_a_hold_filter_needs_the_view_permission_of_its_model(django_user_model):
    staff = django_user_model.objects.create_user("clerk", password="pw", is_staff=True)
    for codename in ("add_cleanuphold", "view_cleanuphold"):
        staff.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(staff)
    data = {"reason": "r", "model_label": "testapp.Event", "filter": '{"kind": "audit"}'}
    response = client.post("/admin/cleanups/cleanuphold/add/", data)
    assert response.status_code == 200
    assert "You may not view testapp.Event" in response.content.decode()
    assert not CleanupHold.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="view_event"))
    response = client.post("/admin/cleanups/cleanuphold/add/", data)
    assert response.status_code == 302
    assert CleanupHold.objects.get().created_by == staff
