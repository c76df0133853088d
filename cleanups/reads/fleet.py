"""Read-model queries of the fleet, for the dashboard and /metrics: totals by state, lateness,
and each schedule's newest runs. A fixed number of queries whatever the number of runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import connections
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery, Sum

from cleanups.conf import settings
from cleanups.models import CleanupRun, CleanupSchedule

# Each schedule is in exactly one state; failing and late are what may be wrong with it.
DASHBOARD_TOTALS = ("running", "paused", "stopped", "failing", "late", "recovering")
FAILING_STATUSES = (CleanupRun.Status.FAILED, CleanupRun.Status.TIMED_OUT)
LATENESS_WINDOW = timedelta(hours=1)

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


def recent_runs(schedules: list[CleanupSchedule]) -> dict[int, list[StripRun]]:
    """The newest STRIP_RUNS runs of every schedule, in one query."""
    by_schedule: dict[int, list[StripRun]] = {s.pk: [] for s in schedules}
    for values in CleanupRun.objects.newest_per_schedule(schedules, STRIP_RUNS, StripRun._fields):
        run = StripRun(*values)
        by_schedule[run.schedule_id].append(run)
    return by_schedule


def last_runs(recent: dict[int, list[StripRun]]) -> dict[int, CleanupRun]:
    """The newest run that ran (not skipped) of every schedule, by pk: one query for 1,000
    rows, rather than the time and duration of all 20,000 strip runs."""
    pks = [next((r.pk for r in runs if r.status != "skipped"), None) for runs in recent.values()]
    last = CleanupRun.objects.filter(pk__in=[pk for pk in pks if pk is not None])
    return {run.pk: run for run in last.only("status", "started_at", "duration")}


def deleted_since(since: datetime) -> Subquery:
    """Items a schedule deleted since ``since``: an index range of its newest runs."""
    return Subquery(
        CleanupRun.objects.filter(schedule=OuterRef("pk"), started_at__gte=since, dry_run=False)
        .order_by()
        .values("schedule")
        .annotate(total=Sum("items_deleted"))
        .values("total")
    )


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


def fleet_conditions(now: datetime) -> tuple[QuerySet[CleanupSchedule], dict[str, Q]]:
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
