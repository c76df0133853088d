"""Activities: the I/O side of the loop, thin shells around the run life cycle (cleanups.runs).
Idempotent, because the engine delivers at least once."""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connections
from django.utils import timezone
from durabletask import task

from cleanups.conf import settings
from cleanups.contract import WorkerStopping
from cleanups.engine.ontime import at_run_thread_end
from cleanups.formatting import one_line
from cleanups.models import CleanupRun
from cleanups.runs import worker
from cleanups.runs.execute import execute_iteration
from cleanups.runs.records import dispatch_lead_seconds
from cleanups.runs.timeouts import record_timeout

logger = logging.getLogger("cleanups.runs")
# While the database is away, an activity tries again after 0.5 s, 1 s, 2 s ... at most 5 s
# apart, for at most a minute in all (then it fails, and the orchestration's recovery takes
# over).
DATABASE_FIRST_WAIT, DATABASE_MAX_WAIT, DATABASE_WAIT_LIMIT = 0.5, 5.0, 60.0


def _closing_connections(function: Any) -> Any:
    @functools.wraps(function)
    def activity(ctx: task.ActivityContext, input: Any) -> Any:
        try:
            return _through_database_outages(function, ctx, input)
        finally:
            # A connection left open per thread leaks; a cleanup-run thread runs run after
            # run, and keeps what it may (SQLite's) until it ends.
            if at_run_thread_end(connections.close_all):
                worker.let_go_of_connections()
            else:
                connections.close_all()

    return activity


def _through_database_outages(function: Any, ctx: task.ActivityContext, input: Any) -> Any:
    """Run the activity; while the database is away (a restart, a dropped connection, SQLite
    locked beyond its busy timeout), wait for it and run it again. The run life cycle is
    idempotent (the engine delivers at least once, and this is one more delivery), and its
    counts are committed with each batch, so a second go neither runs twice nor counts twice.
    Failing the activity instead would fail the orchestration, and leave its run ``running``
    on a live worker that nobody would ever finish."""
    wait, waited = DATABASE_FIRST_WAIT, 0.0
    again = False
    let_go: tuple[list[int], datetime] | None = None
    while True:
        try:
            if again:
                let_go = _let_go_of_the_run(input) or let_go  # the latest it let go of
            result = function(ctx, input)
            if let_go is not None:
                _close_what_nobody_took(*let_go)
            return result
        except (OperationalError, InterfaceError) as error:
            if waited >= DATABASE_WAIT_LIMIT:
                raise
            given = input if isinstance(input, dict) else {}
            logger.warning(
                "run schedule_id=%s iteration=%s: the database is unavailable (%s); "
                "trying again in %.1f s",
                given.get("schedule_id", "?"),
                given.get("iteration", "?"),
                one_line(error),
                wait,
            )
        connections.close_all()  # a broken connection is not used again
        if worker.STOPPING.wait(wait):
            raise WorkerStopping("this worker is shutting down")
        waited += wait
        wait = min(wait * 2, DATABASE_MAX_WAIT)
        again = True


def _let_go_of_the_run(input: Any) -> tuple[list[int], datetime] | None:
    """Before the activity goes again: its run, left ``running`` by this worker when the
    database went away, is executed by nobody now (the next delivery takes it over, counts and
    all); otherwise it would wait for itself, as for another delivery on a live worker. The
    runs let go, and the time they were."""
    if not (isinstance(input, dict) and "schedule_id" in input):
        return None
    mine = CleanupRun.objects.running().filter(
        schedule_id=int(input["schedule_id"]), worker=worker.worker_id(), finished_at__isnull=True
    )
    pks, at = list(mine.values_list("pk", flat=True)), timezone.now()
    if not pks:
        return None
    CleanupRun.objects.filter(pk__in=pks, finished_at__isnull=True).update(finished_at=at)
    return pks, at


def _close_what_nobody_took(pks: list[int], at: datetime) -> None:
    """After the second go: a run it let go of and did not take over (its loop was restarted,
    terminated or stopped while the database was away, so the second go was refused) is ended
    as interrupted; nobody else would, and it would stay ``running`` for ever."""
    CleanupRun.objects.running().filter(pk__in=pks, finished_at=at).update(
        status=CleanupRun.Status.INTERRUPTED,
        error="The database went away during the run, and its schedule was restarted or "
        "stopped before it could go on.",
    )


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
