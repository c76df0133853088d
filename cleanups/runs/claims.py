"""Claiming an iteration's run record: one execution per iteration, whatever the engine
delivers twice, and one run of a schedule at a time.

Every claim is one write that succeeds for one delivery only (an INSERT under the unique
iteration, or a conditional UPDATE of what was read), so a record read a moment ago is a safe
place to begin: a stale read makes the claim fail, and the claim is tried again on a new read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import worker
from cleanups.runs.planning import plan_next
from cleanups.runs.records import advance_iteration, stop

Status = CleanupRun.Status
UNREAD = object()  # a record not read yet


@dataclass(frozen=True)
class Seen:
    """What one read of a schedule's runs says about running one of its iterations."""

    this: CleanupRun | None  # the iteration's record, if it has one
    before: CleanupRun | None  # a run of an earlier orchestration, still executing
    approvals: bool  # a held run was approved: this run may be the one to carry it out


def look(schedule_id: int, iteration: int) -> Seen:
    """One query for all a run needs to know of its schedule's other runs before it begins."""
    rows = (
        CleanupRun.objects.filter(schedule_id=schedule_id)
        .filter(
            Q(iteration=iteration)
            | Q(status=Status.RUNNING, finished_at=None)
            | Q(status=Status.HELD, approved_at__isnull=False)
        )
        .order_by()
    )
    this = before = None
    approvals = False
    for row in rows:
        if row.iteration == iteration:
            this = row
        elif row.status == Status.RUNNING:
            before = row
        else:
            approvals = True
    return Seen(this, before, approvals)


def wait_for_the_run_before(schedule: CleanupSchedule, iteration: int, seen: Seen) -> bool:
    """One run of a schedule at a time: a run that an earlier orchestration started (one
    restarted, or terminated and started again, while it ran) and that still executes on a live
    worker finishes first. Bounded by the schedule's run limit. Whether it waited."""
    if seen.before is None or not worker.alive(seen.before.worker):
        return False
    others = CleanupRun.objects.running().filter(schedule=schedule, finished_at=None)
    others = others.exclude(iteration=iteration)
    give_up = time.monotonic() + (schedule.run_limit or 3600)
    while time.monotonic() < give_up:
        run = others.first()
        if run is None or not worker.alive(run.worker):
            return True
        worker.stop_if_stopping()
        time.sleep(0.2)
    return True


def begin_run(
    schedule: CleanupSchedule,
    iteration: int,
    part: int,
    trigger: str,
    triggered_by: str,
    planned_at: str | None = None,
    started_at: datetime | None = None,
    seen: CleanupRun | object | None = UNREAD,
) -> CleanupRun | dict[str, Any]:
    """The iteration's run record, created or taken over; or, when another delivery of it ran
    (or it timed out), the outcome to return instead of running it a second time. ``seen``: the
    record as just read (None: there was none), if it was."""
    run = seen
    while True:
        if run is UNREAD:
            run = (
                CleanupRun.objects.filter(schedule=schedule, iteration=iteration).order_by().first()
            )
        assert run is None or isinstance(run, CleanupRun)
        existing, run = after_other_delivery(schedule, iteration, planned_at, run)
        if existing is not None:
            return existing
        if run is None:
            created = create_run(schedule, iteration, trigger, triggered_by, planned_at, started_at)
            if created is not None:
                return created
        elif run.status == Status.SKIPPED and part == 0:
            # A slot recorded as missed (an older orchestration planned past it while this
            # delivery waited): it stays so, and this run takes the next iteration.
            iteration += 1
        elif take_over(run, part, schedule.task):
            advance_iteration(schedule, iteration)
            return run
        # Another delivery began it between our look and our claim: wait for that one.
        run = UNREAD


def create_run(
    schedule: CleanupSchedule,
    iteration: int,
    trigger: str,
    triggered_by: str,
    planned_at: str | None,
    started_at: datetime | None,
) -> CleanupRun | None:
    """The iteration's new record, with the schedule's iteration moved to it in the same
    commit; None when another delivery created it first (one record per iteration)."""
    try:
        with transaction.atomic():
            run = CleanupRun.objects.create(
                schedule=schedule,
                iteration=iteration,
                task=schedule.task,
                dry_run=schedule.dry_run,
                planned_at=datetime.fromisoformat(planned_at) if planned_at else None,
                started_at=started_at or timezone.now(),
                worker=worker.worker_id(),
                trigger=trigger,
                triggered_by=triggered_by,
                config=schedule.snapshot(),
            )
            advance_iteration(schedule, iteration)
    except IntegrityError:
        return None
    return run


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


def after_other_delivery(
    schedule: CleanupSchedule, iteration: int, planned_at: str | None, run: CleanupRun | None
) -> tuple[dict[str, Any] | None, CleanupRun | None]:
    """One iteration, one execution at a time: while another worker that is alive runs this
    iteration (the engine delivered it twice), wait for it, then return its outcome. None when
    nobody else is running it: this delivery runs it (again, if its worker died). ``run``: the
    iteration's record as just read; returned with the outcome as last read."""
    while True:
        if run is None or run.status in (Status.INTERRUPTED, Status.SKIPPED):
            return None, run
        if run.status == Status.TIMED_OUT:
            return stop(iteration, "abandoned after its timeout", run.status), run
        if run.status != Status.RUNNING:
            # Finished: a delivery whose result never reached the engine. Its outcome stands.
            return plan_next(schedule.pk, iteration, run, planned_at, count_failure=False), run
        # Running with finished_at set: between two parts, or waiting for a retry; no one is
        # executing it, so this delivery takes it over.
        if run.finished_at is not None or not worker.alive(run.worker):
            return None, run
        worker.stop_if_stopping()
        time.sleep(0.5)
        run = CleanupRun.objects.filter(schedule=schedule, iteration=iteration).order_by().first()
