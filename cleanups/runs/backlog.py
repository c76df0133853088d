"""The retention backlog: after a run of a row-deleting schedule, how far behind its retention
policy the table is (the age past the cutoff of the oldest row that should already be gone, and
how many such rows are left), recorded on the run and the schedule, and alerted once each time
it goes over CLEANUP_BACKLOG_ALERT_SECONDS."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from cleanups import alerts
from cleanups.conf import settings
from cleanups.formatting import backlog_phrase, behind_label, rows_label
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.failures import send_notice
from cleanups.tasks.measure import BACKLOG_COUNT_CAP

logger = logging.getLogger("cleanups.runs")


def describe(seconds: float, rows: int | None, capped: bool = False) -> str:
    """The human phrase: 'caught up', '3 days behind, about 120,000 rows',
    '2 hours behind, more than 1,000,000 rows'."""
    return backlog_phrase(seconds, rows, capped)


def alert_seconds() -> float:
    """CLEANUP_BACKLOG_ALERT_SECONDS (0: never alert or warn)."""
    return max(float(settings.CLEANUP_BACKLOG_ALERT_SECONDS or 0), 0.0)


def is_over(seconds: float | None) -> bool:
    """Further behind than CLEANUP_BACKLOG_ALERT_SECONDS (never while that is 0)."""
    limit = alert_seconds()
    return bool(limit) and seconds is not None and seconds > limit


@dataclass(frozen=True)
class Backlog:
    """One measurement, as the pages show it."""

    seconds: float
    rows: int | None
    capped: bool = False
    at: datetime | None = None

    @property
    def phrase(self) -> str:
        return describe(self.seconds, self.rows, self.capped)

    @property
    def over(self) -> bool:
        return is_over(self.seconds)


def of_schedule(schedule: CleanupSchedule) -> Backlog | None:
    """The schedule's backlog after its last measured run; None: never measured."""
    if schedule.backlog_seconds is None:
        return None
    rows = schedule.backlog_rows
    # The schedule keeps no "capped" flag: a count at the deleter's cap reads as capped (the
    # run's details say exactly).
    capped = rows is not None and rows >= BACKLOG_COUNT_CAP
    return Backlog(schedule.backlog_seconds, rows, capped, schedule.backlog_at)


def of_run(run: CleanupRun) -> Backlog | None:
    """The backlog a run measured (its ``details["backlog"]``); None: it measured none."""
    details = run.details if isinstance(run.details, dict) else {}
    measured = _measured(details.get("backlog"))
    if measured is None:
        return None
    return Backlog(measured["seconds"], measured["rows"], measured["capped"], run.finished_at)


def _measured(backlog: Any) -> dict[str, Any] | None:
    """``{"seconds": float >= 0, "rows": int >= 0, "capped": bool}``, or None for anything that
    is not a measurement."""
    if not isinstance(backlog, dict):
        return None
    try:
        seconds = max(float(backlog["seconds"]), 0.0)
        rows = max(int(backlog.get("rows") or 0), 0)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(seconds):  # JSON has no NaN or infinity
        return None
    return {"seconds": seconds, "rows": rows, "capped": bool(backlog.get("capped"))}


def record_backlog(schedule: CleanupSchedule, run: CleanupRun, backlog: dict | None) -> None:
    """Write what a finished run measured into its details and onto the schedule, and alert
    when the schedule goes over CLEANUP_BACKLOG_ALERT_SECONDS. ``backlog`` None (the task
    measures none): nothing. Never raises for a measurement it cannot read or a database
    error: a backlog is an observation, never a reason to fail the run."""
    if backlog is None:
        return
    measured = _measured(backlog)
    if measured is None:
        logger.warning(
            "run schedule=%s iteration=%d: ignored a backlog that is not a measurement: %r",
            schedule.name,
            run.iteration,
            backlog,
        )
        return
    now = timezone.now()
    try:
        # One transaction (a savepoint inside the caller's): both places or neither, and a
        # caller's transaction stays usable after an error here.
        with transaction.atomic():
            details = _merged_details(run, measured)
            crossed = _update_schedule(schedule, measured, now)
    except DatabaseError as error:
        logger.warning(
            "run schedule=%s iteration=%d: could not record its backlog: %s",
            schedule.name,
            run.iteration,
            error,
        )
        return
    run.details = details
    schedule.backlog_seconds, schedule.backlog_rows = measured["seconds"], measured["rows"]
    schedule.backlog_at = now
    if crossed:
        announce_backlog(schedule, run, measured)


def _merged_details(run: CleanupRun, measured: dict[str, Any]) -> dict[str, Any]:
    """Write the backlog into the run's details as stored now (its other keys kept)."""
    stored = (
        CleanupRun.objects.select_for_update()
        .filter(pk=run.pk)
        .values_list("details", flat=True)
        .first()
    )
    details = {**(stored if isinstance(stored, dict) else {}), "backlog": measured}
    CleanupRun.objects.filter(pk=run.pk).update(details=details)
    return details


def _update_schedule(schedule: CleanupSchedule, measured: dict[str, Any], now: datetime) -> bool:
    """Write the backlog onto the schedule with update() (the editor and updated_at stay);
    True if this write took it over the alert threshold. Over, the write is conditional on
    the stored value being at or under it (or unknown), so of two writers only one crosses."""
    fields = {
        "backlog_seconds": measured["seconds"],
        "backlog_rows": measured["rows"],
        "backlog_at": now,
    }
    mine = CleanupSchedule.objects.filter(pk=schedule.pk)
    if is_over(measured["seconds"]):
        was_under = Q(backlog_seconds__isnull=True) | Q(backlog_seconds__lte=alert_seconds())
        if mine.filter(was_under).update(**fields):
            return True
    mine.update(**fields)
    return False


def announce_backlog(schedule: CleanupSchedule, run: CleanupRun, measured: dict[str, Any]) -> None:
    """Alert hooks and mail: the schedule fell further behind its policy than it may."""
    phrase = describe(measured["seconds"], measured["rows"], measured["capped"])
    logger.warning(
        "run schedule=%s iteration=%d: retention backlog %s", schedule.name, run.iteration, phrase
    )
    alerts.send(alerts.BACKLOG, schedule, run)
    behind = behind_label(measured["seconds"])
    left = (
        f"; {rows_label(measured['rows'], measured['capped'])} left"
        if measured["rows"] or measured["capped"]
        else ""
    )
    page = alerts.site_url(reverse("cleanups:schedule_detail", args=[schedule.pk]))
    subject = f"Cleanup schedule “{schedule.name}” is {behind} behind its retention policy"
    body = (
        f"After run {run.iteration}, the oldest row the policy says should be gone is {behind} "
        f"past its cutoff{left}. The alert threshold is {behind_label(alert_seconds())} "
        "(CLEANUP_BACKLOG_ALERT_SECONDS).\n\n"
        "A run stops at its row limit (max_rows_per_run) and when its window closes: raise the "
        f"limit, widen the window or run more often. The schedule: {page}"
    )
    send_notice(schedule, subject, body, "backlog notice")
