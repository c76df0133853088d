"""A schedule's page (its live orchestration, charts and newest runs) and the cadence preview."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.dateparse import parse_datetime, parse_duration, parse_time

from cleanups import instances
from cleanups.cadence import preview_times, window_of
from cleanups.charts import lateness_chart, run_chart
from cleanups.conf import settings
from cleanups.formatting import human_duration
from cleanups.instances import EngineUnavailable, runtime_status_label
from cleanups.models import MIN_INTERVAL, CleanupSchedule
from cleanups.reads.alerts import alert_overview
from cleanups.views.access import can_view_runs, schedule_viewer_required

CHART_RUNS = 100


@schedule_viewer_required
def schedule_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A schedule: its configuration, its live orchestration, a chart, its newest runs."""
    schedule = get_object_or_404(CleanupSchedule, pk=pk)
    newest = list(schedule.runs.order_by("-iteration")[:CHART_RUNS])
    oldest_first = newest[::-1]
    engine_error = ""
    state = None
    try:
        state = instances.state_of(schedule)
    except EngineUnavailable:
        engine_error = "The Durable Task engine is unreachable: live state is unknown."
    context = {
        "schedule": schedule,
        "interval": human_duration(schedule.interval),
        "params": json.dumps(schedule.params, sort_keys=True),
        "state": state,
        "runtime": runtime_status_label(state),
        "custom_status": state.serialized_custom_status if state else "",
        "engine_error": engine_error,
        "chart": run_chart(oldest_first),
        "recent": newest[:20],
        "can_view_runs": can_view_runs(request),
        "held_runs": schedule.runs.filter(
            status="held", approved_at__isnull=True, rejected_at__isnull=True
        ).count(),
    }
    if request.GET.get("live"):
        # The parts that change while the schedule runs: its orchestration and newest runs.
        return JsonResponse(
            {
                "html": render_to_string("cleanups/_schedule_engine.html", context, request),
                "extra": {
                    "live-runs": render_to_string(
                        "cleanups/_schedule_newest.html", context, request
                    )
                },
                "done": not schedule.is_alive,
            }
        )
    return render(
        request,
        "cleanups/schedule_detail.html",
        {
            **admin.site.each_context(request),
            "title": str(schedule),
            **context,
            # Under the duration chart, run for run, from the same list: no query of its own.
            "lateness": lateness_chart(oldest_first),
            # Where its alerts go and the deliveries that failed (not refreshed live).
            "alerts": alert_overview(schedule),
        },
    )


@staff_member_required
def cadence_preview(request: HttpRequest) -> JsonResponse:
    """The next five run times of the cadence in the query string, for the schedule form.

    A value that cannot be read, or a cadence that cannot run, is a 400 naming the parameter.
    """

    def refuse(parameter: str, message: str) -> JsonResponse:
        return JsonResponse({"error": message, "parameter": parameter}, status=400)

    values = request.GET
    draft = CleanupSchedule(
        cadence=values.get("cadence") or CleanupSchedule.Cadence.FIXED_DELAY,
        cron=values.get("cron", "").strip(),
        timezone=values.get("timezone") or settings.TIME_ZONE,
    )
    try:
        interval = parse_duration(values.get("interval", "").strip())
    except (ValueError, OverflowError):  # well formed, but more days than a timedelta holds
        return refuse("interval", "Enter an interval of at most 366 days.")
    if interval is None or interval < MIN_INTERVAL:
        if draft.cadence != CleanupSchedule.Cadence.CRON:
            return refuse("interval", "Enter an interval of at least 1 second.")
        interval = MIN_INTERVAL
    draft.interval = interval
    for field in ("window_start", "window_end"):
        raw = values.get(field, "").strip()
        try:
            clock = parse_time(raw) if raw else None
        except ValueError:  # well formed, but no such time (25:00)
            clock = None
        if raw and clock is None:
            return refuse(field, f"{field} is not a time of day, e.g. 01:30.")
        setattr(draft, field, clock)
    for field in ("start_at", "end_at"):
        raw = values.get(field, "").strip()
        try:
            moment = parse_datetime(raw) if raw else None
        except ValueError:  # well formed, but no such day or time (2026-99-99)
            moment = None
        if raw and moment is None:
            return refuse(field, f"{field} is not a date and time.")
        if moment is not None and timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        setattr(draft, field, moment)
    try:
        draft.clean_fields(exclude=["name", "task", "params", "interval"])
        draft.clean_cadence()
    except ValidationError as error:
        fields = error.message_dict
        return refuse(next(iter(fields)), " ".join(m for ms in fields.values() for m in ms))
    try:
        times = preview_times(draft)
        zone = ZoneInfo(draft.timezone)
        labels = [t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") for t in times]
    except (ValueError, OverflowError) as error:
        parameter = "cron" if draft.cadence == CleanupSchedule.Cadence.CRON else "interval"
        return refuse(parameter, str(error))
    window = window_of(draft)
    answer: dict[str, Any] = {"times": labels}
    if window is not None:
        answer["window"] = window.describe(draft.timezone)
    return JsonResponse(answer)
