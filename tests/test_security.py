"""A schedule's editor can delete or read only what they already may: real staff users with
exactly the permissions under test, through the admin form and again through the worker."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration
from tests.conftest import form_data, runs_of, wait_until
from tests.testapp.models import Child, Event, Parent

pytestmark = pytest.mark.django_db
ADD = "admin:cleanups_cleanupschedule_add"
SCHEDULE_PERMISSIONS = ["add_cleanupschedule", "change_cleanupschedule", "view_cleanupschedule"]


def staff(django_user_model, username: str, *codenames: str):
    """A staff user holding exactly these permissions (codenames, unique in this project)."""
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def editor(django_user_model):
    """The issue's deployer's staff user: add/change/view on schedules, nothing else."""
    return staff(django_user_model, "editor", *SCHEDULE_PERMISSIONS)


def rows_form(model: str, field: str, **extra) -> dict[str, str]:
    params = {"model": model, "field": field, "older_than_days": 0.000001, **extra}
    return form_data(
        name=f"clean {model}",
        task="delete_old_rows",
        params=json.dumps(params),
        interval="00:00:01",
    )


def post_as(client, user, data: dict[str, str]):
    client.force_login(user)
    return client.post(reverse(ADD), data)


def params_errors(response) -> list[str]:
    assert response.status_code == 200, "an invalid form must be shown again, not saved"
    return list(response.context["adminform"].form.errors.get("params", []))


# Who may delete what: the form ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("auth.User", "date_joined"),
        ("admin.LogEntry", "action_time"),
        ("cleanups.CleanupRun", "started_at"),
        ("sessions.Session", "expire_date"),
        ("cleanups.CleanupSchedule", "created_at"),
    ],
)
def test_protected_apps_models_are_refused_by_default(client, django_user_model, model, field):
    # Even a superuser: the deployment has not allowed them.
    boss = django_user_model.objects.create_superuser("boss", password="pw")
    response = post_as(client, boss, rows_form(model, field, filter={}))
    assert params_errors(response) == [
        f"You may not delete {model}: {model} is not allowed here "
        "(CLEANUP_ALLOWED_MODELS does not list it)."
    ]
    assert not CleanupSchedule.objects.exists()


def test_the_issues_superuser_deletion_is_refused(client, editor, django_user_model):
    django_user_model.objects.create_superuser("root", password="pw")
    data = rows_form("auth.User", "date_joined", filter={"is_superuser": True})
    assert "is not allowed here" in params_errors(post_as(client, editor, data))[0]
    assert django_user_model.objects.filter(username="root").exists()


def test_an_allowed_model_needs_the_editors_delete_permission(client, editor):
    errors = params_errors(post_as(client, editor, rows_form("testapp.Event", "created_at")))
    assert errors == [
        "You may not delete testapp.Event: editor lacks the permission testapp.delete_event."
    ]


def test_an_entitled_editor_saves_and_is_recorded_as_changed_by(client, django_user_model):
    user = staff(django_user_model, "events", *SCHEDULE_PERMISSIONS, "delete_event")
    response = post_as(client, user, rows_form("testapp.Event", "created_at"))
    assert response.status_code == 302
    assert CleanupSchedule.objects.get().changed_by == user


def test_rows_that_go_by_cascade_need_their_permission_too(client, django_user_model):
    user = staff(django_user_model, "parents", *SCHEDULE_PERMISSIONS, "delete_parent")
    errors = params_errors(post_as(client, user, rows_form("testapp.Parent", "created_at")))
    assert errors == [
        "You may not delete testapp.Parent: parents lacks the permission testapp.delete_child "
        "(testapp.Child rows go with testapp.Parent)."
    ]


def test_cleanup_allowed_models_lists_exactly_what_may_be_targeted(
    client, django_user_model, settings
):
    settings.CLEANUP_ALLOWED_MODELS = ["sessions.Session"]
    boss = django_user_model.objects.create_superuser("boss", password="pw")
    refused = params_errors(post_as(client, boss, rows_form("testapp.Event", "created_at")))
    assert "testapp.Event is not allowed here" in refused[0]
    response = post_as(client, boss, rows_form("sessions.Session", "expire_date"))
    assert response.status_code == 302


def test_a_task_that_names_its_model_in_code_needs_its_permission(client, editor):
    # expired_sessions deletes sessions.Session by design (not an editor's choice of model),
    # so the allow-list does not apply, but the editor's permission does.
    data = {**rows_form("x.Y", "z"), "task": "expired_sessions", "params": "{}"}
    assert params_errors(post_as(client, editor, data)) == [
        "You may not delete sessions.Session: editor lacks the permission sessions.delete_session."
    ]


# Who may delete what: the filter ---------------------------------------------------------------


@pytest.fixture
def boss(django_user_model):
    return django_user_model.objects.create_superuser("boss", password="pw")


@pytest.mark.parametrize(
    ("model", "field", "lookups", "message"),
    [
        # The issue's dry-run oracle: a password hash read out one character at a time.
        (
            "auth.User",
            "date_joined",
            {"password__startswith": "pbkdf2_sha256$"},
            'filter "password__startswith": password holds secrets',
        ),
        # ... and across a relation.
        (
            "admin.LogEntry",
            "action_time",
            {"user__password__startswith": "pbkdf2"},
            'filter "user__password__startswith": user is not one of admin.LogEntry\'s own',
        ),
        (
            "admin.LogEntry",
            "action_time",
            {"user": 1},
            'filter "user": user is not one of admin.LogEntry\'s own plain fields',
        ),
        (
            "testapp.Event",
            "created_at",
            {"name__regex": "^(a+)+$"},
            'filter "name__regex": the lookup regex is not allowed',
        ),
        (
            "testapp.Event",
            "created_at",
            {"name__iregex": "x"},
            "the lookup iregex is not allowed",
        ),
        (
            "testapp.Event",
            "created_at",
            {"name__contains": "x"},
            "the lookup contains is not allowed",
        ),
        (
            "testapp.Event",
            "created_at",
            {"kind__exact__in": ["x"]},
            "the lookup exact__in is not allowed",
        ),
        (
            "testapp.Event",
            "created_at",
            {"created_at__gt": "2020-01-01T00:00:00Z"},
            "created_at is the age field",
        ),
        (
            "testapp.Event",
            "created_at",
            {"kind": 5},
            'filter "kind": kind takes a JSON string.',
        ),
        ("testapp.Event", "created_at", {"id": "1"}, 'filter "id": id takes a number.'),
        (
            "testapp.Event",
            "created_at",
            {"id__gt": 10**30},
            "is not a valid BigAutoField: Ensure this value is less than or equal to",
        ),
        ("testapp.Event", "created_at", {"day": "yesterday"}, "is not a valid DateField"),
        ("testapp.Event", "created_at", {"id__startswith": "1"}, "works on text fields only"),
        ("testapp.Event", "created_at", {"kind__in": []}, "in takes a list of 1 to 1000"),
        ("testapp.Event", "created_at", {"day__isnull": "yes"}, "isnull takes true or false"),
        ("testapp.Event", "created_at", {"pk": 1}, "pk is not one of testapp.Event's own"),
    ],
)
def test_a_filter_may_only_narrow_by_the_models_own_plain_fields(
    client, boss, settings, model, field, lookups, message
):
    settings.CLEANUP_ALLOWED_MODELS = ["auth.User", "admin.LogEntry", "testapp.Event"]
    errors = params_errors(post_as(client, boss, rows_form(model, field, filter=lookups)))
    assert len(errors) == 1
    assert message in errors[0]


def test_fields_listed_as_protected_cannot_be_filtered_on(client, boss, settings):
    settings.CLEANUP_PROTECTED_FIELDS = ["password", "testapp.Event.name"]
    data = rows_form("testapp.Event", "created_at", filter={"name": "x"})
    assert "name holds secrets" in params_errors(post_as(client, boss, data))[0]


def test_the_allowed_lookups_are_accepted_and_applied(client, boss):
    old = timezone.now() - timedelta(days=2)
    Event.objects.bulk_create(
        [Event(created_at=old, kind="debug", name=f"n{i}") for i in range(5)]
        + [Event(created_at=old, kind="audit", name="keep")]
    )
    lookups = {"kind__in": ["debug", "trace"], "name__startswith": "n", "day__isnull": True}
    response = post_as(client, boss, rows_form("testapp.Event", "created_at", filter=lookups))
    assert response.status_code == 302
    schedule = CleanupSchedule.objects.get()
    run_iteration(schedule, 1)
    assert list(Event.objects.values_list("name", flat=True)) == ["keep"]


# Who may delete what: at run time, through the worker ------------------------------------------


def run_iteration(schedule: CleanupSchedule, iteration: int) -> None:
    """One iteration of a running schedule, in this thread: the worker's own activity code."""
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    execute_iteration(schedule.pk, iteration)


