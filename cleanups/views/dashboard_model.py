"""The dashboard's view model: what the visitor asked to see, and the page of rows it shows.

At 10,000 schedules nobody reads every row: the page leads with the fleet (totals, p99
lateness, runs in the last hour), then shows 50 schedules, those that need attention first,
with a search box. Only those 50 rows cost more than an index entry each: their strips,
success rates, last runs, 24 h deletions and the engine's state. The live refresh sends the
totals, and a row's HTML only when it differs from what the browser shows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.paginator import Page, Paginator
from django.db.models import BooleanField, Case, Count, ExpressionWrapper, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.loader import get_template
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import escape
from django.utils.safestring import mark_safe

from cleanups import instances
from cleanups.formatting import seconds_label
from cleanups.instances import EngineUnavailable
from cleanups.log import CONTROL_CHARACTERS
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.reads.fleet import (
    DASHBOARD_TOTALS,
    LATENESS_WINDOW,
    STATUS_LABELS,
    STRIP_RUNS,
    FleetLateness,
    StripRun,
    deleted_since,
    fleet_conditions,
    fleet_lateness,
    last_runs,
    recent_runs,
)
from cleanups.runs.backlog import Backlog, of_schedule

DASHBOARD_PER_PAGE = 50
DASHBOARD_SORTS = {"": "needs attention first", "name": "by name"}
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


class _CountedPaginator(Paginator):
    """A Paginator that may be told its count: the fleet's totals have counted most views."""

    def __init__(self, object_list: Any, per_page: int, count: int | None) -> None:
        super().__init__(object_list, per_page)
        if count is not None:
            self.count = count  # type: ignore[misc]  # a cached_property, never computed then


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
    backlog: Backlog | None = None
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
    schedules, conditions = fleet_conditions(now)
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
        deleted_24h=Coalesce(deleted_since(now - timedelta(hours=24)), Value(0)),
        failing=ExpressionWrapper(conditions["failing"], output_field=BooleanField()),
        late=ExpressionWrapper(conditions["late"], output_field=BooleanField()),
    )
    by_pk = {schedule.pk: schedule for schedule in found.order_by()}
    shown = [by_pk[pk] for pk in pks if pk in by_pk]  # one deleted meanwhile is left out
    recent = recent_runs(shown)
    newest_ran = last_runs(recent)
    try:
        states = instances.runtime_states([schedule.instance_id for schedule in shown])
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
            runtime=instances.runtime_status_label(states.get(schedule.instance_id))
            if engine_up
            else "",
            recovering=schedule.recovering_since is not None,
            failing=bool(schedule.failing),
            late=bool(schedule.late),
            strip=_strip_html(runs, run_url),
            success_rate=rate,
            last=last and newest_ran.get(last.pk),
            deleted_24h=schedule.deleted_24h,
            backlog=of_schedule(schedule),
        )
        # Rendered without the request: a row needs no context processor, and would run them
        # all once per row.
        row.html = mark_safe(template.render({"row": row}))
        row.digest = _digest(row.html)
        rows.append(row)
    return rows, engine_up


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
