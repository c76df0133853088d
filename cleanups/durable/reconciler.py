"""Makes the engine agree with the database: desired state "running" means a live orchestration.

This is what makes the embedded engine (state in memory) safe to restart, and what heals
instances lost or failed on the emulator or Azure.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timedelta

from django.db import DatabaseError, connections
from django.db.models import F
from django.utils import timezone

from cleanups import instances, metrics
from cleanups.conf import settings
from cleanups.control import start_orchestration, stop_for_its_cadence
from cleanups.durable.watchdog import Watchdog, mark_interrupted, newest_run, restart
from cleanups.instances import EngineUnavailable, Status, fetch_runtime_states, is_live
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
        # The watchdog's own observations: instance id -> (the engine's last update of it, when
        # this reconciler first saw that update as the latest, on its monotonic clock).
        self._unchanged_since: dict[str, tuple[datetime, float]] = {}
        # Running schedules the engine still reports suspended: instance id -> since when this
        # reconciler has been resuming them (monotonic clock).
        self._resuming_since: dict[str, float] = {}

    def tick(self) -> None:
        """One pass: heartbeat, dead workers' runs, then engine versus database."""
        metrics.reconciler_pass_began()
        try:
            self.beat()
            self.interrupt_dead_runs()
            self.reconcile()
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
        return mark_interrupted(CleanupRun.objects.running().filter(worker__in=dead))

    def reconcile(self) -> None:
        try:
            states = fetch_runtime_states()
        except EngineUnavailable as error:
            self._unchanged_since.clear()  # time the engine was away proves nothing stuck
            if not self._engine_was_down:
                logger.warning("reconciler: engine unreachable (%s); will keep trying", error)
            self._engine_was_down = True
            return
        if self._engine_was_down:
            logger.info("reconciler: engine reachable again")
        self._engine_was_down = False

        for schedule in CleanupSchedule.objects.alive():
            if self.stopping.is_set():
                return
            state = states.get(schedule.instance_id)
            if is_live(state):
                self._agree_on_suspension(schedule, state)
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
                continue
            why = "missing" if state is None else str(state.runtime_status).lower()
            if not self._ready_torestart(schedule):
                continue
            try:
                outcome = start_orchestration(schedule)
            except EngineUnavailable:
                return
            logger.info(
                "reconciler: schedule %s had %s orchestration: %s", schedule, why, outcome.message
            )
            metrics.reconciler_action("recovered" if failed else "started")

        self.restart_stuck(states)

        wanted_alive = set(CleanupSchedule.objects.alive().values_list("instance_id", flat=True))
        for instance_id, state in states.items():
            if self.stopping.is_set():
                return
            if is_live(state) and instance_id not in wanted_alive:
                logger.info("reconciler: terminating %s (schedule stopped or deleted)", instance_id)
                try:
                    instances.terminate_instance(instance_id, "schedule stopped")
                    metrics.reconciler_action("terminated")
                except Exception as error:  # keep reconciling the rest
                    logger.warning("reconciler: could not terminate %s: %s", instance_id, error)

    def _agree_on_suspension(self, schedule: CleanupSchedule, state: instances.State) -> None:
        """Paused means suspended and running means not: an engine can lose a suspend or a
        resume (the SDK's in-memory one drops a resume that comes during a step)."""
        paused = schedule.desired_state == CleanupSchedule.DesiredState.PAUSED
        suspended = state.runtime_status == Status.SUSPENDED
        if paused or not suspended:
            self._resuming_since.pop(schedule.instance_id, None)
        if paused == suspended:
            return
        # Read again just before acting: an operator may have changed it meanwhile.
        if not CleanupSchedule.objects.filter(
            pk=schedule.pk, desired_state=schedule.desired_state
        ).exists():
            return
        if not paused and self._resume_is_lost(schedule):
            return
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
            return
        logger.info("reconciler: %s %s", "suspended" if paused else "resumed", schedule)
        metrics.reconciler_action("suspended" if paused else "resumed")

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

    def shutdown(self) -> None:
        """A clean stop: our unfinished runs are interrupted, our heartbeat goes away."""
        try:
            mark_interrupted(CleanupRun.objects.running().filter(worker=self.worker))
            WorkerHeartbeat.objects.filter(worker=self.worker).delete()
        except DatabaseError as error:
            logger.warning("reconciler: could not record shutdown: %s", error)
        finally:
            connections.close_all()