def saved_by(client, user, model="testapp.Event", field="created_at", **extra) -> CleanupSchedule:
    data = rows_form(model, field, **extra)
    assert post_as(client, user, data).status_code == 302
    return CleanupSchedule.objects.get(name=data["name"])


def old_events(count: int) -> None:
    old = timezone.now() - timedelta(days=2)
    Event.objects.bulk_create(Event(created_at=old) for _ in range(count))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("revoke", ["permission", "deactivate", "delete the user", "disallow"])
def test_revoked_rights_stop_the_editors_schedule_through_the_worker(
    client, django_user_model, worker, settings, revoke
):
    user = staff(django_user_model, "events", *SCHEDULE_PERMISSIONS, "delete_event")
    schedule = saved_by(client, user)
    control.start_schedule(schedule)
    old_events(3)
    wait_until(lambda: not Event.objects.exists())  # entitled: its runs delete
    first = len(runs_of(schedule))

    if revoke == "permission":
        user.user_permissions.remove(Permission.objects.get(codename="delete_event"))
        why = "events lacks the permission testapp.delete_event"
    elif revoke == "deactivate":
        django_user_model.objects.filter(pk=user.pk).update(is_active=False)
        why = "events is inactive"
    elif revoke == "delete the user":
        user.delete()
        why = "no person is recorded as its editor"
    else:
        settings.CLEANUP_ALLOWED_MODELS = ["sessions.Session"]
        why = "testapp.Event is not allowed here (CLEANUP_ALLOWED_MODELS does not list it)"

    def failed_after(iteration: int):
        runs = CleanupRun.objects.filter(schedule=schedule, iteration__gt=iteration)
        return runs.filter(status="failed").first()

    # A run already under way when the rights changed may finish; the next ones may not.
    refused = wait_until(lambda: failed_after(first))
    old_events(3)
    later = wait_until(lambda: failed_after(refused.iteration))
    for run in refused, later:
        assert run.error == f"DeleteRefused: changed_by no longer may delete testapp.Event: {why}."
        assert run.items_deleted == 0
    assert Event.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_custom_task_cannot_delete_a_model_that_is_not_allowed(make_schedule, boss):
    Session.objects.create(session_key="k" * 32, session_data="x", expire_date=timezone.now())
    schedule = make_schedule(task="testapp_delete_sessions", params={}, changed_by=boss)

    run_iteration(schedule, 1)

    (run,) = runs_of(schedule)
    assert run.status == "failed"
    assert run.error == (
        "DeleteRefused: changed_by no longer may delete sessions.Session: sessions.Session is "
        "not allowed here (CLEANUP_ALLOWED_MODELS does not list it)."
    )
    assert Session.objects.count() == 1


