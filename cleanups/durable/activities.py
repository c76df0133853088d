"""Activities: the I/O side of the loop. Idempotent, because the engine delivers at least once."""

from __future__ import annotations

import functools
import logging
import os
import socket
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
from cleanups.tasks import TaskResult, get_task

logger = logging.getLogger("cleanups.runs")


@functools.cache
def worker_id() -> str:
    """Who is running this activity: host, process and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_cleanup(ctx: task.ActivityContext, input: dict[str, Any]) -> dict[str, Any]:
    """Run one iteration of a schedule and record it; tell the orchestration what comes next."""
    try:
        return execute_iteration(int(input["schedule_id"]), int(input["iteration"]))
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


def execute_iteration(schedule_id: int, iteration: int) -> dict[str, Any]:
    schedule = CleanupSchedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        return _stop(iteration, "schedule deleted")
    if not schedule.is_running:
        return _stop(iteration, "schedule stopped")

    run = _begin_run(schedule, iteration)
    started = timezone.now()
    result = TaskResult()
    error = tb = ""
    try:
        task_spec = get_task(schedule.task)
        if task_spec is None:
            raise LookupError(
                f"No cleanup task named {schedule.task!r} is registered in this worker."
            )
        result = task_spec.function(task_spec.clean_params(schedule.params))
        status = CleanupRun.Status.SUCCEEDED
    except Exception as exc:  # a failing cleanup is a failed run, never a failed loop
        status = CleanupRun.Status.FAILED
        detail = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        error = f"{type(exc).__name__}: {detail}"
        tb = traceback.format_exc()
    finished = timezone.now()

    run.status = status
    run.finished_at = finished
    run.duration = finished - started
    run.items_deleted = result.items_deleted
    run.message = result.message
    run.error = error
    run.traceback = tb
    run.save(
        update_fields=[
            "status",
            "finished_at",
            "duration",
            "items_deleted",
            "message",
            "error",
            "traceback",
        ]
    )
    logger.info(
        "run schedule=%s iteration=%d status=%s duration=%.3fs items_deleted=%d",
        schedule.name,
        iteration,
        status,
        run.duration.total_seconds(),
        run.items_deleted,
    )
    return _plan_next(schedule_id, iteration, status, finished)


def _begin_run(schedule: CleanupSchedule, iteration: int) -> CleanupRun:
    now = timezone.now()
    with transaction.atomic():
        run, created = CleanupRun.objects.get_or_create(
            schedule=schedule,
            iteration=iteration,
            defaults={"task": schedule.task, "started_at": now, "worker": worker_id()},
        )
        if not created:
            # A redelivery: this iteration's record is reused, never duplicated.
            CleanupRun.objects.filter(pk=run.pk).update(
                attempts=F("attempts") + 1,
                status=CleanupRun.Status.RUNNING,
                task=schedule.task,
                started_at=now,
                finished_at=None,
                duration=None,
                error="",
                traceback="",
                worker=worker_id(),
            )
            run.refresh_from_db()
        CleanupSchedule.objects.filter(pk=schedule.pk, current_iteration__lt=iteration).update(
            current_iteration=iteration
        )
    return run


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
