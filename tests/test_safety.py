"""The blast-radius guard, approvals and rejections, on real runs against a real database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import run_iteration
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)
Status = CleanupRun.Status
OLD_ROWS = {"model": "testapp.Event", "field": "created_at", "older_than_days": 30}


def events(count: int, age: timedelta, **fields: Any) -> None:
    created = timezone.now() - age
    Event.objects.bulk_create([Event(created_at=created, **fields) for _ in range(count)])


run = run_iteration


def running(make_schedule: Any, **fields: Any) -> CleanupSchedule:
    fields.setdefault("task", "delete_old_rows")
    fields.setdefault("params", OLD_ROWS)
    fields.setdefault("interval", timedelta(hours=1))
    return make_schedule(desired_state=CleanupSchedule.DesiredState.RUNNING, **fields)


def approver(django_user_model: Any, name: str = "approver", **extra: Any) -> Any:
    user = django_user_model.objects.create_user(name, is_staff=True, **extra)
    for codename in ("approve_cleanuprun", "delete_event", "view_event"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return django_user_model.objects.get(pk=user.pk)  # a fresh permission cache


def history(schedule: CleanupSchedule, counts: list[int]) -> None:
    """Succeeded runs as the schedule's earlier iterations, with its definition as it is."""
    for iteration, count in enumerate(counts, 1):
        CleanupRun.objects.create(
            schedule=schedule,
            iteration=iteration,
            status=Status.SUCCEEDED,
            started_at=timezone.now() - (len(counts) - iteration + 1) * timedelta(hours=1),
            finished_at=timezone.now(),
            task=schedule.task,
            items_deleted=count,
            config=schedule.snapshot(),
        )
    CleanupSchedule.objects.filter(pk=schedule.pk).update(current_iteration=len(counts))


def test_the_typo_case_is_held_with_the_table_intact(make_schedule):
    """older_than_days typed 0.3 instead of 30 on a table of rows spread over 60 days."""
    for day in range(60):
        events(250, day * DAY + timedelta(hours=12))
    schedule = running(make_schedule, notify_email="ops@example.com")
    history(schedule, [250] * 10)  # it ran with 30 days: 250 rows a day aged out each day
    schedule.params = {**OLD_ROWS, "older_than_days": 0.3}
    schedule.save()

    held = run(schedule, 11)

    assert held.status == Status.HELD
    assert Event.objects.count() == 15_000  # nothing deleted
    assert held.items_deleted == 0
    assert held.review["counts"] == {"testapp.Event": 15_000}
    assert held.review["table_rows"] == {"testapp.Event": 15_000}
    assert set(held.review["rules"]) == {"max_table_fraction", "jump", "first_run"}
    assert len(held.review["sample"]) == 20
    first = Event.objects.order_by("pk").first()
    assert held.review["sample"][0] == [str(first.pk), str(first)]
    assert "Held for approval" in held.message and "Nothing was deleted" in held.message
    # The schedule goes on waiting, and a person hears of it.
    schedule.refresh_from_db()
    assert schedule.desired_state == CleanupSchedule.DesiredState.RUNNING
    assert schedule.next_run_at is not None
    assert any("held for approval" in message.subject for message in mail.outbox)


def test_a_count_that_jumps_against_its_history_is_held(make_schedule):
    schedule = running(make_schedule)
    history(schedule, [100, 120, 90, 110, 100, 95, 105, 100, 130, 80])
    events(1500, 40 * DAY)
    events(20_000, DAY)  # young rows: the table is large, the fraction small
    held = run(schedule, 11)
    assert held.status == Status.HELD
    assert held.review["rule"] == "jump"
    assert "10 times the median (100)" in held.review["reason"]
    assert Event.objects.count() == 21_500


def test_below_the_rules_a_run_deletes_as_before(make_schedule):
    schedule = running(make_schedule)
    history(schedule, [100] * 10)
    events(900, 40 * DAY)  # 9x the median, and below 1,000 rows anyway
    done = run(schedule, 11)
    assert done.status == Status.SUCCEEDED and done.items_deleted == 900
    assert done.review == {}


def test_max_rows_per_run_caps_a_run_oldest_first_and_zero_means_no_limit(make_schedule, settings):
    for day in range(60):  # one old row a day, 31 to 90 days old
        events(1, (31 + day) * DAY)
    events(10, DAY)
    limited = running(make_schedule, max_rows_per_run=50)
    first = run(limited, 1)
    # Not held: a backlog bigger than a run takes goes oldest first, the rest next time.
    assert first.status == Status.SUCCEEDED and first.items_deleted == 50
    assert "the most one run deletes (50)" in first.message
    assert Event.objects.count() == 20
    oldest_left = Event.objects.order_by("created_at").first().created_at
    assert timezone.now() - oldest_left < 41 * DAY  # the 50 oldest went: 90 to 41 days
    assert first.details["backlog"]["rows"] == 10
    assert 9 * DAY < timedelta(seconds=first.details["backlog"]["seconds"]) < 11 * DAY
    second = run(limited, 2)
    assert second.status == Status.SUCCEEDED and second.items_deleted == 10
    assert second.details["backlog"] == {"seconds": 0.0, "rows": 0, "capped": False}
    events(60, 40 * DAY)
    settings.CLEANUP_MAX_ROWS_PER_RUN = 50
    unlimited = running(make_schedule, max_rows_per_run=0)
    assert run(unlimited, 1).items_deleted == 60
    assert Event.objects.count() == 10


