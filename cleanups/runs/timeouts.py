"""A run that outlived its limit: recorded timed out, its counts kept, the next run planned."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from cleanups import alerts, metrics
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.planning import plan_next
from cleanups.runs.records import advance_iteration, stop

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


def record_timeout(schedule_id: int, iteration: int, planned_at: str | None) -> dict[str, Any]:
    """Mark the iteration's run timed out, if it is still running, and plan the next run. Its
    counts stay: they were committed with what they describe. A run that never began (no worker
    took it) is recorded as timed out too, so the gap is visible."""
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return stop(iteration, "schedule deleted")
    # A catch-up may have taken a later iteration than the one the orchestration asked for.
    runs = CleanupRun.objects.filter(schedule=schedule, iteration__gte=iteration)
    run = runs.exclude(status=Status.SKIPPED).order_by("iteration").first()
    now = timezone.now()
    limit = schedule.run_limit
    error = f"TimedOut: the run took longer than its limit of {limit} s and was abandoned."
    created, timed_out_now = run is None, 0
    if run is None:
        run = CleanupRun.objects.create(
            schedule=schedule,
            iteration=iteration,
            task=schedule.task,
            dry_run=schedule.dry_run,
            planned_at=datetime.fromisoformat(planned_at) if planned_at else None,
            started_at=now,
            finished_at=now,
            duration=timedelta(0),
            status=Status.TIMED_OUT,
            error=error,
            config=schedule.snapshot(),
        )
        advance_iteration(schedule, iteration)
    else:
        # If it finished just in time, its own outcome stands.
        timed_out_now = CleanupRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
            status=Status.TIMED_OUT, finished_at=now, duration=now - run.started_at, error=error
        )
        run.refresh_from_db()
    logger.info(
        "run schedule=%s iteration=%d status=%s after %.3fs (limit %d s)",
        schedule.name,
        run.iteration,
        run.status,
        (run.duration or timedelta(0)).total_seconds(),
        limit,
    )
    if run.status == Status.TIMED_OUT and (created or timed_out_now):  # not on a redelivery
        alerts.send(alerts.TIMED_OUT, schedule, run, failures=schedule.consecutive_failures + 1)
    metrics.run_ended(schedule.name, run, created or timed_out_now)
    return plan_next(schedule_id, run.iteration, run, planned_at)
