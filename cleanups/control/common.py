"""What the single and the bulk actions share: the desired-state writes and their reasons."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Case, F, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from cleanups import instances
from cleanups.conf import settings
from cleanups.control.outcomes import ControlOutcome, Outcome, already_running, started
from cleanups.models import CleanupRun, CleanupSchedule

RUNNING = CleanupSchedule.DesiredState.RUNNING
PAUSED = CleanupSchedule.DesiredState.PAUSED
STOPPED = CleanupSchedule.DesiredState.STOPPED

# Why a schedule is stopped, once an operator ended it (an earlier "Paused by an operator." or
# failure reason would otherwise stay on it).
TERMINATED_BY_OPERATOR = "Terminated by an operator."
PAUSED_BETWEEN_ATTEMPTS = (
    "Paused while it waited for a retry or its next part; it goes on when resumed."
)
ENDED_BETWEEN_ATTEMPTS = (
    "Its orchestration was ended (restart or terminate) while it waited for a retry or its "
    "next part."
)


def terminated_reason() -> Any:
    """The reason a terminate leaves: the operator's, unless the schedule was stopped already
    (then its own, "Completed after ..." say, stays). SQL reads the row as it was before."""
    return Case(
        When(~Q(desired_state=STOPPED), then=Value(TERMINATED_BY_OPERATOR)),
        default=F("status_reason"),
    )


def first_run(schedule: CleanupSchedule) -> datetime:
    """A fresh start runs at once, or at start_at; a cron schedule at its first time after."""
    now = timezone.now()
    first = schedule.start_at if schedule.start_at and schedule.start_at > now else now
    if schedule.cadence == CleanupSchedule.Cadence.CRON:
        return schedule.cadence_rule().next_after(first)
    return schedule.cadence_rule().into_window(first)


def new_generation(schedule: CleanupSchedule, **fields: Any) -> None:
    """An operator action: its fields and a new generation in one UPDATE. An orchestration of
    an older generation stops before its next run (the activity compares)."""
    CleanupSchedule.objects.filter(pk=schedule.pk).update(generation=F("generation") + 1, **fields)
    schedule.refresh_from_db()


def start_orchestration(
    schedule: CleanupSchedule, *, trigger: str = "scheduled", known_not_live: bool = False
) -> ControlOutcome:
    """instances.start_orchestration, told as an outcome: STARTED when the schedule's own
    generation is live now, ALREADY_RUNNING when another one is. Raises EngineUnavailable."""
    ours, iteration = instances.start_orchestration(
        schedule, trigger=trigger, known_not_live=known_not_live
    )
    return started(schedule, iteration) if ours else already_running(schedule)


def start_generation(schedule: CleanupSchedule, trigger: str) -> ControlOutcome:
    """Start the schedule's current generation (the caller found none live), replacing a live
    orchestration of an older one (an action that raced this one and lost: the last operator
    action wins)."""
    outcome = start_orchestration(schedule, trigger=trigger, known_not_live=True)
    if outcome.outcome is Outcome.ALREADY_RUNNING:
        instances.end_orchestration(schedule, "superseded by a newer start")
        outcome = start_orchestration(schedule, trigger=trigger)
    return outcome


def restart_orchestration(schedule: CleanupSchedule) -> ControlOutcome:
    ours, iteration = instances.restart_orchestration(schedule)
    return started(schedule, iteration) if ours else already_running(schedule)


def stop_for_its_cadence(schedule: CleanupSchedule, problem: str) -> ControlOutcome:
    """Record a schedule whose next run cannot be computed as stopped, with why. Never started
    again until an operator fixes it; the reconciler ends an orchestration still live."""
    schedule.stop_because(problem)
    return ControlOutcome(
        schedule,
        Outcome.REFUSED,
        f"“{schedule}” cannot run: {problem}. Fix its cadence, then start it again.",
    )


def refuse_if_it_cannot_run(schedule: CleanupSchedule) -> ControlOutcome | None:
    """A definition that cannot work (edited behind validation's back, or a cron library that
    changed its mind) is stopped with the reason instead of started: it would only fail."""
    problem = schedule.next_run_problem()
    return stop_for_its_cadence(schedule, problem) if problem else None


def split_refused(
    schedules: list[CleanupSchedule],
) -> tuple[list[CleanupSchedule], list[CleanupSchedule]]:
    """Those that can run, and those stopped (with why) because their next run cannot be
    computed."""
    fine, refused = [], []
    for schedule in schedules:
        (refused if refuse_if_it_cannot_run(schedule) else fine).append(schedule)
    return fine, refused


def set_desired_state(schedule: CleanupSchedule, desired: str) -> None:
    schedule.desired_state = desired
    fields: dict[str, object] = {"desired_state": desired}
    if desired == STOPPED:
        schedule.next_run_at = None
        fields["next_run_at"] = None
    CleanupSchedule.objects.filter(pk=schedule.pk).update(**fields)


def interrupt_waiting_runs(pks: list[int], why: str = PAUSED_BETWEEN_ATTEMPTS) -> None:
    """A run between two attempts (or two parts) is not running: its orchestration is paused,
    and its record is reused when it goes on; or ended, and nothing will come for it."""
    CleanupRun.objects.running().filter(schedule__in=pks, finished_at__isnull=False).update(
        status=CleanupRun.Status.INTERRUPTED, error=why
    )


def overdue(queryset: QuerySet[CleanupSchedule]) -> list[CleanupSchedule]:
    """Running schedules whose planned run is overdue (read before an action changes them)."""
    cutoff = timezone.now() - timedelta(seconds=settings.MISSED_RUN_GRACE_SECONDS)
    return list(queryset.filter(desired_state=RUNNING, next_run_at__lt=cutoff))


def next_iterations() -> Any:
    """Each schedule's next iteration, as SQL (schedule.next_iteration() for a queryset)."""
    newest = Subquery(
        CleanupRun.objects.filter(schedule=OuterRef("pk"))
        .order_by("-iteration")
        .values("iteration")[:1]
    )
    return Greatest(F("current_iteration"), Coalesce(newest, Value(0))) + 1
