"""What bounds a run so that the database it shares with the site stays kind: its row cap (a
bigger backlog goes oldest first, over several runs), its window, its pace, its VACUUM."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from cleanups.cadence import window_of
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs import worker
from cleanups.tasks.context import CleanupContext
from cleanups.tasks.pacing import Pacer


def bound(
    cleanup: CleanupContext, schedule: CleanupSchedule, run: CleanupRun, deadline: str | None
) -> None:
    """Set the run's row cap, window, run end, pacer and VACUUM on its context."""
    if run.dry_run:
        return  # a dry run only counts
    cleanup.row_cap = schedule.row_limit or None
    cleanup.vacuum = schedule.vacuum
    cleanup.check_stop = worker.stop_if_stopping
    window = window_of(schedule)
    if window is not None and run.trigger != CleanupRun.Trigger.MANUAL:
        # A person's "run now" runs when asked; a scheduled run only inside its window (one
        # that comes outside it, late, deletes nothing: the next run waits for the window).
        now = timezone.now()
        cleanup.window_closes = window.closing(now, ZoneInfo(schedule.timezone)) or now
    if deadline:
        left = (datetime.fromisoformat(deadline) - timezone.now()).total_seconds()
        cleanup.run_ends = time.monotonic() + left
    pacer = Pacer(DEFAULT_DB_ALIAS, rows_per_second=schedule.max_rows_per_second)
    cleanup.pacer = pacer if pacer.active else None
