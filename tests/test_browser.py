"""The pages in a real browser: Playwright driving Debian's Chromium against a live server,
with a real worker on the SDK's in-memory engine. Screenshots go to test-artifacts/screenshots."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from cleanups import control
from cleanups.models import CleanupRun, CleanupSchedule
from tests.conftest import ROOT

# Playwright's sync API runs an event loop in this thread; the ORM calls the test makes between
# browser steps are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():  # a failure, not a skip: these tests are the pages' proof
        pytest.fail(f"{CHROMIUM} is missing: bin/test installs Debian's chromium package")
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {SHOTS}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-browser-test")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/admin/login/?next=/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw-browser-test")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    yield page
    page.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def act(page, live_server, schedule: CleanupSchedule, action: str) -> None:
    page.goto(f"{live_server.url}/admin/cleanups/cleanupschedule/")
    page.check(f"input[name=_selected_action][value='{schedule.pk}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")


def test_an_operator_runs_a_schedule_end_to_end(page, live_server, worker, durable_client):
    base = live_server.url
    shot(page, "01-dashboard-empty")

    page.goto(f"{base}/admin/cleanups/cleanupschedule/add/")
    page.wait_for_selector("#upcoming-runs div")
    assert page.inner_text("#upcoming-runs") == "Enter an interval to see the next five run times."
    page.fill("#id_name", "browser sample")
    page.select_option("#id_task", "sample")
    page.fill("#id_params", '{"seconds": 0}')
    page.fill("#id_interval", "00:00:01")
    # The live preview of the next runs, once it has read the interval typed.
    page.wait_for_function(
        "() => document.getElementById('upcoming-runs').textContent.includes('UTC')"
    )
    assert len(page.inner_text("#upcoming-runs").strip().splitlines()) == 5
    shot(page, "02-add-form")
    page.click("input[name=_save]")
    page.wait_for_selector("ul.messagelist")
    schedule = CleanupSchedule.objects.get(name="browser sample")

    act(page, live_server, schedule, "start_schedules")
    assert "started at iteration 1" in page.inner_text("ul.messagelist")

    page.goto(f"{base}/")
    row = page.locator("tr", has_text="browser sample")
    page.evaluate("window.table = document.querySelector('table.dash-table')")
    # New runs appear without a reload: the strip fills from the live endpoint, which sends
    # the rows that changed, and the page replaces those rows only, not the table.
    page.wait_for_function(
        "() => [...document.querySelectorAll('tr')].some(r => r.textContent.includes("
        "'browser sample') && r.querySelectorAll('.mark-succeeded').length >= 3)"
    )
    assert "Succeeded" in row.locator(".strip").get_attribute("aria-label")
    assert page.evaluate("document.querySelector('table.dash-table') === window.table")
    # The fleet's figures follow: the runs of the last hour and their p99 lateness.
    assert int(page.inner_text("[data-fact=runs]")) >= 3
    assert re.fullmatch(r"\d+(\.\d+)? m?s", page.inner_text("[data-fact=p99]"))
    shot(page, "03-dashboard-running")

    failing = CleanupSchedule.objects.create(
        name="browser failing",
        task="testapp_always_fails",
        params={},
        interval=__import__("datetime").timedelta(seconds=30),
    )
    control.start_schedule(failing)
    run = _wait_for(lambda: CleanupRun.objects.filter(schedule=failing, status="failed").first())
    page.goto(f"{base}{run.get_absolute_url()}")
    assert "RuntimeError: the disk is on fire" in page.inner_text("p.errornote")
    assert "Traceback (most recent call last)" in page.inner_text("pre.traceback")
    shot(page, "04-failed-run")

    page.goto(f"{base}/")
    page.click("a[href='?show=failing']")  # the failing total shows only its schedules
    page.wait_for_url(f"{base}/?show=failing")
    rows = page.locator("table.dash-table tbody tr")
    assert rows.count() == 1 and "browser failing" in rows.first.inner_text()
    shot(page, "04b-dashboard-failing")
    # The failing schedule leads the whole fleet too; the search box finds one by name.
    page.goto(f"{base}/")
    assert "browser failing" in page.locator("table.dash-table tbody tr").first.inner_text()
    page.fill("#dash-q", "sample")
    page.press("#dash-q", "Enter")
    page.wait_for_url(f"{base}/?q=sample")
    rows = page.locator("table.dash-table tbody tr")
    assert rows.count() == 1 and "browser sample" in rows.first.inner_text()
    shot(page, "04c-dashboard-search")

    page.goto(f"{base}/schedules/{schedule.pk}/")
    assert re.search(r"Last \d+ runs: median duration", page.inner_text("figcaption"))
    shot(page, "05-schedule-page")
    page.goto(f"{base}/runs/")
    shot(page, "06-all-runs")

    act(page, live_server, schedule, "pause_schedules")
    assert "paused" in page.inner_text("ul.messagelist")
    shot(page, "07-paused")
    act(page, live_server, schedule, "resume_schedules")
    assert "resumed" in page.inner_text("ul.messagelist")
    act(page, live_server, schedule, "terminate_schedules")
    assert "terminated" in page.inner_text("ul.messagelist")
    schedule.refresh_from_db()
    assert schedule.desired_state == "stopped"

    page.set_viewport_size({"width": 400, "height": 900})
    for path, name in [
        ("/", "08-dashboard-400px"),
        (f"/schedules/{schedule.pk}/", "09-schedule-400px"),
        (f"/schedules/{schedule.pk}/runs/", "10-schedule-runs-400px"),
        ("/runs/", "11-all-runs-400px"),
        (run.get_absolute_url(), "12-failed-run-400px"),
    ]:
        page.goto(base + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, f"{path} is {width}px wide at a 400px viewport"
        shot(page, name)


def _wait_for(predicate, timeout: float = 20.0):
    from tests.conftest import wait_until

    return wait_until(predicate, timeout=timeout)


def test_the_schedule_page_draws_lateness_under_each_runs_duration(
    page, live_server, engine_port, make_schedule
):
    schedule = make_schedule(name="browser lateness", desired_state="stopped")
    base = timezone.now() - timedelta(hours=1)
    # 12 runs a minute apart: 11 planned (one of them two hours late), one manual (no mark).
    lateness_ms = [40, 15, 22, None, 31, 18, 2 * 3600 * 1000, 27, 12, 35, 20, 25]
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=n + 1,
            status="succeeded",
            trigger="manual" if late is None else "scheduled",
            task=schedule.task,
            planned_at=None if late is None else base + timedelta(minutes=n),
            started_at=base + timedelta(minutes=n, milliseconds=late or 0),
            duration=timedelta(milliseconds=100 + 10 * n),
            items_deleted=n,
        )
        for n, late in enumerate(lateness_ms)
    )
    first = CleanupRun.objects.get(schedule=schedule, iteration=1)

    page.goto(f"{live_server.url}/schedules/{schedule.pk}/")

    strip = page.locator("svg.lateness-strip")
    assert strip.is_visible()
    assert strip.get_attribute("role") == "img"
    marks = strip.locator("rect.lateness-bar")
    assert marks.count() == 11
    when = timezone.localtime(first.planned_at).strftime("%H:%M:%S")
    assert marks.first.locator("title").text_content() == f"#1 planned {when}, started +40 ms"
    clipped = strip.locator("rect.lateness-clipped")
    assert clipped.count() == 1
    assert clipped.locator("title").text_content().endswith("started +2 h (off the scale)")
    assert strip.locator("polygon.lateness-caret").is_visible()
    # The outlier does not flatten the rest: the 12 ms run's bar is still some pixels tall.
    heights = [marks.nth(i).bounding_box()["height"] for i in range(marks.count())]
    assert min(heights) > 5, heights
    # Each mark sits under its run's duration bar: run #5 is the 5th bar above, the 4th below.
    bars = page.locator("figure.run-chart svg").first.locator("rect.bar")
    assert bars.count() == 12
    above, below = bars.nth(4).bounding_box(), marks.nth(3).bounding_box()
    assert abs(above["x"] - below["x"]) < 0.5 and abs(above["width"] - below["width"]) < 0.5
    assert below["y"] > above["y"] + above["height"]
    summary = page.inner_text("#lateness-summary")
    assert summary.startswith("Start lateness: p50 ") and "over the last 11 planned runs" in summary
    page.locator("figure.run-chart").screenshot(path=str(SHOTS / "13-schedule-lateness.png"))


def test_an_approver_reviews_a_held_run_and_approves_it(
    page, live_server, engine_port, make_schedule
):
    from cleanups.runs.execute import execute_iteration
    from tests.testapp.models import Event

    old = timezone.now() - timedelta(days=40)
    Event.objects.bulk_create([Event(created_at=old, name=f"order {n}") for n in range(1500)])
    schedule = make_schedule(
        name="browser held",
        desired_state="running",
        task="delete_old_rows",
        params={"model": "testapp.Event", "field": "created_at", "older_than_days": 0.3},
        interval=timedelta(hours=1),
    )
    execute_iteration(schedule.pk, 1)
    held = CleanupRun.objects.get(schedule=schedule, iteration=1)
    assert held.status == "held"

    page.goto(f"{live_server.url}/runs/{held.pk}/")
    assert "Held for approval" in page.inner_text("#live-rows")
    assert page.locator("#held-sample tbody tr").count() == 20
    assert page.locator("#held-counts").inner_text().count("1500") == 2  # all of the table
    shot(page, "14-held-run")
    page.click("button[value=approve]")
    page.wait_for_selector("ul.messagelist")
    assert "approved (at most 1,515 items)" in page.inner_text("ul.messagelist")
    assert "Approved" in page.inner_text("#live-rows")
    shot(page, "15-held-run-approved")
    held.refresh_from_db()
    assert held.approved_by == "admin" and Event.objects.count() == 1500
