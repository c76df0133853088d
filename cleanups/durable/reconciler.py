"""Makes the engine agree with the database: desired state "running" means a live orchestration.

This is what makes the embedded engine (state in memory) safe to restart, and what heals
instances lost or failed on the emulator or Azure.

One worker reconciles at a time (durable.election); every worker beats. A pass looks at what
can have changed since the one before: schedules whose desired state, generation or definition
changed (``changed_at``), schedules overdue by more than the grace, and schedules whose runs a
worker left. It reads their instances by id. Every ``RECONCILE_SWEEP_SECONDS``, after the engine
was away, and when a worker begins to reconcile, a pass sweeps: every instance (one paged query)
against every schedule, for what nothing in the database says (an engine that lost instances).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from datetime import datetime, timedelta

from django.db import DatabaseError, connections
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.utils import timezone

from cleanups import instances, metrics
from cleanups.conf import settings
from cleanups.control import start_orchestration, stop_for_its_cadence
from cleanups.durable import election
from cleanups.durable.election import Election
from cleanups.durable.watchdog import Watchdog, mark_interrupted, newest_run
from cleanups.instances import (
    EngineUnavailable,
    State,
    Status,
    fetch_runtime_states,
    is_live,
    runtime_states,
)
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat

logger = logging.getLogger("cleanups.reconciler")
# Heartbeats of workers gone this long are forgotten (their runs count as dead either way).
HEARTBEAT_KEPT = timedelta(days=1)


class Reconciler(Watchdog):
    def __init__(
        self, worker: str, interval: float, stopping: threading.Event | None = None
    ) -> None:
        self.worker = worker
        self.interval = interval
        # Set when the worker shuts down: a pass in progress ends at the next schedule.
        self.stopping = stopping or threading.Event()
        # A worker that has not beaten for this long is dead, wherever it ran.
        self.stale_after = timedelta(seconds=max(30.0, interval * 6))
        self.hostname = socket.gethostname()
        self.started_at = timezone.now()
        self._engine_was_down = False
        self.backoff_cap = settings.RECOVERY_BACKOFF_MAX_SECONDS
        self.election = Election(worker, interval)
        self.sweep_seconds = settings.RECONCILE_SWEEP_SECONDS
        self._last_sweep: float | None = None  # monotonic; None: the next pass sweeps
        self._last_pass_began: datetime | None = None
        self._left: set[int] = set()  # schedules whose runs this pass found left by a worker
        # Schedules a pass had to leave for later (a run still executing, a recovery backing
        # off, an engine call that failed): the next pass looks at them again.
        self._again: set[int] = set()
        # Schedules whose instance a pass saw live: when (monotonic clock). An overdue one is
        # read again after this long (the watchdog's grace is counted from what it saw).
        self._seen_live: dict[int, float] = {}
        self.recheck_seconds: float | None = None  # None: from the grace, at each pass
        # The watchdog's own observations: instance id -> (the engine's last update of it, when
        # this reconciler first saw that update as the latest, on its monotonic clock).
        self._unchanged_since: dict[str, tuple[datetime, float]] = {}
        # Running schedules the engine still reports suspended: instance id -> since when this
        # reconciler has been resuming them (monotonic clock).
        self._resuming_since: dict[str, float] = {}

    def tick(self) -> None:
        """One pass: heartbeat; then, if this worker reconciles, dead workers' runs and engine
        versus database."""
        metrics.reconciler_pass_began()
        try:
            self.beat()
            if self.election.try_lead():
                self.interrupt_dead_runs()
                self.reconcile()
            else:
                self._forget()
        except DatabaseError as error:
            logger.warning("reconciler: database error, will retry: %s", error)
        finally:
            connections.close_all()
            metrics.reconciler_pass_ended()

    def beat(self) -> None:
        now = timezone.now()
        WorkerHeartbeat.objects.filter(last_seen__lt=now - HEARTBEAT_KEPT).delete()
        WorkerHeartbeat.objects.update_or_create(
            worker=self.worker,
            defaults={
                "hostname": self.hostname,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "last_seen": now,
            },
        )

    def _worker_is_dead(self, worker: str, heartbeats: dict[str, WorkerHeartbeat]) -> bool:
        if worker == self.worker:
            return False
        beat = heartbeats.get(worker)
        # Same machine: no need to wait for the heartbeat to go stale.
        return beat is None or beat.seems_dead(self.stale_after)

    def interrupt_dead_runs(self) -> int:
        running = list(CleanupRun.objects.running().values_list("worker", flat=True).distinct())
        if not running:
            return 0
        heartbeats = {b.worker: b for b in WorkerHeartbeat.objects.filter(worker__in=running)}
        dead = [worker for worker in running if self._worker_is_dead(worker, heartbeats)]
        if not dead:
            return 0
        left = CleanupRun.objects.running().filter(worker__in=dead)
        self._left.update(left.values_list("schedule_id", flat=True))
        return mark_interrupted(left)

    def _forget(self) -> None:
        """Not reconciling: what this worker saw while it did is stale by the time it does
        again (its first pass then sweeps)."""
        self._last_sweep = self._last_pass_began = None
        self._unchanged_since.clear()
        self._resuming_since.clear()
        self._left.clear()
        self._again.clear()
        self._seen_live.clear()

    def _sweep_due(self) -> bool:
        # A sweep is recorded with its pass, so between sweeps the last pass is known.
        return self._last_sweep is None or time.monotonic() - self._last_sweep >= self.sweep_seconds

    def _looked_at(self) -> list[CleanupSchedule]:
        """What can have changed since the last pass. Changes are read back to an interval
        before that pass began: a change committed while it ran, or written by a machine whose
        clock is a little behind, is not missed. A schedule that is only overdue, and whose
        instance a pass saw live lately, is read again once ``recheck_seconds`` went by (a
        quarter of the watchdog's grace): a saturated fleet is overdue all over, and reading
        every late instance every pass costs the engine more than the runs do."""
        assert self._last_pass_began is not None
        now = timezone.now()
        since = self._last_pass_began - timedelta(seconds=self.interval)
        grace = min(settings.MISSED_RUN_GRACE_SECONDS, settings.STUCK_RUN_GRACE_SECONDS)
        overdue = Q(desired_state=CleanupSchedule.DesiredState.RUNNING) & Q(
            next_run_at__lt=now - timedelta(seconds=grace)
        )
        # Runs waiting for their next part or a retry: their orchestration must still be there.
        waiting = CleanupRun.objects.running().filter(
            finished_at__lt=now - timedelta(seconds=grace)
        )
        left = Q(pk__in=self._left | self._again) | Q(pk__in=waiting.values("schedule_id"))
        # Resumed while the engine still says suspended: watched until it agrees (or restarted).
        resuming = Q(instance_id__in=list(self._resuming_since))
        wanted = Q(changed_at__gte=since) | left | resuming
        candidates = CleanupSchedule.objects.filter(wanted | overdue).annotate(
            wanted=ExpressionWrapper(wanted, output_field=BooleanField())
        )
        recheck = self.recheck_seconds
        if recheck is None:
            recheck = max(self.interval, settings.STUCK_RUN_GRACE_SECONDS / 4)
        recently = time.monotonic() - recheck
        return [
            schedule
            for schedule in candidates
            if schedule.wanted or self._seen_live.get(schedule.pk, -math.inf) < recently
        ]

    def _read_states(self) -> tuple[bool, list[CleanupSchedule], dict[str, State | None]]:
        """(a sweep?, the schedules this pass looks at, their instances' states). Raises
        EngineUnavailable."""
        asked = election.sweep_asked()
        if asked is not None or self._sweep_due():
            states = dict(fetch_runtime_states())
            if asked is not None:
                election.sweep_begun(asked)
            return True, list(CleanupSchedule.objects.alive()), states
        schedules = self._looked_at()
        return False, schedules, runtime_states([s.instance_id for s in schedules])

    def reconcile(self) -> None:
        began = timezone.now()
        try:
            sweep, schedules, states = self._read_states()
        except EngineUnavailable as error:
            self._unchanged_since.clear()  # time the engine was away proves nothing stuck
            self._seen_live.clear()  # nor that anything is still there
            self._last_sweep = None  # it may have lost instances meanwhile
            if not self._engine_was_down:
                logger.warning("reconciler: engine unreachable (%s); will keep trying", error)
            self._engine_was_down = True
            return
        if self._engine_was_down:
            logger.info("reconciler: engine reachable again")
        self._engine_was_down = False
        if self._act_on(sweep, schedules, states):
            self._left.clear()
            self._last_pass_began = began
            if sweep:
                self._last_sweep = time.monotonic()
        elif sweep:
            self._last_sweep = None  # a sweep that ended early is done again

    def _act_on(
        self, sweep: bool, schedules: list[CleanupSchedule], states: dict[str, State | None]
    ) -> bool:
        """Make the engine agree for these schedules; False if the pass ended early."""
        again: set[int] = set()
        done = self._agree(sweep, schedules, states, again)
        # Left for later: looked at by the next pass, even between sweeps.
        self._again = (self._again | again) if not done else again
        return done

    def _agree(
        self,
        sweep: bool,
        schedules: list[CleanupSchedule],
        states: dict[str, State | None],
        again: set[int],
    ) -> bool:
        for schedule in schedules:
            if self.stopping.is_set() or self.election.deposed.is_set():
                return False
            if schedule.desired_state == CleanupSchedule.DesiredState.STOPPED:
                continue  # ended below
            state = states.get(schedule.instance_id)
            if is_live(state):
                self._seen_live[schedule.pk] = time.monotonic()
                if not self._agree_on_suspension(schedule, state):
                    again.add(schedule.pk)
                continue
            if schedule.desired_state != CleanupSchedule.DesiredState.RUNNING:
                # Paused with no orchestration: resuming starts one. A run that waited for a
                # retry (or its next part) from the lost one waits for nothing now.
                mark_interrupted(
                    CleanupRun.objects.running().filter(
                        schedule=schedule, finished_at__isnull=False
                    ),
                    "Its orchestration was lost (engine restarted) while the run waited for "
                    "a retry or its next part.",
                )
                continue
            # Read again just before acting: an operator may have stopped it meanwhile.
            if not CleanupSchedule.objects.should_run().filter(pk=schedule.pk).exists():
                continue
            problem = schedule.next_run_problem()
            if problem:
                # Started again it would only fail again: stopped, with why, until it is fixed.
                stop_for_its_cadence(schedule, problem)
                logger.warning("reconciler: schedule %s stopped: %s", schedule, problem)
                metrics.reconciler_action("stopped")
                continue
            failed = state is not None and state.runtime_status == Status.FAILED
            if failed and not self._due_for_recovery(schedule, state):
                again.add(schedule.pk)
                continue
            why = "missing" if state is None else str(state.runtime_status).lower()
            if not self._ready_torestart(schedule):
                again.add(schedule.pk)  # its run finishes first
                continue
            try:
                outcome = start_orchestration(schedule)
            except EngineUnavailable:
                return False
            logger.info(
                "reconciler: schedule %s had %s orchestration: %s", schedule, why, outcome.message
            )
            metrics.reconciler_action("recovered" if failed else "started")

        self.restart_stuck(states)

        # Live instances of schedules stopped (or, seen in a sweep, deleted) are ended.
        if sweep:
            wanted_alive = set(
                CleanupSchedule.objects.alive().values_list("instance_id", flat=True)
            )
        else:
            wanted_alive = {
                s.instance_id
                for s in schedules
                if s.desired_state != CleanupSchedule.DesiredState.STOPPED
            }
        for instance_id, state in states.items():
            if self.stopping.is_set():
                return False
            if is_live(state) and instance_id not in wanted_alive:
                logger.info("reconciler: terminating %s (schedule stopped or deleted)", instance_id)
                try:
                    instances.terminate_instance(instance_id, "schedule stopped")
                    metrics.reconciler_action("terminated")
                except Exception as error:  # keep reconciling the rest
                    logger.warning("reconciler: could not terminate %s: %s", instance_id, error)
        return True

    def _agree_on_suspension(self, schedule: CleanupSchedule, state: instances.State) -> bool:
        """Paused means suspended and running means not: an engine can lose a suspend or a
        resume (the SDK's in-memory one drops a resume that comes during a step). False if the
        engine did not take the suspend or resume (the next pass tries again)."""
        paused = schedule.desired_state == CleanupSchedule.DesiredState.PAUSED
        suspended = state.runtime_status == Status.SUSPENDED
        if paused or not suspended:
            self._resuming_since.pop(schedule.instance_id, None)
        if paused == suspended:
            return True
        # Read again just before acting: an operator may have changed it meanwhile.
        if not CleanupSchedule.objects.filter(
            pk=schedule.pk, desired_state=schedule.desired_state
        ).exists():
            return True  # changed: its changed_at brings it to the next pass
        if not paused and self._resume_is_lost(schedule):
            return True
        try:
            if paused:
                instances.suspend(schedule, "schedule paused")
            else:
                instances.resume(schedule, "schedule running")
        except Exception as error:  # the next pass tries again
            logger.warning(
                "reconciler: could not %s %s: %s",
                "suspend" if paused else "resume",
                schedule,
                error,
            )
            return False
        logger.info("reconciler: %s %s", "suspended" if paused else "resumed", schedule)
        metrics.reconciler_action("suspended" if paused else "resumed")
        return True

    def _ready_torestart(self, schedule: CleanupSchedule) -> bool:
        """Before a new orchestration: a run still executing on a live worker finishes first
        (and plans the next run); runs nobody executes any more (between parts, waiting for a
        retry that their lost orchestration would have sent) are interrupted. (The plan of an
        interrupted run stays: past, so the missed-run policy runs it again at once.)"""
        running, on_live_workers = self._running_runs(schedule)
        if any(run.finished_at is None for run in on_live_workers):
            return False
        if running:
            mark_interrupted(
                CleanupRun.objects.filter(pk__in=[r.pk for r in running]),
                "Its orchestration was lost (engine restarted) before the run finished.",
            )
        # A run records its outcome, then plans the next run: between the two, the plan on the
        # row is that run's own. Wait for the new plan (a few seconds at most), unless the
        # run's worker died in between: then nobody will write it.
        schedule.refresh_from_db()
        newest = newest_run(schedule)
        planning = (
            newest is not None
            and newest.status != CleanupRun.Status.INTERRUPTED
            and newest.planned_at is not None
            and schedule.next_run_at is not None
            and schedule.next_run_at <= newest.planned_at
            and newest.finished_at is not None
            and newest.finished_at > timezone.now() - timedelta(seconds=10)
        )
        if planning:
            heartbeats = {b.worker: b for b in WorkerHeartbeat.objects.filter(worker=newest.worker)}
            planning = not self._worker_is_dead(newest.worker, heartbeats)
        return not planning

    def _running_runs(self, schedule: CleanupSchedule) -> tuple[list[CleanupRun], list[CleanupRun]]:
        """The schedule's runs marked running, and those of them on a live worker."""
        running = list(CleanupRun.objects.running().filter(schedule=schedule))
        heartbeats = {
            b.worker: b
            for b in WorkerHeartbeat.objects.filter(worker__in=[r.worker for r in running])
        }
        return running, [r for r in running if not self._worker_is_dead(r.worker, heartbeats)]

    def shutdown(self) -> None:
        """A clean stop: our unfinished runs are interrupted, our heartbeat goes away, and the
        lease, if we held it, is free for the next worker at once."""
        try:
            mark_interrupted(CleanupRun.objects.running().filter(worker=self.worker))
            WorkerHeartbeat.objects.filter(worker=self.worker).delete()
            self.election.resign()
        except DatabaseError as error:
            logger.warning("reconciler: could not record shutdown: %s", error)
        finally:
            connections.close_all()
