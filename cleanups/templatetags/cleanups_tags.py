"""Template filters of the run pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.contrib.humanize.templatetags import humanize
from django.utils import timezone

from cleanups.formatting import seconds_label
from cleanups.runs.backlog import Backlog, of_schedule

register = template.Library()

# Django's own humanize filters, served from this library: a project that installs the app need
# not add django.contrib.humanize to its INSTALLED_APPS for the pages to render.
register.filter("intcomma", humanize.intcomma, is_safe=True)
register.filter("naturaltime", humanize.naturaltime)


@register.filter
def duration_label(duration: timedelta | None) -> str:
    """A run's duration as people read it ('4 ms', '1.25 s'), or a dash when it has none."""
    return "–" if duration is None else seconds_label(duration.total_seconds())


@register.filter
def start_timing(run: Any) -> str:
    """When a run started against its plan: "planned 12:00:00, started 12:00:00.041 (+41 ms)"
    in the site's time zone; the start alone for a run with no plan (a manual one)."""
    started = timezone.localtime(run.started_at)
    if run.planned_at is None:
        return started.strftime("%Y-%m-%d %H:%M:%S")
    planned = timezone.localtime(run.planned_at)
    late = (run.started_at - run.planned_at).total_seconds()
    sign = "+" if late >= 0 else "-"
    return (
        f"planned {planned:%Y-%m-%d %H:%M:%S}, started {started:%H:%M:%S}."
        f"{started.microsecond // 1000:03d} ({sign}{seconds_label(abs(late))})"
    )


@register.simple_tag
def schedule_backlog(schedule: Any) -> Backlog | None:
    """``{% schedule_backlog schedule as backlog %}``: its retention backlog (None: not measured)."""
    return of_schedule(schedule)
