"""Alert delivery, off the run's critical path: ``send`` only queues; a few daemon threads of the
process deliver, each URL with its own time-out and retries (the webhook client's), and record
each outcome (``AlertDelivery``, the newest few per schedule). Nothing here ever raises into a
run, delays the next one or stops a schedule."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from cleanups.alerts.events import body_for, payload
from cleanups.conf import settings
from cleanups.models import AlertDelivery, CleanupRun, CleanupSchedule
from cleanups.webhooks import Delivery, deliver, redact

logger = logging.getLogger("cleanups.alerts")

# Delivery records kept per schedule (the newest); older ones are deleted as new ones come.
DELIVERIES_KEPT = 50
# Delivery threads: each URL always goes to the same one, so its alerts arrive in order (a
# failure streak's start before its recovery) while other URLs go on.
THREADS = 4
# Alerts waiting for each thread; more are dropped (and logged), never waited for.
QUEUE_SIZE = 250
# How long a worker that exits waits for the alerts still queued (s).
EXIT_FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class _Job:
    event: str
    schedule_id: int
    schedule_name: str
    run_pk: int | None
    iteration: int | None
    url: str
    site_wide: bool
    body: dict[str, Any]


_queues: list[queue.Queue[_Job]] = []
_start_lock = threading.Lock()
_idle = threading.Condition()
_pending = 0


def targets(schedule: CleanupSchedule) -> list[tuple[str, bool]]:
    """Where a schedule's alerts go: (url, site-wide) for its own webhooks and the site's, each
    URL once (a URL in both is the site's, so trusted)."""
    found: dict[str, bool] = {}
    for url in settings.ALERT_WEBHOOKS or []:
        if isinstance(url, str) and url.strip():
            found[url.strip()] = True
    for url in schedule.alert_webhooks or []:
        if isinstance(url, str) and url.strip():
            found.setdefault(url.strip(), False)
    return list(found.items())


def send(
    event: str,
    schedule: CleanupSchedule,
    run: CleanupRun | None = None,
    *,
    error: str = "",
    failures: int | None = None,
) -> None:
    """Queue the alert for every webhook of the schedule and the site. Never raises, never waits
    (no database query, no network): deliveries happen on the alert threads."""
    try:
        where = targets(schedule)
        if not where:
            return
        body = payload(event, schedule, run, error=error, failures=failures)
        for url, site_wide in where:
            job = _Job(
                event=str(event),
                schedule_id=schedule.pk,
                schedule_name=schedule.name,
                run_pk=run.pk if run is not None else None,
                iteration=run.iteration if run is not None else None,
                url=url,
                site_wide=site_wide,
                body=body,
            )
            _enqueue(job)
    except Exception:  # an alert must never break what reported it
        logger.exception("could not queue the %s alert of schedule %s", event, schedule.pk)


def _enqueue(job: _Job) -> None:
    global _pending
    _start_threads()
    with _idle:
        _pending += 1
    try:
        _queues[hash(job.url) % len(_queues)].put_nowait(job)
    except queue.Full:
        with _idle:
            _pending -= 1
            _idle.notify_all()
        logger.warning(
            "alert %s of schedule %s to %s dropped: %d alerts are waiting already",
            job.event,
            job.schedule_name,
            redact(job.url),
            QUEUE_SIZE,
        )


def _start_threads() -> None:
    with _start_lock:
        if _queues:
            return
        for number in range(THREADS):
            jobs: queue.Queue[_Job] = queue.Queue(maxsize=QUEUE_SIZE)
            name = f"cleanups-alerts-{number}"
            threading.Thread(target=_serve, args=(jobs,), name=name, daemon=True).start()
            _queues.append(jobs)
        atexit.register(flush, EXIT_FLUSH_SECONDS)


def _serve(jobs: queue.Queue[_Job]) -> None:
    global _pending
    while True:
        job = jobs.get()
        try:
            result = deliver(job.url, body_for(job.url, job.body), trusted=job.site_wide)
            _record(job, result)
        except Exception:
            logger.exception(
                "alert %s of schedule %s: delivery crashed", job.event, job.schedule_id
            )
        finally:
            connections.close_all()  # this thread's own
            with _idle:
                _pending -= 1
                _idle.notify_all()


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued alert is delivered (or has failed for good); False on time-out."""
    deadline = time.monotonic() + timeout
    with _idle:
        while _pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _idle.wait(left)
    return True


def _record(job: _Job, result: Delivery) -> None:
    target = redact(job.url)
    if result.delivered:
        logger.info(
            "alert %s of schedule %s delivered to %s (attempt %d)",
            job.event,
            job.schedule_name,
            target,
            result.attempts,
        )
    else:
        logger.warning(
            "alert %s of schedule %s to %s failed after %d attempt(s): %s",
            job.event,
            job.schedule_name,
            target,
            result.attempts,
            result.error,
        )
    try:
        AlertDelivery.objects.create(
            schedule_id=job.schedule_id,
            run_pk=job.run_pk,
            iteration=job.iteration,
            event=job.event,
            target=target[:200],
            site_wide=job.site_wide,
            status=AlertDelivery.Status.DELIVERED
            if result.delivered
            else AlertDelivery.Status.FAILED,
            http_status=result.status,
            error=result.error[:500],
            attempts=result.attempts,
        )
        older = AlertDelivery.objects.filter(schedule_id=job.schedule_id).order_by("-at", "-pk")
        stale = list(older.values_list("pk", flat=True)[DELIVERIES_KEPT:])
        if stale:
            AlertDelivery.objects.filter(pk__in=stale).delete()
    except DatabaseError as error:  # the schedule was deleted meanwhile, the database is down
        logger.warning(
            "could not record the %s alert of schedule %s: %s", job.event, job.schedule_id, error
        )
