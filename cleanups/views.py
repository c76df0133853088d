"""Run-history pages: staff only, a fixed number of queries whatever the number of runs."""

from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime, parse_duration

from cleanups.cadence import preview_times
from cleanups.formatting import human_duration
from cleanups.models import MIN_INTERVAL, CleanupRun, CleanupSchedule

RUNS_PER_PAGE = 50


@staff_member_required
def schedule_runs(request: HttpRequest, pk: int) -> HttpResponse:
    schedule = get_object_or_404(CleanupSchedule, pk=pk)
    runs = schedule.runs.order_by("-iteration")
    status = request.GET.get("status", "")
    if status in CleanupRun.Status.values:
        runs = runs.filter(status=status)
    else:
        status = ""
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "cleanups/schedule_runs.html",
        {
            **admin.site.each_context(request),
            "title": f"Run history: {schedule}",
            "schedule": schedule,
            "interval": human_duration(schedule.interval),
            "page": page,
            "status": status,
            "statuses": CleanupRun.Status.choices,
        },
    )


@staff_member_required
def cadence_preview(request: HttpRequest) -> JsonResponse:
    """The next five run times of the cadence in the query string, for the schedule form."""
    values = request.GET
    draft = CleanupSchedule(
        cadence=values.get("cadence") or CleanupSchedule.Cadence.FIXED_DELAY,
        cron=values.get("cron", "").strip(),
        timezone=values.get("timezone") or settings.TIME_ZONE,
    )
    interval = parse_duration(values.get("interval", "").strip())
    if interval is None or interval < MIN_INTERVAL:
        if draft.cadence != CleanupSchedule.Cadence.CRON:
            return JsonResponse({"error": "Enter an interval of at least 1 second."})
        interval = MIN_INTERVAL
    draft.interval = interval
    for field in ("start_at", "end_at"):
        raw = values.get(field, "").strip()
        moment = parse_datetime(raw) if raw else None
        if raw and moment is None:
            return JsonResponse({"error": f"{field} is not a date and time."})
        if moment is not None and timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        setattr(draft, field, moment)
    try:
        draft.clean_fields(exclude=["name", "task", "params", "interval"])
        draft.clean_cadence()
        times = preview_times(draft)
    except (ValidationError, ValueError) as error:
        messages = error.messages if isinstance(error, ValidationError) else [str(error)]
        return JsonResponse({"error": " ".join(messages)})
    zone = ZoneInfo(draft.timezone)
    return JsonResponse(
        {"times": [t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z") for t in times]}
    )


@staff_member_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(CleanupRun.objects.select_related("schedule"), pk=pk)
    return render(
        request,
        "cleanups/run_detail.html",
        {
            **admin.site.each_context(request),
            "title": f"{run.schedule} · iteration {run.iteration}",
            "run": run,
            "targets": sorted((run.details or {}).get("targets", {}).items()),
        },
    )
