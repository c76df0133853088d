"""Who may see which page, no 500 from any query string, and CSV cells a spreadsheet reads as
text: each acted out by a real staff user with exactly the permissions under test."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule

pytestmark = pytest.mark.django_db

VIEW_SCHEDULES = "view_cleanupschedule"
VIEW_RUNS = "view_cleanuprun"
ERROR = "PermissionError: cannot unlink /srv/secret-store/token"
TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/app/secret_module.py", line 7\n'


def browser_of(django_user_model, *codenames: str) -> Client:
    """A logged-in staff user holding exactly these cleanups permissions."""
    user = django_user_model.objects.create_user(
        username=f"staff-{'-'.join(codenames) or 'none'}", password="pw", is_staff=True
    )
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    browser = Client()
    browser.force_login(user)
    return browser


@pytest.fixture
def schedule(make_schedule, engine_port) -> CleanupSchedule:
    """A running schedule (its pages then refresh live) whose newest run failed."""
    schedule = make_schedule(name="nightly", desired_state="running")
    now = timezone.now()
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        status="succeeded",
        task="sample",
        started_at=now - timedelta(minutes=2),
        duration=timedelta(seconds=1),
        items_deleted=3,
    )
    CleanupRun.objects.create(
        schedule=schedule,
        iteration=2,
        status="failed",
        task="sample",
        started_at=now - timedelta(minutes=1),
        duration=timedelta(seconds=1),
        error=ERROR,
        traceback=TRACEBACK,
    )
    return schedule


def schedule_urls(schedule: CleanupSchedule) -> dict[str, str]:
    detail = reverse("cleanups:schedule_detail", args=[schedule.pk])
    return {
        "dashboard": reverse("cleanups:dashboard"),
        "dashboard status.json": reverse("cleanups:dashboard_status"),
        "schedule page": detail,
        "schedule page, live": f"{detail}?live=1",
    }


def run_urls(schedule: CleanupSchedule) -> dict[str, str]:
    run = schedule.runs.get(iteration=2)
    return {
        "all runs": reverse("cleanups:runs"),
        "all runs as CSV": reverse("cleanups:runs") + "?format=csv",
        "schedule runs": schedule.get_runs_url(),
        "schedule runs as CSV": schedule.get_runs_url() + "?format=csv",
        "run page": run.get_absolute_url(),
        "run page, live": run.get_absolute_url() + "?live=1",
    }


def text_of(response) -> str:
    """What the page shows: the HTML, the CSV, or every HTML part of a live JSON answer."""
    if isinstance(response, StreamingHttpResponse):
        return b"".join(response.streaming_content).decode()
    if response.get("Content-Type") == "application/json":
        data = response.json()
        return "".join([data.get("html", ""), *data.get("extra", {}).values()])
    return response.content.decode()


# --- who may see what -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["schedule", "run"])
def test_each_page_asks_for_its_permission(kind, schedule, django_user_model):
    urls = schedule_urls(schedule) if kind == "schedule" else run_urls(schedule)
    nobody = browser_of(django_user_model)
    schedule_viewer = browser_of(django_user_model, VIEW_SCHEDULES)
    run_viewer = browser_of(django_user_model, VIEW_SCHEDULES, VIEW_RUNS)
    for name, url in urls.items():
        response = Client().get(url)
        assert response.status_code == 302, name
        assert response["Location"].startswith(reverse("admin:login") + "?next="), name

        response = nobody.get(url)
        assert response.status_code == 403, name
        assert "nightly" not in text_of(response), name

        response = schedule_viewer.get(url)
        assert response.status_code == (200 if kind == "schedule" else 403), name

        response = run_viewer.get(url)
        assert response.status_code == 200, name
        assert "nightly" in text_of(response) or name.endswith("live"), name


def test_a_schedule_viewer_sees_no_run_errors_and_no_links_to_run_pages(
    schedule, django_user_model
):
    schedule_viewer = browser_of(django_user_model, VIEW_SCHEDULES)
    run_viewer = browser_of(django_user_model, VIEW_SCHEDULES, VIEW_RUNS)
    runs_prefix = reverse("cleanups:runs")
    for name, url in schedule_urls(schedule).items():
        limited = text_of(schedule_viewer.get(url))
        assert "nightly" in limited or name.endswith("live"), name
        assert "secret" not in limited and "Traceback" not in limited, name
        assert f'href="{runs_prefix}' not in limited, name
        assert f'href="{schedule.get_runs_url()}' not in limited, name
        # Those who may open the runs get their links.
        assert f'href="{runs_prefix}' in text_of(run_viewer.get(url)), name
    # The run summary stays: the strip of marks, one per run, and the newest runs' table.
    dashboard = text_of(schedule_viewer.get(reverse("cleanups:dashboard")))
    assert dashboard.count('class="mark mark-') == 2
    live = schedule_viewer.get(schedule_urls(schedule)["schedule page, live"]).json()
    assert "#1" in live["extra"]["live-runs"] and "#2" in live["extra"]["live-runs"]


def test_only_the_run_viewer_sees_a_failed_run_with_its_error_and_traceback(
    schedule, django_user_model
):
    url = schedule.runs.get(iteration=2).get_absolute_url()
    run_viewer = browser_of(django_user_model, VIEW_SCHEDULES, VIEW_RUNS)
    html = text_of(run_viewer.get(url))
    assert "secret-store" in html and "secret_module.py" in html
    for codenames in [(), (VIEW_SCHEDULES,), (VIEW_RUNS,)]:
        response = browser_of(django_user_model, *codenames).get(url)
        assert response.status_code == 403, codenames
        assert "secret" not in text_of(response), codenames


def test_admin_actions_need_the_change_permission(schedule, django_user_model):
    viewer = browser_of(django_user_model, VIEW_SCHEDULES, VIEW_RUNS)
    changelist = reverse("admin:cleanups_cleanupschedule_changelist")
    html = text_of(viewer.get(changelist))
    assert "nightly" in html
    assert 'name="action"' not in html and "Start selected schedules" not in html
    change = text_of(
        viewer.get(reverse("admin:cleanups_cleanupschedule_change", args=[schedule.pk]))
    )
    assert "nightly" in change
    assert 'name="_save"' not in change and 'name="action"' not in change
    assert "Start selected" not in change and "Terminate selected" not in change
    # Posting the action anyway does nothing.
    response = viewer.post(
        changelist, {"action": "terminate_schedules", "_selected_action": [schedule.pk]}
    )
    assert response.status_code in (200, 302)
    schedule.refresh_from_db()
    assert schedule.desired_state == "running"

    editor = browser_of(django_user_model, VIEW_SCHEDULES, "change_cleanupschedule")
    assert "Start selected schedules" in text_of(editor.get(changelist))


# --- no 500 from any input ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["all", "schedule"])
@pytest.mark.parametrize(
    "zone,parameter,day,nearest",
    [
        ("UTC", "until", "9999-12-31", "9999-12-30"),
        ("Asia/Tokyo", "until", "9999-12-31", "9999-12-30"),
        ("Asia/Tokyo", "since", "0001-01-01", "0001-01-02"),
    ],
)
def test_dates_beyond_what_can_be_stored_are_a_form_error(
    where, zone, parameter, day, nearest, schedule, admin_client, settings
):
    settings.TIME_ZONE = zone
    url = reverse("cleanups:runs") if where == "all" else schedule.get_runs_url()

    response = admin_client.get(url, {parameter: day})
    assert response.status_code == 200
    assert f"{parameter}={day} is out of range" in text_of(response)

    response = admin_client.get(url, {parameter: day, "format": "csv"})
    assert response.status_code == 400
    assert not isinstance(response, StreamingHttpResponse)
    assert f"{parameter}={day} is out of range" in text_of(response)

    # The nearest day that fits still filters, on the page and in the export.
    html = text_of(admin_client.get(url, {parameter: nearest}))
    assert "out of range" not in html and "Page 1 of 1 · 2 runs" in html
    export = text_of(admin_client.get(url, {parameter: nearest, "format": "csv"}))
    assert len(list(csv.reader(io.StringIO(export)))) == 3


HOSTILE = ["-1", "0", "99999999999999999999", "9" * 5000, "1e400", "NaN", "abc", "%00", "\x00"]


def test_no_query_parameter_makes_a_500(schedule, admin_client, settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    run = schedule.runs.get(iteration=2)
    pages = [*schedule_urls(schedule).values(), *run_urls(schedule).values()]
    parameters = ["page", "show", "live", "format", "status", "trigger", "since", "until"]
    values = [*HOSTILE, "0001-01-01", "9999-12-31", "<script>", "csv", "failed"]
    for url in pages:
        for parameter in parameters:
            for value in values:
                response = admin_client.get(url, {parameter: value})
                assert response.status_code in (200, 400), (url, parameter, value)
                text_of(response)  # a streamed CSV is read to its end
    # Identifiers in the path, however large, are a 404.
    for name in ("schedule_detail", "schedule_runs", "run_detail"):
        response = admin_client.get(reverse(f"cleanups:{name}", args=[10**30]))
        assert response.status_code == 404, name
    assert admin_client.get(run.get_absolute_url()).status_code == 200


# --- CSV cells a spreadsheet reads as text --------------------------------------------------


def test_csv_cells_that_would_be_formulas_are_written_as_text(make_schedule, admin_client):
    schedule = make_schedule(name='=HYPERLINK("http://x","y")')
    texts = ["+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", "plain", "a=b"]
    started = timezone.now()
    for iteration, text in enumerate(texts, start=1):
        CleanupRun.objects.create(
            schedule=schedule,
            iteration=iteration,
            status="failed",
            task="sample",
            started_at=started - timedelta(minutes=iteration),
            duration=timedelta(seconds=-1),  # a number the code writes: never touched
            items_deleted=iteration,
            message=text,
            error=text,
        )
    for url in (reverse("cleanups:runs"), schedule.get_runs_url()):
        body = text_of(admin_client.get(url, {"format": "csv"}))
        rows = list(csv.DictReader(io.StringIO(body, newline="")))
        rows.sort(key=lambda row: int(row["iteration"]))
        assert [row["schedule"] for row in rows] == ["'" + schedule.name] * len(texts)
        expected = ["'+1+2", "'-2+3", "'@SUM(A1)", "'\tcmd", "'\rcmd", "plain", "a=b"]
        assert [row["message"] for row in rows] == expected
        assert [row["error"] for row in rows] == expected
        assert {row["duration_seconds"] for row in rows} == {"-1.0"}
        assert [row["items_deleted"] for row in rows] == [str(n) for n in range(1, 8)]
