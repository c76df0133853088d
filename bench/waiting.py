# ruff: noqa: E402 (the project root goes on sys.path before the project's imports)
"""Many waiting schedules on one runworker (or several): the admin's actions on all of them, a
single start, what the workers cost while they all wait, the engine calls every process makes,
and how long the reconciler's election takes to replace a reconciler that was killed.

    .venv/bin/python bench/waiting.py [--schedules 10000] [--workers 1]
                                      [--engine in-process|separate]
                                      [--database sqlite|postgres] [--bulk-start-rate 0]
                                      [--quiet 60]

(from the project root; its own database in a new temporary directory, as bench/fleet.py makes
it, whose set-up, processes and /proc sampling it reuses; ``--database postgres`` needs
``BENCH_DATABASE_URL`` as there).

What it does. ``--schedules`` stopped schedules of the ``sample`` task (no work), every hour,
fixed rate, missed runs ``run_once``; ``--workers`` ``manage.py runworker`` processes against
one engine, each with a ``--metrics-port``. ``--engine in-process`` (the default): the first
one hosts the embedded engine, as ``bin/run`` does, and the others connect to it with
``ENDPOINT=http://127.0.0.1:<port>``; ``--engine separate``: the engine runs alone in a process
of its own (``bench/fleet.py --role engine``) and every runworker connects to it.
A superuser ticks "select all" in the admin's schedule list and posts **Start selected
schedules**: that request's time is "start request"; "every orchestration live" is from that
request's start until the engine has every one of them running (polled each second), "every
first run started" until every schedule's first run has started: with ``--bulk-start-rate 0``
(the default here, not the project's 20 a second) all are planned at the click, a herd the
worker gets through as fast as it runs them, and "all waiting
after" until every one of them has finished and the worker is left with nothing but timers.
Then, with the whole fleet waiting for its next run an hour away, the workers' threads and RSS
(VmRSS) are sampled every 0.2 s for ``--quiet`` s (the most any one showed is reported), beside
the peak (VmHWM, threads) over the whole bench. Over the same window, the engine calls each
process made (``cleanups_engine_requests_total``: each runworker's from its --metrics-port, this
process's from its own registry; this process is the web process here) are shown per minute by
method; a window as long as ``RECONCILE_SWEEP_SECONDS`` (``--quiet 300``) includes a sweep. Then
a window as long, during which one schedule in ten is paused through the admin at its start and
resumed at its middle: the same table. Then "select all" -> **Pause selected schedules** and
-> **Resume selected schedules** (request times; each until the engine agrees: every
orchestration suspended, then running again). Then ``--singles`` more stopped schedules are
started one at a time with ``control.start_schedule`` from this process (a web process's own
call, one engine round trip each, with the fleet waiting): p50 and max of that call. Last,
failover (two workers or more): the worker that holds the reconciler's lease (``ReconcilerLease``)
gets SIGKILL, and the time until another live worker holds it is reported. With ``--engine
in-process`` the reconciler is usually the worker that hosts the engine, whose death would take
the engine with it: then the report says so, and ``--engine separate`` measures it.

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

from bench import engine_calls, fleet
from bench.fleet import BenchError, Child, Sampler, say
from bench.waiting_fleet import (
    INTERVAL,
    call_readers,
    current,
    engine_statuses,
    post_action,
    single_starts,
    start_workers,
    stop_all,
    wait_for,
)
from cleanups.management.arguments import positive_float, positive_int

RECONCILE_INTERVAL = float(fleet.PINNED_ENV["RECONCILE_INTERVAL"])


def waiting_window(
    args: argparse.Namespace, workers: dict[str, Child], window: engine_calls.Window
) -> dict[str, Any]:
    """The fleet waits for ``--quiet`` s: the most threads and RSS any worker showed, and every
    process's engine calls."""
    most_threads, most_rss = 0, 0
    window.begin()
    quiet_until = time.monotonic() + args.quiet
    while time.monotonic() < quiet_until:
        for child in workers.values():
            now = current(child.pid)
            most_threads = max(most_threads, now["Threads"])
            most_rss = max(most_rss, now["VmRSS"])
        time.sleep(fleet.SAMPLE_EVERY)
    return {
        "waiting_threads": most_threads,
        "waiting_rss_mb": round(most_rss / 1024, 1),
        "calls_waiting": window.end(),
    }


