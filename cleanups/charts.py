"""Small server-drawn SVG charts of a schedule's runs: duration bars and an items-deleted line,
and under them, column for column, a strip of each run's start lateness."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from cleanups.formatting import human_duration, seconds_label
from cleanups.models import CleanupRun

WIDTH, HEIGHT, PAD = 640, 180, 28


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    status: str
    title: str


@dataclass
class Chart:
    bars: list[Bar]
    line: str  # SVG polyline points for items deleted
    max_duration: str  # the longest run, as read: '4 ms', '1.25 s'
    max_items: int
    summary: str
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def charted(runs: Sequence[CleanupRun]) -> list[CleanupRun]:
    """The runs the charts draw, one column each: all but the skipped rows (nothing ran)."""
    return [r for r in runs if r.status != "skipped"]


def column(index: int, step: float) -> tuple[float, float]:
    """A run's bar, as x and width: the same in both charts, so they line up run for run."""
    return round(PAD + index * step + step * 0.15, 1), round(max(step * 0.7, 1), 1)


def run_chart(runs: Sequence[CleanupRun]) -> Chart | None:
    """Oldest to newest; None when there is nothing to draw."""
    runs = charted(runs)
    if not runs:
        return None
    seconds = [r.duration.total_seconds() if r.duration else 0.0 for r in runs]
    items = [r.items_deleted for r in runs]
    max_seconds = max(max(seconds), 0.001)  # the scales: never a division by zero
    max_items = max(max(items), 1)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / len(runs)
    bars, points = [], []
    for index, (run, secs, count) in enumerate(zip(runs, seconds, items, strict=True)):
        height = inner_h * secs / max_seconds
        x = PAD + index * step
        bar_x, bar_width = column(index, step)
        bars.append(
            Bar(
                x=bar_x,
                y=round(PAD + inner_h - height, 1),
                width=bar_width,
                height=round(height, 1),
                status=run.status,
                title=(
                    f"#{run.iteration} {run.get_status_display()}: "
                    f"{seconds_label(secs)}, {count} deleted"
                ),
            )
        )
        points.append(f"{x + step / 2:.1f},{PAD + inner_h - inner_h * count / max_items:.1f}")
    failed = sum(r.status in ("failed", "timed_out") for r in runs)
    summary = (
        f"Last {len(runs)} runs: median duration {seconds_label(statistics.median(seconds))}, "
        f"longest {seconds_label(max(seconds))}; {sum(items)} items deleted in all, at most "
        f"{max(items)} in one run; {failed} failed."
    )
    return Chart(bars, " ".join(points), seconds_label(max(seconds)), max(items), summary)


# The lateness strip: as wide as the duration chart (same PAD, same columns), less tall.
LATE_HEIGHT, LATE_TOP, LATE_BASE = 100, 26, 84  # the bars grow from LATE_BASE up to LATE_TOP
# A run later than this many times the p90 lateness is an outlier: drawn to the top of the
# scale and marked, so that one 2-hour-late run does not flatten the others into nothing.
OUTLIER_FACTOR = 5
MIN_MARK = 1.0  # a run on time still shows a 1-unit tick: it has a lateness, unlike a manual run


@dataclass
class LatenessBar:
    x: float
    y: float
    width: float
    height: float
    clipped: bool  # later than the top of the scale: drawn full height, a caret above it
    title: str
    caret: str = ""  # SVG polygon points of the caret over a clipped bar


@dataclass
class LatenessChart:
    bars: list[LatenessBar]  # planned runs only, each in its run's column of the duration chart
    label: str  # the scale, as read: 'max 140 ms', 'scale capped at 140 ms; ▲ 1 off it (up to 2 h)'
    scale_top: str  # the lateness at the top of the scale: '140 ms'
    clipped: int  # runs off the scale
    summary: str
    width: int = WIDTH
    height: int = LATE_HEIGHT
    pad: int = PAD
    top: int = LATE_TOP
    base: int = LATE_BASE

    @property
    def right(self) -> int:
        """Where the axes end: the duration chart's right edge."""
        return self.width - self.pad


def lateness_label(seconds: float) -> str:
    """A lateness as read: '41 ms', '2.50 s', and past a minute '2 h 5 min'."""
    return seconds_label(seconds) if seconds < 60 else human_duration(timedelta(seconds=seconds))


