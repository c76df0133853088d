"""The dashboard: the fleet's totals and lateness, a page of schedules (those that need attention
first) with search, and its live refresh, which sends only the rows that changed."""

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
from cleanups.reads.fleet import fleet_lateness
from cleanups.views.dashboard_model import DASHBOARD_PER_PAGE

pytestmark = pytest.mark.django_db
DASHBOARD = "cleanups:dashboard"
STATUS = "cleanups:dashboard_status"


def add_runs(schedule, statuses, *, hours_ago=1.0, items=10, dry_run=False, late=None):
    """Runs of ``schedule`` in order, one second apart from ``hours_ago``; ``late``: each run's
    lateness (started_at - planned_at), or none planned."""
    start = schedule.runs.count() + 1
    base = timezone.now().replace(microsecond=0) - timedelta(hours=hours_ago)
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=start + n,
            status=status,
            task=schedule.task,
            started_at=base + timedelta(seconds=n),
            planned_at=None if late is None else base + timedelta(seconds=n) - late[n],
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


def totals_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-total="(\w+)">([\d,]+)<', html))


def names(html: str) -> list[str]:
    """The schedules' names, in the order the table shows them."""
    return re.findall(r'cleanupschedule/\d+/change/">([^<]+)</a>', html)


def since_of(html: str) -> str:
    return re.search(r'data-live-since="([^"]*)"', html).group(1)


def set_state(schedule, **fields) -> None:
    CleanupSchedule.objects.filter(pk=schedule.pk).update(**fields)


# --- what the page shows --------------------------------------------------------------------


def test_the_dashboard_answers_alive_what_happened_and_what_fails(
    admin_client, engine_port, make_schedule
):
    good = make_schedule(name="good")
    bad = make_schedule(name="bad")
    set_state(good, desired_state="running")
    set_state(bad, desired_state="paused")
    add_runs(good, ["succeeded"] * 25, hours_ago=30, items=1000)  # old: not in the last 24 h
    # Well inside the last hour (good's 5) and well outside it (bad's 3), never at its edge.
    add_runs(good, ["succeeded", "failed", "succeeded", "interrupted"], hours_ago=0.5, items=7)
    add_runs(good, ["succeeded"], hours_ago=0.4, items=500, dry_run=True)  # deleted nothing
    add_runs(bad, ["succeeded", "failed", "failed"], hours_ago=2, items=3)

    html = admin_client.get(reverse(DASHBOARD)).content.decode()

    assert totals_of(html) == {
        "running": "1",
        "paused": "1",
        "stopped": "0",
        "failing": "1",
        "late": "0",
        "recovering": "0",
    }
    strips = re.findall(r'<span class="strip" role="group" aria-label="([^"]*)"', html)
    bad_strip, good_strip = strips  # the failing one first
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
    # The fleet: 33 runs, 5 of them in the last hour (none planned: no lateness to tell).
    assert 'Fleet: <span data-fact="schedules">2</span> schedules' in html
    assert '<strong data-fact="runs">5</strong>' in html
    assert '<strong data-fact="p99">–</strong>' in html


def test_the_dashboard_makes_a_fixed_number_of_queries(admin_client, engine_port, make_schedule):
    first = make_schedule(name="s0")
    add_runs(first, ["succeeded"] * 3)
    url = reverse(DASHBOARD)
    admin_client.get(url)
    with CaptureQueriesContext(connection) as small:
        admin_client.get(url)

    for n in range(1, DASHBOARD_PER_PAGE + 12):
        add_runs(make_schedule(name=f"s{n:02}"), ["succeeded", "failed"] * 40)
    for query in ({}, {"page": "2"}, {"show": "failing"}):
        with CaptureQueriesContext(connection) as large:
            response = admin_client.get(url, query)
        assert response.status_code == 200
        assert len(large) == len(small), query
    with CaptureQueriesContext(connection) as live:
        admin_client.get(reverse(STATUS))
    assert len(live) == len(small)


