"""Deciding on a held run: approve (it runs now, deleting at most what it showed plus the
slack) or reject (the schedule is paused). The admin's actions, the run page's buttons and
``manage.py schedules approve|reject`` all decide here, with the same checks."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.utils import timezone

from cleanups.conf import settings
from cleanups.control.outcomes import Outcome
from cleanups.control.single import pause_schedule, run_now
from cleanups.models import CleanupRun
from cleanups.runs.guard import allowance
from cleanups.tasks.registry import get_task

APPROVE_PERMISSION = "cleanups.approve_cleanuprun"
Status = CleanupRun.Status


class DecisionRefused(Exception):
    """This person may not decide on this run (the message says why)."""


def refusal(run: CleanupRun, user: Any) -> str | None:
    """Why ``user`` may not approve or reject ``run``; None when they may."""
    if user is None or not getattr(user, "is_active", False):
        return "Only an active user may decide on a held run."
    if not user.has_perm(APPROVE_PERMISSION):
        return f"{user.get_username()} lacks the permission {APPROVE_PERMISSION}."
    if run.status != Status.HELD:
        return f"Run {run.pk} is not held (it is {run.get_status_display().lower()})."
    if not run.awaits_decision:
        decided = "approved" if run.approved_at else "rejected"
        who = run.approved_by or run.rejected_by
        return f"Run {run.pk} was {decided} already, by {who}."
    schedule = run.schedule
    if settings.CLEANUP_FOUR_EYES and schedule.changed_by_id == user.pk and not schedule.managed_by:
        return (
            f"{user.get_username()} last edited “{schedule}”: under four-eyes "
            "(CLEANUP_FOUR_EYES) another person decides on its held runs."
        )
    return None


def _approval_refusal(run: CleanupRun, user: Any) -> str | None:
    """Approving is deleting: the approver must be allowed to delete what the run deletes."""
    task = get_task(run.task)
    if task is None:
        return f"No cleanup task named {run.task!r} is registered here."
    try:
        params = task.clean_params((run.config or {}).get("params", {}))
    except Exception as error:  # the definition no longer validates: nothing to approve
        return f"Its definition is no longer valid: {error}"
    reasons = task.refusals(params, user)
    return reasons[0] if reasons else None


def approve_run(run: CleanupRun, user: Any) -> str:
    """Approve a held run; raises DecisionRefused. One line for the person."""
    why = refusal(run, user) or _approval_refusal(run, user)
    if why:
        raise DecisionRefused(why)
    _, total = allowance(run.review or {"counts": {}})
    now, name = timezone.now(), user.get_username()
    undecided = CleanupRun.objects.filter(
        pk=run.pk, status=Status.HELD, approved_at=None, rejected_at=None
    )
    if not undecided.update(approved_by=name, approved_at=now, approved_rows=total):
        raise DecisionRefused(f"Run {run.pk} was decided on meanwhile.")
    run.approved_by, run.approved_at, run.approved_rows = name, now, total
    _log(user, run, f"Approved held run {run.pk}: at most {total:,} items.")
    outcome = run_now(run.schedule, user=name)
    head = f"Run {run.pk} of “{run.schedule}” approved (at most {total:,} items)"
    if outcome.outcome == Outcome.RUN_REQUESTED:
        return f"{head}; it runs now."
    if outcome.outcome == Outcome.ENGINE_UNREACHABLE:
        return f"{head}; the engine is unreachable, so the schedule's next run carries it out."
    return f"{head}; it runs when the schedule next runs ({outcome.message})"


def reject_run(run: CleanupRun, user: Any) -> str:
    """Reject a held run and pause its schedule; raises DecisionRefused."""
    why = refusal(run, user)
    if why:
        raise DecisionRefused(why)
    now, name = timezone.now(), user.get_username()
    undecided = CleanupRun.objects.filter(
        pk=run.pk, status=Status.HELD, approved_at=None, rejected_at=None
    )
    if not undecided.update(rejected_by=name, rejected_at=now):
        raise DecisionRefused(f"Run {run.pk} was decided on meanwhile.")
    run.rejected_by, run.rejected_at = name, now
    _log(user, run, f"Rejected held run {run.pk}; the schedule is paused.")
    paused = pause_schedule(run.schedule)
    return f"Run {run.pk} of “{run.schedule}” rejected. {paused.message}"


def _log(user: Any, run: CleanupRun, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=[run],
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )
