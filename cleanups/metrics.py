"""Prometheus metrics (the official ``prometheus-client``), from two sources, each counted once.
This module holds the worker side (a leaf: the run life cycle counts into it); the web side is
``cleanups.fleet_metrics``, served by ``cleanups.ops_views``.

**Each runworker** (``runworker --metrics-port``) counts what happens in that process, as it
happens: the runs whose outcome it records (``cleanups_runs_total``), their durations and
lateness (histograms), what they deleted and freed, and its reconciler's actions. These live in
the process's own registry (prometheus_client's default one), start at zero with the process,
and Prometheus adds them up across the workers it scrapes: a run is recorded by exactly one
worker, so ``sum(rate(cleanups_runs_total[5m]))`` is the fleet's rate, and a worker's restart
is an ordinary counter reset.

**The web process** (``/metrics``) reports the state of the fleet, read from the database and
the engine at every scrape (a custom Collector): schedules by state, the engine being up, the
newest worker heartbeat's age, runs in progress, failure streaks. Any gunicorn worker answers
with the same figures, since none of them is kept in a process, so several web processes need no
multiprocess mode. A scrape costs a constant number of queries, none of them proportional to the
run history (it reads schedules and index ranges, as the dashboard's totals do).

**Both** count the calls their own process makes to the engine,
``cleanups_engine_requests_total{method,outcome}`` (``cleanups.engine.counting``, an interceptor
on every channel the connection module builds): in the default registry, and registered in the
web one too. Unlike the fleet's figures this one is per process: with several gunicorn workers a
scrape shows the count of the one that answered.

Run counters are deliberately not derived from the run table: ``prune_run_history`` deletes run
records, and a count that goes down reads to Prometheus as a counter reset (a spike in
``increase()`` as large as what is left); and counting a million runs is a scan per scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from cleanups.models import CleanupRun

logger = logging.getLogger("cleanups.metrics")

# --- Worker side: counted by the process that records each outcome ---------------------------

# A cleanup takes from milliseconds (nothing to delete) to an hour (its default limit).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# A run starts at its planned time to the millisecond when all is well (the dispatch lead);
# seconds late means a busy worker, minutes a worker that was down.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

RUNS = Counter(
    "cleanups_runs",
    "Runs whose outcome this worker recorded (succeeded, failed, timed_out; skipped: slots "
    "recorded as missed).",
    ["schedule", "task", "status", "trigger"],
)
RUN_DURATION = Histogram(
    "cleanups_run_duration_seconds",
    "How long the runs this worker recorded took, from start to outcome.",
    ["task"],
    buckets=DURATION_BUCKETS,
)
RUN_LATENESS = Histogram(
    "cleanups_run_lateness_seconds",
    "How late the planned runs this worker recorded started: start minus planned time.",
    ["task"],
    buckets=LATENESS_BUCKETS,
)
ITEMS_DELETED = Counter(
    "cleanups_items_deleted",
    "Items (rows, files, orchestrations) the runs this worker recorded deleted, per target "
    "(dry runs delete nothing and are not counted).",
    ["schedule", "target"],
)
BYTES_FREED = Counter(
    "cleanups_bytes_freed",
    "Bytes the runs this worker recorded freed (files).",
    ["schedule"],
)
RECONCILER_ACTIONS = Counter(
    "cleanups_reconciler_actions",
    "What this worker's reconciler did to make the engine agree with the database.",
    ["kind"],
)
RECONCILER_PASSES = Counter("cleanups_reconciler_passes", "Reconciler passes this worker ended.")
# Every kind, so each series exists (at 0) from the start: rate() needs a first sample.
RECONCILER_KINDS = {
    "started": "a running schedule had no live orchestration: one was started",
    "recovered": "a failed orchestration was started again (after its backoff)",
    "restarted": "a stuck orchestration, or one whose resume was lost, was ended and started",
    "terminated": "an orchestration of a stopped or deleted schedule was terminated",
    "suspended": "a paused schedule's orchestration was suspended",
    "resumed": "a running schedule's suspended orchestration was resumed",
    "stopped": "a schedule whose next run cannot be computed was stopped",
    "interrupted": "runs of dead workers or lost orchestrations were marked interrupted",
}
for _kind in RECONCILER_KINDS:
    RECONCILER_ACTIONS.labels(_kind)

_SKIPPED = "skipped"


def run_ended(schedule: str, run: CleanupRun, recorded: bool | int = True) -> None:
    """This process recorded ``run``'s outcome (``recorded``: the write that did so changed a
    row). Never raises: a metric must not fail a run."""
    if not recorded:
        return
    try:
        task = run.task or "unknown"
        RUNS.labels(schedule, task, run.status, run.trigger).inc()
        if run.status == _SKIPPED:
            return  # a gap, not a run: nothing ran, nothing was late
        if run.duration is not None:
            RUN_DURATION.labels(task).observe(max(run.duration.total_seconds(), 0.0))
        if run.planned_at is not None and run.started_at is not None:
            late = (run.started_at - run.planned_at).total_seconds()
            RUN_LATENESS.labels(task).observe(max(late, 0.0))
        if run.dry_run:
            return
        freed = BYTES_FREED.labels(schedule)
        for target, counts in ((run.details or {}).get("targets") or {}).items():
            items, size = int(counts.get("items", 0)), int(counts.get("bytes", 0))
            if items > 0:
                ITEMS_DELETED.labels(schedule, target).inc(items)
            if size > 0:
                freed.inc(size)
    except Exception:
        logger.exception("could not count the run %s of %s in the metrics", run.pk, schedule)


def reconciler_action(kind: str, count: int = 1) -> None:
    """The reconciler did ``count`` of ``kind`` (one of RECONCILER_KINDS)."""
    if count > 0:
        RECONCILER_ACTIONS.labels(kind).inc(count)


class _PassClock:
    """When this process's reconciler last began and ended a pass (monotonic clock): the
    liveness of runworker --health-port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.began: float | None = None
        self.ended: float | None = None

    def begin(self) -> None:
        with self._lock:
            self.began = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self.ended = time.monotonic()
        RECONCILER_PASSES.inc()

    def read(self) -> tuple[float | None, float | None]:
        with self._lock:
            return self.began, self.ended


RECONCILER_CLOCK = _PassClock()


def reconciler_pass_began() -> None:
    RECONCILER_CLOCK.begin()


def reconciler_pass_ended() -> None:
    RECONCILER_CLOCK.end()


def exposition(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The registry's samples and their content type, in the format the scraper's Accept header
    asks for (the Prometheus text format, or OpenMetrics), as the library's own server does."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def worker_exposition(accept: str = "") -> tuple[bytes, str]:
    """What runworker --metrics-port serves: this process's registry (its counters, histograms,
    the liveness gauges its ops server registers, and the library's process metrics)."""
    return exposition(REGISTRY, accept)