def test_the_dashboard_shows_live_engine_state(admin_client, engine, make_schedule):
    make_schedule(name="idle")
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "engine: not started" in html
    assert "unreachable" not in html


def test_the_engine_is_asked_only_about_the_rows_on_screen(admin_client, engine, make_schedule):
    for n in range(DASHBOARD_PER_PAGE + 10):
        make_schedule(name=f"s{n:02}")

    admin_client.get(reverse(DASHBOARD))
    assert engine.calls == {"GetInstance": DASHBOARD_PER_PAGE}  # never the fleet's query
    engine.calls.clear()
    html = admin_client.get(reverse(DASHBOARD), {"page": "2"}).content.decode()
    assert engine.calls == {"GetInstance": 10}
    assert html.count("engine: not started") == 10
    engine.calls.clear()
    admin_client.get(reverse(STATUS), {"q": "s0"})
    assert engine.calls == {"GetInstance": 10}  # s00 to s09


def test_the_dashboard_is_for_staff_only(make_schedule):
    for url in (reverse(DASHBOARD), reverse(STATUS)):
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


# --- the fleet: totals, order, filters, search, pages ---------------------------------------


@pytest.fixture
def fleet(make_schedule):
    """One schedule of each kind, named so that by name they come in the opposite order of
    the dashboard's: those that need attention (failing, late, recovering) have late names."""
    now = timezone.now()
    kinds = {
        "a-fine": {"desired_state": "running", "next_run_at": now + timedelta(minutes=5)},
        "b-resting": {"desired_state": "paused"},
        "c-stopped": {},
        "x-failing": {"desired_state": "running", "next_run_at": now + timedelta(minutes=5)},
        "y-late": {"desired_state": "running", "next_run_at": now - timedelta(minutes=3)},
        "z-recovering": {"desired_state": "running", "recovering_since": now},
    }
    made = {}
    for name, fields in kinds.items():
        made[name] = make_schedule(name=name)
        set_state(made[name], **fields)
    add_runs(made["a-fine"], ["failed", "succeeded"])
    add_runs(made["x-failing"], ["succeeded", "timed_out", "skipped"])  # a skip changes nothing
    add_runs(made["y-late"], ["succeeded"])
    return made


def test_failing_late_and_recovering_schedules_come_first(admin_client, engine_port, fleet):
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert names(html) == [
        "x-failing",
        "y-late",
        "z-recovering",
        "a-fine",
        "b-resting",
        "c-stopped",
    ]
    assert totals_of(html) == {
        "running": "3",  # a-fine, x-failing, y-late: z-recovering counts as recovering
        "paused": "1",
        "stopped": "1",
        "failing": "1",
        "late": "1",
        "recovering": "1",
    }
    assert html.count('class="needs-attention"') == 3
    by_name = admin_client.get(reverse(DASHBOARD), {"sort": "name"}).content.decode()
    assert names(by_name) == sorted(names(html))
    assert 'href="?sort=name" class="selected" aria-current="true"' in by_name


def test_a_late_schedule_is_one_whose_planned_run_has_not_begun(admin_client, engine_port, fleet):
    late = fleet["y-late"]
    planned = CleanupSchedule.objects.get(pk=late.pk).next_run_at

    def shown_late():
        return names(admin_client.get(reverse(DASHBOARD), {"show": "late"}).content.decode())

    assert shown_late() == ["y-late"]
    # Its run begins (the activity records it, planned at the overdue time): not late.
    CleanupRun.objects.create(
        schedule=late,
        iteration=2,
        status="running",
        task="sample",
        planned_at=planned,
        started_at=timezone.now(),
    )
    assert shown_late() == []
    # It finished and the next run is not yet planned (next_run_at is still the old one).
    CleanupRun.objects.filter(schedule=late, iteration=2).update(status="succeeded")
    assert shown_late() == []
    # Its next run is planned, and overdue in turn: late again.
    set_state(late, next_run_at=planned + timedelta(minutes=1))
    assert shown_late() == ["y-late"]
    # A paused schedule is never late, whatever its old plan says.
    set_state(late, desired_state="paused")
    assert shown_late() == []


