"""The run-history pages: staff only, newest first, filtered, paginated, fixed query count."""

from __future__ import annotations

import random
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from cleanups.models import CleanupRun, CleanupSchedule

pytestmark = pytest.mark.django_db

FAILED = CleanupRun.Status.FAILED
SUCCEEDED = CleanupRun.Status.SUCCEEDED
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/cleanups/tasks.py", line 86, in <module>\n'
    '    raise ValueError("seconds must be a number & <positive>")\n'
    "ValueError: seconds must be a number & <positive>\n"
)


def make_runs(
    schedule: CleanupSchedule, count: int, *, first: int = 1, status_of=None
) -> list[CleanupRun]:
    """``count`` runs from iteration ``first`` on, inserted in random order (pk != iteration)."""
    status_of = status_of or (lambda iteration: SUCCEEDED)
    base = timezone.now() - timedelta(days=1)
    runs = []
    for iteration in range(first, first + count):
        status = status_of(iteration)
        started = base + timedelta(minutes=iteration)
        failed = status == FAILED
        runs.append(
            CleanupRun(
                schedule=schedule,
                iteration=iteration,
                status=status,
                task=schedule.task,
                started_at=started,
                finished_at=started + timedelta(seconds=2),
                duration=timedelta(seconds=2),
                items_deleted=0 if failed else iteration,
                message="" if failed else f"deleted {iteration}",
                error="ValueError: seconds must be a number & <positive>" if failed else "",
                traceback=TRACEBACK if failed else "",
            )
        )
    random.Random(count).shuffle(runs)
    return CleanupRun.objects.bulk_create(runs)


def odd_failed(iteration: int) -> str:
    return FAILED if iteration % 2 else SUCCEEDED


def listed_iterations(response) -> list[int]:
    return [int(n) for n in re.findall(r">#(\d+)</a>", response.content.decode())]


def runs_url(schedule: CleanupSchedule, query: str = "") -> str:
    return reverse("cleanups:schedule_runs", args=[schedule.pk]) + query


@pytest.fixture
def schedule(make_schedule) -> CleanupSchedule:
    return make_schedule(name="nightly")


@pytest.fixture
def failed_run(schedule) -> CleanupRun:
    (run,) = make_runs(schedule, 1, status_of=lambda iteration: FAILED)
    return run


# --- access ---------------------------------------------------------------------------------


def page_urls(schedule: CleanupSchedule, run: CleanupRun) -> list[str]:
    return [runs_url(schedule), run.get_absolute_url()]


def test_anonymous_users_are_sent_to_the_admin_login(schedule, failed_run):
    browser = Client()
    for url in page_urls(schedule, failed_run):
        response = browser.get(url)
        assert response.status_code == 302, url
        assert "/admin/login/" in response.url
        assert "next=" in response.url


def test_non_staff_users_are_sent_to_the_admin_login(schedule, failed_run, django_user_model):
    browser = Client()
    browser.force_login(django_user_model.objects.create_user(username="visitor", password="pw"))
    for url in page_urls(schedule, failed_run):
        response = browser.get(url)
        assert response.status_code == 302, url
        assert "/admin/login/" in response.url


def test_staff_users_see_the_pages(schedule, failed_run, admin_client, django_user_model):
    staff = Client()
    operator = django_user_model.objects.create_user(
        username="operator", password="pw", is_staff=True
    )
    operator.user_permissions.set(
        Permission.objects.filter(codename__in=["view_cleanupschedule", "view_cleanuprun"])
    )
    staff.force_login(operator)
    for browser in (admin_client, staff):
        for url in page_urls(schedule, failed_run):
            response = browser.get(url)
            assert response.status_code == 200, url
            assert "nightly" in response.content.decode()


def test_missing_schedule_or_run_is_404(admin_client):
    assert admin_client.get(reverse("cleanups:schedule_runs", args=[999_999])).status_code == 404
    assert admin_client.get(reverse("cleanups:run_detail", args=[999_999])).status_code == 404


# --- the schedule's run history -------------------------------------------------------------


def test_runs_are_listed_newest_iteration_first(admin_client, schedule, make_schedule):
    make_runs(schedule, 7)
    make_runs(make_schedule(name="other"), 3, first=100)  # another schedule's runs stay out

    response = admin_client.get(runs_url(schedule))

    assert response.status_code == 200
    assert listed_iterations(response) == [7, 6, 5, 4, 3, 2, 1]
    assert "Page 1 of 1 · 7 runs" in response.content.decode()


def test_status_filter_shows_only_that_status(admin_client, schedule):
    make_runs(schedule, 10, status_of=lambda i: FAILED if i % 3 == 0 else SUCCEEDED)

    response = admin_client.get(runs_url(schedule, "?status=failed"))

    assert response.status_code == 200
    assert listed_iterations(response) == [9, 6, 3]
    assert {run.status for run in response.context["page"].object_list} == {FAILED}
    assert response.context["status"] == "failed"
    html = response.content.decode()
    assert '<a href="?status=failed" class="selected" aria-current="true">Failed</a>' in html


def test_status_filter_with_no_match_says_so(admin_client, schedule):
    make_runs(schedule, 3)

    response = admin_client.get(runs_url(schedule, "?status=interrupted"))

    assert listed_iterations(response) == []
    assert "No runs with status “interrupted” yet." in response.content.decode()


