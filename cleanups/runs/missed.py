"""Missed slots: the missed-run policy when a run comes late, and the gap an operator's action
finds (one skipped row per gap, however many slots it covers)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone

from cleanups import metrics
from cleanups.cadence import UncomputableRun
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import worker
from cleanups.runs.records import advance_iteration, rule_grace, stop_for_its_cadence

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


def handle_missed_slots(
    schedule: CleanupSchedule, iteration: int, planned: datetime, existing: CleanupRun | None
) -> dict[str, Any] | None:
    """Apply the missed-run policy when a scheduled (or catch-up) run starts late; None if
    nothing was missed. ``existing``: the iteration's record as just read, if it has one.

    Idempotent: a redelivery finds the skipped row it wrote and makes the same decision. Slots
    that cannot be computed count as none missed: the planned run runs, and its planning stops
    the schedule.
    """
    if iteration == schedule.start_iteration:
        return None  # a start's first run is what was asked for, however late it comes
    if existing is not None and existing.status != Status.SKIPPED:
        return None  # a redelivery of the run itself
    now = timezone.now()
    rule = schedule.cadence_rule()
    if existing is None:
        if now - planned <= rule_grace():
            return None  # on time, give or take a timer's lateness
        # Slots due in [planned, now]: the planned one plus every later one already past.
        try:
            missed = 1 + rule.slots_between(planned, now)
        except UncomputableRun:
            return None
        run_once = schedule.missed_runs == CleanupSchedule.MissedRuns.RUN_ONCE
        skipped = missed - 1 if run_once else missed
        if skipped == 0:
            return {"iteration": iteration}
        reason = why_missed(schedule, iteration, planned)
        existing = record_skipped(schedule, iteration, skipped, reason, planned, now)
        if existing.status != Status.SKIPPED:
            return None  # another delivery began the run meanwhile: _begin_run waits for it
    if schedule.missed_runs == CleanupSchedule.MissedRuns.RUN_ONCE:
        return {"iteration": iteration + 1}
    try:
        next_run_at = rule.next_after(existing.finished_at or now, existing.finished_at or now)
    except UncomputableRun as error:
        return {
            "skip": True,
            "result": stop_for_its_cadence(schedule, iteration, str(error), Status.SKIPPED),
        }
    CleanupSchedule.objects.filter(pk=schedule.pk).update(next_run_at=next_run_at)
    return {
        "skip": True,
        "result": {
            "continue": True,
            "reason": "",
            "status": Status.SKIPPED,
            "iteration": iteration,
            "next_iteration": iteration + 1,
            "next_run_at": next_run_at.isoformat(),
            "max_retries": schedule.max_retries,
            "max_run_seconds": schedule.run_limit,
        },
    }


def record_overdue_slots(schedule: CleanupSchedule) -> CleanupRun | None:
    """Before an operator pauses, restarts or terminates a running schedule: if its planned run
    is overdue past the grace and nothing ran for it (its worker or the engine was down), the
    slots missed so far become a skipped row, as the run would have recorded on arrival. The
    schedule is the one read before the action."""
    planned = schedule.next_run_at
    now = timezone.now()
    if (
        schedule.desired_state != CleanupSchedule.DesiredState.RUNNING
        or planned is None
        or now - planned <= rule_grace()
    ):
        return None
    newest = schedule.runs.order_by("-iteration").first()
    if newest is not None and (
        newest.status == Status.RUNNING
        or (newest.planned_at is not None and newest.planned_at >= planned)
    ):
        return None  # it runs, or ran and is planning the next
    try:
        slots = 1 + schedule.cadence_rule().slots_between(planned, now)
    except UncomputableRun:
        return None
    iteration = schedule.next_iteration()
    reason = why_missed(schedule, iteration, planned, by_worker=False)
    return record_skipped(schedule, iteration, slots, reason, planned, now)


def record_skipped(
    schedule: CleanupSchedule,
    iteration: int,
    slots: int,
    reason: str,
    since: datetime,
    until: datetime,
) -> CleanupRun:
    """One summary row for a gap, however many slots it covers (idempotent)."""
    row, created = CleanupRun.objects.get_or_create(
        schedule=schedule,
        iteration=iteration,
        defaults={
            "status": Status.SKIPPED,
            "task": schedule.task,
            "started_at": since,
            "finished_at": until,
            "reason": reason,
            "message": f"{slots} slot(s) missed ({reason}) between "
            f"{since.isoformat(timespec='seconds')} and {until.isoformat(timespec='seconds')}.",
            "details": {"slots": slots},
            "config": schedule.snapshot(),
            "worker": worker.worker_id(),
        },
    )
    advance_iteration(schedule, iteration)
    metrics.run_ended(schedule.name, row, created)
    return row


def why_missed(
    schedule: CleanupSchedule, iteration: int, planned: datetime, by_worker: bool = True
) -> str:
    """Why slots from ``planned`` were missed: paused, overran (the run before ran past it),
    late (``by_worker``: this worker was up at the planned time, so it was too busy), or
    worker down."""
    if schedule.resumed_at and schedule.resumed_at >= planned:
        return "paused"
    previous = (
        CleanupRun.objects.filter(schedule=schedule, iteration__lt=iteration)
        .exclude(status=Status.SKIPPED)
        .order_by("-iteration")
        .first()
    )
    if previous and previous.finished_at and previous.finished_at > planned:
        return "overran"
    if by_worker and planned > worker.PROCESS_STARTED_AT:
        return "late"
    return "worker down"