def test_a_total_shows_only_its_schedules_and_the_refresh_keeps_it(
    admin_client, engine_port, fleet
):
    for show, expected in {
        "running": ["x-failing", "y-late", "a-fine"],
        "paused": ["b-resting"],
        "stopped": ["c-stopped"],
        "failing": ["x-failing"],
        "late": ["y-late"],
        "recovering": ["z-recovering"],
    }.items():
        html = admin_client.get(reverse(DASHBOARD), {"show": show}).content.decode()
        assert names(html) == expected, show
        assert totals_of(html)["running"] == "3"  # the totals are the whole fleet's
        assert f'href="?show={show}" class="selected" aria-current="true"' in html
        assert f'data-live-url="/status.json?show={show}"' in html
        live = admin_client.get(reverse(STATUS), {"show": show}).json()
        assert names(live["html"]) == expected, show

    set_state(fleet["z-recovering"], recovering_since=None)
    none = admin_client.get(reverse(DASHBOARD), {"show": "recovering"}).content.decode()
    assert names(none) == [] and "No recovering schedules." in none
    # Anything else is no filter at all, not an error.
    everything = admin_client.get(reverse(DASHBOARD), {"show": "<nonsense>"})
    assert everything.status_code == 200
    assert len(names(everything.content.decode())) == 6


def test_the_search_finds_names_that_contain_the_text(admin_client, engine_port, make_schedule):
    for name in ("Disk 100% full", "disk 1000 full", "sessions", "old_exports", "oldXexports"):
        make_schedule(name=name)

    def found(**query):
        response = admin_client.get(reverse(DASHBOARD), query)
        assert response.status_code == 200
        return sorted(names(response.content.decode()))

    assert found(q="DISK") == ["Disk 100% full", "disk 1000 full"]  # case does not matter
    assert found(q="100%") == ["Disk 100% full"]  # % and _ are text, not wildcards
    assert found(q="old_") == ["old_exports"]
    assert found(q="  sessions  ") == ["sessions"]
    assert found(q="disk", show="stopped") == ["Disk 100% full", "disk 1000 full"]
    assert found(q="disk", show="running") == []
    html = admin_client.get(reverse(DASHBOARD), {"q": "nothing like it"}).content.decode()
    assert "No schedules match “nothing like it”." in html
    assert 'value="nothing like it"' in html  # the box keeps the text
    # The totals stay the fleet's; the refresh searches as the page did.
    assert totals_of(html)["stopped"] == "5"
    assert 'data-live-url="/status.json?q=nothing+like+it"' in html
    live = admin_client.get(reverse(STATUS), {"q": "disk"}).json()
    assert sorted(names(live["html"])) == ["Disk 100% full", "disk 1000 full"]


def test_the_schedules_come_in_pages(admin_client, engine_port, make_schedule):
    for n in range(2 * DASHBOARD_PER_PAGE + 20):
        make_schedule(name=f"s{n:03}")
    failing = make_schedule(name="zz-failing")  # last by name, first on the dashboard
    add_runs(failing, ["failed"])

    def page(**query):
        response = admin_client.get(reverse(DASHBOARD), query)
        assert response.status_code == 200
        return response.content.decode()

    first = page()
    assert names(first)[:3] == ["zz-failing", "s000", "s001"]
    assert len(names(first)) == DASHBOARD_PER_PAGE
    assert "Page 1 of 3 · schedules 1–50 of 121" in first
    assert 'href="?page=2" rel="next"' in first
    third = page(page="3")
    assert names(third) == [f"s{n:03}" for n in range(99, 120)]
    assert "Page 3 of 3 · schedules 101–121 of 121" in third
    assert 'data-live-url="/status.json?page=3"' in third
    # Pages of a filter and a search keep them in their links.
    searched = page(q="s0", show="stopped")
    assert "Page 1 of 2 · schedules 1–50 of 100 matching “s0”" in searched
    assert 'href="?show=stopped&amp;q=s0&amp;page=2" rel="next"' in searched
    # A page that cannot be read is the first; one past the end, the last.
    assert names(page(page="abc")) == names(first)
    assert names(page(page="99999999999999999999")) == names(third)
    assert names(page(page="-1")) == names(third)


