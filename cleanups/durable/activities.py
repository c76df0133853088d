"""Activities: the I/O side of the loop, thin shells around the run life cycle (cleanups.runs).
Idempotent, because the engine delivers at least once."""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.db import connections
from durabletask import task

from cleanups.conf import settings
from cleanups.models import CleanupRun
from cleanups.runs.execute import execute_iteration
from cleanups.runs.records import dispatch_lead_seconds
from cleanups.runs.timeouts import record_timeout

logger = logging.getLogger("cleanups.runs")


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
            trigger=input.get("trigger") or CleanupRun.Trigger.SCHEDULED,
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


def sample_cleanup(ctx: task.ActivityContext, counter: Any) -> dict[str, Any]:
    """The sample's cleanup activity, for a bare-integer start: log and say how long to wait."""
    logger.info("Performing periodic cleanup (sample iteration %s)", counter)
    return {"iteration": counter, "wait_seconds": settings.SAMPLE_TIMER_SECONDS}
