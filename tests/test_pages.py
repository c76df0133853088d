"""The schedule page (configuration, live state, chart) and run history across schedules."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cleanups.formatting import seconds_label
from cleanups.models import CleanupRun, CleanupSchedule

pytestmark = pytest.mark.django_db


def add_runs(schedule, count, *, days_ago=0, trigger="scheduled", status_every=3):
    start = schedule.runs.count() + 1
    now = timezone.now()
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=start + n,
            status="failed" if (start + n) % status_every == 0 else "succeeded",
            trigger=trigger,
            task=schedule.task,
            started_at=now - timedelta(days=days_ago, minutes=count - n),
            duration=timedelta(seconds=1 + n % 4),
            items_deleted=n * 10,
        )
        for n in range(count)
    )


def test_schedule_page_shows_configuration_state_and_a_chart(
    admin_client, engine_port, make_schedule
):
    schedule = make_schedule(name="nightly", cadence="cron", cron="0 3 * * *", timezone="UTC")
    add_runs(schedule, 12)

    html = admin_client.get(
        reverse("cleanups:schedule_detail", args=[schedule.pk])
    ).content.decode()

    assert "Cron expression" in html and "0 3 * * *" in html
    assert "engine is unreachable" in html  # no engine in this test: said, not a 500
    assert html.count('class="bar bar-') == 12
    assert 'aria-labelledby="chart-summary"' in html
    assert "Last 12 runs: median duration" in html and "4 failed" in html
    # add_runs: durations of 1 to 4 s, items 0, 10, ... 110
    assert "longest 4.00 s; 660 items deleted in all, at most 110 in one run" in html
    assert "(longest 4.00 s)" in html and "(most 110)" in html


@pytest.mark.parametrize(
    ("seconds", "label"),
    [(0, "0 s"), (0.0004, "0.4 ms"), (0.0123, "12 ms"), (0.5, "500 ms"), (12.345, "12.35 s")],
)
def test_run_durations_read_in_milliseconds_under_a_second(seconds, label):
    assert seconds_label(seconds) == label


def test_schedule_page_shows_the_live_orchestration(admin_client, engine, make_schedule):
    schedule = make_schedule()
    html = admin_client.get(
        reverse("cleanups:schedule_detail", args=[schedule.pk])
    ).content.decode()
    assert "not started" in html
    assert "No runs to draw yet." in html


def test_run_history_filters_by_trigger_and_date_and_exports_csv(admin_client, make_schedule):
    a, b = make_schedule(name="alpha"), make_schedule(name="beta")
    add_runs(a, 5, days_ago=10)
    add_runs(a, 3, trigger="manual")
    add_runs(b, 4)
    url = reverse("cleanups:runs")

    html = admin_client.get(url, {"trigger": "manual"}).content.decode()
    assert html.count('href="/runs/') == 3
    since = (timezone.now() - timedelta(days=2)).date().isoformat()
    html = admin_client.get(url, {"since": since}).content.decode()
    assert html.count('href="/runs/') == 7

    response = admin_client.get(url, {"since": since, "status": "failed", "format": "csv"})
    assert isinstance(response, StreamingHttpResponse)
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {r["status"] for r in rows} == {"failed"}
    assert {r["schedule"] for r in rows} <= {"alpha", "beta"}
    expected = CleanupRun.objects.filter(
        status="failed", started_at__gte=timezone.now() - timedelta(days=2)
    )
    assert len(rows) == expected.count()
    assert rows[0].keys() >= {"iteration", "trigger", "duration_seconds", "items_deleted"}


def test_bad_filters_are_shown_not_a_500(admin_client, make_schedule):
    add_runs(make_schedule(), 2)
    response = admin_client.get(reverse("cleanups:runs"), {"since": "yesterday-ish"})
    assert response.status_code == 200
    assert "Enter a valid date." in response.content.decode()
    response = admin_client.get(
        reverse("cleanups:runs"), {"since": "2026-05-02", "until": "2026-05-01"}
    )
    assert "before the start date" in response.content.decode()


def test_an_export_with_a_bad_filter_says_so_instead_of_exporting_everything(
    admin_client, make_schedule
):
    add_runs(make_schedule(), 3)
    response = admin_client.get(
        reverse("cleanups:runs"), {"status": "failed", "since": "last tuesday", "format": "csv"}
    )
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == (
        "No export: fix the filters first (From: Enter a valid date.).\n"
    )


def test_long_histories_count_only_up_to_a_cap(admin_client, make_schedule, monkeypatch):
    # The cap is 10,000 in use; a smaller one here keeps the test quick, same code path.
    monkeypatch.setattr("cleanups.views.runs.COUNT_CAP", 100)
    schedule = make_schedule()
    add_runs(schedule, 30, days_ago=10)  # iterations 1-30
    add_runs(schedule, 100)  # 31-130
    url = reverse("cleanups:schedule_runs", args=[schedule.pk])

    html = admin_client.get(url).content.decode()
    assert "Page 1 of 2 · more than 100 runs" in html
    last = admin_client.get(url, {"page": 2}).content.decode()
    assert "Page 2 of 2" in last and "Older" not in last
    assert ">#31<" in last and ">#30<" not in last  # the 100th newest is the last one paged
    until = (timezone.now() - timedelta(days=5)).date().isoformat()
    older = admin_client.get(url, {"until": until}).content.decode()
    assert "Page 1 of 1 · 30 runs" in older and ">#30<" in older  # a date range reaches them

    few = admin_client.get(url, {"status": "failed"}).content.decode()
    assert "Page 1 of 1 · 43 runs" in few  # every third of 130, counted exactly


@pytest.mark.parametrize("page", ["cleanups:runs", "schedule_detail"])
def test_pages_make_a_fixed_number_of_queries(admin_client, engine_port, make_schedule, page):
    schedule = make_schedule()
    add_runs(schedule, 3)

    def url():
        if page == "schedule_detail":
            return reverse("cleanups:schedule_detail", args=[schedule.pk])
        return reverse(page)

    admin_client.get(url())
    with CaptureQueriesContext(connection) as small:
        admin_client.get(url())
    for n in range(5):
        add_runs(make_schedule(name=f"more-{n}"), 30)
    add_runs(schedule, 150)
    with CaptureQueriesContext(connection) as large:
        assert admin_client.get(url()).status_code == 200
    assert len(large) == len(small)


def test_a_run_page_shows_the_configuration_it_ran_with(admin_client, make_schedule):
    schedule = make_schedule()
    run = CleanupRun.objects.create(
        schedule=schedule,
        iteration=1,
        task="sample",
        started_at=timezone.now(),
        trigger="manual",
        triggered_by="alice",
        config={"task": "sample", "params": {"seconds": 3}},
    )
    html = admin_client.get(run.get_absolute_url()).content.decode()
    assert "Manual (run now) by alice" in html
    assert "&quot;seconds&quot;: 3" in html


def test_a_running_run_page_refreshes_its_progress(admin_client, make_schedule):
    schedule = make_schedule()
    run = CleanupRun.objects.create(
        schedule=schedule, iteration=1, task="sample", started_at=timezone.now(), items_deleted=5
    )
    html = admin_client.get(run.get_absolute_url()).content.decode()
    assert 'data-live-url="?live=1"' in html and "5 so far" in html

    CleanupRun.objects.filter(pk=run.pk).update(items_deleted=4200)
    live = admin_client.get(run.get_absolute_url(), {"live": "1"}).json()
    assert "4200 so far" in live["html"] and live["done"] is False

    CleanupRun.objects.filter(pk=run.pk).update(status="succeeded")
    assert admin_client.get(run.get_absolute_url(), {"live": "1"}).json()["done"] is True
    assert "data-live-url" not in admin_client.get(run.get_absolute_url()).content.decode()


def test_a_live_schedule_page_refreshes_its_orchestration_and_runs(
    admin_client, engine_port, make_schedule
):
    schedule = make_schedule(name="watched")
    CleanupSchedule.objects.filter(pk=schedule.pk).update(desired_state="running")
    url = reverse("cleanups:schedule_detail", args=[schedule.pk])
    assert 'data-live-url="?live=1"' in admin_client.get(url).content.decode()

    add_runs(schedule, 2)
    live = admin_client.get(url, {"live": "1"}).json()
    assert "engine is unreachable" in live["html"]
    assert live["extra"]["live-runs"].count("/runs/") == 2
    assert live["done"] is False
