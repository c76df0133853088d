"""The dashboard: totals, a strip of recent runs per schedule, and its live JSON endpoint."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule

pytestmark = pytest.mark.django_db
DASHBOARD = "cleanups:dashboard"


def add_runs(schedule, statuses, *, hours_ago=1.0, items=10, dry_run=False):
    start = schedule.runs.count() + 1
    now = timezone.now()
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=start + n,
            status=status,
            task=schedule.task,
            started_at=now - timedelta(hours=hours_ago) + timedelta(seconds=n),
            duration=timedelta(seconds=2),
            items_deleted=items,
            dry_run=dry_run,
        )
        for n, status in enumerate(statuses)
    )
    # As the activity does when it begins a run: the schedule's newest iteration.
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        current_iteration=start + len(statuses) - 1
    )


def test_the_dashboard_answers_alive_what_happened_and_what_fails(
    admin_client, engine_port, make_schedule
):
    good = make_schedule(name="good")
    bad = make_schedule(name="bad")
    CleanupSchedule.objects.filter(pk=good.pk).update(desired_state="running")
    CleanupSchedule.objects.filter(pk=bad.pk).update(desired_state="paused")
    add_runs(good, ["succeeded"] * 25, hours_ago=30, items=1000)  # old: not in the last 24 h
    add_runs(good, ["succeeded", "failed", "succeeded", "interrupted"], items=7)
    add_runs(good, ["succeeded"], items=500, dry_run=True)  # a dry run deleted nothing
    add_runs(bad, ["succeeded", "failed", "failed"], items=3)

    html = admin_client.get(reverse(DASHBOARD)).content.decode()

    totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', html))
    assert totals == {"running": "1", "paused": "1", "failing": "1", "recovering": "0"}
    strips = re.findall(r'<span class="strip" role="group" aria-label="([^"]*)"', html)
    bad_strip, good_strip = strips  # ordered by name
    assert bad_strip == "Succeeded, Failed, Failed"
    assert good_strip.count(",") == 19  # the last 20 runs only
    assert good_strip.endswith("Succeeded, Failed, Succeeded, Interrupted, Succeeded (dry run)")
    newest = good.runs.order_by("-iteration").first()
    label = f"#{newest.iteration} Succeeded (dry run)"
    assert f'href="{newest.get_absolute_url()}" title="{label}" aria-label="{label}"' in html
    assert ">33%<" in html  # bad: 1 of 3
    assert ">90%<" in html  # good: 18 of its last 20 succeeded (one failed, one interrupted)
    assert ">28<" in html and ">9<" in html  # deleted in the last 24 h, dry runs excluded
    assert html.count("engine is unreachable") == 1


def test_the_dashboard_makes_a_fixed_number_of_queries(admin_client, engine_port, make_schedule):
    first = make_schedule(name="s0")
    add_runs(first, ["succeeded"] * 3)
    url = reverse(DASHBOARD)
    admin_client.get(url)
    with CaptureQueriesContext(connection) as small:
        admin_client.get(url)

    for n in range(1, 12):
        add_runs(make_schedule(name=f"s{n}"), ["succeeded", "failed"] * 40)
    with CaptureQueriesContext(connection) as large:
        response = admin_client.get(url)
    assert response.status_code == 200
    assert len(large) == len(small)


def test_the_live_endpoint_returns_the_rows_and_totals(admin_client, engine_port, make_schedule):
    schedule = make_schedule(name="live")
    add_runs(schedule, ["failed"])
    data = admin_client.get(reverse("cleanups:dashboard_status")).json()
    assert data["engine_up"] is False
    assert data["totals"]["failing"] == 1
    assert "live" in data["html"] and "mark-failed" in data["html"]


def test_the_dashboard_shows_live_engine_state(admin_client, engine, make_schedule):
    make_schedule(name="idle")
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "engine: not started" in html
    assert "unreachable" not in html


def test_the_dashboard_is_for_staff_only(make_schedule):
    for url in (reverse(DASHBOARD), reverse("cleanups:dashboard_status")):
        response = Client().get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_newest_per_schedule_reads_the_newest_runs_of_each_schedule(make_schedule):
    # The dashboard's strip query: a LATERAL join on PostgreSQL, an iteration range on SQLite.
    busy, quiet, idle = make_schedule(name="busy"), make_schedule(name="quiet"), make_schedule()
    add_runs(busy, ["succeeded"] * 30 + ["failed"])
    add_runs(quiet, ["skipped", "succeeded"])

    rows = CleanupRun.objects.newest_per_schedule(
        [idle, quiet, busy], 20, ("schedule_id", "iteration", "status")
    )

    assert [r for r in rows if r[0] == busy.pk] == [
        (busy.pk, 31, "failed"),
        *((busy.pk, n, "succeeded") for n in range(30, 11, -1)),
    ]
    assert [r for r in rows if r[0] == quiet.pk] == [
        (quiet.pk, 2, "succeeded"),
        (quiet.pk, 1, "skipped"),
    ]
    assert len(rows) == 22


def test_a_total_shows_only_its_schedules_and_the_refresh_keeps_it(
    admin_client, engine_port, make_schedule
):
    ok, broken, resting = (make_schedule(name=n) for n in ("ok", "broken", "resting"))
    CleanupSchedule.objects.filter(pk__in=[ok.pk, broken.pk]).update(desired_state="running")
    CleanupSchedule.objects.filter(pk=resting.pk).update(desired_state="paused")
    add_runs(ok, ["failed", "succeeded"])
    add_runs(broken, ["succeeded", "failed"])

    def names(html):
        return re.findall(r'cleanupschedule/\d+/change/">([^<]+)</a>', html)

    html = admin_client.get(reverse(DASHBOARD), {"show": "failing"}).content.decode()
    assert names(html) == ["broken"]
    totals = dict(re.findall(r'data-total="(\w+)">(\d+)<', html))
    assert totals == {"running": "2", "paused": "1", "failing": "1", "recovering": "0"}  # all
    assert 'href="?show=failing" class="selected" aria-current="true"' in html
    assert 'data-live-url="/status.json?show=failing"' in html

    live = admin_client.get(reverse("cleanups:dashboard_status"), {"show": "failing"}).json()
    assert names(live["html"]) == ["broken"]
    paused = admin_client.get(reverse(DASHBOARD), {"show": "paused"}).content.decode()
    assert names(paused) == ["resting"]
    none = admin_client.get(reverse(DASHBOARD), {"show": "recovering"}).content.decode()
    assert names(none) == [] and "No recovering schedules." in none
    # Anything else is no filter at all, not an error.
    everything = admin_client.get(reverse(DASHBOARD), {"show": "<nonsense>"})
    assert everything.status_code == 200
    assert names(everything.content.decode()) == ["broken", "ok", "resting"]
