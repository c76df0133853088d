"""Run-history pages: staff with the models' view permissions only, a fixed number of queries
whatever the number of runs."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db import connections
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    ExpressionWrapper,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render
from django.template.loader import get_template, render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime, parse_duration
from django.utils.functional import cached_property
from django.utils.html import escape
from django.utils.safestring import mark_safe

from cleanups import alerts
from cleanups.cadence import preview_times
from cleanups.charts import lateness_chart, run_chart
from cleanups.conf import settings
from cleanups.control import (
    EngineUnavailable,
    engine_call,
    runtime_status_label,
)
from cleanups.durable.connection import get_client
from cleanups.formatting import human_duration, seconds_label
from cleanups.forms import RunFilterForm
from cleanups.log import CONTROL_CHARACTERS
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
    oldest_first = newest[::-1]
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
        "chart": run_chart(oldest_first),
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
        {
            **admin.site.each_context(request),
            "title": str(schedule),
            **context,
            # Under the duration chart, run for run, from the same list: no query of its own.
            "lateness": lateness_chart(oldest_first),
            # Where its alerts go and the deliveries that failed (not refreshed live).
            "alerts": alerts.page_context(schedule),
        },
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


# --- The dashboard: a fleet at a glance, then a page of its schedules -------------------------
#
# At 10,000 schedules nobody reads every row: the page leads with the fleet (totals, p99
# lateness, runs in the last hour), then shows 50 schedules, those that need attention first,
# with a search box. Only those 50 rows cost more than an index entry each: their strips,
# success rates, last runs, 24 h deletions and the engine's state. The live refresh sends the
# totals, and a row's HTML only when it differs from what the browser shows.

DASHBOARD_PER_PAGE = 50
# Each schedule is in exactly one state; failing and late are what may be wrong with it.
DASHBOARD_TOTALS = ("running", "paused", "stopped", "failing", "late", "recovering")
DASHBOARD_SORTS = {"": "needs attention first", "name": "by name"}
FAILING_STATUSES = (CleanupRun.Status.FAILED, CleanupRun.Status.TIMED_OUT)
LATENESS_WINDOW = timedelta(hours=1)
SEARCH_MAX_LENGTH = CleanupSchedule._meta.get_field("name").max_length or 100
# The live refresh's ``since`` token: a digest of the page's frame (its schedules, their order,
# the pagination, the engine's state), then one digest per row, in order. Not a time or the
# newest run id: a run changes in place (running, then succeeded with its duration), the
# control changes schedules with update(), which leaves updated_at alone, and the engine's
# state and "3 minutes ago" change with nothing written at all. A digest of what the browser
# shows catches each of them, and the server keeps nothing per browser.
_DIGEST = r"[0-9a-f]{12}"
SINCE_TOKEN = re.compile(rf"{_DIGEST}(?:\.{_DIGEST}){{0,{DASHBOARD_PER_PAGE}}}")
PAGE_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class DashboardQuery:
    """What the visitor asked to see. Every value comes from the query string and is checked
    here: a ``show`` or ``sort`` it cannot read shows everything, in the default order."""

    show: str = ""
    q: str = ""
    sort: str = ""
    page: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest) -> DashboardQuery:
        show = request.GET.get("show", "")
        sort = request.GET.get("sort", "")
        # No name holds a control character (and PostgreSQL refuses a NUL outright); none is
        # longer than SEARCH_MAX_LENGTH characters, so a longer text could match nothing either.
        q = CONTROL_CHARACTERS.sub("", request.GET.get("q", "")).strip()
        return cls(
            show=show if show in DASHBOARD_TOTALS else "",
            q=q[:SEARCH_MAX_LENGTH],
            sort=sort if sort in DASHBOARD_SORTS else "",
            page=request.GET.get("page", "")[:20],
        )

    def query_string(self, **changes: str | int) -> str:
        """This view's query string (with ``changes``; empty values left out), for links."""
        values = {"show": self.show, "q": self.q, "sort": self.sort, **changes}
        return urlencode({key: value for key, value in values.items() if value})


class FleetLateness(NamedTuple):
    runs: int  # runs started in the window
    planned: int  # of them, those with a planned time: what lateness is measured on
    p99: float | None  # seconds; None without a planned run


