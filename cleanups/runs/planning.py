"""Planning the next run once a run has an outcome: the iteration limit, the cadence, overruns."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.utils import timezone

from cleanups.cadence import UncomputableRun
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import failures
from cleanups.runs.missed import record_skipped
from cleanups.runs.records import read_schedule, stop, stop_for_its_cadence

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


def plan_next(
    schedule_id: int,
    iteration: int,
    run: CleanupRun,
    planned_at: str | None,
    *,
    count_failure: bool = True,
) -> dict[str, Any]:
    # Read the schedule again: an operator may have edited or stopped it during the run.
    schedule = read_schedule(schedule_id)
    status = run.status
    if schedule is None:
        return stop(iteration, "schedule deleted", status)
    if not schedule.is_alive:
        return stop(iteration, "schedule stopped", status)
    paused_reason = failures.count_failure(schedule, run) if count_failure else ""
    if paused_reason:
        return stop(iteration, paused_reason, status)
    if run.trigger != Trigger.MANUAL and not schedule.iterations_left(iteration):
        CleanupSchedule.objects.filter(pk=schedule_id).update(
            desired_state=CleanupSchedule.DesiredState.STOPPED,
            next_run_at=None,
            status_reason="Completed: iteration limit reached.",
        )
        return stop(iteration, "iteration limit reached", status)
    next_iteration, next_trigger = iteration + 1, Trigger.SCHEDULED
    if run.trigger == Trigger.MANUAL and planned_at:
        next_run_at = datetime.fromisoformat(planned_at)  # a manual run moves nothing
    else:
        try:
            next_run_at, next_iteration, next_trigger = next_after_run(
                schedule, run, next_iteration
            )
        except UncomputableRun as error:
            return stop_for_its_cadence(schedule, iteration, str(error), status)
    if schedule.start_at and next_run_at < schedule.start_at:
        next_run_at = schedule.cadence_rule().into_window(schedule.start_at)
    healed = {"recovering_since": None, "recover_attempts": 0} if schedule.recovering_since else {}
    CleanupSchedule.objects.filter(pk=schedule_id).update(next_run_at=next_run_at, **healed)
    return {
        "continue": True,
        "reason": "",
        "status": status,
        "iteration": iteration,
        "next_iteration": next_iteration,
        "next_trigger": next_trigger,
        "next_run_at": next_run_at.isoformat(),
        "max_retries": schedule.max_retries,
        "max_run_seconds": schedule.run_limit,
    }


def next_after_run(
    schedule: CleanupSchedule, run: CleanupRun, next_iteration: int
) -> tuple[datetime, int, str]:
    """When the run after ``run`` is due, its iteration and trigger. Raises UncomputableRun."""
    rule = schedule.cadence_rule()
    next_run_at = rule.next_after(run.started_at, run.finished_at)
    finished = run.finished_at or timezone.now()
    if rule.kind == "fixed_delay" or next_run_at > finished:
        return next_run_at, next_iteration, Trigger.SCHEDULED
    # The run overran its slot: the next one never overlaps it, and the slots it ran over
    # follow the missed-run policy.
    missed = 1 + rule.slots_between(next_run_at, finished)
    run_once = schedule.missed_runs == CleanupSchedule.MissedRuns.RUN_ONCE
    skipped = missed - 1 if run_once else missed
    if skipped:
        record_skipped(schedule, next_iteration, skipped, "overran", next_run_at, finished)
        next_iteration += 1
    if run_once:
        return rule.into_window(finished), next_iteration, Trigger.CATCH_UP
    return rule.next_after(finished, finished), next_iteration, Trigger.SCHEDULED
