"""Activities: the I/O side of the loop. Idempotent, because the engine delivers at least once."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.mail import mail_admins, send_mail
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone
from durabletask import task

from cleanups import alerts, metrics
from cleanups.cadence import UncomputableRun
from cleanups.conf import settings
from cleanups.durable.connection import delivery_lost
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from cleanups.registry import CleanupContext, get_task

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status
Trigger = CleanupRun.Trigger
RETRY_FIRST_SECONDS = 1.0


class RetryableCleanupError(Exception):
    """A cleanup failed and has retries left: raised so the engine's retry policy runs it again."""


class WorkerStopping(Exception):
    """This worker is shutting down: it begins no run and waits for none (the engine delivers
    the work again, to a worker that stays)."""


# Set when runworker is asked to stop.
STOPPING = threading.Event()
# When this process began: a worker that was up at a slot's planned time and still ran it late
# was saturated ("late"), not down.
_PROCESS_STARTED_AT = timezone.now()


def _stop_if_stopping() -> None:
    if STOPPING.is_set():
        raise WorkerStopping("this worker is shutting down")


@functools.cache
def worker_id() -> str:
    """Who is running this activity: host, process and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _closing_connections(function: Any) -> Any:
    @functools.wraps(function)
    def activity(ctx: task.ActivityContext, input: Any) -> Any:
        try:
            return function(ctx, input)
        finally:
            # Activities run on the SDK's thread pool; a connection left open per thread leaks.
            connections.close_all()

    return activity


@_closing_connections
def run_cleanup(ctx: task.ActivityContext, input: dict[str, Any]) -> dict[str, Any]:
    """Run (a part of) one iteration of a schedule and record it; say what comes next."""
    return _with_lead(
        execute_iteration(
            int(input["schedule_id"]),
            int(input["iteration"]),
            int(input.get("part", 0)),
            trigger=input.get("trigger") or Trigger.SCHEDULED,
            triggered_by=input.get("triggered_by") or "",
            planned_at=input.get("planned_at"),
            max_retries=int(input.get("max_retries", 0)),
            generation=input.get("generation"),
            deadline=input.get("deadline"),
        )
    )


@_closing_connections
def time_out_run(ctx: task.ActivityContext, input: dict[str, Any]) -> dict[str, Any]:
    """The run outlived its limit: the orchestration stopped waiting for it. Record it timed
    out (keeping the counts of what it did delete) and plan the next run."""
    return _with_lead(
        record_timeout(
            int(input["schedule_id"]), int(input["iteration"]), planned_at=input.get("planned_at")
        )
    )


def _with_lead(result: dict[str, Any]) -> dict[str, Any]:
    """The next run goes to a worker this far ahead of its time (read at every run, so a new
    setting applies from the next one)."""
    return {**result, "lead_seconds": dispatch_lead_seconds()}


def dispatch_lead_seconds() -> float:
    return max(float(settings.CLEANUP_DISPATCH_LEAD_SECONDS), 0.0)


def sample_cleanup(ctx: task.ActivityContext, counter: Any) -> dict[str, Any]:
    """The sample's cleanup activity, for a bare-integer start: log and say how long to wait."""
    logger.info("Performing periodic cleanup (sample iteration %s)", counter)
    return {"iteration": counter, "wait_seconds": settings.SAMPLE_TIMER_SECONDS}