# --- lateness --------------------------------------------------------------------------------


def test_the_fleet_p99_lateness_is_the_nearest_rank_of_the_last_hour(
    admin_client, engine_port, make_schedule
):
    one, two = make_schedule(name="one"), make_schedule(name="two")
    ms = timedelta(milliseconds=1)
    # 100 planned runs in the last hour, 1 ms to 100 ms late, spread over two schedules.
    add_runs(one, ["succeeded"] * 60, hours_ago=0.5, late=[n * ms for n in range(1, 61)])
    add_runs(two, ["failed"] * 40, hours_ago=0.5, late=[n * ms for n in range(61, 101)])
    # Not counted: planned runs older than an hour (however late), manual and skipped runs.
    add_runs(two, ["succeeded"] * 5, hours_ago=2, late=[timedelta(minutes=5)] * 5)
    add_runs(one, ["succeeded", "skipped"], hours_ago=0.2)

    lateness = fleet_lateness(timezone.now() - timedelta(hours=1))
    assert lateness.runs == 102  # every run started in the last hour
    assert lateness.planned == 100
    assert lateness.p99 == 0.099  # the 99th of 100, smallest first

    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert '<strong data-fact="p99">99 ms</strong>' in html
    assert 'over <span data-fact="planned">100</span> planned runs' in html
    live = admin_client.get(reverse(STATUS)).json()
    assert live["facts"] == {"schedules": "2", "p99": "99 ms", "planned": "100", "runs": "102"}

    # One planned run: it is its own p99. None: there is no p99 to tell.
    CleanupRun.objects.exclude(pk=one.runs.get(iteration=1).pk).delete()
    assert fleet_lateness(timezone.now() - timedelta(hours=1)).p99 == 0.001
    CleanupRun.objects.all().delete()
    assert fleet_lateness(timezone.now() - timedelta(hours=1)) == (0, 0, None)


# --- the live refresh ------------------------------------------------------------------------


def test_the_refresh_sends_only_the_rows_that_changed(admin_client, engine_port, make_schedule):
    quiet, busy, other = (make_schedule(name=n) for n in ("a-quiet", "b-busy", "c-other"))
    for schedule in (quiet, busy, other):
        add_runs(schedule, ["succeeded"] * 3, hours_ago=5)
    url = reverse(STATUS)
    since = since_of(admin_client.get(reverse(DASHBOARD)).content.decode())

    unchanged = admin_client.get(url, {"since": since}).json()
    assert unchanged["rows"] == {} and "html" not in unchanged
    assert unchanged["since"] == since
    assert unchanged["totals"]["stopped"] == 3  # the totals, always

    add_runs(busy, ["interrupted"], hours_ago=5)
    changed = admin_client.get(url, {"since": since}).json()
    assert list(changed["rows"]) == [str(busy.pk)]
    row = changed["rows"][str(busy.pk)]
    assert row.startswith(f'<tr id="schedule-{busy.pk}" data-schedule="{busy.pk}"')
    assert "mark-interrupted" in row and row.count("<tr") == 1
    assert changed["since"] != since
    again = admin_client.get(url, {"since": changed["since"]}).json()
    assert again["rows"] == {}

    # A schedule that starts failing moves to the top: the whole table comes, in its new order.
    add_runs(other, ["failed"], hours_ago=5)
    moved = admin_client.get(url, {"since": changed["since"]}).json()
    assert "rows" not in moved
    assert names(moved["html"]) == ["c-other", "a-quiet", "b-busy"]
    assert moved["totals"]["failing"] == 1
    # Without a token: everything.
    assert names(admin_client.get(url).json()["html"]) == ["c-other", "a-quiet", "b-busy"]
    # The page asked for as ?page=1 (or an unreadable page) is the one its refresh reads.
    for page in ("1", "first"):
        html = admin_client.get(reverse(DASHBOARD), {"page": page}).content.decode()
        assert 'data-live-url="/status.json"' in html
        assert admin_client.get(url, {"since": since_of(html)}).json()["rows"] == {}


