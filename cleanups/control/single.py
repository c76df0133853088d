"""Schedule control, one schedule at a time: write the desired state first, then ask the engine.

An engine that cannot be reached is an outcome, not an exception: the desired state is
already recorded and runworker's reconciler finishes the job once the engine is back.
"""

from __future__ import annotations

from django.utils import timezone

from cleanups import instances
from cleanups.cadence import UncomputableRun
from cleanups.control.common import (
    ENDED_BETWEEN_ATTEMPTS,
    PAUSED,
    RUNNING,
    STOPPED,
    first_run,
    interrupt_waiting_runs,
    new_generation,
    refuse_if_it_cannot_run,
    restart_orchestration,
    set_desired_state,
    start_generation,
    stop_for_its_cadence,
    terminated_reason,
)
from cleanups.control.outcomes import ControlOutcome, Outcome, already_running, unreachable
from cleanups.instances import EngineUnavailable
from cleanups.models import CleanupSchedule
from cleanups.runs.missed import record_overdue_slots


def start_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule running and start its orchestration unless one is already live.

    The fresh start's bookkeeping (anchor, start_iteration, first run, a new generation) is
    written with the desired state in one UPDATE before the engine call, so a reconciler pass
    that reaches the engine first starts exactly this start, and it is reported as STARTED.
    """
    if schedule.desired_state == PAUSED:
        return resume_schedule(schedule)  # its orchestration keeps its place
    if refused := refuse_if_it_cannot_run(schedule):
        return refused
    try:
        state = instances.state_of(schedule)
    except EngineUnavailable:
        state = None
    if instances.is_live(state) and schedule.is_alive:
        set_desired_state(schedule, RUNNING)
        return already_running(schedule)
    try:
        first = first_run(schedule)
    except UncomputableRun as error:
        return stop_for_its_cadence(schedule, f"cannot compute the next run: {error}")
    new_generation(
        schedule,
        desired_state=RUNNING,
        start_iteration=schedule.next_iteration(),
        next_run_at=first,
        anchor_at=first,
        status_reason="",
        recover_attempts=0,
        recovering_since=None,
    )
    try:
        return start_generation(schedule, trigger="scheduled")
    except EngineUnavailable:
        return unreachable(schedule, "running")


def terminate_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Mark the schedule stopped and terminate its orchestration if it is live."""
    before = CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule
    new_generation(
        schedule, desired_state=STOPPED, next_run_at=None, status_reason=terminated_reason()
    )
    record_overdue_slots(before)
    interrupt_waiting_runs([schedule.pk], ENDED_BETWEEN_ATTEMPTS)
    try:
        if not instances.terminate_if_live(schedule):
            return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” was not running.")
    except EngineUnavailable:
        return unreachable(schedule, "stopped")
    return ControlOutcome(schedule, Outcome.TERMINATED, f"“{schedule}” terminated.")


def pause_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Suspend the schedule's orchestration; it keeps its place and resumes where it was."""
    if schedule.desired_state == STOPPED:
        return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not running.")
    record_overdue_slots(CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule)
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=PAUSED, paused_at=timezone.now(), status_reason="Paused by an operator."
    )
    schedule.desired_state = PAUSED
    interrupt_waiting_runs([schedule.pk])
    try:
        instances.suspend_if_live(schedule)
    except EngineUnavailable:
        return unreachable(schedule, "paused")
    return ControlOutcome(schedule, Outcome.PAUSED, f"“{schedule}” paused.")


def resume_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Resume a paused schedule; slots missed while paused follow the missed-run policy."""
    if schedule.desired_state != PAUSED:
        return ControlOutcome(schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not paused.")
    if refused := refuse_if_it_cannot_run(schedule):
        return refused
    now = timezone.now()
    CleanupSchedule.objects.filter(pk=schedule.pk).update(
        desired_state=RUNNING,
        resumed_at=now,
        status_reason="",
        consecutive_failures=0,
        failure_notified=False,
    )
    schedule.desired_state = RUNNING
    schedule.resumed_at = now
    try:
        instances.resume_or_start(schedule)
    except EngineUnavailable:
        return unreachable(schedule, "running")
    return ControlOutcome(schedule, Outcome.RESUMED, f"“{schedule}” resumed.")


def run_now(schedule: CleanupSchedule, user: str = "") -> ControlOutcome:
    """One extra run right away, without moving the schedule's next run."""
    if schedule.desired_state != RUNNING:
        return ControlOutcome(
            schedule, Outcome.NOT_RUNNING, f"“{schedule}” is not running; start or resume it first."
        )
    if refused := refuse_if_it_cannot_run(schedule):
        return refused
    try:
        if not instances.is_live(instances.state_of(schedule)):
            return ControlOutcome(
                schedule, Outcome.NOT_RUNNING, f"“{schedule}” has no live orchestration yet."
            )
        instances.raise_run_now(schedule, user)
    except EngineUnavailable:
        return unreachable(schedule, "running")
    return ControlOutcome(schedule, Outcome.RUN_REQUESTED, f"“{schedule}”: run requested.")


def restart_schedule(schedule: CleanupSchedule) -> ControlOutcome:
    """Terminate the orchestration and start a fresh one (new history, the count going on):
    it runs at once, then on its cadence."""
    if refused := refuse_if_it_cannot_run(schedule):
        return refused
    # next_run_at now: a reconciler pass that starts this generation first runs it at once too.
    before = CleanupSchedule.objects.filter(pk=schedule.pk).first() or schedule
    new_generation(schedule, desired_state=RUNNING, next_run_at=timezone.now())
    record_overdue_slots(before)
    interrupt_waiting_runs([schedule.pk], ENDED_BETWEEN_ATTEMPTS)
    try:
        outcome = restart_orchestration(schedule)
    except (EngineUnavailable, TimeoutError):
        return unreachable(schedule, "running")
    if outcome.outcome is not Outcome.STARTED:
        return outcome
    return ControlOutcome(schedule, Outcome.STARTED, f"“{schedule}” restarted.")