def _stop(iteration: int, reason: str, status: str = "") -> dict[str, Any]:
    return {
        "continue": False,
        "reason": reason,
        "status": status,
        "iteration": iteration,
        "next_run_at": None,
    }


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
    refused = _refusal(schedule, schedule_id, iteration, part, generation)
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
            _wait_for_the_run_before(schedule, iteration)
            # A fleet's runs wait together: none holds a database connection meanwhile (a
            # server has a hundred or so, a pool twenty).
            connections.close_all()
            _wait_until(planned)
            started_at = timezone.now()
        if delivery_lost():
            raise WorkerStopping("the engine that handed this run over took it back")
        if started_at is not None:
            schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
            refused = _refusal(schedule, schedule_id, iteration, part, generation)
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
        return _stop(iteration, "end_at reached")

    _stop_if_stopping()
    if part == 0 and started_at is None:
        _wait_for_the_run_before(schedule, iteration)
        started_at = timezone.now()  # its time has come and its predecessor is done
    if part == 0 and trigger in (Trigger.SCHEDULED, Trigger.CATCH_UP) and planned_at:
        # A catch-up is planned "at once"; if it comes late all the same, the slots that went
        # by meanwhile follow the policy too.
        plan = _handle_missed_slots(schedule, iteration, datetime.fromisoformat(planned_at))
        if plan is not None:
            if plan.get("skip"):
                return plan["result"]
            iteration, trigger = plan["iteration"], Trigger.CATCH_UP

    plan_at = None if trigger == Trigger.MANUAL or not planned_at else planned_at
    run = _begin_run(schedule, iteration, part, trigger, triggered_by, plan_at, started_at)
    if isinstance(run, dict):
        return run  # another delivery ran it (or it timed out): its outcome, not a second run
    iteration = run.iteration
    cleanup = CleanupContext(
        {}, dry_run=run.dry_run, run=run, deadline=_part_deadline(run.dry_run, deadline)
    )
    message = error = tb = ""
    try:
        task_spec = get_task(schedule.task)
        if task_spec is None:
            raise LookupError(
                f"No cleanup task named {schedule.task!r} is registered in this worker."
            )
        cleanup.params = task_spec.clean_params(schedule.params)
        # Rights change: the editor must still be entitled to every deletion, at every run.
        cleanup.entitlement = task_spec.entitle(cleanup.params, lambda: schedule.deletes_as)
        message = task_spec.function(cleanup) or ""
        status = Status.SUCCEEDED
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
        return _stop(iteration, "abandoned after its timeout", status)
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
    return _plan_next(schedule_id, iteration, run, planned_at)


def _refusal(
    schedule: CleanupSchedule | None,
    schedule_id: int,
    iteration: int,
    part: int,
    generation: int | None,
) -> dict[str, Any] | None:
    """Why this iteration must not run (the outcome to return), or None."""
    if schedule is None:
        return _stop(iteration, "schedule deleted")
    if generation is not None and generation != schedule.generation:
        # An operator started, restarted or terminated it since this loop began: a newer
        # start owns the schedule, and this one must not run even once.
        return _stop(iteration, "superseded by a newer start")
    if not schedule.is_alive:
        if part:
            _abandon_run(
                schedule_id, iteration, "The schedule was stopped before the run finished."
            )
        return _stop(iteration, "schedule stopped")
    return None


def _wait_until(moment: datetime) -> None:
    """Sleep until the wall clock reads ``moment``; a worker asked to stop stops waiting
    (WorkerStopping: the engine delivers the run again)."""
    while True:
        now = timezone.now()
        if now >= moment:
            return
        if STOPPING.wait((moment - now).total_seconds()):
            _stop_if_stopping()


def _handle_missed_slots(
    schedule: CleanupSchedule, iteration: int, planned: datetime
) -> dict[str, Any] | None:
    """Apply the missed-run policy when a scheduled (or catch-up) run starts late; None if
    nothing was missed.

    Idempotent: a redelivery finds the skipped row it wrote and makes the same decision. Slots
    that cannot be computed count as none missed: the planned run runs, and its planning stops
    the schedule.
    """
    if iteration == schedule.start_iteration:
        return None  # a start's first run is what was asked for, however late it comes
    existing = CleanupRun.objects.filter(schedule=schedule, iteration=iteration).first()
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
        reason = _why_missed(schedule, iteration, planned)
        existing = _record_skipped(schedule, iteration, skipped, reason, planned, now)
        if existing.status != Status.SKIPPED:
            return None  # another delivery began the run meanwhile: _begin_run waits for it
    if schedule.missed_runs == CleanupSchedule.MissedRuns.RUN_ONCE:
        return {"iteration": iteration + 1}
    try:
        next_run_at = rule.next_after(existing.finished_at or now, existing.finished_at or now)
    except UncomputableRun as error:
        return {
            "skip": True,
            "result": _stop_for_its_cadence(schedule, iteration, str(error), Status.SKIPPED),
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
    reason = _why_missed(schedule, iteration, planned, by_worker=False)
    return _record_skipped(schedule, iteration, slots, reason, planned, now)


def _record_skipped(
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
            "worker": worker_id(),
        },
    )
    _advance_iteration(schedule, iteration)
    metrics.run_ended(schedule.name, row, created)
    return row


