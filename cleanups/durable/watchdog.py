"""The watchdog: a live orchestration that waits for something nobody will send is restarted,
its count going on. And what the reconciler and the watchdog share about lost runs."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from django.db.models import F, QuerySet
from django.utils import timezone

from cleanups import alerts, instances, metrics
from cleanups.conf import settings
from cleanups.control import start_orchestration
from cleanups.instances import EngineUnavailable, State, Status
from cleanups.models import CleanupRun, CleanupSchedule

logger = logging.getLogger("cleanups.reconciler")
# The watchdog restarts at most this many schedules a pass: a worker lost with its steps
# strands a few, a backlog (a herd on a busy machine) makes hundreds look stuck at once, and
# restarting those would only add to it. The rest wait for the next pass, checked afresh.
STUCK_RESTARTS_PER_PASS = 20


class Watchdog:
    """Mixed into the Reconciler: its pass ends with ``restart_stuck``."""

    stopping: threading.Event
    backoff_cap: float
    _unchanged_since: dict[str, tuple[datetime, float]]
    _resuming_since: dict[str, float]

    def _running_runs(self, schedule: CleanupSchedule) -> tuple[list[CleanupRun], list[CleanupRun]]:
        raise NotImplementedError

    def _due_for_recovery(self, schedule: CleanupSchedule, state: instances.State) -> bool:
        """A failed orchestration (a bug, a lost activity: not a failed cleanup) is recorded
        and started again after 5 s, 10 s, 20 s ... (capped), while the admin says recovering."""
        now = timezone.now()
        if schedule.recovering_since is not None:
            wait = min(5.0 * 2 ** max(schedule.recover_attempts - 1, 0), self.backoff_cap)
            if now < schedule.recovering_since + timedelta(seconds=wait):
                return False
        error = state.failure_details.message if state.failure_details else "unknown failure"
        CleanupSchedule.objects.filter(pk=schedule.pk).update(
            recovering_since=now,
            recover_attempts=F("recover_attempts") + 1,
            last_error=f"Orchestration failed: {error}",
            status_reason="Recovering: the orchestration failed and is being restarted.",
        )
        logger.warning("reconciler: orchestration of %s failed (%s); restarting", schedule, error)
        return True

    def _resume_is_lost(self, schedule: CleanupSchedule) -> bool:
        """A running schedule that its engine still reports suspended after resumes for
        STUCK_RUN_GRACE_SECONDS: its orchestration is restarted, its count going on (an engine
        can lose a resume; the embedded one did under freezes). True if it was."""
        first = self._resuming_since.setdefault(schedule.instance_id, time.monotonic())
        if time.monotonic() - first < settings.STUCK_RUN_GRACE_SECONDS:
            return False
        del self._resuming_since[schedule.instance_id]
        if not restart(schedule, "its resume was lost"):
            return True
        CleanupSchedule.objects.filter(pk=schedule.pk).update(
            status_reason="Restarted: the engine kept it suspended although it was resumed."
        )
        logger.warning("reconciler: schedule %s restarted: its resume was lost", schedule)
        return True

    def restart_stuck(self, states: dict[str, State]) -> int:
        """The watchdog: a live orchestration that is overdue by STUCK_RUN_GRACE_SECONDS, that
        the engine has not touched for as long, and whose schedule has no run executing on a
        live worker, waits for something nobody will send (its run's worker died, a step was
        lost with a worker). It is restarted, its count going on, and its overdue run follows
        the missed-run policy. (An engine that redelivers does so first.)

        "Untouched for as long" is what this reconciler saw itself, pass after pass with the
        engine answering: an engine frozen, restarting or busy with a backlog leaves every
        instance untouched for a while, and that is not stuck."""
        grace = timedelta(seconds=settings.STUCK_RUN_GRACE_SECONDS)
        cutoff = timezone.now() - grace
        overdue = CleanupSchedule.objects.should_run().filter(next_run_at__lt=cutoff)
        restarted = held_back = 0
        observed: dict[str, tuple[datetime, float]] = {}
        for schedule in overdue:
            if self.stopping.is_set():
                break
            state = states.get(schedule.instance_id)
            if (
                state is None
                or state.runtime_status not in (Status.RUNNING, Status.PENDING)
                or state.last_updated_at.replace(tzinfo=UTC) > cutoff
            ):
                continue
            seen = self._unchanged_since.get(schedule.instance_id)
            if seen is None or seen[0] != state.last_updated_at:
                seen = (state.last_updated_at, time.monotonic())
            observed[schedule.instance_id] = seen
            if time.monotonic() - seen[1] < grace.total_seconds():
                continue
            if self._running_runs(schedule)[1]:
                continue  # executing, between parts or waiting for a retry: not stuck
            if restarted >= STUCK_RESTARTS_PER_PASS:
                held_back += 1
                continue
            if not still_due(schedule, states.get(schedule.instance_id)):
                continue
            newest = newest_run(schedule)
            if newest is not None and newest.status == CleanupRun.Status.INTERRUPTED:
                reason = (
                    f"Restarted: run {newest.iteration} was interrupted (its worker stopped) and "
                    f"not redelivered within {grace.total_seconds():g} s."
                )
            else:
                reason = (
                    f"Restarted: its orchestration made no progress for {grace.total_seconds():g} "
                    "s past the planned run (a step lost with a worker)."
                )
            CleanupSchedule.objects.filter(pk=schedule.pk).update(status_reason=reason)
            if not restart(schedule, "its run was lost"):
                continue
            logger.warning("reconciler: schedule %s: %s", schedule, reason)
            lost = newest if newest and newest.status == CleanupRun.Status.INTERRUPTED else None
            alerts.send(alerts.STUCK, schedule, lost, error=reason)
            observed.pop(schedule.instance_id, None)
            restarted += 1
        self._unchanged_since = observed
        if held_back:
            logger.warning(
                "reconciler: %d more schedules look stuck; restarting at most %d a pass (so many "
                "at once is more often a backlog than lost steps, and it may clear itself)",
                held_back,
                STUCK_RESTARTS_PER_PASS,
            )
        return restarted


def newest_run(schedule: CleanupSchedule) -> CleanupRun | None:
    return schedule.runs.exclude(status=CleanupRun.Status.SKIPPED).order_by("-iteration").first()


def mark_interrupted(
    runs: QuerySet[CleanupRun],
    error: str = "The worker running this iteration stopped before it finished.",
) -> int:
    now = timezone.now()
    count = runs.update(status=CleanupRun.Status.INTERRUPTED, finished_at=now, error=error)
    if count:
        logger.warning("reconciler: marked %d run(s) of dead workers interrupted", count)
    metrics.reconciler_action("interrupted", count)
    return count


def still_due(schedule: CleanupSchedule, seen: State | None) -> bool:
    """Just before the watchdog restarts it: the schedule is still meant to run, in the same
    generation (no operator action since this pass read it: a pass may take a while), and the
    engine still has its orchestration where the pass saw it (no progress since)."""
    if not (
        CleanupSchedule.objects.should_run()
        .filter(pk=schedule.pk, generation=schedule.generation)
        .exists()
    ):
        return False
    try:
        now = instances.state_of(schedule)
    except EngineUnavailable:
        return False
    return (
        now is not None
        and seen is not None
        and now.runtime_status == seen.runtime_status
        and now.last_updated_at == seen.last_updated_at
    )


def restart(schedule: CleanupSchedule, why: str) -> bool:
    """End the schedule's orchestration and start it again, its count going on; False (and a
    warning) if the engine would not: the next pass tries again."""
    try:
        instances.end_orchestration(schedule, why, timeout=10)
        start_orchestration(schedule)
    except Exception as error:
        logger.warning("reconciler: could not restart %s: %s", schedule, error)
        return False
    metrics.reconciler_action("restarted")
    return True