def fleet_lateness(since: datetime) -> FleetLateness:
    """Runs started since ``since`` and the p99 of their lateness (started_at - planned_at),
    nearest rank, in one statement: each part an index-only range, of run_newest for the count
    and of run_lateness (started_at, planned_at; planned runs only) for the rest.

    PostgreSQL: percentile_disc, the nearest rank. SQLite has no percentile: the value at the
    rank is ORDER BY lateness DESC LIMIT 1 OFFSET n - ceil(0.99 n), which SQLite sorts keeping
    only the top 1 %; julianday reads the stored times to the millisecond. Either way the
    database sorts the hour's planned runs, and none is loaded into Python: about 40 ms on
    SQLite for 125,000 runs (an hour of 10,000 schedules every 5 minutes), 130 ms without the
    index.
    """
    connection = connections[CleanupRun.objects.db]
    quote = connection.ops.quote_name
    meta = CleanupRun._meta
    table = quote(meta.db_table)
    started = quote(meta.get_field("started_at").column)
    planned = quote(meta.get_field("planned_at").column)
    window = f"{table} WHERE {started} >= %s AND {planned} IS NOT NULL"
    if connection.vendor == "postgresql":
        p99 = (
            f"SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY {started} - {planned})"
            f" FROM {window}"
        )
    else:
        p99 = (
            f"SELECT (julianday({started}) - julianday({planned})) * 86400.0 FROM {window}"
            f" ORDER BY 1 DESC LIMIT 1"
            f" OFFSET (SELECT COUNT(*) - (99 * COUNT(*) + 99) / 100 FROM {window})"
        )
    sql = (
        f"SELECT (SELECT COUNT(*) FROM {table} WHERE {started} >= %s),"
        f" (SELECT COUNT(*) FROM {window}), ({p99})"
    )
    moment = connection.ops.adapt_datetimefield_value(since)
    with connection.cursor() as cursor:
        cursor.execute(sql, [moment] * sql.count("%s"))
        runs, planned_runs, lateness = cursor.fetchone()
    if isinstance(lateness, timedelta):  # PostgreSQL's interval
        lateness = lateness.total_seconds()
    return FleetLateness(runs, planned_runs, None if lateness is None else round(lateness, 3))


def _fleet(now: datetime) -> tuple[QuerySet[CleanupSchedule], dict[str, Q]]:
    """Every schedule, and each total's condition over them (the totals, ``show`` and the
    default order all read these, so they cannot disagree).

    Failing: the newest run that ran (not skipped) failed or timed out. Late: running, its
    planned run overdue by more than MISSED_RUN_GRACE_SECONDS and not begun (its newest run is
    neither running nor planned at or after it), as the control reads an overdue schedule.
    Each is an index seek or two per schedule: about 10 ms for 10,000 schedules on SQLite.
    """
    newest_that_ran = (
        CleanupRun.objects.filter(schedule=OuterRef("pk"))
        .exclude(status=CleanupRun.Status.SKIPPED)
        .order_by("-iteration")
        .values("status")[:1]
    )
    newest = (
        CleanupRun.objects.filter(schedule=OuterRef(OuterRef("pk")))
        .order_by("-iteration")
        .values("iteration")[:1]
    )
    begun = CleanupRun.objects.filter(
        Q(status=CleanupRun.Status.RUNNING) | Q(planned_at__gte=OuterRef("next_run_at")),
        schedule=OuterRef("pk"),
        iteration=Subquery(newest),
    )
    schedules = CleanupSchedule.objects.alias(
        last_ran_status=Subquery(newest_that_ran), next_run_begun=Exists(begun)
    )
    state = CleanupSchedule.DesiredState
    recovering = Q(recovering_since__isnull=False)
    cutoff = now - timedelta(seconds=settings.MISSED_RUN_GRACE_SECONDS)
    return schedules, {
        "running": Q(desired_state=state.RUNNING) & ~recovering,
        "paused": Q(desired_state=state.PAUSED) & ~recovering,
        "stopped": Q(desired_state=state.STOPPED) & ~recovering,
        "failing": Q(last_ran_status__in=FAILING_STATUSES),
        "late": Q(desired_state=state.RUNNING, next_run_at__lt=cutoff, next_run_begun=False)
        & ~recovering,
        "recovering": recovering,
    }


class _CountedPaginator(Paginator):
    """A Paginator that may be told its count: the fleet's totals have counted most views."""

    def __init__(self, object_list: Any, per_page: int, count: int | None) -> None:
        super().__init__(object_list, per_page)
        if count is not None:
            self.count = count  # type: ignore[misc]  # a cached_property, never computed then


# The engine calls for the rows on screen (see _runtime_states).
_engine_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cleanups-dashboard")


