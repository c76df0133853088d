"""Executing one part of one iteration: never early, never twice at once, and recorded.

Idempotent, because the engine delivers at least once: a redelivered iteration finds and
updates its own record, or returns the outcome another delivery recorded.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from cleanups import metrics
from cleanups.conf import settings
from cleanups.contract import WorkerStopping
from cleanups.engine.ontime import delivery_lost
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import backlog, bounds, safety, worker
from cleanups.runs.claims import begin_run, look, wait_for_the_run_before
from cleanups.runs.missed import handle_missed_slots
from cleanups.runs.planning import plan_next
from cleanups.runs.records import RetryableCleanupError, abandon_run, read_schedule, stop
from cleanups.tasks.context import CleanupContext, HeldForReview
from cleanups.tasks.registry import get_task

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger


def execute_iteration(
    schedule_id: int,
    iteration: int,
    part: int = 0,
    *,
    trigger: str = Trigger.SCHEDULED,
    triggered_by: str = "",
    planned_at: str | None = None,
    max_retries: int = 0,
    generation: int | None = None,
    deadline: str | None = None,
) -> dict[str, Any]:
    started_at = None
    scheduled = part == 0 and trigger != Trigger.MANUAL and bool(planned_at)
    if scheduled and timezone.now() < datetime.fromisoformat(planned_at or ""):
        # Handed over ahead of its time (CLEANUP_DISPATCH_LEAD_SECONDS): it starts at that time
        # exactly (never early, whatever held it), and reads its schedule as it stands then. A
        # fleet's runs wait together: none holds a database connection meanwhile (a server has
        # a hundred or so, a pool twenty).
        worker.let_go_of_connections()
        worker.wait_until(datetime.fromisoformat(planned_at or ""))
        started_at = timezone.now()
    if scheduled and delivery_lost():
        raise WorkerStopping("the engine that handed this run over took it back")
    schedule = read_schedule(schedule_id)
    refused = refusal(schedule, schedule_id, iteration, part, generation)
    if refused is not None:
        return refused
    assert schedule is not None
    if part == 0 and schedule.end_at and timezone.now() >= schedule.end_at:
        CleanupSchedule.objects.filter(pk=schedule_id).update(
            desired_state=CleanupSchedule.DesiredState.STOPPED,
            next_run_at=None,
            status_reason=f"Completed: past its end ({schedule.end_at.isoformat()}).",
        )
        return stop(iteration, "end_at reached")

    worker.stop_if_stopping()
    seen = look(schedule_id, iteration)
    begun = seen.this is not None and seen.this.status == Status.RUNNING
    if scheduled and schedule.desired_state == CleanupSchedule.DesiredState.PAUSED and not begun:
        # Paused before it began: it does not run now. Resumed, it is planned again. One that
        # began (this delivery again, after the database went away) finishes, as any run does.
        return {"continue": True, "deferred": True, "reason": "", "status": ""}
    if part == 0 and wait_for_the_run_before(schedule, iteration, seen):
        seen = look(schedule_id, iteration)  # what it ran meanwhile
    if part == 0 and started_at is None:
        started_at = timezone.now()  # its time has come and its predecessor is done
    if part == 0 and trigger in (Trigger.SCHEDULED, Trigger.CATCH_UP) and planned_at:
        # A catch-up is planned "at once"; if it comes late all the same, the slots that went
        # by meanwhile follow the policy too.
        planned = datetime.fromisoformat(planned_at)
        plan = handle_missed_slots(schedule, iteration, planned, seen.this)
        if plan is not None:
            if plan.get("skip"):
                return plan["result"]
            iteration, trigger = plan["iteration"], Trigger.CATCH_UP
            seen = look(schedule_id, iteration)

    plan_at = None if trigger == Trigger.MANUAL or not planned_at else planned_at
    run = begin_run(
        schedule, iteration, part, trigger, triggered_by, plan_at, started_at, seen.this
    )
    if isinstance(run, dict):
        return run  # another delivery ran it (or it timed out): its outcome, not a second run
    iteration = run.iteration
    cleanup = CleanupContext(
        {}, dry_run=run.dry_run, run=run, deadline=part_deadline(run.dry_run, deadline)
    )
    message = error = tb = ""
    held: HeldForReview | None = None
    try:
        task_spec = get_task(schedule.task)
        if task_spec is None:
            raise LookupError(
                f"No cleanup task named {schedule.task!r} is registered in this worker."
            )
        cleanup.params = task_spec.clean_params(schedule.params)
        # Rights change: the editor must still be entitled to every deletion, at every run.
        cleanup.entitlement = task_spec.entitle(cleanup.params, lambda: schedule.deletes_as)
        safety.arm(cleanup, schedule, run, part, approvals=seen.approvals)
        bounds.bound(cleanup, schedule, run, deadline)
        message = (task_spec.function(cleanup) or "") + cleanup.stopped_message()
        status = Status.SUCCEEDED
    except WorkerStopping:
        raise  # stopped while it waited between batches: the engine delivers the run again
    except HeldForReview as hold:  # the guard: nothing deleted, a person decides
        status, held = Status.HELD, hold
        message = f"Held for approval: {hold.reason}. Nothing was deleted."
    except Exception as exc:  # a failing cleanup is a failed run, never a failed loop
        status = Status.FAILED
        detail = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        error = f"{type(exc).__name__}: {detail}"
        tb = traceback.format_exc()

    if status == Status.SUCCEEDED and cleanup.unfinished:
        # finished_at marks the part done: nobody executes the run until its next part begins.
        CleanupRun.objects.filter(pk=run.pk).update(message=message, finished_at=timezone.now())
        return {
            "continue": True,
            "more": True,
            "part": part + 1,
            "items": cleanup.items,
            "iteration": iteration,
        }
    if status == Status.FAILED and run.attempts <= max_retries:
        # The engine's retry policy runs this iteration again; its record is reused.
        CleanupRun.objects.filter(pk=run.pk).update(
            error=error, traceback=tb, finished_at=timezone.now()
        )
        logger.info(
            "run schedule=%s iteration=%d failed (attempt %d of %d), retrying: %s",
            schedule.name,
            iteration,
            run.attempts,
            max_retries + 1,
            error,
        )
        raise RetryableCleanupError(error)

    finished = timezone.now()
    run.status = status
    run.finished_at = finished
    run.duration = finished - run.started_at
    run.message = message
    run.error = error
    run.traceback = tb
    fields = ["status", "finished_at", "duration", "message", "error", "traceback"]
    if held is not None:
        run.review = held.review
        fields.append("review")
    # A run timed out meanwhile keeps that status (one marked interrupted by a reconciler that
    # thought its worker dead was not: its outcome stands).
    still_ours = CleanupRun.objects.filter(
        pk=run.pk, status__in=[Status.RUNNING, Status.INTERRUPTED]
    )
    if not still_ours.update(**{name: getattr(run, name) for name in fields}):
        logger.info(
            "run schedule=%s iteration=%d finished (%s) after it was timed out; it stays so",
            schedule.name,
            iteration,
            status,
        )
        return stop(iteration, "abandoned after its timeout", status)
    logger.info(
        "run schedule=%s iteration=%d status=%s duration=%.3fs items_deleted=%d trigger=%s%s",
        schedule.name,
        iteration,
        status,
        run.duration.total_seconds(),
        run.items_deleted,
        run.trigger,
        " dry_run" if run.dry_run else "",
    )
    metrics.run_ended(schedule.name, run)
    if held is not None:
        safety.announce_held(schedule, run)
    backlog.record_backlog(schedule, run, cleanup.backlog)
    return plan_next(schedule_id, iteration, run, planned_at)


def refusal(
    schedule: CleanupSchedule | None,
    schedule_id: int,
    iteration: int,
    part: int,
    generation: int | None,
) -> dict[str, Any] | None:
    """Why this iteration must not run (the outcome to return), or None."""
    if schedule is None:
        return stop(iteration, "schedule deleted")
    if generation is not None and generation != schedule.generation:
        # An operator started, restarted or terminated it since this loop began: a newer
        # start owns the schedule, and this one must not run even once.
        return stop(iteration, "superseded by a newer start")
    if not schedule.is_alive:
        if part:
            abandon_run(schedule_id, iteration, "The schedule was stopped before the run finished.")
        return stop(iteration, "schedule stopped")
    return None


def part_deadline(dry_run: bool, run_deadline: str | None) -> float | None:
    """When this part should stop (time.monotonic()): the part's length, and the run's limit."""
    # A dry run only reads, so it runs in one part (a resumed count would count twice).
    deadlines = [] if dry_run else [time.monotonic() + settings.CLEANUP_PART_SECONDS]
    if run_deadline:
        left = (datetime.fromisoformat(run_deadline) - timezone.now()).total_seconds()
        deadlines.append(time.monotonic() + left)
    return min(deadlines, default=None)
