# ruff: noqa: E402 (the project root goes on sys.path before the project's imports)
"""Many waiting schedules on one runworker: the admin's actions on all of them, a single start,
and what the worker costs while they all wait.

    .venv/bin/python bench/waiting.py [--schedules 10000] [--database sqlite|postgres]
                                      [--bulk-start-rate 0]

(from the project root; its own database in a new temporary directory, as bench/fleet.py makes
it, whose set-up, processes and /proc sampling it reuses; ``--database postgres`` needs
``BENCH_DATABASE_URL`` as there).

What it does. ``--schedules`` stopped schedules of the ``sample`` task (no work), every hour,
fixed rate, missed runs ``run_once``; one ``manage.py runworker`` hosting the embedded engine.
A superuser ticks "select all" in the admin's schedule list and posts **Start selected
schedules**: that request's time is "start request"; "every orchestration live" is from that
request's start until the engine has every one of them running (polled each second), "every
first run started" until every schedule's first run has started: with ``--bulk-start-rate 0``
(the default here, not the project's 20 a second) all are planned at the click, a herd the
worker gets through as fast as it runs them, and "all waiting
after" until every one of them has finished and the worker is left with nothing but timers.
Then, with the whole fleet waiting for its next run an hour away, the worker's threads and RSS
(VmRSS) are sampled every 0.2 s for ``--quiet`` s (the most seen is reported), beside the peak
(VmHWM, threads) over the whole bench. Then "select all" -> **Pause selected schedules** and
-> **Resume selected schedules** (request times; each until the engine agrees: every
orchestration suspended, then running again). Last, ``--singles`` more stopped schedules are
started one at a time with ``control.start_schedule`` from this process (a web process's own
call, one engine round trip each, with the fleet waiting): p50 and max of that call.

Stdout: the Markdown report, then ``RESULT {json}``; progress on stderr. Exit status 0 when
every phase finished, 1 when one did not in time, 2 on a bad flag or a bench failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import fleet
from bench.fleet import RUNWORKER_READY, BenchError, Child, Sampler, say
from cleanups.management.arguments import positive_int

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


def post_action(user: Any, action: str) -> float:
    """The admin's ``action`` on "select all" across pages; the request's time (s)."""
    from django.test import Client
    from django.urls import reverse

    from cleanups.models import CleanupSchedule

    client = Client()
    client.force_login(user)
    url = reverse("admin:cleanups_cleanupschedule_changelist")
    if client.get(url).status_code != 200:
        raise BenchError("the admin's schedule list did not answer 200")
    one = CleanupSchedule.objects.order_by("pk").values_list("pk", flat=True).first()
    data = {"action": action, "select_across": "1", "index": "0", "_selected_action": [str(one)]}
    clock = time.perf_counter()
    response = client.post(url, data)
    took = time.perf_counter() - clock
    if response.status_code != 302:
        raise BenchError(f"the admin's {action} answered {response.status_code}")
    return took


def wait_for(count: Any, target: int, what: str, worker: Child, every: float = 0.25) -> bool:
    deadline = time.monotonic() + PHASE_TIMEOUT
    last = -1
    while time.monotonic() < deadline:
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


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from cleanups.models import CleanupRun, CleanupSchedule

    fleet_args = argparse.Namespace(
        schedules=args.schedules,
        interval=INTERVAL,
        iterations=None,
        cadence="fixed_rate",
        engine="in-process",
        database=args.database,
    )
    figures: dict[str, Any] = {"schedules": args.schedules, "finished": False}
    user = fleet.create_schedules(fleet_args)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_DATABASE_URL", "BENCH_DB")}
    worker = Child("runworker", ["manage.py", "runworker"], env, RUNWORKER_READY, workdir)
    worker.start()
    try:
        with Sampler({"worker": worker.pid}) as sampler:
            say("select all -> start")
            began = time.time()
            figures["start_request_s"] = round(post_action(user, "start_schedules"), 3)
            say(f"  request {figures['start_request_s']} s")
            if not wait_for(
                lambda: engine_statuses().get("running", 0),
                args.schedules,
                "orchestrations live",
                worker,
                every=1.0,
            ):
                return figures
            figures["all_live_after_s"] = round(time.time() - began, 1)
            runs = CleanupRun.objects.filter(schedule__name__startswith="fleet-")
            if not wait_for(runs.count, args.schedules, "first runs started", worker):
                return figures
            last_start = runs.order_by("-started_at").values_list("started_at", flat=True)[0]
            figures["all_running_after_s"] = round(last_start.timestamp() - began, 1)
            done = runs.exclude(status=CleanupRun.Status.RUNNING)
            if not wait_for(done.count, args.schedules, "first runs finished", worker):
                return figures
            figures["all_waiting_after_s"] = round(time.time() - began, 1)

            say(f"the fleet is waiting; sampling the worker for {args.quiet:.0f} s")
            most_threads, most_rss = 0, 0
            quiet_until = time.monotonic() + args.quiet
            while time.monotonic() < quiet_until:
                now = current(worker.pid)
                most_threads = max(most_threads, now["Threads"])
                most_rss = max(most_rss, now["VmRSS"])
                time.sleep(fleet.SAMPLE_EVERY)
            figures["waiting_threads"] = most_threads
            figures["waiting_rss_mb"] = round(most_rss / 1024, 1)

            for action, status, expected in (
                ("pause_schedules", CleanupSchedule.DesiredState.PAUSED, "suspended"),
                ("resume_schedules", CleanupSchedule.DesiredState.RUNNING, "running"),
            ):
                say(f"select all -> {action}")
                clock = time.time()
                figures[f"{action}_request_s"] = round(post_action(user, action), 3)
                say(f"  request {figures[f'{action}_request_s']} s")
                fleet_rows = CleanupSchedule.objects.filter(name__startswith="fleet-")
                if fleet_rows.exclude(desired_state=status).exists():
                    raise BenchError(f"{action} left schedules in another desired state")
                if not wait_for(
                    lambda expected=expected: engine_statuses().get(expected, 0),
                    args.schedules,
                    f"orchestrations {expected}",
                    worker,
                ):
                    return figures
                figures[f"{action}_engine_done_s"] = round(time.time() - clock, 1)

            say(f"{args.singles} single starts")
            took = sorted(single_starts(user, args.singles))
            figures["single_start_ms"] = {
                "p50": round(statistics.median(took), 1),
                "max": round(took[-1], 1),
                "count": len(took),
            }
        peak = sampler.peaks["worker"]
        figures["peak_rss_mb"] = round(peak.rss_mb or 0, 1)
        figures["peak_threads"] = peak.threads
        figures["finished"] = True
        return figures
    finally:
        worker.stop()


def report(figures: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    def show(key: str, unit: str = "") -> str:
        value = figures.get(key)
        return "not reached" if value is None else f"{value}{unit}"

    single = figures.get("single_start_ms") or {}
    return [
        f"# {figures['schedules']:,} waiting schedules, one runworker ({setup['database']}, "
        f"{setup['cpus']} CPUs, load {setup['load_average']})",
        "",
        "| what | measured |",
        "| --- | --- |",
        f"| admin select all -> Start: the request | {show('start_request_s', ' s')} |",
        f"| ... every orchestration live in the engine after | {show('all_live_after_s', ' s')} |",
        f"| ... every first run started after | {show('all_running_after_s', ' s')} |",
        f"| ... all waiting on their timer after | {show('all_waiting_after_s', ' s')} |",
        f"| runworker while all wait: threads | {show('waiting_threads')} |",
        f"| runworker while all wait: RSS | {show('waiting_rss_mb', ' MB')} |",
        f"| runworker peak over the bench: threads, RSS (VmHWM) | {show('peak_threads')}, "
        f"{show('peak_rss_mb', ' MB')} |",
        f"| admin select all -> Pause: the request; all suspended after | "
        f"{show('pause_schedules_request_s', ' s')}; "
        f"{show('pause_schedules_engine_done_s', ' s')} |",
        f"| admin select all -> Resume: the request; all running after | "
        f"{show('resume_schedules_request_s', ' s')}; "
        f"{show('resume_schedules_engine_done_s', ' s')} |",
        f"| a single `start_schedule` (p50, max of {single.get('count', 0)}) | "
        f"{single.get('p50', '-')} ms, {single.get('max', '-')} ms |",
    ]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"bench/waiting.py: {message}\n")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=positive_int, default=10_000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--quiet", type=float, default=10.0, help="s sampled while all wait")
    parser.add_argument("--singles", type=positive_int, default=20)
    parser.add_argument(
        "--bulk-start-rate",
        type=fleet.non_negative_number,
        default=0.0,
        help="CLEANUP_BULK_START_RATE (%(default)s: every first run at the click, the herd)",
    )
    args = parser.parse_args(argv)
    if args.database == "postgres" and not os.environ.get("BENCH_DATABASE_URL"):
        parser.error("--database postgres needs BENCH_DATABASE_URL")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="cleanups-waiting-"))
    started = time.perf_counter()
    try:
        fleet.setup_django(
            argparse.Namespace(
                engine="in-process",
                database=args.database,
                bulk_start_rate=args.bulk_start_rate,
            ),
            workdir,
            fleet.free_port(),
        )
        from django.test.utils import setup_test_environment

        setup_test_environment()  # the test client's 'testserver' host is allowed
        try:
            fleet.create_database(argparse.Namespace(database=args.database))
            setup = fleet.setup_description(
                argparse.Namespace(
                    schedules=args.schedules,
                    interval=INTERVAL,
                    iterations=None,
                    cadence="fixed_rate",
                    engine="in-process",
                    database=args.database,
                    seed=0,
                )
            )
            figures = measure(args, workdir)
        finally:
            fleet.drop_database(argparse.Namespace(database=args.database))
        print("\n".join(report(figures, setup)))
        print("RESULT " + json.dumps(figures), flush=True)
        return 0 if figures["finished"] else 1
    except BenchError as error:
        say(f"bench/waiting.py: {error}")
        return 2
    except KeyboardInterrupt:
        say("bench/waiting.py: interrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
