"""Run-history pages: staff with the models' view permissions only, a fixed number of queries
whatever the number of runs."""

import csv
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime, parse_duration
from django.utils.functional import cached_property
from django.utils.html import escape
from django.utils.safestring import mark_safe

from cleanups.cadence import preview_times
from cleanups.charts import run_chart
from cleanups.control import (
    EngineUnavailable,
    engine_call,
    fetch_runtime_states,
    runtime_status_label,
)
from cleanups.durable.connection import get_client
from cleanups.formatting import human_duration
from cleanups.forms import RunFilterForm
from cleanups.models import MIN_INTERVAL, CleanupRun, CleanupSchedule

RUNS_PER_PAGE = 50
COUNT_CAP = 10_000

VIEW_SCHEDULES = "cleanups.view_cleanupschedule"
VIEW_RUNS = "cleanups.view_cleanuprun"

View = Callable[..., HttpResponse]


def staff_with_permissions(*perms: str) -> Callable[[View], View]:
    """Staff holding ``perms`` only. Anyone else is sent to the admin login, as the admin does;
    staff without them get a 403, since logging in again would not help."""

    def decorator(view: View) -> View:
        return staff_member_required(permission_required(perms, raise_exception=True)(view))

    return decorator


schedule_viewer_required = staff_with_permissions(VIEW_SCHEDULES)
run_viewer_required = staff_with_permissions(VIEW_SCHEDULES, VIEW_RUNS)


def can_view_runs(request: HttpRequest) -> bool:
    """Whether the page may show runs' errors and link to run pages (read from the permission
    cache the decorator filled: no query)."""
    return request.user.has_perm(VIEW_RUNS)


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


# A cell starting with one of these is a formula to a spreadsheet (OWASP: CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _as_text(value: object) -> object:
    """A text cell, with a leading ' if a spreadsheet would otherwise run it as a formula.
    Numbers, dates and booleans the code writes itself are not str and stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return f"'{value}"
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
            row = [_as_text(value) for value in run]
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


CHART_RUNS = 100


@schedule_viewer_required
def schedule_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A schedule: its configuration, its live orchestration, a chart, its newest runs."""
    schedule = get_object_or_404(CleanupSchedule, pk=pk)
    newest = list(schedule.runs.order_by("-iteration")[:CHART_RUNS])
    engine_error = ""
    state = None
    try:
        with engine_call():
            state = get_client().get_orchestration_state(schedule.instance_id, fetch_payloads=False)
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
        "chart": run_chart(list(reversed(newest))),
        "recent": newest[:20],
        "can_view_runs": can_view_runs(request),
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
        {**admin.site.each_context(request), "title": str(schedule), **context},
    )


@run_viewer_required
def all_runs(request: HttpRequest) -> HttpResponse:
    runs = CleanupRun.objects.select_related("schedule").order_by("-started_at", "-pk")
    return _run_list(request, runs, None)


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
    return JsonResponse({"times": labels})