def churn_window(args: argparse.Namespace, user: Any, window: engine_calls.Window) -> Any:
    """``--quiet`` s during which one schedule in ten is paused (at the start) and resumed (at
    the middle) through the admin: every process's engine calls."""
    from cleanups.models import CleanupSchedule

    pks = list(
        CleanupSchedule.objects.filter(name__startswith="fleet-")
        .order_by("pk")
        .values_list("pk", flat=True)
    )[::10]
    say(f"{len(pks)} schedules (one in ten) paused and resumed over {args.quiet:.0f} s")
    window.begin()
    began = time.monotonic()
    post_action(user, "pause_schedules", pks)
    time.sleep(max(0.0, began + args.quiet / 2 - time.monotonic()))
    post_action(user, "resume_schedules", pks)
    time.sleep(max(0.0, began + args.quiet - time.monotonic()))
    return window.end()


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from cleanups.models import CleanupRun, CleanupSchedule

    fleet_args = argparse.Namespace(
        schedules=args.schedules,
        interval=INTERVAL,
        iterations=None,
        cadence="fixed_rate",
        engine=args.engine,
        database=args.database,
    )
    figures: dict[str, Any] = {
        "schedules": args.schedules,
        "workers": args.workers,
        "finished": False,
    }
    user = fleet.create_schedules(fleet_args)
    workers, engine = start_workers(args, workdir)
    alive = [*workers.values(), *([engine] if engine else [])]
    window = engine_calls.Window(call_readers(workers))
    try:
        with Sampler({name: child.pid for name, child in workers.items()}) as sampler:
            say("select all -> start")
            began = time.time()
            figures["start_request_s"] = round(post_action(user, "start_schedules"), 3)
            say(f"  request {figures['start_request_s']} s")
            if not wait_for(
                lambda: engine_statuses().get("running", 0),
                args.schedules,
                "orchestrations live",
                alive,
                every=1.0,
            ):
                return figures
            figures["all_live_after_s"] = round(time.time() - began, 1)
            runs = CleanupRun.objects.filter(schedule__name__startswith="fleet-")
            if not wait_for(runs.count, args.schedules, "first runs started", alive):
                return figures
            last_start = runs.order_by("-started_at").values_list("started_at", flat=True)[0]
            figures["all_running_after_s"] = round(last_start.timestamp() - began, 1)
            done = runs.exclude(status=CleanupRun.Status.RUNNING)
            if not wait_for(done.count, args.schedules, "first runs finished", alive):
                return figures
            figures["all_waiting_after_s"] = round(time.time() - began, 1)

            say(f"the fleet is waiting; sampling the workers for {args.quiet:.0f} s")
            figures.update(waiting_window(args, workers, window))
            figures["calls_churn"] = churn_window(args, user, window)
            if not wait_for(
                lambda: engine_statuses().get("running", 0),
                args.schedules,
                "orchestrations running again",
                alive,
            ):
                return figures

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
                    alive,
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
        figures["peak_rss_mb"] = round(max(p.rss_mb or 0 for p in sampler.peaks.values()), 1)
        figures["peak_threads"] = max(p.threads for p in sampler.peaks.values())
        host = "runworker-0" if engine is None else None
        figures["failover"] = engine_calls.failover(
            workers, host, RECONCILE_INTERVAL, timeout=10 * RECONCILE_INTERVAL
        )
        figures["finished"] = True
        return figures
    finally:
        stop_all(workers, engine)


def report(figures: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    def show(key: str, unit: str = "") -> str:
        value = figures.get(key)
        return "not reached" if value is None else f"{value}{unit}"

    single = figures.get("single_start_ms") or {}
    workers = figures["workers"]
    runworkers = "one runworker" if workers == 1 else f"{workers} runworkers"
    engine = "hosted by runworker-0" if setup["engine"] == "in-process" else "in its own process"
    each = "runworker" if workers == 1 else "a runworker (the most of any)"
    return [
        f"# {figures['schedules']:,} waiting schedules, {runworkers} ({setup['database']}, "
        f"{setup['cpus']} CPUs, load {setup['load_average']}; the engine {engine})",
        "",
        "| what | measured |",
        "| --- | --- |",
        f"| admin select all -> Start: the request | {show('start_request_s', ' s')} |",
        f"| ... every orchestration live in the engine after | {show('all_live_after_s', ' s')} |",
        f"| ... every first run started after | {show('all_running_after_s', ' s')} |",
        f"| ... all waiting on their timer after | {show('all_waiting_after_s', ' s')} |",
        f"| {each} while all wait: threads | {show('waiting_threads')} |",
        f"| {each} while all wait: RSS | {show('waiting_rss_mb', ' MB')} |",
        f"| {each}, peak over the bench: threads, RSS (VmHWM) | {show('peak_threads')}, "
        f"{show('peak_rss_mb', ' MB')} |",
        f"| admin select all -> Pause: the request; all suspended after | "
        f"{show('pause_schedules_request_s', ' s')}; "
        f"{show('pause_schedules_engine_done_s', ' s')} |",
        f"| admin select all -> Resume: the request; all running after | "
        f"{show('resume_schedules_request_s', ' s')}; "
        f"{show('resume_schedules_engine_done_s', ' s')} |",
        f"| a single `start_schedule` (p50, max of {single.get('count', 0)}) | "
        f"{single.get('p50', '-')} ms, {single.get('max', '-')} ms |",
        "",
        *engine_calls.calls_table(
            "## Engine calls, the fleet waiting", figures.get("calls_waiting")
        ),
        *engine_calls.calls_table(
            "## Engine calls, one schedule in ten paused and resumed", figures.get("calls_churn")
        ),
        engine_calls.failover_line(figures.get("failover")),
    ]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"bench/waiting.py: {message}\n")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=positive_int, default=10_000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=positive_int, default=1, help="runworker processes")
    parser.add_argument(
        "--engine",
        choices=["in-process", "separate"],
        default="in-process",
        help="in-process: runworker-0 hosts the embedded engine; separate: a process of its own",
    )
    parser.add_argument(
        "--quiet",
        type=positive_float,
        default=60.0,
        help="s of each engine-call window (all waiting; one in ten paused and resumed)",
    )
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
    args.engine_port = fleet.free_port()
    try:
        fleet.setup_django(
            argparse.Namespace(
                engine=args.engine,
                database=args.database,
                bulk_start_rate=args.bulk_start_rate,
            ),
            workdir,
            args.engine_port,
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
                    engine=args.engine,
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