def test_a_big_first_run_is_held_and_a_definition_change_counts_as_first(make_schedule):
    events(12_000, 40 * DAY)
    events(20_000, DAY)
    schedule = running(make_schedule)
    assert run(schedule, 1).review["rule"] == "first_run"
    # After a succeeded run with this definition, the same count is not a first run.
    history(schedule, [])
    CleanupRun.objects.filter(schedule=schedule).update(
        status=Status.SUCCEEDED, items_deleted=12_000
    )
    assert run(schedule, 2).status == Status.SUCCEEDED


def test_a_dry_run_is_not_guarded(make_schedule):
    events(3000, 40 * DAY)
    schedule = running(make_schedule, dry_run=True)
    counted = run(schedule, 1)
    assert counted.status == Status.SUCCEEDED and counted.items_deleted == 3000
    assert Event.objects.count() == 3000


# approval -----------------------------------------------------------------------------------


def held_run(make_schedule: Any, rows: int = 2000) -> CleanupRun:
    events(rows, 40 * DAY)
    events(500, DAY)
    schedule = running(make_schedule)
    held = run(schedule, 1)
    assert held.status == Status.HELD
    return held


def test_approval_deletes_at_most_what_it_showed_plus_the_slack(
    make_schedule, django_user_model, settings
):
    settings.CLEANUP_APPROVAL_SLACK = 0.01
    held = held_run(make_schedule)
    events(100, 40 * DAY)  # aged into the window since: only 20 of them may go (1% of 2,000)
    message = control.approve_run(held, approver(django_user_model))
    assert "approved (at most 2,020 items)" in message
    held.refresh_from_db()
    assert held.approved_by == "approver" and held.approved_rows == 2020

    # The next run of the schedule (run now, or its scheduled one) carries it out.
    carried = run(held.schedule, 2, trigger=CleanupRun.Trigger.MANUAL)
    assert carried.status == Status.SUCCEEDED
    assert carried.approval_of_id == held.pk
    assert carried.approved_by == "approver" and carried.approved_rows == 2020
    assert carried.items_deleted == 2020
    assert Event.objects.filter(created_at__lt=timezone.now() - 30 * DAY).count() == 80
    assert "the most its approval allows" in carried.message
    # The approval is used once: the run after it is guarded again.
    assert run(held.schedule, 3).status == Status.SUCCEEDED  # 80 rows: under every rule


def test_an_approval_does_not_apply_to_an_edited_definition(make_schedule, django_user_model):
    held = held_run(make_schedule)
    control.approve_run(held, approver(django_user_model))
    schedule = held.schedule
    schedule.params = {**OLD_ROWS, "older_than_days": 20}
    schedule.save()
    again = run(schedule, 2)
    assert again.status == Status.HELD and again.approval_of is None
    assert Event.objects.count() == 2500


def test_four_eyes_refuses_the_editor_and_others_need_the_permission(
    make_schedule, django_user_model, settings
):
    editor = approver(django_user_model, "editor")
    held = held_run(make_schedule, rows=1500)
    CleanupSchedule.objects.filter(pk=held.schedule_id).update(changed_by=editor)
    held = CleanupRun.objects.select_related("schedule").get(pk=held.pk)
    with pytest.raises(control.DecisionRefused, match=r"last edited .* four-eyes"):
        control.approve_run(held, editor)
    plain = django_user_model.objects.create_user("plain", is_staff=True)
    with pytest.raises(control.DecisionRefused, match="lacks the permission"):
        control.approve_run(held, plain)
    settings.CLEANUP_FOUR_EYES = False
    assert "approved" in control.approve_run(held, editor)


def test_an_approver_who_may_not_delete_the_rows_is_refused(make_schedule, django_user_model):
    held = held_run(make_schedule, rows=1500)
    user = django_user_model.objects.create_user("looker", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="approve_cleanuprun"))
    with pytest.raises(control.DecisionRefused, match="delete_event"):
        control.approve_run(held, django_user_model.objects.get(pk=user.pk))


def test_reject_records_it_and_pauses_the_schedule(make_schedule, django_user_model):
    held = held_run(make_schedule, rows=1500)
    message = control.reject_run(held, approver(django_user_model))
    held.refresh_from_db()
    assert held.rejected_by == "approver" and held.rejected_at is not None
    assert "rejected" in message
    schedule = CleanupSchedule.objects.get(pk=held.schedule_id)
    assert schedule.desired_state == CleanupSchedule.DesiredState.PAUSED
    with pytest.raises(control.DecisionRefused, match="rejected already"):
        control.approve_run(held, approver(django_user_model, "second"))
    assert Event.objects.count() == 2000


def test_the_schedules_command_approves_and_rejects_with_the_same_checks(
    make_schedule, django_user_model
):
    held = held_run(make_schedule, rows=1500)
    django_user_model.objects.create_user("nobody")
    with pytest.raises(CommandError, match="lacks the permission"):
        call_command("schedules", "approve", str(held.pk), "--user", "nobody")
    with pytest.raises(CommandError, match="No user is named 'ghost'"):
        call_command("schedules", "approve", str(held.pk), "--user", "ghost")
    with pytest.raises(CommandError, match="No run has the id 999999"):
        call_command("schedules", "reject", "999999", "--user", "nobody")
    approver(django_user_model)
    call_command("schedules", "approve", str(held.pk), "--user", "approver")
    held.refresh_from_db()
    assert held.approved_by == "approver"
