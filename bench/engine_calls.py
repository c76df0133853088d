"""bench/waiting.py's engine-call figures: every process's ``cleanups_engine_requests_total``
read before and after a window, as calls per minute by method; and how long the reconciler's
election takes to replace a reconciler killed with SIGKILL."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.fleet import Child, say
from cleanups.engine.counting import ENGINE_REQUESTS, OK

METRIC = "cleanups_engine_requests_total"
LEASE = "reconciler"

# "GetInstance", or "GetInstance (unavailable)" for calls that failed so -> calls so far.
Counts = dict[str, float]
Reader = Callable[[], Counts]


def _key(method: str, outcome: str) -> str:
    return method if outcome == OK else f"{method} ({outcome})"


def _counts(samples: Any) -> Counts:
    return {
        _key(s.labels["method"], s.labels["outcome"]): s.value for s in samples if s.name == METRIC
    }


def own_counts() -> Counts:
    """This process's calls (the bench's, which talks to the engine as a web process does)."""
    return _counts(sample for family in ENGINE_REQUESTS.collect() for sample in family.samples)


def scraped_counts(port: int) -> Reader:
    """A runworker's calls, from its --metrics-port."""

    def read() -> Counts:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return _counts(s for family in text_string_to_metric_families(text) for s in family.samples)

    return read


class Window:
    """Calls per minute of each process between ``begin()`` and ``end()``."""

    def __init__(self, readers: dict[str, Reader]) -> None:
        self.readers = readers

    def begin(self) -> None:
        self._before = {name: read() for name, read in self.readers.items()}
        self._began = time.monotonic()

    def end(self) -> dict[str, Any]:
        seconds = time.monotonic() - self._began
        after = {name: read() for name, read in self.readers.items()}
        per_minute: dict[str, dict[str, float]] = {}
        for name, counts in after.items():
            before = self._before[name]
            made = {key: value - before.get(key, 0.0) for key, value in counts.items()}
            per_minute[name] = {
                key: round(value * 60 / seconds, 1) for key, value in made.items() if value > 0
            }
        return {"seconds": round(seconds, 1), "per_minute": per_minute}


def calls_table(title: str, window: dict[str, Any] | None) -> list[str]:
    """A Markdown table: calls per minute by method, all processes and each one."""
    if not window:
        return [f"{title}: not reached", ""]
    per_process: dict[str, dict[str, float]] = window["per_minute"]
    names = list(per_process)
    totals: dict[str, float] = {}
    for rates in per_process.values():
        for key, rate in rates.items():
            totals[key] = totals.get(key, 0.0) + rate

    lines = [
        f"{title} (calls per minute, over {window['seconds']:.0f} s)",
        "",
        "| method | all processes | " + " | ".join(names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for key in sorted(totals, key=lambda k: (-totals[k], k)):
        row = [f"{per_process[name].get(key, 0.0):,.1f}" for name in names]
        lines.append(f"| {key} | {totals[key]:,.1f} | " + " | ".join(row) + " |")
    every = [f"{sum(per_process[name].values()):,.1f}" for name in names]
    lines.append(f"| **every method** | {sum(totals.values()):,.1f} | " + " | ".join(every) + " |")
    lines.append("")
    return lines


def _pid_of(worker_id: str) -> int:
    """The process id in a worker id (host:pid:nonce, as WorkerHeartbeat.worker)."""
    return int(worker_id.rsplit(":", 2)[1])


def failover(
    workers: dict[str, Child], engine_host: str | None, interval: float, timeout: float
) -> dict[str, Any]:
    """SIGKILL the worker that holds the reconciler's lease; seconds until another of
    ``workers`` holds it. ``engine_host`` names the worker that hosts the engine, if one does:
    killing it would stop the engine, not test the election."""
    try:
        from cleanups.models import ReconcilerLease
    except ImportError:
        return {"note": "not available (no ReconcilerLease)"}
    if len(workers) < 2:
        return {"note": "not measured (one worker: --workers 2 or more)"}

    by_pid = {child.pid: name for name, child in workers.items()}

    def holder() -> str | None:
        lease = ReconcilerLease.objects.filter(name=LEASE).first()
        if lease is None or not lease.holder:
            return None
        name = by_pid.get(_pid_of(lease.holder))
        return name if name is not None and workers[name].running else None

    deadline = time.monotonic() + 3 * interval
    while (killed := holder()) is None:
        if time.monotonic() > deadline:
            return {"note": f"not measured (no live worker held the lease in {3 * interval:.0f} s)"}
        time.sleep(0.1)
    if killed == engine_host:
        return {
            "note": f"not measured: the reconciler is {killed}, which hosts the embedded engine "
            "(kill it and the engine goes too; --engine separate measures failover)"
        }
    say(f"failover: SIGKILL {killed}, the reconciler")
    child = workers[killed]
    assert child.process is not None
    clock = time.monotonic()
    child.process.send_signal(signal.SIGKILL)
    child.process.wait()
    deadline = clock + timeout
    while time.monotonic() < deadline:
        taken_by = holder()
        if taken_by is not None:
            took = round(time.monotonic() - clock, 2)
            say(f"  {taken_by} reconciles after {took} s")
            return {"seconds": took, "killed": killed, "taken_by": taken_by}
        time.sleep(0.05)
    return {"killed": killed, "note": f"no other worker took over in {timeout:.0f} s"}


def failover_line(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "failover: not reached"
    if "seconds" in figures:
        return (
            f"failover: {figures['seconds']} s from SIGKILL of {figures['killed']} (the "
            f"reconciler) until {figures['taken_by']} held the lease"
        )
    return f"failover: {figures['note']}"