def rule_grace() -> timedelta:
    """How late a timer may fire before its slot counts as missed."""
    return timedelta(seconds=settings.MISSED_RUN_GRACE_SECONDS)


def _why_missed(
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
    if by_worker and planned > _PROCESS_STARTED_AT:
        return "late"
    return "worker down"


def _part_deadline(dry_run: bool, run_deadline: str | None) -> float | None:
    """When this part should stop (time.monotonic()): the part's length, and the run's limit."""
    # A dry run only reads, so it runs in one part (a resumed count would count twice).
    deadlines = [] if dry_run else [time.monotonic() + settings.CLEANUP_PART_SECONDS]
    if run_deadline:
        left = (datetime.fromisoformat(run_deadline) - timezone.now()).total_seconds()
        deadlines.append(time.monotonic() + left)
    return min(deadlines, default=None)


def _begin_run(
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
        existing = _after_other_delivery(schedule, iteration, planned_at)
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
                "worker": worker_id(),
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
        if created or _take_over(run, part, schedule.task):
            _advance_iteration(schedule, iteration)
            return run
        # Another delivery began it between our look and our claim: wait for that one.


def _take_over(run: CleanupRun, part: int, task_name: str) -> bool:
    """Claim a run record that exists already for this delivery, if nobody executes it: one
    conditional UPDATE on what was read, so of two deliveries that race only one wins."""
    executing = run.status == Status.RUNNING and run.finished_at is None and _alive(run.worker)
    if executing:
        return False
    changes: dict[str, Any] = {
        "status": Status.RUNNING,
        "finished_at": None,
        "duration": None,
        "worker": worker_id(),
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


def record_timeout(schedule_id: int, iteration: int, planned_at: str | None) -> dict[str, Any]:
    """Mark the iteration's run timed out, if it is still running, and plan the next run. Its
    counts stay: they were committed with what they describe. A run that never began (no worker
    took it) is recorded as timed out too, so the gap is visible."""
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return _stop(iteration, "schedule deleted")
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
        _advance_iteration(schedule, iteration)
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
    return _plan_next(schedule_id, run.iteration, run, planned_at)


def _wait_for_the_run_before(schedule: CleanupSchedule, iteration: int) -> None:
    """One run of a schedule at a time: a run that an earlier orchestration started (one
    restarted, or terminated and started again, while it ran) and that still executes on a live
    worker finishes first. Bounded by the schedule's run limit."""
    others = CleanupRun.objects.running().filter(schedule=schedule, finished_at=None)
    others = others.exclude(iteration=iteration)
    give_up = time.monotonic() + (schedule.run_limit or 3600)
    while time.monotonic() < give_up:
        run = others.first()
        if run is None or not _alive(run.worker):
            return
        _stop_if_stopping()
        time.sleep(0.2)


def _after_other_delivery(
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
            return _stop(iteration, "abandoned after its timeout", run.status)
        if run.status != Status.RUNNING:
            # Finished: a delivery whose result never reached the engine. Its outcome stands.
            return _plan_next(schedule.pk, iteration, run, planned_at, count_failure=False)
        # Running with finished_at set: between two parts, or waiting for a retry; no one is
        # executing it, so this delivery takes it over.
        if run.finished_at is not None or not _alive(run.worker):
            return None
        _stop_if_stopping()
        time.sleep(0.5)


def _alive(worker: str) -> bool:
    if worker == worker_id():
        return True
    beat = WorkerHeartbeat.objects.filter(worker=worker).first()
    return beat is not None and not beat.seems_dead()


def _advance_iteration(schedule: CleanupSchedule, iteration: int) -> None:
    CleanupSchedule.objects.filter(pk=schedule.pk, current_iteration__lt=iteration).update(
        current_iteration=iteration
    )


def _abandon_run(schedule_id: int, iteration: int, reason: str) -> None:
    CleanupRun.objects.filter(
        schedule_id=schedule_id, iteration=iteration, status=Status.RUNNING
    ).update(status=Status.INTERRUPTED, finished_at=timezone.now(), error=reason)


def _plan_next(
    schedule_id: int,
    iteration: int,
    run: CleanupRun,
    planned_at: str | None,
    *,
    count_failure: bool = True,
) -> dict[str, Any]:
    # Read the schedule again: an operator may have edited or stopped it during the run.
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    status = run.status
    if schedule is None:
        return _stop(iteration, "schedule deleted", status)
    if not schedule.is_alive:
        return _stop(iteration, "schedule stopped", status)
    paused_reason = _count_failure(schedule, run) if count_failure else ""
    if paused_reason:
        return _stop(iteration, paused_reason, status)
    if run.trigger != Trigger.MANUAL and not schedule.iterations_left(iteration):
        CleanupSchedule.objects.filter(pk=schedule_id).update(
            desired_state=CleanupSchedule.DesiredState.STOPPED,
            next_run_at=None,
            status_reason="Completed: iteration limit reached.",
        )
        return _stop(iteration, "iteration limit reached", status)
    next_iteration, next_trigger = iteration + 1, Trigger.SCHEDULED
    if run.trigger == Trigger.MANUAL and planned_at:
        next_run_at = datetime.fromisoformat(planned_at)  # a manual run moves nothing
    else:
        try:
            next_run_at, next_iteration, next_trigger = _next_after_run(
                schedule, run, next_iteration
            )
        except UncomputableRun as error:
            return _stop_for_its_cadence(schedule, iteration, str(error), status)
    if schedule.start_at and next_run_at < schedule.start_at:
        next_run_at = schedule.start_at
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


def _next_after_run(
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
        _record_skipped(schedule, next_iteration, skipped, "overran", next_run_at, finished)
        next_iteration += 1
    if run_once:
        return finished, next_iteration, Trigger.CATCH_UP
    return rule.next_after(finished, finished), next_iteration, Trigger.SCHEDULED


def _stop_for_its_cadence(
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
    return _stop(iteration, "cannot compute the next run", status)


def _count_failure(schedule: CleanupSchedule, run: CleanupRun) -> str:
    """Track the failure streak; notify once per streak; pause if asked. The pause reason."""
    if run.status not in (Status.FAILED, Status.TIMED_OUT):
        if schedule.consecutive_failures or schedule.failure_notified:
            CleanupSchedule.objects.filter(pk=schedule.pk).update(
                consecutive_failures=0, failure_notified=False
            )
            if schedule.failure_notified and run.status == Status.SUCCEEDED:
                alerts.send(alerts.RECOVERED, schedule, run)
        return ""
    with transaction.atomic():
        fresh = CleanupSchedule.objects.select_for_update().get(pk=schedule.pk)
        fresh.consecutive_failures += 1
        notify = not fresh.failure_notified
        fresh.failure_notified = True
        pause = bool(
            fresh.pause_after_failures and fresh.consecutive_failures >= fresh.pause_after_failures
        )
        fields = ["consecutive_failures", "failure_notified"]
        reason = ""
        if pause:
            reason = f"Paused after {fresh.consecutive_failures} failed runs in a row."
            fresh.desired_state = CleanupSchedule.DesiredState.PAUSED
            fresh.status_reason = reason
            fresh.paused_at = timezone.now()
            fields += ["desired_state", "status_reason", "paused_at"]
        fresh.save(update_fields=fields)
    if notify and run.status != Status.TIMED_OUT:  # a time-out has its own alert, just sent
        alerts.send(alerts.FAILING, fresh, run)
    if pause:
        alerts.send(alerts.PAUSED, fresh, run)
    if notify:
        _notify_failure(fresh, run)
    return reason


def _notify_failure(schedule: CleanupSchedule, run: CleanupRun) -> None:
    subject = f"Cleanup schedule “{schedule.name}” failed (iteration {run.iteration})"
    body = (
        f"The cleanup task {run.task!r} failed:\n\n{run.error}\n\n{run.traceback}\n"
        "You get this once per streak of failures; the next success resets it."
    )
    try:
        if schedule.notify_email:
            send_mail(subject, body, None, [schedule.notify_email])
        else:
            mail_admins(subject, body)
    except Exception as error:  # a mail server being down must not stop the schedule
        logger.warning("could not send the failure notice for %s: %s", schedule.name, error)
