"""One reconciler at a time, whatever the number of workers: a lease row in the database.

Every worker tries to hold the lease every third of a reconcile interval; the holder renews it,
the others take it over once it has expired (its worker died) or been released (its worker
stopped). A lease lasts 1.25 intervals: a worker killed just after renewing is replaced within
1.6 (under two), and a holder may miss three renewals in a row before it loses the lease.

Times are the database's (``Now()``), never a worker's clock: workers on several machines agree
on when a lease expires however far their clocks are apart.

Why a lease row and not a PostgreSQL advisory lock: a session lock belongs to one connection,
and a connection pooler (PgBouncer in transaction mode) or Django closing connections between
passes would drop it or hand it to another client. A row works the same on every database and
through any pooler. Two holders at once (a holder that missed its renewals while its database
was away) would only reconcile twice, as every worker did before the election.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import DateTimeField, ExpressionWrapper, Value
from django.db.models.functions import Now

from cleanups.models import ReconcilerLease

logger = logging.getLogger("cleanups.reconciler")
LEASE = "reconciler"


def _now_plus(seconds: float) -> ExpressionWrapper:
    return ExpressionWrapper(
        Now() + Value(timedelta(seconds=seconds)), output_field=DateTimeField()
    )


def hold(worker: str, lease_seconds: float) -> bool:
    """Renew the lease if ``worker`` holds it, take it if it is free; whether ``worker`` holds
    it now."""
    expires = _now_plus(lease_seconds)
    lease = ReconcilerLease.objects.filter(name=LEASE)
    if lease.filter(holder=worker).update(expires_at=expires):
        return True
    if lease.filter(expires_at__lt=Now()).update(
        holder=worker, acquired_at=Now(), expires_at=expires
    ):
        return True
    if ReconcilerLease.objects.filter(name=LEASE).exists():
        return False
    try:
        with transaction.atomic():
            ReconcilerLease.objects.create(
                name=LEASE, holder=worker, acquired_at=Now(), expires_at=expires
            )
    except IntegrityError:  # another worker created it first
        return False
    return True


def release(worker: str) -> None:
    """Give the lease up (a worker stopping): the next worker to try takes it at once."""
    ReconcilerLease.objects.filter(name=LEASE, holder=worker).update(expires_at=_now_plus(-1))


def ask_for_sweep() -> None:
    """Have the reconciler's next pass read every instance: an engine came up empty (a worker
    hosting the embedded engine started), whichever worker reconciles."""
    ReconcilerLease.objects.filter(name=LEASE).update(sweep_asked_at=Now())


def sweep_asked() -> datetime | None:
    return (
        ReconcilerLease.objects.filter(name=LEASE).values_list("sweep_asked_at", flat=True).first()
    )


def sweep_begun(asked: datetime) -> None:
    """The sweep asked for at ``asked`` has begun; a later ask stays for the next pass."""
    # At most (not equal): SQLite's Now() keeps milliseconds, the value read back microseconds.
    ReconcilerLease.objects.filter(name=LEASE, sweep_asked_at__lte=asked).update(
        sweep_asked_at=None
    )


def holder() -> str | None:
    lease = ReconcilerLease.objects.filter(name=LEASE).first()
    return lease.holder if lease else None


class Election:
    """A worker's part in the election: ``leading`` says whether it reconciles now."""

    def __init__(self, worker: str, interval: float) -> None:
        self.worker = worker
        self.interval = interval
        self.lease_seconds = 1.25 * interval
        self.leading = threading.Event()
        # Set when it led and lost the lease (another worker may reconcile now): a pass in
        # progress ends at the next schedule.
        self.deposed = threading.Event()
        self.failing = False  # the last attempt met a database error

    def try_lead(self) -> bool:
        """One attempt: renew or take the lease. A database error loses it (another worker may
        take it meanwhile); the next attempt tries again."""
        was = self.leading.is_set()
        try:
            now = hold(self.worker, self.lease_seconds)
        except DatabaseError as error:
            # Once per outage: the lease thread tries three times an interval.
            log = logger.debug if self.failing else logger.warning
            log("reconciler: could not renew the lease: %s", error)
            self.failing, now = True, False
        else:
            if self.failing:
                logger.info("reconciler: the lease can be renewed again")
            self.failing = False
        if now and not was:
            logger.info("reconciler: %s reconciles now", self.worker)
        elif was and not now:
            logger.info("reconciler: %s no longer reconciles (another worker does)", self.worker)
        (self.leading.set if now else self.leading.clear)()
        if now:
            self.deposed.clear()
        elif was:
            self.deposed.set()
        return now

    def keep(self, stopping: threading.Event) -> None:
        """The lease thread: every third of an interval, until ``stopping``; so a long pass (a
        full sweep) never lets the lease expire under it."""
        while not stopping.wait(self.interval / 3):
            self.try_lead()
            connections.close_all()

    def resign(self) -> None:
        self.leading.clear()
        try:
            release(self.worker)
        except DatabaseError as error:
            logger.warning("reconciler: could not release the lease: %s", error)