def test_a_custom_task_needs_the_permission_for_what_it_hands_to_delete_in_batches(
    make_schedule, django_user_model, settings
):
    settings.CLEANUP_ALLOWED_MODELS = ["sessions.Session"]
    Session.objects.create(session_key="k" * 32, session_data="x", expire_date=timezone.now())
    viewer = staff(django_user_model, "viewer", "view_session")
    schedule = make_schedule(task="testapp_delete_sessions", params={}, changed_by=viewer)
    run_iteration(schedule, 1)
    assert "viewer lacks the permission sessions.delete_session" in runs_of(schedule)[0].error
    assert Session.objects.count() == 1

    viewer.user_permissions.add(Permission.objects.get(codename="delete_session"))
    run_iteration(schedule, 2)
    assert runs_of(schedule)[1].status == "succeeded"
    assert not Session.objects.exists()


@pytest.mark.parametrize(
    "lookups",
    [
        {"password__startswith": "pbkdf2_sha256$"},  # the dry-run oracle
        {"username__regex": "^(a+)+$"},  # the regex that holds the worker
    ],
)
def test_a_filter_edited_in_the_database_fails_the_run_before_it_reads(
    make_schedule, boss, settings, lookups
):
    # Past the form (edited in the database): the worker validates again and counts nothing.
    settings.CLEANUP_ALLOWED_MODELS = ["auth.User"]
    boss.username = "a" * 27 + "!"
    boss.save()
    schedule = make_schedule(task="delete_old_rows", changed_by=boss, dry_run=True, params={})
    params = {"model": "auth.User", "field": "date_joined", "older_than_days": 1e-6}
    CleanupSchedule.objects.filter(pk=schedule.pk).update(params={**params, "filter": lookups})

    started = time.monotonic()
    run_iteration(schedule, 1)

    (run,) = runs_of(schedule)
    assert run.status == "failed"
    assert run.items_deleted == 0 and not run.details.get("targets")
    assert "filter" in run.error
    assert time.monotonic() - started < 1.0  # never ran the regex (4.9 s at 27 characters)


