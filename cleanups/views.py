"""Run-history pages: staff only, a fixed number of queries whatever the number of runs."""

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from cleanups.formatting import human_duration
from cleanups.models import CleanupRun, CleanupSchedule

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