def _runtime_states(instance_ids: list[str]) -> dict[str, Any]:
    """The engine's state of the instances on screen (None: no such instance). Raises
    EngineUnavailable.

    The SDK fetches instances by id one at a time, or all with a prefix at once
    (control.fetch_runtime_states): for us the prefix is the whole fleet, 10,000 states parsed
    (190 ms on the embedded engine) to show 50. One GetInstance per row on screen is 50 calls of
    0.3 ms locally. The first is made here, so an unreachable engine costs one call, not 50;
    the rest go to a few threads, so a remote engine costs a few round trips, not 50.
    """
    client = get_client()

    def state_of(instance_id: str) -> Any:
        with engine_call():
            return client.get_orchestration_state(instance_id, fetch_payloads=False)

    if not instance_ids:
        return {}
    first, *rest = instance_ids
    states = {first: state_of(first)}
    states.update(zip(rest, _engine_pool.map(state_of, rest), strict=True))
    return states


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass
class DashboardRow:
    schedule: CleanupSchedule
    runtime: str
    recovering: bool
    failing: bool
    late: bool
    strip: str
    success_rate: int | None
    last: CleanupRun | None
    deleted_24h: int
    html: str = ""
    digest: str = ""


@dataclass
class Dashboard:
    query: DashboardQuery
    totals: dict[str, int]
    schedule_count: int
    lateness: FleetLateness
    page: Page
    rows: list[DashboardRow]
    engine_up: bool
    link_runs: bool

    @cached_property
    def frame(self) -> str:
        """A digest of everything around the rows: which rows, in which order, the
        pagination, the engine's state. A refresh that finds it changed sends the whole table."""
        paginator = self.page.paginator
        return _digest(
            repr(
                (
                    [row.schedule.pk for row in self.rows],
                    self.page.number,
                    paginator.num_pages,
                    paginator.count,
                    self.engine_up,
                    (self.query.show, self.query.q, self.query.sort),  # not the page as typed
                    self.link_runs,
                )
            )
        )

    @property
    def token(self) -> str:
        """What the browser sends back as ``since``: the frame's and each row's digest."""
        return ".".join([self.frame, *(row.digest for row in self.rows)])

    def changed_rows(self, since: str) -> dict[str, str] | None:
        """The rows that differ from those ``since`` describes, by schedule id; None if the
        frame differs (then only the whole table will do)."""
        frame, *digests = since.split(".")
        if frame != self.frame:
            return None
        return {
            str(row.schedule.pk): row.html
            for index, row in enumerate(self.rows)
            if index >= len(digests) or digests[index] != row.digest
        }

    @property
    def facts(self) -> dict[str, str]:
        """The fleet's figures as the page prints them (the live refresh sends them too)."""
        p99 = self.lateness.p99
        return {
            "schedules": intcomma(self.schedule_count),
            "p99": "–" if p99 is None else seconds_label(p99),
            "planned": intcomma(self.lateness.planned),
            "runs": intcomma(self.lateness.runs),
        }

    def context(self) -> dict[str, Any]:
        query, page = self.query, self.page
        link = query.query_string

        def page_link(number: int) -> str:
            return "?" + link(page=number)

        return {
            "query": query,
            "show": query.show,
            "rows": self.rows,
            "page": page,
            "facts": self.facts,
            "lateness": self.lateness,
            "engine_up": self.engine_up,
            "schedule_count": self.schedule_count,
            "totals": self.totals,
            "total_links": [
                {
                    "key": key,
                    "count": count,
                    "href": "?" + link(show=key),
                    "selected": key == query.show,
                }
                for key, count in self.totals.items()
            ],
            "sort_links": [
                {"label": label, "href": "?" + link(sort=key), "selected": key == query.sort}
                for key, label in DASHBOARD_SORTS.items()
            ],
            "show_all": "?" + link(show=""),
            "clear_search": "?" + link(q=""),
            "first_page": page_link(1),
            "previous_page": page_link(page.previous_page_number()) if page.has_previous() else "",
            "next_page": page_link(page.next_page_number()) if page.has_next() else "",
            "last_page": page_link(page.paginator.num_pages),
        }


def build_dashboard(query: DashboardQuery, *, link_runs: bool = True) -> Dashboard:
    """The fleet's totals and lateness, and the page of schedules ``query`` asks for, each row
    rendered. ``link_runs``: the strips' marks link to the run pages (for those who may open
    them)."""
    now = timezone.now()
    schedules, conditions = _fleet(now)
    totals = schedules.aggregate(
        schedules=Count("pk"), **{key: Count("pk", filter=cond) for key, cond in conditions.items()}
    )
    schedule_count = totals.pop("schedules")
    listed = schedules.filter(conditions[query.show]) if query.show else schedules
    if query.q:
        listed = listed.filter(name__icontains=query.q)
    if query.sort == "name":
        order: list[Any] = ["name"]
    else:
        attention = conditions["failing"] | conditions["late"] | conditions["recovering"]
        order = [Case(When(attention, then=Value(0)), default=Value(1)), "name"]
    known = None if query.q else (totals[query.show] if query.show else schedule_count)
    paginator = _CountedPaginator(
        listed.order_by(*order).values_list("pk", flat=True), DASHBOARD_PER_PAGE, known
    )
    page = paginator.get_page(query.page)
    rows, engine_up = _page_rows(list(page.object_list), schedules, conditions, now, link_runs)
    return Dashboard(
        query=query,
        totals=totals,
        schedule_count=schedule_count,
        lateness=fleet_lateness(now - LATENESS_WINDOW),
        page=page,
        rows=rows,
        engine_up=engine_up,
        link_runs=link_runs,
    )


