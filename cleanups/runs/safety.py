"""What a run is armed with before its task runs: the guard, an approval's allowance, the
archiver; and what a held run tells people."""

from __future__ import annotations

import logging

from cleanups import alerts
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.failures import send_notice
from cleanups.runs.guard import allowance, guard_for
from cleanups.tasks.archive import Archiver, storage_problem
from cleanups.tasks.context import CleanupContext

logger = logging.getLogger("cleanups.runs")
Status = CleanupRun.Status


class ArchiveUnavailable(Exception):
    """The run should archive, and the archive storage cannot be used: nothing is deleted."""


def arm(
    cleanup: CleanupContext,
    schedule: CleanupSchedule,
    run: CleanupRun,
    part: int,
    approvals: bool = True,
) -> None:
    """Arm the run; ``approvals`` False: the schedule has no approved held run to carry out."""
    if run.dry_run:
        return  # counts only: nothing to guard, cap or archive
    if schedule.archives:
        problem = storage_problem()
        if problem:
            raise ArchiveUnavailable(problem)
        cleanup.archive = Archiver(f"{schedule.pk}/{run.pk}")
    approval = run.approval_of if run.approval_of_id else None
    if approval is None and part == 0 and approvals:
        approval = take_approval(schedule, run)
    if approval is not None:
        cleanup.allowance, _ = allowance(approval.review)
    elif part == 0:
        cleanup.guard = guard_for(schedule, run)


def take_approval(schedule: CleanupSchedule, run: CleanupRun) -> CleanupRun | None:
    """The newest approved held run of ``schedule`` that no run has carried out yet, claimed by
    ``run`` (its approval copied onto it), if it was held with the schedule's definition as it
    is now: an edit since makes it a different deletion, which the guard judges afresh."""
    pending = (
        CleanupRun.objects.filter(schedule=schedule, status=Status.HELD)
        .filter(approved_at__isnull=False, approval_runs__isnull=True)
        .exclude(pk=run.pk)
        .order_by("-iteration")
        .first()
    )
    if pending is None:
        return None
    ran_with, now = pending.config or {}, run.config or {}
    if (ran_with.get("task"), ran_with.get("params")) != (now.get("task"), now.get("params")):
        return None
    claimed = CleanupRun.objects.filter(pk=run.pk, approval_of__isnull=True)
    if not claimed.update(
        approval_of=pending,
        approved_by=pending.approved_by,
        approved_at=pending.approved_at,
        approved_rows=pending.approved_rows,
    ):
        return None
    run.refresh_from_db()
    return pending


def announce_held(schedule: CleanupSchedule, run: CleanupRun) -> None:
    """Alert hooks and mail: a run is held and waits for a person."""
    logger.warning(
        "run schedule=%s iteration=%d held: %s", schedule.name, run.iteration, run.message
    )
    alerts.send(alerts.HELD, schedule, run)
    subject = f"Cleanup schedule “{schedule.name}”: run {run.iteration} is held for approval"
    body = (
        f"{run.message}\n\nApprove or reject it in the admin ({alerts.site_url(run.get_absolute_url())}) "
        "or with `manage.py schedules approve|reject RUN_ID`. The schedule goes on waiting."
    )
    send_notice(schedule, subject, body, "held-run notice")
