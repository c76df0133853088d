"""Safety on the pages and in the admin: the held run's review, its buttons and actions, the
schedule's safety fields and its deletion report."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration
from tests.conftest import form_data
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)
Status = CleanupRun.Status


def held_run(make_schedule: Any) -> CleanupRun:
    created = timezone.now() - 40 * DAY
    Event.objects.bulk_create([Event(created_at=created, name=f"e{n}") for n in range(1500)])
    schedule = make_schedule(
        desired_state=CleanupSchedule.DesiredState.RUNNING,
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 30},
        interval=timedelta(hours=1),
    )
    execute_iteration(schedule.pk, 1)
    run = CleanupRun.objects.get(schedule=schedule, iteration=1)
    assert run.status == Status.HELD
    return run


def staff(django_user_model: Any, name: str, *codenames: str) -> Client:
    user = django_user_model.objects.create_user(name, is_staff=True)
    for codename in ("view_cleanupschedule", "view_cleanuprun", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def test_the_held_run_page_shows_the_sample_only_to_an_approver_who_may_view_the_rows(
    make_schedule, django_user_model
):
    run = held_run(make_schedule)
    url = reverse("cleanups:run_detail", args=[run.pk])
    approver = staff(
        django_user_model, "approver", "approve_cleanuprun", "view_event", "delete_event"
    )
    page = approver.get(url).content.decode()
    assert "Held for approval" in page and "max_table_fraction" in page
    assert 'id="held-sample"' in page and str(Event.objects.order_by("pk").first()) in page
    assert "Approve: delete at most what it showed" in page

    blind = staff(django_user_model, "blind", "approve_cleanuprun", "delete_event")
    page = blind.get(url).content.decode()
    assert 'id="held-sample"' not in page
    assert "shown to approvers who may view testapp.Event" in page

    viewer = staff(django_user_model, "viewer", "view_event")
    page = viewer.get(url).content.decode()
    assert 'id="held-sample"' not in page and "Approve:" not in page
    assert "lacks the permission cleanups.approve_cleanuprun" in page


def test_the_buttons_approve_and_refuse_with_a_message(make_schedule, django_user_model):
    run = held_run(make_schedule)
    decide = reverse("cleanups:run_decide", args=[run.pk])
    viewer = staff(django_user_model, "viewer")
    response = viewer.post(decide, {"decision": "approve"}, follow=True)
    assert "lacks the permission" in response.content.decode()
    run.refresh_from_db()
    assert run.approved_at is None
    approver = staff(django_user_model, "approver", "approve_cleanuprun", "delete_event")
    response = approver.post(decide, {"decision": "nonsense"}, follow=True)
    assert "Choose approve or reject" in response.content.decode()
    response = approver.post(decide, {"decision": "approve"}, follow=True)
    assert response.status_code == 200
    assert "approved (at most 1,515 items)" in response.content.decode()
    run.refresh_from_db()
    assert run.approved_by == "approver"
    assert approver.get(decide).status_code == 405  # a GET decides nothing


def test_the_admin_actions_need_the_approve_permission(
    make_schedule, django_user_model, admin_client
):
    run = held_run(make_schedule)
    changelist = reverse("admin:cleanups_cleanuprun_changelist")
    viewer = staff(django_user_model, "viewer")
    assert "approve_held_runs" not in viewer.get(changelist).content.decode()
    response = admin_client.post(
        changelist,
        {"action": "reject_held_runs", "_selected_action": [run.pk]},
        follow=True,
    )
    assert "rejected" in response.content.decode()
    run.refresh_from_db()
    assert run.rejected_by == "admin"
    assert CleanupSchedule.objects.get(pk=run.schedule_id).desired_state == "paused"
    response = admin_client.post(
        changelist, {"action": "approve_held_runs", "_selected_action": [run.pk]}, follow=True
    )
    assert "rejected already" in response.content.decode()


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("max_rows_per_run", "-1", "greater than or equal to 0"),
        ("max_table_fraction", "1.5", "less than or equal to 1.0"),
        ("max_table_fraction", "-0.1", "greater than or equal to 0.0"),
    ],
)
def test_bad_safety_limits_are_form_errors(admin_client, field, value, error):
    response = admin_client.post(
        reverse("admin:cleanups_cleanupschedule_add"), form_data(**{field: value})
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not CleanupSchedule.objects.exists()


def test_an_unknown_archive_storage_is_a_form_error(admin_client, settings):
    settings.CLEANUP_ARCHIVE_STORAGE = "nope"
    response = admin_client.post(
        reverse("admin:cleanups_cleanupschedule_add"), form_data(archive="true")
    )
    assert "not a key of STORAGES" in response.content.decode()
    assert not CleanupSchedule.objects.exists()
    response = admin_client.post(
        reverse("admin:cleanups_cleanupschedule_add"), form_data(archive="unknown")
    )
    assert response.status_code == 302  # blank: the site's default, which does not archive
    assert CleanupSchedule.objects.get().archive is None


def test_the_deletion_report_has_each_runs_evidence(make_schedule, django_user_model, admin_user):
    run = held_run(make_schedule)
    approver = staff(django_user_model, "approver", "approve_cleanuprun", "delete_event")
    approver.post(reverse("cleanups:run_decide", args=[run.pk]), {"decision": "approve"})
    execute_iteration(run.schedule_id, 2, trigger=CleanupRun.Trigger.MANUAL)
    viewer = staff(django_user_model, "viewer")
    response = viewer.get(reverse("cleanups:deletion_report_json", args=[run.schedule_id]))
    assert response["Content-Disposition"].endswith('.json"')
    report = json.loads(response.content)
    carried, held = report["runs"]
    assert held["status"] == "held" and held["held_rule"] == "max_table_fraction"
    assert carried["approved_by"] == "approver" and carried["approval_of"] == run.pk
    assert carried["targets"] == {"testapp.Event": 1500}
    assert carried["definition"]["params"]["older_than_days"] == 30
    assert carried["cutoff"] is not None

    response = viewer.get(reverse("cleanups:deletion_report_csv", args=[run.schedule_id]))
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["status"] for row in rows] == ["succeeded", "held"]
    assert rows[0]["approved_by"] == "approver"
    assert json.loads(rows[0]["targets"]) == {"testapp.Event": 1500}
    outsider = Client()
    outsider.force_login(django_user_model.objects.create_user("outsider", is_staff=True))
    assert (
        outsider.get(reverse("cleanups:deletion_report_csv", args=[run.schedule_id])).status_code
        == 403
    )