@run_viewer_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(CleanupRun.objects.select_related("schedule"), pk=pk)
    context = {
        "run": run,
        "targets": sorted((run.details or {}).get("targets", {}).items()),
        "config": json.dumps(run.config, indent=2, sort_keys=True),
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


STRIP_RUNS = 20


class StripRun(NamedTuple):
    """What the dashboard shows of one recent run: a tuple, not a model instance, because
    1,000 schedules bring 20,000 of them and a model instance costs ten times as much."""

    pk: int
    schedule_id: int
    iteration: int
    status: str
    dry_run: bool

    def get_status_display(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)


STATUS_LABELS = dict(CleanupRun.Status.choices)


def _recent_runs(schedules: list[CleanupSchedule]) -> dict[int, list[StripRun]]:
    """The newest STRIP_RUNS runs of every schedule, in one query."""
    by_schedule: dict[int, list[StripRun]] = {s.pk: [] for s in schedules}
    for values in CleanupRun.objects.newest_per_schedule(schedules, STRIP_RUNS, StripRun._fields):
        run = StripRun(*values)
        by_schedule[run.schedule_id].append(run)
    return by_schedule


def _last_runs(recent: dict[int, list[StripRun]]) -> dict[int, CleanupRun]:
    """The newest run that ran (not skipped) of every schedule, by pk: one query for 1,000
    rows, rather than the time and duration of all 20,000 strip runs."""
    pks = [next((r.pk for r in runs if r.status != "skipped"), None) for runs in recent.values()]
    last = CleanupRun.objects.filter(pk__in=[pk for pk in pks if pk is not None])
    return {run.pk: run for run in last.only("status", "started_at", "duration")}


def _strip_html(runs: list[StripRun], run_url: str) -> str:
    """The strip of marks, oldest first, as one string: the template loop it replaces, with a
    {% url %} per mark, took most of a second for 1,000 schedules. Statuses and labels come
    from the model's choices, escaped once. With no ``run_url`` the marks link nowhere."""
    marks, summary = [], []
    for run in reversed(runs):
        status, text = _MARKS.get(run.status) or (escape(run.status), escape(run.status))
        if run.dry_run:
            status, text = f"{status} mark-dry", f"{text} (dry run)"
        if run_url:
            marks.append(
                f'<a class="mark mark-{status}" href="{run_url}{run.pk}/" '
                f'title="#{run.iteration} {text}" aria-label="#{run.iteration} {text}"></a>'
            )
        else:
            marks.append(
                f'<span class="mark mark-{status}" role="img" '
                f'title="#{run.iteration} {text}" aria-label="#{run.iteration} {text}"></span>'
            )
        summary.append(text)
    label = ", ".join(summary) or "no runs yet"
    # A group, not an image: its label reads the whole strip, and each mark is a link of its
    # own with its own label, reachable from the keyboard.
    return mark_safe(
        f'<span class="strip" role="group" aria-label="{label}">{"".join(marks)}</span>'
    )


_MARKS = {
    status: (str(escape(status)), str(escape(label))) for status, label in STATUS_LABELS.items()
}


def _deleted_since(since: datetime) -> Subquery:
    """Items a schedule deleted since ``since``: an index range of its newest runs."""
    return Subquery(
        CleanupRun.objects.filter(schedule=OuterRef("pk"), started_at__gte=since, dry_run=False)
        .order_by()
        .values("schedule")
        .annotate(total=Sum("items_deleted"))
        .values("total")
    )


DASHBOARD_FILTERS = ("running", "paused", "failing", "recovering")


def dashboard_rows(
    show: str = "", *, link_runs: bool = True
) -> tuple[list[dict[str, object]], dict[str, int], bool]:
    """Per schedule: live state, recent runs, success rate, last and next run, 24 h deletions.
    The totals count every schedule; ``show``, one of the totals, keeps only its rows.
    ``link_runs``: the strips' marks link to the run pages (for those who may open them)."""
    since = timezone.now() - timedelta(hours=24)
    schedules = list(
        CleanupSchedule.objects.annotate(
            deleted_24h=Coalesce(_deleted_since(since), Value(0))
        ).order_by("name")
    )
    recent = _recent_runs(schedules)
    try:
        states = fetch_runtime_states(s.instance_id for s in schedules)
        engine_up = True
    except EngineUnavailable:
        states, engine_up = {}, False
    run_url = (
        escape(reverse("cleanups:run_detail", args=[0]).removesuffix("0/")) if link_runs else ""
    )
    last_runs = _last_runs(recent)
    rows = []
    totals = {"running": 0, "paused": 0, "failing": 0, "recovering": 0}
    for schedule in schedules:
        runs = recent[schedule.pk][:STRIP_RUNS]
        finished = [
            r for r in runs if r.status in ("succeeded", "failed", "interrupted", "timed_out")
        ]
        rate = (
            round(100 * sum(r.status == "succeeded" for r in finished) / len(finished))
            if finished
            else None
        )
        last = next((r for r in runs if r.status != "skipped"), None)
        failing = bool(last and last.status in ("failed", "timed_out"))
        last = last and last_runs.get(last.pk)
        runtime = runtime_status_label(states.get(schedule.instance_id)) if engine_up else ""
        if schedule.recovering_since:
            state = "recovering"
        elif schedule.desired_state in ("paused", "running"):
            state = schedule.desired_state
        else:
            state = ""
        if state:
            totals[state] += 1
        totals["failing"] += failing
        if show and not (show == state or (show == "failing" and failing)):
            continue
        rows.append(
            {
                "schedule": schedule,
                "runtime": runtime,
                "recovering": bool(schedule.recovering_since),
                "strip": _strip_html(runs, run_url),
                "success_rate": rate,
                "last": last,
                "failing": failing,
                "deleted_24h": schedule.deleted_24h,
            }
        )
    return rows, totals, engine_up


def _dashboard_filter(request: HttpRequest) -> str:
    """The ``show`` parameter if it names a total; anything else shows every schedule."""
    show = request.GET.get("show", "")
    return show if show in DASHBOARD_FILTERS else ""


@schedule_viewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    show = _dashboard_filter(request)
    rows, totals, engine_up = dashboard_rows(show, link_runs=can_view_runs(request))
    return render(
        request,
        "cleanups/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": "Cleanups dashboard",
            "rows": rows,
            "totals": totals,
            "engine_up": engine_up,
            "show": show,
            "can_view_runs": can_view_runs(request),
            "status_url": reverse("cleanups:dashboard_status") + (f"?show={show}" if show else ""),
        },
    )


@schedule_viewer_required
def dashboard_status(request: HttpRequest) -> JsonResponse:
    """The dashboard's live parts, for its refresh without a reload."""
    show = _dashboard_filter(request)
    rows, totals, engine_up = dashboard_rows(show, link_runs=can_view_runs(request))
    return JsonResponse(
        {
            "engine_up": engine_up,
            "totals": totals,
            "html": render_to_string(
                "cleanups/_dashboard_rows.html",
                {"rows": rows, "engine_up": engine_up, "show": show},
                request,
            ),
        }
    )