def nearest_rank(ordered: Sequence[float], percent: int) -> float:
    """The p-th percentile of ascending values by nearest rank: the value at rank ceil(p n / 100),
    as the dashboard's p99 (PostgreSQL's percentile_disc) reads it."""
    rank = max(-(-percent * len(ordered) // 100), 1)
    return ordered[rank - 1]


def scale_top(ordered: Sequence[float]) -> float:
    """The top of the lateness scale: the largest lateness, unless it is an outlier, more than
    OUTLIER_FACTOR x the p90 lateness; then the largest lateness that is not. Ascending,
    non-negative values.

    The p90 (nearest rank) is never the latest run's own lateness: of fewer than ten runs it
    would be, and one 2-hour-late run would then set the scale. When it is 0 (nine in ten runs
    on the dot), the smallest lateness above 0 is the measure instead."""
    rank = min(max(-(-90 * len(ordered) // 100), 1), max(len(ordered) - 1, 1))
    base = ordered[rank - 1] or next((v for v in ordered if v > 0), 0.0)
    limit = OUTLIER_FACTOR * base
    return max(v for v in ordered if v <= limit) if base else ordered[-1]


def lateness_chart(runs: Sequence[CleanupRun]) -> LatenessChart | None:
    """Each run's start lateness (started_at - planned_at), oldest to newest, in the columns of
    run_chart(runs). None when there is nothing to draw at all; a chart without bars when no run
    has a planned time (manual runs only): its summary says so. A run that started before its
    planned time (it should not) counts, and is drawn, as on time."""
    runs = charted(runs)
    if not runs:
        return None
    planned = [(i, r) for i, r in enumerate(runs) if r.planned_at is not None]
    manual = len(runs) - len(planned)
    if not planned:
        return LatenessChart(
            [],
            "",
            "",
            0,
            f"No start lateness to draw: none of the last {len(runs)} runs had a planned time "
            "(manual runs start when asked).",
        )
    raw = [(r.started_at - r.planned_at).total_seconds() for _, r in planned]
    late = [max(s, 0.0) for s in raw]
    ordered = sorted(late)
    top = scale_top(ordered)
    scale = max(top, 0.001)  # all on the dot: never a division by zero
    inner_h = LATE_BASE - LATE_TOP
    step = (WIDTH - 2 * PAD) / len(runs)
    bars = []
    for (index, run), secs, value in zip(planned, raw, late, strict=True):
        x, width = column(index, step)
        clipped = value > top
        height = inner_h if clipped else max(inner_h * value / scale, MIN_MARK)
        when = timezone.localtime(run.planned_at).strftime("%H:%M:%S")
        if secs < 0:
            started = f"started {seconds_label(-secs)} early (drawn as on time)"
        else:
            started = f"started +{lateness_label(secs)}"
        caret = ""
        if clipped:  # a small caret over the bar: it goes on past the top of the scale
            middle, half = x + width / 2, max(width / 2, 3)
            caret = (
                f"{middle - half:.1f},{LATE_TOP - 2} {middle + half:.1f},{LATE_TOP - 2} "
                f"{middle:.1f},{LATE_TOP - 8}"
            )
        bars.append(
            LatenessBar(
                x=x,
                y=round(LATE_BASE - height, 1),
                width=width,
                height=round(height, 1),
                clipped=clipped,
                title=(
                    f"#{run.iteration} planned {when}, {started}"
                    + (" (off the scale)" if clipped else "")
                ),
                caret=caret,
            )
        )
    clipped = sum(b.clipped for b in bars)
    most = lateness_label(ordered[-1])
    if clipped:
        label = f"scale capped at {lateness_label(top)}; ▲ {clipped} off it, up to {most}"
    else:
        label = f"max {most}"
    summary = (
        f"Start lateness: p50 {lateness_label(nearest_rank(ordered, 50))}, "
        f"p99 {lateness_label(nearest_rank(ordered, 99))}, max {most} "
        f"over the last {len(late)} planned runs."
    )
    if clipped:
        summary += (
            f" The scale stops at {lateness_label(top)}: {clipped} later "
            f"{'run is' if clipped == 1 else 'runs are'} drawn to the top, marked ▲."
        )
    if manual:
        summary += f" {manual} manual {'run has' if manual == 1 else 'runs have'} no lateness."
    early = sum(s < 0 for s in raw)
    if early:
        summary += f" {early} started before {'its' if early == 1 else 'their'} planned time, "
        summary += "drawn as on time."
    return LatenessChart(bars, label, lateness_label(top), clipped, summary)
