"""A small server-drawn SVG chart of a schedule's runs: duration bars, items-deleted line."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from cleanups.formatting import seconds_label
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


def run_chart(runs: Sequence[CleanupRun]) -> Chart | None:
    """Oldest to newest; None when there is nothing to draw."""
    runs = [r for r in runs if r.status != "skipped"]
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
        bars.append(
            Bar(
                x=round(x + step * 0.15, 1),
                y=round(PAD + inner_h - height, 1),
                width=round(max(step * 0.7, 1), 1),
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
