"""bench/waiting.py's fleet: its runworkers against one engine, the admin's actions on the
schedules, and what the engine says of them."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from bench import engine_calls, fleet
from bench.fleet import RUNWORKER_READY, BenchError, Child, say

INTERVAL = 3600.0  # the fleet's next run is an hour away: between its first run and the end,
# every schedule waits on its timer and nothing else.
PHASE_TIMEOUT = 900.0


def current(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads now."""
    text = Path(f"/proc/{pid}/status").read_text()
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            found[key] = int(value.split()[0])
    return found


def post_action(user: Any, action: str, pks: list[int] | None = None) -> float:
    """The admin's ``action`` on the schedules ``pks`` (default: "select all" across pages); the
    request's time (s)."""
    from django.test import Client
    from django.urls import reverse

    from cleanups.models import CleanupSchedule

    client = Client()
    client.force_login(user)
    url = reverse("admin:cleanups_cleanupschedule_changelist")
    if client.get(url).status_code != 200:
        raise BenchError("the admin's schedule list did not answer 200")
    if pks is None:
        one = CleanupSchedule.objects.order_by("pk").values_list("pk", flat=True).first()
        data = {
            "action": action,
            "select_across": "1",
            "index": "0",
            "_selected_action": [str(one)],
        }
    else:
        data = {
            "action": action,
            "select_across": "0",
            "index": "0",
            "_selected_action": [str(pk) for pk in pks],
        }
    clock = time.perf_counter()
    response = client.post(url, data)
    took = time.perf_counter() - clock
    if response.status_code != 302:
        raise BenchError(f"the admin's {action} answered {response.status_code}")
    return took


def wait_for(count: Any, target: int, what: str, workers: list[Child], every: float = 0.25) -> bool:
    deadline = time.monotonic() + PHASE_TIMEOUT
    last = -1
    while time.monotonic() < deadline:
        for worker in workers:
            worker.check_alive()
        seen = count()
        if seen != last:
            say(f"  {what}: {seen}/{target}")
            last = seen
        if seen >= target:
            return True
        time.sleep(every)
    say(f"  {what}: only {last}/{target} after {PHASE_TIMEOUT:.0f} s")
    return False


def engine_statuses() -> dict[str, int]:
    """How many of the fleet's orchestrations the engine has in each status."""
    from cleanups.instances import fetch_runtime_states, runtime_status_label
    from cleanups.models import CleanupSchedule

    fleet_ids = list(
        CleanupSchedule.objects.filter(name__startswith="fleet-").values_list(
            "instance_id", flat=True
        )
    )
    states = fetch_runtime_states(fleet_ids)
    counts: dict[str, int] = {}
    for instance_id in fleet_ids:
        label = runtime_status_label(states.get(instance_id))
        counts[label] = counts.get(label, 0) + 1
    return counts


def single_starts(user: Any, count: int) -> list[float]:
    """``control.start_schedule`` on ``count`` new schedules, one at a time (ms each)."""
    from datetime import timedelta

    from cleanups import control
    from cleanups.models import INSTANCE_ID_PREFIX, CleanupSchedule

    took = []
    for n in range(count):
        schedule = CleanupSchedule.objects.create(
            name=f"single-{n:03}",
            task="sample",
            params={"seconds": 0},
            interval=timedelta(seconds=INTERVAL),
            changed_by=user,
        )
        schedule.instance_id = f"{INSTANCE_ID_PREFIX}{schedule.pk}"
        schedule.save(update_fields=["instance_id"])
        clock = time.perf_counter()
        outcome = control.start_schedule(schedule)
        took.append((time.perf_counter() - clock) * 1000)
        if outcome.outcome is not control.Outcome.STARTED:
            raise BenchError(f"a single start answered {outcome.outcome.value}: {outcome.message}")
    return took


def start_workers(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Child], Child | None]:
    """The engine's own process (``--engine separate``) and the runworkers, started in order:
    with ``--engine in-process`` the first hosts the engine the others connect to."""
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_DATABASE_URL", "BENCH_DB")}
    engine = fleet.start_engine_host(args, args.engine_port, env, workdir, "waiting")
    connecting = {**env, "ENDPOINT": f"http://127.0.0.1:{args.engine_port}"}
    workers: dict[str, Child] = {}
    for n in range(args.workers):
        name = f"runworker-{n}"
        argv = ["manage.py", "runworker", "--metrics-port", str(fleet.free_port())]
        hosts = engine is None and n == 0
        child = Child(name, argv, env if hosts else connecting, RUNWORKER_READY, workdir)
        workers[name] = child
        try:
            child.start()
        except BenchError:
            stop_all(workers, engine)
            raise
    return workers, engine


def stop_all(workers: dict[str, Child], engine: Child | None) -> None:
    # The connecting workers first: the engine (or the worker that hosts it) goes last.
    for child in reversed(list(workers.values())):
        child.stop()
    if engine is not None:
        engine.stop()


def call_readers(workers: dict[str, Child]) -> dict[str, engine_calls.Reader]:
    readers = {"bench (web)": engine_calls.own_counts}
    for name, child in workers.items():
        readers[name] = engine_calls.scraped_counts(int(child.argv[-1]))
    return readers
