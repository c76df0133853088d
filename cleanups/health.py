"""Health: one set of checks for ``GET /healthz`` (cleanups.ops_views) and ``manage.py healthcheck``, and the liveness
of one runworker process for ``runworker --health-port``.

The site's checks (readiness of the whole): the database answers; the engine answers; some
runworker's heartbeat is younger than two reconcile intervals; no schedule is recovering (its
orchestration failed and is being restarted); no run has been running longer than
HEALTH_STUCK_SECONDS. Each is "ok" or "failing", with a reason that only staff (and the
command) see: anyone may learn *that* something fails, not what the deployment looks like.
A few are "warning" instead of failing: shown, but the site stays ok (no schedule further
behind its retention policy than CLEANUP_BACKLOG_ALERT_SECONDS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from django.db import connections
from django.db.models import Max
from django.utils import timezone

from cleanups import instances
from cleanups.conf import settings
from cleanups.engine.config import EngineConfigError, engine_config
from cleanups.formatting import behind_label, one_line
from cleanups.instances import EngineUnavailable
from cleanups.metrics import RECONCILER_CLOCK
from cleanups.models import CleanupRun, CleanupSchedule, WorkerHeartbeat
from cleanups.runs.backlog import alert_seconds

OK = "ok"
WARNING = "warning"
FAILING = "failing"
# A probe waits this long for a pooled connection (a page waits the pool's own timeout).
PROBE_POOL_TIMEOUT = 0.8
# The engine is asked for an instance that never exists: the cheapest call that needs it to
# answer (listing our instances would parse the whole fleet's states).
PROBE_INSTANCE_ID = "cleanups-health-probe"
# At most this many schedules are named in a reason.
NAMED = 5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str
    # Something to look at that does not make the site unhealthy: "warning", and ``ok`` still.
    warning: bool = False

    @property
    def status(self) -> str:
        if not self.ok:
            return FAILING
        return WARNING if self.warning else OK


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def status(self) -> str:
        return OK if self.ok else FAILING

    def as_dict(self, reasons: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "checks": {check.name: check.status for check in self.checks},
        }
        if reasons:
            data["reasons"] = {check.name: check.reason for check in self.checks}
        return data


def _names(names: list[str], more: bool) -> str:
    return ", ".join(names) + (" and more" if more else "")


# --- The site's checks --------------------------------------------------------------------------


def check_database() -> Check:
    """One ``SELECT 1``. Through a connection pool (PostgreSQL) it waits at most
    PROBE_POOL_TIMEOUT for a connection: a page may wait the pool's timeout for the database to
    come back, a probe must answer first (the database is down: it says so, within a second)."""
    connection = connections[CleanupSchedule.objects.db]
    try:
        pool = getattr(connection, "pool", None) if connection.connection is None else None
        if pool is not None:
            pool.open()  # as Django's first connection does; nothing when it is open
            with pool.connection(timeout=PROBE_POOL_TIMEOUT) as raw:
                raw.execute("SELECT 1").fetchone()
        else:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
    except Exception as error:  # DatabaseError, or a driver's or pool's own error on connect
        return Check("database", False, f"the database cannot be reached: {one_line(error)}")
    return Check("database", True, "the database answers")


def check_engine() -> Check:
    """The engine answers a call (a state query for an instance that does not exist)."""
    try:
        config = engine_config()
    except EngineConfigError as error:
        return Check("engine", False, str(error))
    where = f"the engine at {config.display_endpoint} ({config.mode})"
    began = time.monotonic()
    try:
        instances.state_of_instance(PROBE_INSTANCE_ID)
    except EngineUnavailable as error:
        return Check("engine", False, f"{where} cannot be reached: {one_line(error)}")
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        if code != grpc.StatusCode.NOT_FOUND:  # an engine that says "no such instance" answers
            details = error.details()  # type: ignore[attr-defined]
            return Check("engine", False, f"{where} answered {code.name}: {details}")
    except Exception as error:  # a credential that cannot get a token, say
        return Check("engine", False, f"{where}: {type(error).__name__}: {one_line(error)}")
    elapsed = (time.monotonic() - began) * 1000
    return Check("engine", True, f"{where} answered in {elapsed:.0f} ms")


def check_workers(now: datetime) -> Check:
    limit = 2 * float(settings.RECONCILE_INTERVAL)
    newest = WorkerHeartbeat.objects.aggregate(newest=Max("last_seen"))["newest"]
    if newest is None:
        return Check("workers", False, "no runworker has a heartbeat: is one running?")
    age = max((now - newest).total_seconds(), 0.0)
    said = f"the newest runworker heartbeat is {age:.1f} s old (limit {limit:g} s, two reconcile intervals)"
    return Check("workers", age <= limit, said)


def check_recovering() -> Check:
    names = list(
        CleanupSchedule.objects.filter(recovering_since__isnull=False)
        .order_by("name")
        .values_list("name", flat=True)[: NAMED + 1]
    )
    if not names:
        return Check("recovering", True, "no schedule is recovering")
    return Check(
        "recovering",
        False,
        "recovering (their orchestration failed and is being restarted): "
        + _names(names[:NAMED], len(names) > NAMED),
    )


def check_stuck_runs(now: datetime) -> Check:
    seconds = float(settings.HEALTH_STUCK_SECONDS)
    if seconds <= 0:
        return Check("stuck_runs", True, "not checked (HEALTH_STUCK_SECONDS is 0)")
    stuck = list(
        CleanupRun.objects.running()
        .filter(started_at__lt=now - timedelta(seconds=seconds))
        .order_by("started_at")
        .values_list("schedule__name", "iteration")[: NAMED + 1]
    )
    if not stuck:
        return Check("stuck_runs", True, f"no run has been running longer than {seconds:g} s")
    runs = [f"{name} #{iteration}" for name, iteration in stuck[:NAMED]]
    return Check(
        "stuck_runs",
        False,
        f"running longer than {seconds:g} s (HEALTH_STUCK_SECONDS): "
        + _names(runs, len(stuck) > NAMED),
    )


def check_backlog() -> Check:
    """A warning, never a failure: schedules further behind their retention policy than
    CLEANUP_BACKLOG_ALERT_SECONDS after their last measured run, furthest first."""
    limit = alert_seconds()
    if not limit:
        return Check("backlog", True, "not checked (CLEANUP_BACKLOG_ALERT_SECONDS is 0)")
    behind = list(
        CleanupSchedule.objects.filter(backlog_seconds__gt=limit)
        .order_by("-backlog_seconds", "name")
        .values_list("name", "backlog_seconds")[: NAMED + 1]
    )
    than = f"than {behind_label(limit)} (CLEANUP_BACKLOG_ALERT_SECONDS)"
    if not behind:
        return Check("backlog", True, f"no schedule is further behind its retention policy {than}")
    names = [f"{name} ({behind_label(seconds)})" for name, seconds in behind[:NAMED]]
    return Check(
        "backlog",
        True,
        f"further behind their retention policy {than}: " + _names(names, len(behind) > NAMED),
        warning=True,
    )


def run_checks() -> Report:
    """Every check of the site, the database first: the checks that read it are failing, not
    run, when it cannot be reached."""
    database = check_database()
    engine = check_engine()
    if not database.ok:
        unread = "not checked: the database cannot be reached"
        names = ("workers", "recovering", "stuck_runs", "backlog")
        rest = tuple(Check(name, False, unread) for name in names)
        return Report((database, engine, *rest))
    now = timezone.now()
    return Report(
        (
            database,
            engine,
            _guarded("workers", lambda: check_workers(now)),
            _guarded("recovering", check_recovering),
            _guarded("stuck_runs", lambda: check_stuck_runs(now)),
            _guarded("backlog", check_backlog, warning=True),
        )
    )


def _guarded(name: str, check: Callable[[], Check], *, warning: bool = False) -> Check:
    """A check that fails on a database error (the database went away meanwhile, a table is
    missing before migrate) instead of raising; a ``warning`` check only warns then."""
    try:
        return check()
    except Exception as error:
        return Check(name, warning, f"could not be checked: {one_line(error)}", warning=warning)


# --- One runworker's liveness ----------------------------------------------------------------


def stream_connected(worker: Any) -> bool:
    """Whether the SDK worker's work-item stream to the engine is open. The SDK keeps the call
    in ``_response_stream`` (cleanups.engine.ontime reads it too) and drops it while it reconnects."""
    stream = getattr(worker, "_response_stream", None)
    try:
        return stream is not None and bool(stream.is_active())
    except Exception:
        return False


class WorkerLiveness:
    """Is this runworker process doing its job: its worker's stream to the engine is open, and
    its reconciler ended a pass within two reconcile intervals (or is in a pass begun within
    them)? ``host`` is a WorkerHost: its ``worker`` (None until started) and ``reconciler``."""

    def __init__(self, host: Any) -> None:
        self.host = host

    @property
    def interval(self) -> float:
        return float(self.host.reconciler.interval)

    def stream(self) -> Check:
        worker = self.host.worker
        if worker is None:
            return Check("stream", False, "the worker has not started yet")
        if stream_connected(worker):
            return Check("stream", True, "the worker's work-item stream to the engine is open")
        return Check(
            "stream",
            False,
            "the worker's work-item stream to the engine is not open (reconnecting)",
        )

    def reconciler_age(self) -> float | None:
        """Seconds since the reconciler was last seen working: since its last pass ended, or
        since the pass it is in began; None before its first pass."""
        began, ended = RECONCILER_CLOCK.read()
        if began is None:
            return None
        if ended is not None and ended >= began:
            return time.monotonic() - ended
        return time.monotonic() - began

    def reconciler(self) -> Check:
        limit = 2 * self.interval
        age = self.reconciler_age()
        if age is None:
            return Check("reconciler", False, "the reconciler has not begun a pass yet")
        began, ended = RECONCILER_CLOCK.read()
        in_pass = ended is None or (began is not None and began > ended)
        what = "a pass began" if in_pass else "the last pass ended"
        return Check(
            "reconciler",
            age <= limit,
            f"{what} {age:.1f} s ago (limit {limit:g} s, two reconcile intervals)",
        )

    def report(self) -> Report:
        return Report((self.stream(), self.reconciler()))
