"""The start-lateness strip in a real browser: Playwright driving Debian's Chromium against a
live server, as tests/test_browser.py does. The screenshot goes to test-artifacts/screenshots."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from cleanups.models import CleanupRun
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
