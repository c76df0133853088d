"""The small writes and outcomes every step of a run shares."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone

from cleanups.conf import settings
from cleanups.models import CleanupRun, CleanupSchedule

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


class RetryableCleanupError(Exception):
    """A cleanup failed and has retries left: raised so the engine's retry policy runs it again."""


def dispatch_lead_seconds() -> float:
    """How far ahead of its time a scheduled run goes to its worker."""
    return max(float(settings.CLEANUP_DISPATCH_LEAD_SECONDS), 0.0)


def rule_grace() -> timedelta:
    """How late a timer may fire before its slot counts as missed."""
    return timedelta(seconds=settings.MISSED_RUN_GRACE_SECONDS)


def read_schedule(schedule_id: int) -> CleanupSchedule | None:
    """The schedule as it stands now (get() orders nothing: a cheaper query than first())."""
    try:
        return CleanupSchedule.objects.get(pk=schedule_id)
    except CleanupSchedule.DoesNotExist:
        return None


def stop(iteration: int, reason: str, status: str = "") -> dict[str, Any]:
    return {
        "continue": False,
        "reason": reason,
        "status": status,
        "iteration": iteration,
        "next_run_at": None,
    }


def advance_iteration(schedule: CleanupSchedule, iteration: int) -> None:
    CleanupSchedule.objects.filter(pk=schedule.pk, current_iteration__lt=iteration).update(
        current_iteration=iteration
    )


def abandon_run(schedule_id: int, iteration: int, reason: str) -> None:
    CleanupRun.objects.filter(
        schedule_id=schedule_id, iteration=iteration, status=Status.RUNNING
    ).update(status=Status.INTERRUPTED, finished_at=timezone.now(), error=reason)


def stop_for_its_cadence(
    schedule: CleanupSchedule, iteration: int, problem: str, status: str
) -> dict[str, Any]:
    """The next run cannot be computed: the run stays recorded, the schedule stops with why, and
    the loop ends completed (a failed one would be recovered, and fail again, forever)."""
    schedule.stop_because(f"cannot compute the next run: {problem}")
    logger.warning(
        "schedule=%s iteration=%d stopped: cannot compute the next run: %s",
        schedule.name,
        iteration,
        problem,
    )
    return stop(iteration, "cannot compute the next run", status)
