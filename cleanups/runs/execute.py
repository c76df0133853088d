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
from django.db import connections
from django.db.models import F
from django.utils import timezone

from cleanups import metrics
from cleanups.conf import settings
from cleanups.contract import WorkerStopping
from cleanups.engine.ontime import delivery_lost
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import safety, worker
from cleanups.runs.missed import handle_missed_slots
from cleanups.runs.planning import plan_next
from cleanups.runs.records import (
    RetryableCleanupError,
    abandon_run,
    advance_iteration,
    stop,
)
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
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    refused = refusal(schedule, schedule_id, iteration, part, generation)
    if refused is not None:
        return refused
    assert schedule is not None
    started_at = None
    if part == 0 and trigger != Trigger.MANUAL and planned_at:
        planned = datetime.fromisoformat(planned_at)
        if timezone.now() < planned:
            # Handed over ahead of its time (CLEANUP_DISPATCH_LEAD_SECONDS): what can be done
            # before, is; it starts at that time exactly (never early, whatever held it), and
            # runs as the schedule stands then.
            wait_for_the_run_before(schedule, iteration)
            # A fleet's runs wait together: none holds a database connection meanwhile (a
            # server has a hundred or so, a pool twenty).
            connections.close_all()
            worker.wait_until(planned)
            started_at = timezone.now()
        if delivery_lost():
            raise WorkerStopping("the engine that handed this run over took it back")
        if started_at is not None:
            schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
            refused = refusal(schedule, schedule_id, iteration, part, generation)
            if refused is not None:
                return refused
            assert schedule is not None
        if schedule.desired_state == CleanupSchedule.DesiredState.PAUSED:
            # Paused before it began: it does not run now. Resumed, it is planned again.
            return {"continue": True, "deferred": True, "reason": "", "status": ""}
    if part == 0 and schedule.end_at and timezone.now() >= schedule.end_at:
        CleanupSchedule.objects.filter(pk=schedule_id).update(
            desired_state=CleanupSchedule.DesiredState.STOPPED,
            next_run_at=None,
            status_reason=f"Completed: past its end ({schedule.end_at.isoformat()}).",
        )
        return stop(iteration, "end_at reached")

    worker.stop_if_stopping()
    if part == 0 and started_at is None:
        wait_for_the_run_before(schedule, iteration)
        started_at = timezone.now()  # its time has come and its predecessor is done
    if part == 0 and trigger in (Trigger.SCHEDULED, Trigger.CATCH_UP) and planned_at:
        # A catch-up is planned "at once"; if it comes late all the same, the slots that went
        # by meanwhile follow the policy too.
        plan = handle_missed_slots(schedule, iteration, datetime.fromisoformat(planned_at))
        if plan is not None:
            if plan.get("skip"):
                return plan["result"]
            iteration, trigger = plan["iteration"], Trigger.CATCH_UP

    plan_at = None if trigger == Trigger.MANUAL or not planned_at else planned_at
    run = begin_run(schedule, iteration, part, trigger, triggered_by, plan_at, started_at)
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
        safety.arm(cleanup, schedule, run, part)
        message = task_spec.function(cleanup) or ""
        status = Status.SUCCEEDED
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


def begin_run(
    schedule: CleanupSchedule,
    iteration: int,
    part: int,
    trigger: str,
    triggered_by: str,
    planned_at: str | None = None,
    started_at: datetime | None = None,
) -> CleanupRun | dict[str, Any]:
    """The iteration's run record, created or taken over; or, when another delivery of it ran
    (or it timed out), the outcome to return instead of running it a second time."""
    while True:
        existing = after_other_delivery(schedule, iteration, planned_at)
        if existing is not None:
            return existing
        run, created = CleanupRun.objects.get_or_create(
            schedule=schedule,
            iteration=iteration,
            defaults={
                "task": schedule.task,
                "dry_run": schedule.dry_run,
                "planned_at": datetime.fromisoformat(planned_at) if planned_at else None,
                "started_at": started_at or timezone.now(),
                "worker": worker.worker_id(),
                "trigger": trigger,
                "triggered_by": triggered_by,
                "config": schedule.snapshot(),
            },
        )
        if not created and run.status == Status.SKIPPED and part == 0:
            # A slot recorded as missed (an older orchestration planned past it while this
            # delivery waited): it stays so, and this run takes the next iteration.
            iteration += 1
            continue
        if created or take_over(run, part, schedule.task):
            advance_iteration(schedule, iteration)
            return run
        # Another delivery began it between our look and our claim: wait for that one.


def take_over(run: CleanupRun, part: int, task_name: str) -> bool:
    """Claim a run record that exists already for this delivery, if nobody executes it: one
    conditional UPDATE on what was read, so of two deliveries that race only one wins."""
    executing = (
        run.status == Status.RUNNING and run.finished_at is None and worker.alive(run.worker)
    )
    if executing:
        return False
    changes: dict[str, Any] = {
        "status": Status.RUNNING,
        "finished_at": None,
        "duration": None,
        "worker": worker.worker_id(),
    }
    if part == 0:
        # A redelivery or a retry: this iteration's record is reused, never duplicated. Counts
        # stay: they were committed with the rows they describe (a dry run deleted nothing, so
        # its count starts again).
        changes.update(attempts=F("attempts") + 1, task=task_name)
        if run.dry_run:
            changes.update(items_deleted=0, details={})
    else:
        changes["parts"] = part + 1
    as_read = CleanupRun.objects.filter(
        pk=run.pk,
        status=run.status,
        worker=run.worker,
        attempts=run.attempts,
        parts=run.parts,
        finished_at=run.finished_at,
    )
    if not as_read.update(**changes):
        return False
    run.refresh_from_db()
    return True


def wait_for_the_run_before(schedule: CleanupSchedule, iteration: int) -> None:
    """One run of a schedule at a time: a run that an earlier orchestration started (one
    restarted, or terminated and started again, while it ran) and that still executes on a live
    worker finishes first. Bounded by the schedule's run limit."""
    others = CleanupRun.objects.running().filter(schedule=schedule, finished_at=None)
    others = others.exclude(iteration=iteration)
    give_up = time.monotonic() + (schedule.run_limit or 3600)
    while time.monotonic() < give_up:
        run = others.first()
        if run is None or not worker.alive(run.worker):
            return
        worker.stop_if_stopping()
        time.sleep(0.2)


def after_other_delivery(
    schedule: CleanupSchedule, iteration: int, planned_at: str | None
) -> dict[str, Any] | None:
    """One iteration, one execution at a time: while another worker that is alive runs this
    iteration (the engine delivered it twice), wait for it, then return its outcome. None when
    nobody else is running it: this delivery runs it (again, if its worker died)."""
    runs = CleanupRun.objects.filter(schedule=schedule, iteration=iteration)
    while True:
        run = runs.first()
        if run is None or run.status in (Status.INTERRUPTED, Status.SKIPPED):
            return None
        if run.status == Status.TIMED_OUT:
            return stop(iteration, "abandoned after its timeout", run.status)
        if run.status != Status.RUNNING:
            # Finished: a delivery whose result never reached the engine. Its outcome stands.
            return plan_next(schedule.pk, iteration, run, planned_at, count_failure=False)
        # Running with finished_at set: between two parts, or waiting for a retry; no one is
        # executing it, so this delivery takes it over.
        if run.finished_at is not None or not worker.alive(run.worker):
            return None
        worker.stop_if_stopping()
        time.sleep(0.5)