def test_a_schedule_viewer_refreshes_rows_without_run_links(
    engine_port, make_schedule, django_user_model
):
    from django.contrib.auth.models import Permission

    schedule = make_schedule(name="nightly")
    add_runs(schedule, ["failed"], hours_ago=5)
    viewer = django_user_model.objects.create_user(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_cleanupschedule"))
    browser = Client()
    browser.force_login(viewer)
    since = since_of(browser.get(reverse(DASHBOARD)).content.decode())
    add_runs(schedule, ["succeeded"], hours_ago=5)

    rows = browser.get(reverse(STATUS), {"since": since}).json()["rows"]
    assert list(rows) == [str(schedule.pk)]
    assert rows[str(schedule.pk)].count('class="mark mark-') == 2
    assert 'href="/runs/' not in rows[str(schedule.pk)]


# --- whatever the query string says ---------------------------------------------------------


HOSTILE = ["", "-1", "0", "99999999999999999999", "9" * 5000, "1e3", "NaN", "<script>", "\x00"]


def test_no_parameter_makes_a_500(admin_client, engine_port, make_schedule):
    schedule = make_schedule(name="<b>bold</b>")
    add_runs(schedule, ["failed"])
    for url in (reverse(DASHBOARD), reverse(STATUS)):
        for parameter in ("show", "q", "page", "sort", "since"):
            for value in [*HOSTILE, "%", "_", "\u202e", "a\x00b", "ab" * 200]:
                response = admin_client.get(url, {parameter: value})
                assert response.status_code in (200, 400), (url, parameter, value)
                body = response.content.decode()
                assert "<script>" not in body and "<b>bold" not in body, (parameter, value)


def test_the_dashboard_reads_hostile_values_as_a_normal_page(
    admin_client, engine_port, make_schedule
):
    make_schedule(name="plain")
    for query in (
        {"page": "abc"},
        {"page": "9" * 5000},
        {"show": "everything"},
        {"sort": "DROP TABLE"},
        {"since": "not a token"},  # the page has no use for it
        {"q": "\x00plain\x01"},  # control characters match nothing: they are left out
        {"q": "plain" + " " * 300},
    ):
        response = admin_client.get(reverse(DASHBOARD), query)
        assert response.status_code == 200, query
        assert names(response.content.decode()) == ["plain"], query
    # Longer than any name: it is cut to a name's length, and matches nothing here.
    html = admin_client.get(reverse(DASHBOARD), {"q": "x" * 5000}).content.decode()
    assert names(html) == [] and f'value="{"x" * 100}"' in html


def test_the_refresh_answers_an_unreadable_token_or_page_with_a_readable_400(
    admin_client, engine_port, make_schedule
):
    make_schedule(name="plain")
    url = reverse(STATUS)
    for since in ("garbage", "0" * 12 + ".", "ABCDEF012345", "0" * 12 + ".1" * 60, "9" * 5000):
        response = admin_client.get(url, {"since": since})
        assert response.status_code == 400, since
        assert response.json() == {
            "error": "since must be the token the previous answer gave; leave it out for all rows.",
            "parameter": "since",
        }
    for page in ("abc", "-1", "1e3", "9" * 5000):
        response = admin_client.get(url, {"page": page})
        assert response.status_code == 400, page
        assert response.json()["parameter"] == "page"
    # A well-formed token of another page (or a forged one): the whole table, not an error.
    stale = admin_client.get(url, {"since": "0" * 12 + ".0123456789ab"}).json()
    assert names(stale["html"]) == ["plain"]
    # A page past the end is the last page, as the page itself shows it.
    assert names(admin_client.get(url, {"page": "7"}).json()["html"]) == ["plain"]