def _page_rows(
    pks: list[int],
    schedules: QuerySet[CleanupSchedule],
    conditions: dict[str, Q],
    now: datetime,
    link_runs: bool,
) -> tuple[list[DashboardRow], bool]:
    """The rows of the schedules ``pks``, in that order, each rendered, and whether the engine
    answered."""
    found = schedules.filter(pk__in=pks).annotate(
        deleted_24h=Coalesce(_deleted_since(now - timedelta(hours=24)), Value(0)),
        failing=ExpressionWrapper(conditions["failing"], output_field=BooleanField()),
        late=ExpressionWrapper(conditions["late"], output_field=BooleanField()),
    )
    by_pk = {schedule.pk: schedule for schedule in found.order_by()}
    shown = [by_pk[pk] for pk in pks if pk in by_pk]  # one deleted meanwhile is left out
    recent = _recent_runs(shown)
    last_runs = _last_runs(recent)
    try:
        states = _runtime_states([schedule.instance_id for schedule in shown])
        engine_up = True
    except EngineUnavailable:
        states, engine_up = {}, False
    run_url = (
        escape(reverse("cleanups:run_detail", args=[0]).removesuffix("0/")) if link_runs else ""
    )
    template = get_template("cleanups/_dashboard_row.html")
    rows = []
    for schedule in shown:
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
        row = DashboardRow(
            schedule=schedule,
            runtime=runtime_status_label(states.get(schedule.instance_id)) if engine_up else "",
            recovering=schedule.recovering_since is not None,
            failing=bool(schedule.failing),
            late=bool(schedule.late),
            strip=_strip_html(runs, run_url),
            success_rate=rate,
            last=last and last_runs.get(last.pk),
            deleted_24h=schedule.deleted_24h,
        )
        # Rendered without the request: a row needs no context processor, and would run them
        # all once per row.
        row.html = mark_safe(template.render({"row": row}))
        row.digest = _digest(row.html)
        rows.append(row)
    return rows, engine_up


def _bad_request(parameter: str, message: str) -> JsonResponse:
    return JsonResponse({"error": message, "parameter": parameter}, status=400)


def _status_url(view: Dashboard) -> str:
    """The live refresh of this very view: its filter, search, order and page."""
    number = view.page.number
    query = view.query.query_string(page=number if number > 1 else "")
    return reverse("cleanups:dashboard_status") + (f"?{query}" if query else "")


@schedule_viewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    view = build_dashboard(DashboardQuery.from_request(request), link_runs=can_view_runs(request))
    return render(
        request,
        "cleanups/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": "Cleanups dashboard",
            **view.context(),
            "can_view_runs": can_view_runs(request),
            "status_url": _status_url(view),
            "since": view.token,
        },
    )


@schedule_viewer_required
def dashboard_status(request: HttpRequest) -> JsonResponse:
    """The dashboard's live refresh: the fleet's totals and figures always; with ``since``
    (the token the page or the previous refresh gave), only the rows that changed since, by
    schedule id, or the whole table when the rows themselves changed (a schedule moved, a page
    grew); without it, the whole table. A ``page`` or ``since`` it cannot read is a 400."""
    query = DashboardQuery.from_request(request)
    if query.page and not PAGE_NUMBER.fullmatch(query.page):
        return _bad_request("page", "page must be a page number (1, 2, ...).")
    since = request.GET.get("since", "")
    if since and not SINCE_TOKEN.fullmatch(since):
        return _bad_request(
            "since", "since must be the token the previous answer gave; leave it out for all rows."
        )
    view = build_dashboard(query, link_runs=can_view_runs(request))
    changed = view.changed_rows(since) if since else None
    payload: dict[str, Any] = {
        "engine_up": view.engine_up,
        "totals": view.totals,
        "schedules": view.schedule_count,
        "facts": view.facts,
        "since": view.token,
        "page": view.page.number,
    }
    if changed is None:
        payload["html"] = render_to_string("cleanups/_dashboard_rows.html", view.context(), request)
    else:
        payload["rows"] = changed
    return JsonResponse(payload)