def test_rows_deleted_only_when_the_cascade_is_permitted(client, django_user_model, settings):
    user = staff(
        django_user_model, "family", *SCHEDULE_PERMISSIONS, "delete_parent", "delete_child"
    )
    schedule = saved_by(client, user, model="testapp.Parent")
    old = timezone.now() - timedelta(days=2)
    parent = Parent.objects.create(created_at=old)
    Child.objects.create(parent=parent)
    run_iteration(schedule, 1)
    assert runs_of(schedule)[0].status == "succeeded"
    assert not Child.objects.exists()

    user.user_permissions.remove(Permission.objects.get(codename="delete_child"))
    Child.objects.create(parent=Parent.objects.create(created_at=old))
    run_iteration(schedule, 2)
    assert "lacks the permission testapp.delete_child" in runs_of(schedule)[1].error
    assert Child.objects.count() == 1


def test_an_unknown_allowed_model_is_a_system_check_error(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.CLEANUP_ALLOWED_MODELS = ["testapp.Event", "testapp.Evnet"]
    with pytest.raises(
        SystemCheckError, match=r"lists 'testapp\.Evnet', which is not an installed"
    ):
        call_command("check")


# Who may see what: the admin -------------------------------------------------------------------


def test_the_admin_shows_run_errors_and_run_links_only_to_run_viewers(
    client, django_user_model, make_schedule
):
    schedule = make_schedule(name="nightly", last_error="boom: secret-path /etc/x")
    change = reverse("admin:cleanups_cleanupschedule_change", args=[schedule.pk])
    changelist = reverse("admin:cleanups_cleanupschedule_changelist")
    runs_url = reverse("cleanups:schedule_runs", args=[schedule.pk])

    client.force_login(staff(django_user_model, "looker", "view_cleanupschedule"))
    for url in change, changelist:
        html = client.get(url).content.decode()
        assert "nightly" in html
        assert "secret-path" not in html
        assert runs_url not in html
        assert reverse("cleanups:schedule_detail", args=[schedule.pk]) in html

    client.force_login(
        staff(django_user_model, "reader", "view_cleanupschedule", "view_cleanuprun")
    )
    assert "secret-path" in client.get(change).content.decode()
    assert runs_url in client.get(changelist).content.decode()
