"""The start-lateness strip under the schedule page's duration chart: its bars, its scale, its
summary, and the page that draws it (with no query per run)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from cleanups.charts import (
    LATE_BASE,
    LATE_TOP,
    MIN_MARK,
    lateness_chart,
    nearest_rank,
    run_chart,
)
from cleanups.models import CleanupRun

INNER = LATE_BASE - LATE_TOP  # the height of a bar at the top of the scale
NOON = datetime(2024, 5, 6, 12, 0, 0, tzinfo=UTC)


def run(
    iteration: int,
    late_ms: float | None,
    *,
    status: str = "succeeded",
    planned: datetime | None = None,
) -> CleanupRun:
    """An unsaved run planned ``iteration`` minutes after noon that started ``late_ms`` after
    it; ``late_ms=None``: a manual run (no planned time)."""
    planned = planned or NOON + timedelta(minutes=iteration)
    manual = late_ms is None
    return CleanupRun(
        iteration=iteration,
        status=status,
        trigger="manual" if manual else "scheduled",
        task="sample",
        planned_at=None if manual else planned,
        started_at=planned + timedelta(milliseconds=0 if manual else late_ms),
        duration=timedelta(seconds=1 + iteration % 3),
        items_deleted=iteration,
    )


def planned_label(r: CleanupRun) -> str:
    return timezone.localtime(r.planned_at).strftime("%H:%M:%S")


def test_bars_follow_the_data_in_the_duration_charts_columns():
    runs = [run(1, 10), run(2, 20), run(3, 40), run(4, 30)]

    chart = lateness_chart(runs)
    durations = run_chart(runs)

    assert [b.height for b in chart.bars] == [INNER / 4, INNER / 2, INNER, INNER * 3 / 4]
    assert [b.y for b in chart.bars] == [LATE_BASE - b.height for b in chart.bars]
    # Run for run under its duration bar: the same x and width.
    assert [(b.x, b.width) for b in chart.bars] == [(b.x, b.width) for b in durations.bars]
    assert chart.bars[0].x < chart.bars[1].x < chart.bars[2].x < chart.bars[3].x
    assert [b.title for b in chart.bars] == [
        f"#1 planned {planned_label(runs[0])}, started +10 ms",
        f"#2 planned {planned_label(runs[1])}, started +20 ms",
        f"#3 planned {planned_label(runs[2])}, started +40 ms",
        f"#4 planned {planned_label(runs[3])}, started +30 ms",
    ]
    assert not any(b.clipped or b.caret for b in chart.bars)
    assert chart.label == "max 40 ms" and chart.scale_top == "40 ms" and chart.clipped == 0


def test_manual_runs_and_skipped_rows_get_no_mark_and_keep_the_columns():
    runs = [
        run(1, 10),
        run(2, None),  # manual
        run(3, 99, status="skipped"),  # nothing ran: not a column in either chart
        run(4, 20),
        run(5, None, status="failed"),
    ]

    chart = lateness_chart(runs)
    durations = run_chart(runs)

    assert len(durations.bars) == 4  # 1, 2, 4, 5
    assert len(chart.bars) == 2
    assert [b.title.split()[0] for b in chart.bars] == ["#1", "#4"]
    assert (chart.bars[0].x, chart.bars[1].x) == (durations.bars[0].x, durations.bars[2].x)
    assert chart.summary == (
        "Start lateness: p50 10 ms, p99 20 ms, max 20 ms over the last 2 planned runs."
        " 2 manual runs have no lateness."
    )


def test_nothing_to_draw_without_runs_and_no_bars_with_only_manual_runs():
    assert lateness_chart([]) is None
    assert lateness_chart([run(1, 5, status="skipped")]) is None

    chart = lateness_chart([run(1, None), run(2, None)])
    assert chart.bars == [] and chart.clipped == 0
    assert chart.summary.startswith("No start lateness to draw: none of the last 2 runs")


def test_a_huge_outlier_is_clipped_and_marked_not_flattening_the_rest():
    runs = [run(i, 10 + i) for i in range(19)]  # 10 to 28 ms
    runs.append(run(19, 2 * 3600 * 1000))  # two hours late

    chart = lateness_chart(runs)

    outlier = chart.bars[-1]
    assert outlier.clipped and outlier.height == INNER and outlier.y == LATE_TOP
    assert outlier.title.endswith("started +2 h (off the scale)")
    assert outlier.caret  # the ▲ over the bar
    xs = [float(p.split(",")[0]) for p in outlier.caret.split()]
    assert min(xs) >= outlier.x - 3 and max(xs) <= outlier.x + outlier.width + 3
    # The scale tops at the latest run that is not an outlier (28 ms): the rest stay readable.
    assert chart.scale_top == "28 ms" and chart.clipped == 1
    assert chart.bars[18].height == INNER and not chart.bars[18].clipped
    assert chart.bars[0].height == round(INNER * 10 / 28, 1)
    assert chart.label == "scale capped at 28 ms; ▲ 1 off it, up to 2 h"
    assert "max 2 h over the last 20 planned runs" in chart.summary
    assert "The scale stops at 28 ms: 1 later run is drawn to the top, marked ▲." in chart.summary


def test_a_few_runs_and_one_outlier_still_cap_the_scale():
    chart = lateness_chart([run(1, 30), run(2, 10), run(3, 3600 * 1000), run(4, 20)])
    assert [b.clipped for b in chart.bars] == [False, False, True, False]
    assert [b.height for b in chart.bars] == [
        INNER,
        round(INNER / 3, 1),
        INNER,
        round(INNER * 2 / 3, 1),
    ]
    assert chart.scale_top == "30 ms"
    # Two of three late by hours are not outliers: the scale shows them as they are.
    chart = lateness_chart([run(1, 10), run(2, 3600 * 1000), run(3, 3600 * 1000)])
    assert chart.clipped == 0 and chart.scale_top == "1 h"


def test_mostly_on_the_dot_still_caps_a_lone_outlier():
    # p90 is 0: the smallest lateness above 0 (10 ms) is the measure of an outlier.
    runs = [run(i, 0) for i in range(95)]
    runs += [run(95 + i, 10) for i in range(4)] + [run(99, 3600 * 1000)]

    chart = lateness_chart(runs)

    assert chart.scale_top == "10 ms" and chart.clipped == 1 and chart.bars[-1].clipped
    assert chart.bars[95].height == INNER
    assert chart.bars[0].height == MIN_MARK  # on time: a tick, still a mark with a title


def test_all_on_time_draws_ticks_without_dividing_by_zero():
    chart = lateness_chart([run(1, 0), run(2, 0)])
    assert [b.height for b in chart.bars] == [MIN_MARK, MIN_MARK]
    assert chart.label == "max 0 s" and chart.clipped == 0


def test_negative_lateness_is_clamped_at_zero_and_said():
    runs = [run(1, -5), run(2, 20)]

    chart = lateness_chart(runs)

    early, late = chart.bars
    assert early.height == MIN_MARK and early.y == LATE_BASE - MIN_MARK
    assert (
        early.title
        == f"#1 planned {planned_label(runs[0])}, started 5.0 ms early (drawn as on time)"
    )
    assert late.height == INNER
    assert chart.summary == (
        "Start lateness: p50 0 s, p99 20 ms, max 20 ms over the last 2 planned runs."
        " 1 started before its planned time, drawn as on time."
    )


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7], 50, 4),  # rank ceil(3.5) = 4
        ([1, 2, 3, 4], 50, 2),  # rank 2, not the mean of 2 and 3
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 10),  # rank ceil(9.9) = 10: the max
        (list(range(1, 201)), 99, 198),  # rank 198
        ([7], 99, 7),
    ],
)
def test_percentiles_by_nearest_rank(values, percent, expected):
    assert nearest_rank(values, percent) == expected


def test_summary_reads_p50_and_p99_by_nearest_rank():
    # 1 to 100 ms, shuffled: p50 is the 50th (50 ms), p99 the 99th (99 ms).
    order = [(i * 37) % 100 + 1 for i in range(100)]
    assert sorted(order) == list(range(1, 101))
    chart = lateness_chart([run(i, ms) for i, ms in enumerate(order)])

    assert chart.summary == (
        "Start lateness: p50 50 ms, p99 99 ms, max 100 ms over the last 100 planned runs."
    )
    assert chart.clipped == 0  # 100 ms is not 5 x p90 (90 ms)


# The page: the strip drawn under the duration chart, from the runs it already loads.


def add_runs(schedule, lateness_ms, *, start=1):
    """Runs planned a minute apart, each started its lateness (ms) after; None: a manual run."""
    base = timezone.now() - timedelta(hours=3)
    CleanupRun.objects.bulk_create(
        CleanupRun(
            schedule=schedule,
            iteration=start + n,
            status="succeeded",
            trigger="manual" if late is None else "scheduled",
            task=schedule.task,
            planned_at=None if late is None else base + timedelta(minutes=n),
            started_at=base + timedelta(minutes=n, milliseconds=late or 0),
            duration=timedelta(milliseconds=200),
            items_deleted=n,
        )
        for n, late in enumerate(lateness_ms)
    )


def page(admin_client, schedule) -> str:
    response = admin_client.get(reverse("cleanups:schedule_detail", args=[schedule.pk]))
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_the_page_draws_each_runs_lateness_with_its_title_and_summary(
    admin_client, engine_port, make_schedule
):
    schedule = make_schedule()
    add_runs(schedule, [41, 12, None, 7200 * 1000, 30, 12, 20, 25, 15, 18])
    first = CleanupRun.objects.get(schedule=schedule, iteration=1)

    html = page(admin_client, schedule)

    strip = html[
        html.index('class="lateness-strip"') : html.index("</svg>", html.index("lateness-strip"))
    ]
    assert 'role="img" aria-labelledby="lateness-summary"' in html
    assert strip.count('class="lateness-bar') == 9  # the manual run has none
    assert strip.count('class="lateness-bar lateness-clipped"') == 1
    assert strip.count('class="lateness-caret"') == 1
    when = timezone.localtime(first.planned_at).strftime("%H:%M:%S")
    assert f"<title>#1 planned {when}, started +41 ms</title>" in strip
    assert re.search(r"<title>#4 planned [\d:]+, started \+2 h \(off the scale\)</title>", strip)
    # The 9 planned runs: 12 12 15 18 20 25 30 41 2h. Their p90 is the 2 h itself (rank 9 of
    # 9): the scale reads the runs below the latest, whose p90 is 41 ms; 2 h is > 5 x that.
    assert (
        '<p id="lateness-summary">Start lateness: p50 20 ms, p99 2 h, max 2 h over the last '
        "9 planned runs. The scale stops at 41 ms: 1 later run is drawn to the top, marked ▲. "
        "1 manual run has no lateness.</p>"
    ) in html
    assert "bars: start lateness (scale capped at 41 ms; ▲ 1 off it, up to 2 h)" in strip
    assert "dashed line: 41 ms" in strip
    assert '<p id="chart-summary">Last 10 runs: median duration 200 ms' in html


@pytest.mark.django_db
def test_a_page_of_manual_runs_says_there_is_no_lateness(admin_client, engine_port, make_schedule):
    schedule = make_schedule()
    add_runs(schedule, [None, None, None])

    html = page(admin_client, schedule)

    assert html.count('class="bar bar-') == 3
    assert "lateness-strip" not in html and "lateness-bar" not in html
    assert "No start lateness to draw: none of the last 3 runs had a planned time" in html


@pytest.mark.django_db
def test_a_page_without_runs_draws_nothing(admin_client, engine_port, make_schedule):
    html = page(admin_client, make_schedule())
    assert "No runs to draw yet." in html and "lateness-summary" not in html


@pytest.mark.django_db
def test_the_lateness_strip_makes_no_query_per_run(admin_client, engine_port, make_schedule):
    few, many = make_schedule(name="few"), make_schedule(name="many")
    add_runs(few, [5 + n for n in range(10)])
    add_runs(many, [5 + n for n in range(100)])
    page(admin_client, few)  # the session, the content types: read once

    with CaptureQueriesContext(connection) as small:
        assert page(admin_client, few).count('class="lateness-bar') == 10
    with CaptureQueriesContext(connection) as large:
        assert page(admin_client, many).count('class="lateness-bar') == 100

    assert len(large) == len(small)
