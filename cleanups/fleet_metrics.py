"""/metrics of the web process: the fleet's state, read from the database and the engine at
every scrape (a custom Collector). Any gunicorn worker answers with the same figures, since none
of them is kept in a process; beside them, this process's own engine calls. A scrape costs a constant number of queries, none of them
proportional to the run history (it reads schedules and index ranges, as the dashboard's
totals do)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, Max, Q
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from cleanups.conf import settings
from cleanups.engine.counting import ENGINE_REQUESTS
from cleanups.health import check_engine
from cleanups.metrics import exposition
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from cleanups.reads.fleet import DASHBOARD_TOTALS, fleet_conditions
from cleanups.tasks.measure import BACKLOG_COUNT_CAP

logger = logging.getLogger("cleanups.metrics")


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class FleetCollector:
    """The fleet's figures from the database and the engine, read when scraped. Never raises:
    an engine or database that cannot be reached is a 0 in ``cleanups_engine_up`` or
    ``cleanups_database_up``, and the figures that need the database are left out."""

    def describe(self) -> list[Metric]:
        return []  # registered without a trial collect(): that would query at import

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "cleanups_engine_up",
            "1 if the Durable Task engine answered this scrape, else 0.",
            1 if check_engine().ok else 0,
        )
        try:
            figures = _fleet_figures()
        except Exception as error:  # the database is down, or mid-migration
            logger.warning("metrics: cannot read the database: %s", error)
            yield _gauge("cleanups_database_up", "1 if the database answered this scrape.", 0)
            return
        yield _gauge("cleanups_database_up", "1 if the database answered this scrape.", 1)
        yield from figures


def _fleet_figures() -> list[Metric]:
    """Five queries, whatever the number of schedules and runs."""
    now = timezone.now()
    schedules, conditions = fleet_conditions(now)
    totals = schedules.aggregate(
        **{key: Count("pk", filter=conditions[key]) for key in DASHBOARD_TOTALS}
    )
    by_state = GaugeMetricFamily(
        "cleanups_schedules",
        "Schedules by state, as the dashboard's totals: running, paused, stopped and recovering "
        "partition them; failing and late are what may be wrong with some.",
        labels=["state"],
    )
    for key in DASHBOARD_TOTALS:
        by_state.add_metric([key], totals[key])

    alive_after = now - timedelta(seconds=2 * float(settings.RECONCILE_INTERVAL))
    beats = WorkerHeartbeat.objects.aggregate(
        newest=Max("last_seen"), alive=Count("pk", filter=Q(last_seen__gte=alive_after))
    )
    age = math.inf if beats["newest"] is None else (now - beats["newest"]).total_seconds()

    streaks = GaugeMetricFamily(
        "cleanups_schedule_consecutive_failures",
        "Failed or timed-out runs in a row, per schedule; present only while a schedule has such "
        "a streak (its next success ends it).",
        labels=["schedule"],
    )
    backlog_seconds = GaugeMetricFamily(
        "cleanups_retention_backlog_seconds",
        "How far behind its retention policy a schedule's table was after its last measured "
        "run: the age past the cutoff of the oldest row that should already be gone (0: caught "
        "up); present once a run has measured it.",
        labels=["schedule"],
    )
    backlog_rows = GaugeMetricFamily(
        "cleanups_retention_backlog_rows",
        "Rows left that a schedule's retention policy says should be gone, after its last "
        f"measured run (counted up to {BACKLOG_COUNT_CAP:,}).",
        labels=["schedule"],
    )
    # One query for both: the schedules with a streak or a measured backlog.
    for name, failures, seconds, rows in (
        CleanupSchedule.objects.filter(
            Q(consecutive_failures__gt=0) | Q(backlog_seconds__isnull=False)
        )
        .order_by("name")
        .values_list("name", "consecutive_failures", "backlog_seconds", "backlog_rows")
    ):
        if failures:
            streaks.add_metric([name], failures)
        if seconds is not None:
            backlog_seconds.add_metric([name], seconds)
            if rows is not None:
                backlog_rows.add_metric([name], rows)

    return [
        by_state,
        _gauge(
            "cleanups_worker_heartbeat_age_seconds",
            "Seconds since the most recent heartbeat of any runworker (+Inf: none has one).",
            max(age, 0.0),
        ),
        _gauge(
            "cleanups_workers",
            "runworker processes whose heartbeat is younger than two reconcile intervals.",
            beats["alive"],
        ),
        _gauge(
            "cleanups_runs_in_progress",
            "Runs recorded as running (executing, between parts, or waiting for a retry).",
            CleanupRun.objects.running().count(),
        ),
        streaks,
        backlog_seconds,
        backlog_rows,
        _gauge(
            "cleanups_runs_held",
            "Runs the blast-radius guard held that nobody has approved or rejected yet.",
            CleanupRun.objects.filter(
                status=CleanupRun.Status.HELD, approved_at=None, rejected_at=None
            ).count(),
        ),
    ]


WEB_REGISTRY = CollectorRegistry(auto_describe=False)
WEB_REGISTRY.register(FleetCollector())  # type: ignore[arg-type]
# After the fleet's figures, so a scrape's count includes its own engine probe. Per process, as
# each runworker serves its own: Prometheus sums them.
WEB_REGISTRY.register(ENGINE_REQUESTS)


def web_exposition(accept: str = "") -> tuple[bytes, str]:
    return exposition(WEB_REGISTRY, accept)
