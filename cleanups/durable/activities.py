"""Activities: the I/O side of the loop. Idempotent, because the engine delivers at least once."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import traceback
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone
from durabletask import task

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.registry import CleanupContext, get_task

logger = logging.getLogger("cleanups.runs")


@functools.cache
def worker_id() -> str:
    """Who is running this activity: host, process and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_cleanup(ctx: task.ActivityContext, input: dict[str, Any]) -> dict[str, Any]:
    """Run (a part of) one iteration of a schedule and record it; say what comes next."""
    try:
        return execute_iteration(
            int(input["schedule_id"]), int(input["iteration"]), int(input.get("part", 0))
        )
    finally:
        # Activities run on the SDK's thread pool; a connection left open per thread leaks.
        connections.close_all()


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


def execute_iteration(schedule_id: int, iteration: int, part: int = 0) -> dict[str, Any]:
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return _stop(iteration, "schedule deleted")
    if not schedule.is_running:
        if part:
            _abandon_run(
                schedule_id, iteration, "The schedule was stopped before the run finished."
            )
        return _stop(iteration, "schedule stopped")

    run = _begin_run(schedule, iteration, part)
    # A dry run only reads, so it runs in one part (a resumed count would count twice).
    deadline = None if run.dry_run else time.monotonic() + settings.CLEANUP_PART_SECONDS
    cleanup = CleanupContext({}, dry_run=run.dry_run, run=run, deadline=deadline)
    message = error = tb = ""
    try:
        task_spec = get_task(schedule.task)
        if task_spec is None:
            raise LookupError(
                f"No cleanup task named {schedule.task!r} is registered in this worker."
            )
        cleanup.params = task_spec.clean_params(schedule.params)
        message = task_spec.function(cleanup) or ""
        status = CleanupRun.Status.SUCCEEDED
    except Exception as exc:  # a failing cleanup is a failed run, never a failed loop
        status = CleanupRun.Status.FAILED
        detail = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        error = f"{type(exc).__name__}: {detail}"
        tb = traceback.format_exc()

    if status == CleanupRun.Status.SUCCEEDED and cleanup.unfinished:
        CleanupRun.objects.filter(pk=run.pk).update(message=message)
        return {
            "continue": True,
            "more": True,
            "part": part + 1,
            "items": cleanup.items,
            "iteration": iteration,
        }

    finished = timezone.now()
    run.status = status
    run.finished_at = finished
    run.duration = finished - run.started_at
    run.message = message
    run.error = error
    run.traceback = tb
    run.save(update_fields=["status", "finished_at", "duration", "message", "error", "traceback"])
    logger.info(
        "run schedule=%s iteration=%d status=%s duration=%.3fs items_deleted=%d%s",
        schedule.name,
        iteration,
        status,
        run.duration.total_seconds(),
        run.items_deleted,
        " dry_run" if run.dry_run else "",
    )
    return _plan_next(schedule_id, iteration, status, finished)


def _begin_run(schedule: CleanupSchedule, iteration: int, part: int) -> CleanupRun:
    now = timezone.now()
    with transaction.atomic():
        run, created = CleanupRun.objects.get_or_create(
            schedule=schedule,
            iteration=iteration,
            defaults={
                "task": schedule.task,
                "dry_run": schedule.dry_run,
                "started_at": now,
                "worker": worker_id(),
            },
        )
        if not created:
            changes: dict[str, Any] = {
                "status": CleanupRun.Status.RUNNING,
                "finished_at": None,
                "duration": None,
                "error": "",
                "traceback": "",
                "worker": worker_id(),
            }
            if part == 0:
                # A redelivery: this iteration's record is reused, never duplicated. Counts
                # stay: they were committed with the rows they describe (a dry run deleted
                # nothing, so its count starts again).
                changes.update(attempts=F("attempts") + 1, task=schedule.task, started_at=now)
                if run.dry_run:
                    changes.update(items_deleted=0, details={})
            else:
                changes["parts"] = part + 1
            CleanupRun.objects.filter(pk=run.pk).update(**changes)
            run.refresh_from_db()
        CleanupSchedule.objects.filter(pk=schedule.pk, current_iteration__lt=iteration).update(
            current_iteration=iteration
        )
    return run


def _abandon_run(schedule_id: int, iteration: int, reason: str) -> None:
    CleanupRun.objects.filter(
        schedule_id=schedule_id, iteration=iteration, status=CleanupRun.Status.RUNNING
    ).update(status=CleanupRun.Status.INTERRUPTED, finished_at=timezone.now(), error=reason)


def _plan_next(schedule_id: int, iteration: int, status: str, finished: datetime) -> dict[str, Any]:
    # Read the schedule again: an operator may have edited or stopped it during the run.
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return _stop(iteration, "schedule deleted", status)
    if not schedule.is_running:
        return _stop(iteration, "schedule stopped", status)
    if not schedule.iterations_left(iteration):
        CleanupSchedule.objects.filter(pk=schedule_id).update(
            desired_state=CleanupSchedule.DesiredState.STOPPED, next_run_at=None
        )
        return _stop(iteration, "iteration limit reached", status)
    next_run_at = finished + schedule.interval
    CleanupSchedule.objects.filter(pk=schedule_id).update(next_run_at=next_run_at)
    return {
        "continue": True,
        "reason": "",
        "status": status,
        "iteration": iteration,
        "next_run_at": next_run_at.isoformat(),
    }
