"""This worker process as the run life cycle knows it: who it is, when it began, whether it is
stopping, and whether another worker is still alive."""

from __future__ import annotations

import functools
import os
import socket
import threading
import uuid
from datetime import datetime

from django.db import connections
from django.utils import timezone

from cleanups.contract import WorkerStopping
from cleanups.models import WorkerHeartbeat

# Set when runworker is asked to stop.
STOPPING = threading.Event()
# When this process began: a worker that was up at a slot's planned time and still ran it late
# was saturated ("late"), not down.
PROCESS_STARTED_AT = timezone.now()


def stop_if_stopping() -> None:
    if STOPPING.is_set():
        raise WorkerStopping("this worker is shutting down")


@functools.cache
def worker_id() -> str:
    """Who is running this activity: host, process and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def alive(worker: str) -> bool:
    if worker == worker_id():
        return True
    beat = WorkerHeartbeat.objects.filter(worker=worker).first()
    return beat is not None and not beat.seems_dead()


def wait_until(moment: datetime) -> None:
    """Sleep until the wall clock reads ``moment``; a worker asked to stop stops waiting
    (WorkerStopping: the engine delivers the run again)."""
    while True:
        now = timezone.now()
        if now >= moment:
            return
        if STOPPING.wait((moment - now).total_seconds()):
            stop_if_stopping()


def let_go_of_connections() -> None:
    """Close this thread's database connections but SQLite's: a file handle that no server
    counts, cheaper kept for the thread's next run than opened again."""
    for connection in connections.all(initialized_only=True):
        if connection.vendor != "sqlite":
            connection.close()
