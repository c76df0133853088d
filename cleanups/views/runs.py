"""Run-history pages and their CSV export: a fixed number of queries whatever the number of runs."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils.functional import cached_property

from cleanups.formatting import human_duration, seconds_label, spreadsheet_safe
from cleanups.forms import RunFilterForm
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.backlog import of_run
from cleanups.views.access import run_viewer_required
from cleanups.views.safety import review_context

RUNS_PER_PAGE = 50
COUNT_CAP = 10_000


class CappedPaginator(Paginator):
    """Counts at most COUNT_CAP matching runs, so a page costs the same at a million runs as at
    a thousand: the newest COUNT_CAP are paged through, a date range reaches older ones, and the
    CSV export has them all."""

    @cached_property
    def count(self) -> int:
        # Any COUNT_CAP + 1 of them will do, so no ORDER BY: the database picks its cheapest.
        return self.object_list.order_by()[: COUNT_CAP + 1].count()

    @cached_property
    def capped(self) -> bool:
        return self.count > COUNT_CAP

    @cached_property
    def num_pages(self) -> int:
        return super().num_pages if not self.capped else COUNT_CAP // self.per_page


CSV_COLUMNS = [
    ("schedule", "schedule__name"),
    ("iteration", "iteration"),
    ("status", "status"),
    ("trigger", "trigger"),
    ("dry_run", "dry_run"),
    ("started_at", "started_at"),
    ("finished_at", "finished_at"),
    ("duration_seconds", "duration"),
    ("items_deleted", "items_deleted"),
    ("message", "message"),
    ("error", "error"),
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_response(runs: QuerySet[CleanupRun], filename: str) -> StreamingHttpResponse:
    """The runs as CSV, streamed in chunks: a million rows never sit in memory at once."""
    writer = csv.writer(_Echo())
    fields = [field for _, field in CSV_COLUMNS]
    values = runs.values_list(*fields)
    # Compiled now, so a filter value the database cannot take fails before the first byte,
    # with an error status, never as a file cut short that looks complete.
    values.query.get_compiler(using=values.db).as_sql()

    def rows() -> Iterator[str]:
        yield writer.writerow([name for name, _ in CSV_COLUMNS])
        for run in values.iterator(chunk_size=2000):
            row = [spreadsheet_safe(value) for value in run]
            duration = row[fields.index("duration")]
            row[fields.index("duration")] = "" if duration is None else duration.total_seconds()
            yield writer.writerow(row)

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _run_list(
    request: HttpRequest, runs: QuerySet[CleanupRun], schedule: CleanupSchedule | None
) -> HttpResponse:
    form = RunFilterForm(request.GET)
    runs = form.filter(runs)
    if request.GET.get("format") == "csv":
        if not form.is_valid():
            # An export must be the set asked for: never every run in place of a bad filter.
            problems = "; ".join(
                f"{form.fields[field].label if field in form.fields else field}: {message}"
                for field, messages in form.errors.items()
                for message in messages
            )
            return HttpResponseBadRequest(
                f"No export: fix the filters first ({problems}).\n", content_type="text/plain"
            )
        name = f"runs-{schedule.pk}.csv" if schedule else "runs.csv"
        return _csv_response(runs, name)
    page = CappedPaginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    status = form.cleaned_data.get("status", "") if form.is_valid() else ""
    return render(
        request,
        "cleanups/schedule_runs.html",
        {
            **admin.site.each_context(request),
            "title": f"Run history: {schedule}" if schedule else "Run history: all schedules",
            "schedule": schedule,
            "interval": human_duration(schedule.interval) if schedule else "",
            "page": page,
            "cap": COUNT_CAP,
            "form": form,
            "status": status,
            "statuses": CleanupRun.Status.choices,
            "query": query.urlencode(),
            "status_query": _without(query, "status"),
        },
    )


def _without(query: Any, key: str) -> str:
    rest = query.copy()
    rest.pop(key, None)
    return rest.urlencode()


@run_viewer_required
def schedule_runs(request: HttpRequest, pk: int) -> HttpResponse:
    schedule = get_object_or_404(CleanupSchedule, pk=pk)
    return _run_list(request, schedule.runs.order_by("-iteration"), schedule)


@run_viewer_required
def all_runs(request: HttpRequest) -> HttpResponse:
    runs = CleanupRun.objects.select_related("schedule").order_by("-started_at", "-pk")
    return _run_list(request, runs, None)


_MAINTENANCE = (("analyzed", "ANALYZE"), ("vacuumed", "VACUUM"))


def _table_sizes(tables: Any) -> list[dict[str, Any]]:
    """Each table a big delete maintained, by name: its size before and after (bytes, None when
    unknown), the space freed (None unless both are known; 0 when it did not shrink) and the
    maintenance that ran on it ("ANALYZE, VACUUM")."""
    if not isinstance(tables, dict):
        return []
    rows = []
    for name, sizes in sorted(tables.items()):
        if not isinstance(sizes, dict):
            continue
        before, after = _bytes(sizes.get("before")), _bytes(sizes.get("after"))
        freed = max(before - after, 0) if before is not None and after is not None else None
        ran = ", ".join(step for key, step in _MAINTENANCE if sizes.get(key))
        rows.append({"name": name, "before": before, "after": after, "freed": freed, "ran": ran})
    return rows


def _held_back(seconds: float) -> str:
    """The time a run waited between batches ('' for none): '350 ms', '12.50 s', '3 min 5 s'."""
    if not seconds or seconds <= 0:
        return ""
    return (
        seconds_label(seconds)
        if seconds < 60
        else human_duration(timedelta(seconds=round(seconds)))
    )


def _bytes(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@run_viewer_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(CleanupRun.objects.select_related("schedule"), pk=pk)
    details = run.details if isinstance(run.details, dict) else {}
    tables = _table_sizes(details.get("tables"))
    context = {
        "run": run,
        "targets": sorted(details.get("targets", {}).items()),
        "backlog": of_run(run),
        "held_back": _held_back(run.throttled_seconds),
        "tables": tables,
        "freed": sum(t["freed"] for t in tables if t["freed"] is not None)
        if any(t["freed"] is not None for t in tables)
        else None,
        "config": json.dumps(run.config, indent=2, sort_keys=True),
        **review_context(request, run),
    }
    if request.GET.get("live"):
        # The live part only, while the run is going: its progress without a reload.
        return JsonResponse(
            {
                "html": render_to_string("cleanups/_run_body.html", context, request),
                "totals": {},
                "done": run.status != CleanupRun.Status.RUNNING,
            }
        )
    return render(
        request,
        "cleanups/run_detail.html",
        {
            **admin.site.each_context(request),
            "title": f"{run.schedule} · iteration {run.iteration}",
            **context,
        },
    )
