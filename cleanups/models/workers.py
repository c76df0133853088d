"""A worker process's heartbeat."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from django.db import models
from django.utils import timezone

from cleanups.conf import settings


class WorkerHeartbeat(models.Model):
    """A runworker process that is (or was) alive: lets others tell a dead worker's runs."""

    worker = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.worker

    def seems_dead(self, stale_after: timedelta | None = None) -> bool:
        """Not beaten for ``stale_after`` (default: six reconcile intervals, at least 30 s), or
        on this machine with its process gone."""
        if stale_after is None:
            stale_after = timedelta(seconds=max(30.0, settings.RECONCILE_INTERVAL * 6))
        if self.last_seen < timezone.now() - stale_after:
            return True
        return self.hostname == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ReconcilerLease(models.Model):
    """Which worker reconciles: one at a time, whatever the number of workers. The holder renews
    it while it lives; a worker that finds it expired takes it over (see durable.election)."""

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.CharField(max_length=200, help_text="The worker (WorkerHeartbeat.worker).")
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    sweep_asked_at = models.DateTimeField(
        null=True,
        help_text="A worker started an embedded engine (new, empty) then: the reconciler's next "
        "pass sweeps, and clears it.",
    )

    def __str__(self) -> str:
        return f"{self.name}: {self.holder}"