def test_unknown_status_shows_all_runs(admin_client, schedule):
    make_runs(schedule, 4, status_of=lambda i: FAILED if i == 2 else SUCCEEDED)

    response = admin_client.get(runs_url(schedule, "?status=bogus"))

    assert response.status_code == 200
    assert listed_iterations(response) == [4, 3, 2, 1]
    assert response.context["status"] == ""
    assert '<a href="?" class="selected" aria-current="true">All</a>' in response.content.decode()


def test_runs_are_paginated_fifty_per_page(admin_client, schedule):
    make_runs(schedule, 60)

    first = admin_client.get(runs_url(schedule))
    second = admin_client.get(runs_url(schedule, "?page=2"))

    assert listed_iterations(first) == list(range(60, 10, -1))
    assert listed_iterations(second) == list(range(10, 0, -1))
    assert "Page 2 of 2 · 60 runs" in second.content.decode()
    assert '?page=2">Older' in first.content.decode()
    # Out-of-range and malformed page numbers land on a real page.
    assert listed_iterations(admin_client.get(runs_url(schedule, "?page=99"))) == list(
        range(10, 0, -1)
    )
    assert listed_iterations(admin_client.get(runs_url(schedule, "?page=x")))[0] == 60


def test_pagination_keeps_the_status_filter(admin_client, schedule):
    make_runs(schedule, 120, status_of=odd_failed)

    response = admin_client.get(runs_url(schedule, "?status=failed&page=2"))

    assert listed_iterations(response) == list(range(19, 0, -2))
    html = response.content.decode()
    assert "?status=failed&amp;page=1" in html
    assert "Page 2 of 2 · 60 runs" in html


def test_schedule_runs_page_makes_a_fixed_number_of_queries(
    admin_client, schedule, django_assert_num_queries
):
    make_runs(schedule, 3, status_of=odd_failed)
    url = runs_url(schedule)
    with CaptureQueriesContext(connection) as few:
        response = admin_client.get(url)
    assert response.status_code == 200
    assert listed_iterations(response) == [3, 2, 1]

    make_runs(schedule, 117, first=4, status_of=odd_failed)
    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get(url)
    assert response.status_code == 200
    assert len(listed_iterations(response)) == 50

    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get(url + "?status=failed&page=2")
    assert listed_iterations(response) == list(range(19, 0, -2))


# --- one run --------------------------------------------------------------------------------


def test_run_page_makes_a_fixed_number_of_queries(
    admin_client, schedule, make_schedule, django_assert_num_queries
):
    (few_run, *_) = make_runs(schedule, 3, status_of=lambda i: FAILED)
    with CaptureQueriesContext(connection) as few:
        response = admin_client.get(few_run.get_absolute_url())
    assert response.status_code == 200
    # The schedule comes with the run (one join), never as a query of its own.
    schedule_table = CleanupSchedule._meta.db_table
    assert not [
        q["sql"]
        for q in few.captured_queries
        if schedule_table in q["sql"] and CleanupRun._meta.db_table not in q["sql"]
    ]

    busy = make_schedule(name="busy")
    many_runs = make_runs(busy, 120, status_of=odd_failed)
    many_run = next(run for run in many_runs if run.iteration == 119)
    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get(many_run.get_absolute_url())
    assert response.status_code == 200
    assert "iteration 119" in response.content.decode()


def test_failed_run_page_shows_error_and_traceback(admin_client, schedule, failed_run):
    response = admin_client.get(failed_run.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert escape("ValueError: seconds must be a number & <positive>") in html
    assert f'<pre class="traceback">{escape(TRACEBACK)}</pre>' in html
    assert "<positive>" not in html  # escaped, never raw markup
    assert reverse("cleanups:schedule_runs", args=[schedule.pk]) in html


def test_succeeded_run_page_has_no_error_section(admin_client, schedule):
    (run,) = make_runs(schedule, 1)

    response = admin_client.get(run.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert "<pre" not in html
    assert "deleted 1" in html
    assert "2.00 s" in html


def test_run_page_shows_progress_and_counts_per_target(admin_client, schedule):
    run = CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        task="delete_old_files",
        started_at=timezone.now(),
        items_deleted=57,
        parts=3,
        details={
            "targets": {
                "files": {"items": 55, "bytes": 3 * 1024 * 1024},
                "directories": {"items": 2, "bytes": 0},
            }
        },
    )
    html = admin_client.get(reverse("cleanups:run_detail", args=[run.pk])).content.decode()

    assert "57 so far" in html
    assert re.search(
        r"<td>files</td><td class=\"number\">55</td><td class=\"number\">3\.0\xa0MB</td>", html
    )
    assert re.search(r"<td>directories</td><td class=\"number\">2</td>", html)


def test_a_dry_run_says_nothing_was_deleted(admin_client, schedule):
    run = CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        task="expired_sessions",
        status="succeeded",
        dry_run=True,
        started_at=timezone.now(),
        items_deleted=12,
    )
    html = admin_client.get(reverse("cleanups:run_detail", args=[run.pk])).content.decode()
    assert "Items that would go" in html
    assert "dry run: nothing was deleted" in html
    listing = admin_client.get(runs_url(schedule)).content.decode()
    assert "(dry run)" in listing
