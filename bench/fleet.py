# ruff: noqa: E402 (the project root goes on sys.path before the project's imports)
"""Fleet: N schedules started at once from the admin, run by one runworker; the same load on the
bare Durable Task SDK beside it, in the same run.

    .venv/bin/python bench/fleet.py [--schedules 100] [--interval 2] [--iterations 5]
                                    [--cadence fixed_rate|fixed_delay]
                                    [--engine in-process|separate] [--database sqlite|postgres]
                                    [--bulk-start-rate R]
                                    [--skip-sdk] [--seed 0]

(from the project root; it makes its own SQLite database in a new temporary directory, whatever
DATABASE_URL or DJANGO_SETTINGS_MODULE say, and leaves nothing behind). ``--database postgres``
measures PostgreSQL instead: ``BENCH_DATABASE_URL=postgres://user@host:port/any`` names a
server, where it creates a database of its own and drops it at the end (bin/_postgres.sh starts
a throwaway server).

Set-up. Every process reads the project's own settings (``cleanupsite.settings``, DEBUG off, a
bench secret key, no .env) with the project's defaults pinned (RECONCILE_INTERVAL 5 s,
MISSED_RUN_GRACE_SECONDS 2 s, ENGINE_CALL_TIMEOUT 5 s, INFO logging). The database is migrated
and gets a superuser and ``--schedules`` stopped schedules of the built-in ``sample`` task
(``{"seconds": 0}``: it waits for nothing and deletes nothing), every ``--interval`` s on the
``--cadence``, ``max_iterations`` ``--iterations``, missed runs ``run_once`` (one INSERT, then
each one's instance id). One ``manage.py runworker`` runs them all, with its default
concurrency. ``--engine in-process`` (the default): it hosts the embedded engine itself, as
``bin/run`` does. ``--engine separate``: the same embedded engine runs in a process of its own
(this script, ``--role engine``: the engine and nothing else, so the runworker measured is the
only worker) and the runworker connects to it with ``ENDPOINT=http://127.0.0.1:<port>``, as it
would to the emulator. This process talks to the engine as the web process does.

Measured, cleanups. A superuser (django.test.Client, force_login; one GET of the schedule list
first, so the timed request is not the process's first) selects every schedule ("select all"
across pages) and posts the admin's **Start selected schedules**: the time of that request is
"bulk start request". For more than the admin's one-by-one limit (20) it writes the desired
state in one statement and leaves the engine calls to a pool of threads; "engine calls made
after" is when that pool is done (``control.wait_for_bulk_engine_calls``), from the request's
start. Then it waits until every schedule has stopped with "Completed" (its iterations done),
at most ``iterations * interval * 3 + 60`` s, while a thread reads the runworker's
/proc/<pid>/status every 0.2 s: peak RSS is the kernel's high-water mark (VmHWM), peak threads
the most seen. From the run records: "all running after", the start of the last schedule's
first run, from the request's start; runs/s, the runs over the span from the first run's start
to the last one's; skipped slots, the slots in ``skipped`` rows (1 for a row that names none);
lateness, started_at - planned_at of every run that has a planned time (a start's first run is
planned for the moment of the start, so it includes getting the fleet going), p50/p99 by
nearest rank, and the maximum; and p50/p99 of the runs after each schedule's first, the
steady state.

Measured, the bare SDK (unless ``--skip-sdk``). After the runworker has stopped: a fresh engine,
placed as above (in-process: hosted by the worker process; separate: ``--role engine``), and a
worker process that is this script (``--role sdk-worker``, without Django), built through
``cleanups.durable.connection`` like every client and worker of the project, with the SDK's
default concurrency. Its orchestration is the sample's loop at the same load: wait for the
planned time (a durable timer), call a no-op activity, continue as new with the next planned
time (fixed rate: the start + i * interval; fixed delay: the activity's end + interval), for
``--iterations`` iterations; ``--schedules`` instances, started by this process with
``schedule_new_orchestration`` on as many threads as the admin's pool ("bulk start request": all
those calls). Instance n's grid begins as long after that start as schedule n's anchor was after
the admin's request: timers that fall due together are a heavier load than the same timers
spread out. A bulk start spreads the fleet's first runs (CLEANUP_BULK_START_RATE, default 20 a
second, evenly within one interval); ``--bulk-start-rate 0`` gives the whole fleet one anchor,
the herd. The activity writes the time it began and its planned time to a file; the same
figures come from it. The last column is cleanups / SDK where the two measure the same thing.

The machine's CPU count and load average are printed with the report: other work on the
machine moves every figure. Nothing here is random but the row the admin form names (``--seed``
picks it; with "select all" it selects nothing more or less): the same flags ask for the same
work.

Stdout is the Markdown report, then ``RESULT {json}`` (the figures) and ``SETUP {json}`` (what
was measured, where); progress goes to stderr. Exit status 0 when both phases finished (a
measurement, not a pass or fail), 1 when one did not finish in time (the report says what it
got), 2 on a bad flag (one line) or when the bench itself failed (a process would not start).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only what the bare SDK worker needs is imported here: it must not load Django, or its memory
# would not be the SDK's. Django and the project's models are imported after django.setup(),
# inside the functions of the cleanups phase.
from durabletask import client as dt_client
from durabletask import task

from cleanups.engine.config import EMBEDDED_HOST, EngineConfig, EngineMode
from cleanups.engine.connection import build_client, build_embedded_engine, build_worker
from cleanups.management.arguments import positive_int

TASKHUB = "default"
SDK_PREFIX = "fleet-sdk-"
SDK_ORCHESTRATION = "fleet_loop"
SAMPLE_EVERY = 0.2  # seconds between two reads of a process's /proc status
STOP_TIMEOUT = 30.0  # SIGTERM, then SIGKILL after this long
READY_TIMEOUT = 120.0
SUPERUSER = "bench"
ENGINE_READY = "fleet engine listening on"
SDK_READY = "fleet SDK worker started"
RUNWORKER_READY = r"Press Ctrl\+C to stop"
CALL_TIMEOUT = 5.0  # the project's ENGINE_CALL_TIMEOUT, for the SDK phase's client

# The project's defaults, pinned: a developer's shell must not change what is measured.
PINNED_ENV = {
    "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
    "ENV_FILE": os.devnull,
    "DEBUG": "false",
    "SECRET_KEY": "bench-fleet-secret-key",
    "TASKHUB": TASKHUB,
    "RECONCILE_INTERVAL": "5",
    "MISSED_RUN_GRACE_SECONDS": "2",
    "ENGINE_CALL_TIMEOUT": str(CALL_TIMEOUT),
    "STUCK_RUN_GRACE_SECONDS": "60",
    "WORKER_STOP_SECONDS": "20",
    "LOG_LEVEL": "INFO",
    "DURABLETASK_LOG_LEVEL": "WARNING",
    "TIME_ZONE": "UTC",
    "EMAIL_URL": "dummymail://",
    "PYTHONUNBUFFERED": "1",
}


class BenchError(RuntimeError):
    """The bench itself could not go on (a process would not start): not a finding."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((EMBEDDED_HOST, 0))
        return sock.getsockname()[1]


def embedded_config(port: int) -> EngineConfig:
    """The embedded engine on ``port``, as a process that hosts it (or the web process) sees it."""
    return EngineConfig(EngineMode.EMBEDDED, f"{EMBEDDED_HOST}:{port}", TASKHUB, False, port=port)


def connecting_config(port: int) -> EngineConfig:
    """The same engine, as a process that connects to it with ENDPOINT=http://... sees it."""
    return EngineConfig(EngineMode.EMULATOR, f"http://{EMBEDDED_HOST}:{port}", TASKHUB, False)


def wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT (the children's way of being stopped)."""
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping.wait()


# The child roles: an engine alone, and the bare SDK's worker --------------------------------


def serve_engine(port: int) -> int:
    """--role engine: the project's embedded engine in a process of its own, nothing else."""
    engine = build_embedded_engine(embedded_config(port))
    print(f"{ENGINE_READY} {engine.start()}", flush=True)
    wait_for_stop_signal()
    engine.stop(grace=1)
    return 0


class RunLog:
    """Where the SDK's activity writes each run: one JSON line, flushed, for the parent to read."""

    file: TextIO | None = None
    lock = threading.Lock()

    @classmethod
    def write(cls, record: dict[str, Any]) -> None:
        with cls.lock:
            assert cls.file is not None
            cls.file.write(json.dumps(record) + "\n")


def fleet_loop(ctx: task.OrchestrationContext, state: dict[str, Any]) -> Any:
    """The sample's loop on the bare SDK: wait for the planned time, run, continue as new.

    The same order of steps as periodic_cleanup (timer, activity, continue-as-new), so both pay
    the same engine round trips per run. Deterministic: the next planned time comes from the
    input and the activity's result only."""
    due = datetime.fromtimestamp(state["planned"], UTC).replace(tzinfo=None)
    if due > ctx.current_utc_datetime:
        yield ctx.create_timer(due)
    ended = yield ctx.call_activity(
        fleet_tick, input={"i": state["i"], "planned": state["planned"]}
    )
    following = state["i"] + 1
    if following >= state["iterations"]:
        return following
    if state["cadence"] == "fixed_rate":
        planned = state["start"] + following * state["interval"]
    else:
        planned = ended + state["interval"]
    ctx.continue_as_new({**state, "i": following, "planned": planned})
    return None


def fleet_tick(ctx: task.ActivityContext, run: dict[str, Any]) -> float:
    """The no-op run: record when it began against when it was planned; return when it ended."""
    started = time.time()
    RunLog.write(
        {"id": ctx.orchestration_id, "i": run["i"], "planned": run["planned"], "started": started}
    )
    return time.time()


def serve_sdk_worker(engine: str, port: int, record: Path) -> int:
    """--role sdk-worker: the SDK's worker with the loop above; it hosts the engine in-process."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hosted = None
    if engine == "in-process":
        config = embedded_config(port)
        hosted = build_embedded_engine(config)
        hosted.start()
    else:
        config = connecting_config(port)
    RunLog.file = record.open("a", buffering=1)
    worker = build_worker(config)
    worker.add_orchestrator(fleet_loop)
    worker.add_activity(fleet_tick)
    worker.start()
    print(SDK_READY, flush=True)
    wait_for_stop_signal()
    # As runworker does: the SDK's stop waits for its work items for ever; bounded here.
    stopper = threading.Thread(target=worker.stop, daemon=True)
    stopper.start()
    stopper.join(20)
    if hosted is not None:
        hosted.stop(grace=1)
    RunLog.file.close()
    if stopper.is_alive():
        os._exit(0)
    return 0


# Child processes ------------------------------------------------------------------------------

# The child sets PR_SET_PDEATHSIG before it becomes its program, so a bench killed by a timeout
# leaves no process behind (as bench/faults.py does). Only the main thread spawns: Linux ties
# the signal to the thread that spawned the child.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (AttributeError, OSError):
    pass
if os.getppid() != int(os.environ["FLEET_BENCH_PID"]):
    sys.exit("bench/fleet.py is gone")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


class Child:
    """A child process (runworker, an engine, the SDK worker), its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], ready: str, workdir: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = {**env, "FLEET_BENCH_PID": str(os.getpid())}
        self.ready = re.compile(ready)
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> Child:
        """Start it and wait until it says it is ready."""
        assert threading.current_thread() is threading.main_thread(), "see _DIE_WITH_PARENT"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, *self.argv],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.search(self.output()):
            if not self.running:
                raise BenchError(f"{self.name} exited while starting:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.1)
        return self

    def check_alive(self) -> None:
        if not self.running:
            raise BenchError(f"{self.name} died:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM (its clean shutdown), SIGKILL after STOP_TIMEOUT."""
        if self.process is None:
            return
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop in {STOP_TIMEOUT:.0f} s: SIGKILL")
            self.process.kill()
            self.process.wait()


@dataclass
class Peak:
    rss_kb: int = 0  # VmHWM: the kernel's own high-water mark, exact between samples too
    threads: int = 0

    @property
    def rss_mb(self) -> float | None:
        return self.rss_kb / 1024 if self.rss_kb else None


class Sampler:
    """Peak RSS and thread count of some processes, read from /proc every SAMPLE_EVERY s."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peaks = {name: Peak() for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            status = read_status(pid)
            peak = self.peaks[name]
            peak.rss_kb = max(peak.rss_kb, status.get("VmHWM", 0))
            peak.threads = max(peak.threads, status.get("Threads", 0))


def read_status(pid: int) -> dict[str, int]:
    """VmHWM (kB) and Threads of a live process; {} once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "Threads"):
            found[key] = int(value.split()[0])
    return found


# Figures --------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One phase's figures; None where it does not apply or nothing was measured."""

    finished: bool
    completed: int  # schedules (instances) that ran all their iterations
    runs: int
    iterations: int  # run rows and skipped rows: a skipped row takes an iteration
    succeeded: int | None
    skipped_rows: int | None
    skipped_slots: int | None
    bulk_start_request_s: float
    engine_calls_done_s: float
    all_running_after_s: float | None
    runs_per_s: float | None
    lateness_ms: dict[str, float | None]
    later_lateness_ms: dict[str, float | None]  # every run but each schedule's first
    runworker_peak_rss_mb: float | None
    peak_threads: int
    engine_host_peak_rss_mb: float | None = None
    engine_host_peak_threads: int | None = None
    seconds: float = 0.0  # from the start until all were seen done (polled every 0.25 s)


def nearest_rank(ordered: list[float], percent: float) -> float:
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def lateness_summary(late_ms: list[float]) -> dict[str, float | None]:
    if not late_ms:
        return {"p50": None, "p99": None, "max": None, "count": 0}
    ordered = sorted(late_ms)
    return {
        "p50": round(nearest_rank(ordered, 50), 1),
        "p99": round(nearest_rank(ordered, 99), 1),
        "max": round(ordered[-1], 1),
        "count": len(ordered),
    }


def runs_per_second(starts: list[float]) -> float | None:
    """Runs over the span from the first run's start to the last one's."""
    if len(starts) < 2 or max(starts) <= min(starts):
        return None
    return round(len(starts) / (max(starts) - min(starts)), 2)


def peak_figures(sampler: Sampler) -> dict[str, Any]:
    """The measured worker's peaks, and the engine host's (``--engine separate``)."""
    worker, host = sampler.peaks["worker"], sampler.peaks.get("engine")
    return {
        "runworker_peak_rss_mb": worker.rss_mb,
        "peak_threads": worker.threads,
        "engine_host_peak_rss_mb": host.rss_mb if host else None,
        "engine_host_peak_threads": host.threads if host else None,
    }


def sampled_pids(worker: Child, host: Child | None) -> dict[str, int]:
    return {"worker": worker.pid, **({"engine": host.pid} if host else {})}


def wait_for(
    count: Callable[[], int], total: int, deadline: float, what: str, alive: list[Child]
) -> bool:
    """Poll ``count()`` until it reaches ``total`` (True) or the deadline passes (False)."""
    said = time.monotonic()
    while True:
        done = count()
        if done >= total:
            return True
        for child in alive:
            child.check_alive()
        if time.monotonic() > deadline:
            say(f"  {what}: {done}/{total} when the time ran out")
            return False
        if time.monotonic() - said >= 5:
            say(f"  {what}: {done}/{total}")
            said = time.monotonic()
        time.sleep(0.25)


def phase_timeout(args: argparse.Namespace) -> float:
    return args.iterations * args.interval * 3 + 60


def start_engine_host(
    args: argparse.Namespace, port: int, env: dict[str, str], workdir: Path, phase: str
) -> Child | None:
    """The engine's own process with ``--engine separate`` (started), else None."""
    if args.engine != "separate":
        return None
    argv = ["bench/fleet.py", "--role", "engine", "--port", str(port)]
    return Child(f"{phase}-engine", argv, env, ENGINE_READY, workdir).start()


# Phase 1: cleanups ----------------------------------------------------------------------------


def database_url(args: argparse.Namespace, workdir: Path) -> str:
    if args.database == "sqlite":
        return f"sqlite:///{workdir / 'fleet.sqlite3'}"
    server = urlsplit(os.environ["BENCH_DATABASE_URL"])
    return server._replace(path=f"/cleanups_fleet_{os.getpid()}").geturl()


def setup_django(args: argparse.Namespace, workdir: Path, port: int) -> dict[str, str]:
    """Point this process's settings (and the children's environment) at the bench's own
    database and engine, then django.setup(). Returns the children's environment."""
    endpoint = f"http://{EMBEDDED_HOST}:{port}" if args.engine == "separate" else ""
    os.environ.update(
        {
            **PINNED_ENV,
            "DATABASE_URL": database_url(args, workdir),
            "ENDPOINT": endpoint,
            "EMBEDDED_ENGINE_PORT": str(port),
            # The settings create STATIC_ROOT: in the temporary directory, not the project.
            "STATIC_ROOT": str(workdir / "static"),
        }
    )
    if getattr(args, "bulk_start_rate", None) is not None:
        os.environ["CLEANUP_BULK_START_RATE"] = str(args.bulk_start_rate)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_DATABASE_URL", "BENCH_DB")}
    import django

    django.setup()
    return env


def create_database(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    if args.database == "postgres":
        with connection._nodb_cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{connection.settings_dict["NAME"]}"')
    call_command("migrate", verbosity=0)


def drop_database(args: argparse.Namespace) -> None:
    from django.db import connection, connections

    connections.close_all()
    if args.database != "postgres":
        return
    name = connection.settings_dict["NAME"]
    with connection._nodb_cursor() as cursor:
        # A child killed mid-query may have left its session behind; DROP refuses while any is.
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')


def create_schedules(args: argparse.Namespace) -> Any:
    """The superuser, and ``--schedules`` stopped schedules in one INSERT (as tests/test_fleet.py
    makes a fleet), each with its instance id. Returns the superuser."""
    from django.contrib.auth import get_user_model
    from django.db.models import CharField, Value
    from django.db.models.functions import Cast, Concat

    from cleanups.models import INSTANCE_ID_PREFIX, CleanupSchedule

    user = get_user_model().objects.create_superuser(SUPERUSER, "bench@example.com", SUPERUSER)
    CleanupSchedule.objects.bulk_create(
        CleanupSchedule(
            name=f"fleet-{n:05}",
            task="sample",
            params={"seconds": 0},
            interval=timedelta(seconds=args.interval),
            cadence=args.cadence,
            max_iterations=args.iterations,
            missed_runs=CleanupSchedule.MissedRuns.RUN_ONCE,
            changed_by=user,
        )
        for n in range(args.schedules)
    )
    CleanupSchedule.objects.update(
        instance_id=Concat(Value(INSTANCE_ID_PREFIX), Cast("pk", CharField()))
    )
    return user


def start_from_the_admin(user: Any, seed: int) -> tuple[float, float]:
    """Post the admin's "Start selected schedules" for all of them, as an operator who ticked
    "select all" does. Returns when it began (epoch) and how long the request took (s)."""
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from cleanups.models import CleanupSchedule

    setup_test_environment()  # the test client's 'testserver' host is allowed
    client = Client()
    client.force_login(user)
    url = reverse("admin:cleanups_cleanupschedule_changelist")
    warm = client.get(url)  # imports, URLs, templates: not part of the timed request
    if warm.status_code != 200:
        raise BenchError(f"the admin's schedule list answered {warm.status_code}")
    pks = sorted(CleanupSchedule.objects.values_list("pk", flat=True))
    data = {
        "action": "start_schedules",
        "select_across": "1",
        "index": "0",
        "_selected_action": [str(random.Random(seed).choice(pks))],
    }
    began = time.time()
    clock = time.perf_counter()
    response = client.post(url, data)
    took = time.perf_counter() - clock
    if response.status_code != 302:
        raise BenchError(f"the admin's start action answered {response.status_code}")
    started = CleanupSchedule.objects.exclude(generation=0).count()
    if started != len(pks):
        raise BenchError(f"the admin's start action started {started} of {len(pks)} schedules")
    return began, took


def completed_schedules() -> int:
    from cleanups.models import CleanupSchedule

    return CleanupSchedule.objects.filter(
        desired_state=CleanupSchedule.DesiredState.STOPPED, status_reason__startswith="Completed"
    ).count()


def cleanups_figures(began: float) -> dict[str, Any]:
    """Runs, skipped slots, lateness and start times, from the run records."""
    from cleanups.models import CleanupRun

    skipped = CleanupRun.Status.SKIPPED
    rows = list(
        CleanupRun.objects.values_list(
            "schedule_id", "status", "planned_at", "started_at", "details"
        )
    )
    runs = [row for row in rows if row[1] != skipped]
    first_start: dict[int, float] = {}
    for schedule, _, _, started, _ in runs:
        first_start[schedule] = min(first_start.get(schedule, math.inf), started.timestamp())
    late = [
        (started - planned).total_seconds() * 1000 for _, _, planned, started, _ in runs if planned
    ]
    later = [
        (started - planned).total_seconds() * 1000
        for schedule, _, planned, started, _ in runs
        if planned and started.timestamp() > first_start[schedule]
    ]
    return {
        "runs": len(runs),
        "iterations": len(rows),
        "succeeded": sum(row[1] == CleanupRun.Status.SUCCEEDED for row in runs),
        "skipped_rows": len(rows) - len(runs),
        "skipped_slots": sum(
            int((row[4] or {}).get("slots", 1)) for row in rows if row[1] == skipped
        ),
        "all_running_after_s": round(max(first_start.values()) - began, 3) if first_start else None,
        "runs_per_s": runs_per_second([row[3].timestamp() for row in runs]),
        "lateness_ms": lateness_summary(late),
        "later_lateness_ms": lateness_summary(later),
    }


def anchor_offsets(began: float) -> list[float]:
    """When each schedule's grid began (its anchor, the start's first run), in s after the
    admin's request began, in pk order: the SDK's instances get the same grids."""
    from cleanups.models import CleanupSchedule

    anchors = CleanupSchedule.objects.order_by("pk").values_list("anchor_at", flat=True)
    return [max(0.0, anchor.timestamp() - began) if anchor else 0.0 for anchor in anchors]


def run_cleanups(
    args: argparse.Namespace, env: dict[str, str], port: int, workdir: Path
) -> tuple[Measured, list[float]]:
    from cleanups import control

    user = create_schedules(args)
    say(f"{args.schedules} schedules; starting runworker (engine {args.engine})")
    started: list[Child] = []
    try:
        host = start_engine_host(args, port, env, workdir, "cleanups")
        if host is not None:
            started.append(host)
        worker = Child("runworker", ["manage.py", "runworker"], env, RUNWORKER_READY, workdir)
        started.append(worker)
        worker.start()
        with Sampler(sampled_pids(worker, host)) as sampler:
            say("posting the admin's start action")
            began, request_s = start_from_the_admin(user, args.seed)
            control.wait_for_bulk_engine_calls(timeout=phase_timeout(args))
            calls_s = time.time() - began
            say(f"  request {request_s:.3f} s, engine calls made after {calls_s:.3f} s")
            deadline = time.monotonic() + phase_timeout(args)
            finished = wait_for(
                completed_schedules, args.schedules, deadline, "schedules completed", started
            )
            seconds = time.time() - began
    finally:
        for child in reversed(started):
            child.stop()
    figures = cleanups_figures(began)
    measured = Measured(
        finished=finished,
        completed=completed_schedules(),
        bulk_start_request_s=round(request_s, 3),
        engine_calls_done_s=round(calls_s, 3),
        seconds=round(seconds, 1),
        **figures,
        **peak_figures(sampler),
    )
    return measured, anchor_offsets(began)


# Phase 2: the bare SDK ------------------------------------------------------------------------


def start_sdk_instances(
    args: argparse.Namespace,
    client: dt_client.TaskHubGrpcClient,
    offsets: list[float],
    threads: int,
) -> float:
    """Schedule every instance, on as many threads as the admin's pool; returns the start.

    Instance n's grid begins ``offsets[n]`` s after the start, as schedule n's did after the
    admin's request: the same load is the same grid. (Timers that all fall due at one instant
    are a heavier load than the same timers spread out: the admin's one-by-one start spreads
    them over the request, its bulk start does not.)"""
    start = time.time()

    def schedule(n: int) -> None:
        first = start + offsets[n]
        state = {
            "i": 0,
            "start": first,
            "planned": first,  # a start's first run is due at once, as in cleanups
            "interval": args.interval,
            "iterations": args.iterations,
            "cadence": args.cadence,
        }
        client.schedule_new_orchestration(
            SDK_ORCHESTRATION, input=state, instance_id=f"{SDK_PREFIX}{n:05}"
        )

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(schedule, range(len(offsets))))
    return start


def read_sdk_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def completed_instances(client: dt_client.TaskHubGrpcClient) -> int:
    query = dt_client.OrchestrationQuery(
        instance_id_prefix=SDK_PREFIX,
        runtime_status=[dt_client.OrchestrationStatus.COMPLETED],
    )
    return len(client.get_all_orchestration_states(query))


def sdk_figures(runs: list[dict[str, Any]], began: float) -> dict[str, Any]:
    firsts = [run["started"] for run in runs if run["i"] == 0]
    return {
        "runs": len(runs),
        "iterations": len(runs),
        "succeeded": None,
        "skipped_rows": None,
        "skipped_slots": None,
        "all_running_after_s": round(max(firsts) - began, 3) if firsts else None,
        "runs_per_s": runs_per_second([run["started"] for run in runs]),
        "lateness_ms": lateness_summary([(r["started"] - r["planned"]) * 1000 for r in runs]),
        "later_lateness_ms": lateness_summary(
            [(r["started"] - r["planned"]) * 1000 for r in runs if r["i"] > 0]
        ),
    }


def run_sdk(
    args: argparse.Namespace,
    env: dict[str, str],
    workdir: Path,
    offsets: list[float],
    setup: dict[str, Any],
) -> Measured:
    port = free_port()  # a fresh engine: nothing of the cleanups phase in it
    record = workdir / "sdk-runs.jsonl"
    say(f"bare SDK: {args.schedules} instances (engine {args.engine})")
    started: list[Child] = []
    total = args.schedules * args.iterations
    client = build_client(
        connecting_config(port) if args.engine == "separate" else embedded_config(port),
        CALL_TIMEOUT,
    )
    try:
        host = start_engine_host(args, port, env, workdir, "sdk")
        if host is not None:
            started.append(host)
        argv = ["bench/fleet.py", "--role", "sdk-worker", "--engine", args.engine]
        argv += ["--port", str(port), "--record", str(record)]
        worker = Child("sdk-worker", argv, env, SDK_READY, workdir)
        started.append(worker)
        worker.start()
        with Sampler(sampled_pids(worker, host)) as sampler:
            clock = time.perf_counter()
            began = start_sdk_instances(args, client, offsets, setup["bulk_threads"])
            request_s = time.perf_counter() - clock
            say(f"  {args.schedules} starts made in {request_s:.3f} s")
            deadline = time.monotonic() + phase_timeout(args)
            finished = wait_for(
                lambda: len(read_sdk_runs(record)), total, deadline, "SDK runs", started
            ) and wait_for(
                lambda: completed_instances(client), args.schedules, deadline, "SDK done", started
            )
            completed = completed_instances(client)
            seconds = time.time() - began
    finally:
        client.close()
        for child in reversed(started):
            child.stop()
    return Measured(
        finished=finished,
        completed=completed,
        bulk_start_request_s=round(request_s, 3),
        engine_calls_done_s=round(request_s, 3),
        seconds=round(seconds, 1),
        **sdk_figures(read_sdk_runs(record), began),
        **peak_figures(sampler),
    )


# Report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    value: Callable[[Measured], float | int | None]
    digits: int
    ratio: bool  # cleanups / SDK measures the same thing


ROWS = [
    Row("bulk start request (s)", lambda m: m.bulk_start_request_s, 3, False),
    Row("engine calls made after (s)", lambda m: m.engine_calls_done_s, 3, False),
    Row("all running after (s)", lambda m: m.all_running_after_s, 2, True),
    Row("runs", lambda m: m.runs, 0, False),
    Row("runs/s", lambda m: m.runs_per_s, 1, True),
    Row("skipped slots", lambda m: m.skipped_slots, 0, False),
    Row("lateness p50 (ms)", lambda m: m.lateness_ms["p50"], 1, True),
    Row("lateness p99 (ms)", lambda m: m.lateness_ms["p99"], 1, True),
    Row("lateness max (ms)", lambda m: m.lateness_ms["max"], 1, True),
    Row("lateness p50, runs after the first (ms)", lambda m: m.later_lateness_ms["p50"], 1, True),
    Row("lateness p99, runs after the first (ms)", lambda m: m.later_lateness_ms["p99"], 1, True),
    Row("runworker peak RSS (MB)", lambda m: m.runworker_peak_rss_mb, 1, True),
    Row("peak threads", lambda m: m.peak_threads, 0, True),
]
ENGINE_HOST_ROWS = [
    Row("engine host peak RSS (MB)", lambda m: m.engine_host_peak_rss_mb, 1, True),
    Row("engine host peak threads", lambda m: m.engine_host_peak_threads, 0, True),
]


def show(value: float | int | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(ours: float | int | None, theirs: float | int | None) -> float | None:
    if ours is None or not theirs:
        return None
    return round(ours / theirs, 2)


def header(
    args: argparse.Namespace, ours: Measured, sdk: Measured | None, setup: dict[str, Any]
) -> list[str]:
    one_by_one = setup["admin_one_by_one"]
    how = "one by one" if args.schedules <= one_by_one else "bulk"
    placement = {
        "in-process": "in-process (the worker process hosts the embedded engine)",
        "separate": "separate (the embedded engine in a process of its own; the worker "
        "connects with ENDPOINT)",
    }[args.engine]
    # The rate the load itself asks for, by the runs/s row's measure (all runs over the span
    # from the first start to the last); fixed delay adds each run's time: an upper bound.
    asked = args.schedules * args.iterations / max(1, args.iterations - 1) / args.interval
    at_most = "at most " if args.cadence == "fixed_delay" else ""
    lines = [
        f'**Fleet: {args.schedules} schedules of `sample` `{{"seconds": 0}}`, {args.cadence} '
        f"every {args.interval:g} s, {args.iterations} iterations each "
        f"({args.schedules * args.iterations:,} runs); engine {placement}; {setup['database']}**",
        "",
        f"- the admin's start of all of them ({how}: up to {one_by_one} the admin starts each "
        "in the request, more in one statement and a pool of engine calls)",
        f"- the load asks for {at_most}{asked:,.1f} runs/s by the same measure; "
        f"{setup['cpus']} CPUs, load average {setup['load_average']} before the bench "
        "(other work on the machine moves every figure)",
        f"- cleanups: {ours.completed} of {args.schedules} schedules completed in "
        f"{ours.seconds:g} s; {ours.runs:,} runs, {ours.skipped_rows} skipped rows"
        + ("" if ours.finished else " — **did not finish in time**"),
    ]
    if sdk is not None:
        lines.append(
            f"- bare SDK: {sdk.completed} of {args.schedules} instances completed in "
            f"{sdk.seconds:g} s; {sdk.runs:,} runs"
            + ("" if sdk.finished else " — **did not finish in time**")
        )
    return lines


def table(rows: list[Row], ours: Measured, sdk: Measured | None) -> list[str]:
    lines = ["| | cleanups | bare SDK | cleanups / SDK |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        mine = row.value(ours)
        theirs = row.value(sdk) if sdk is not None else None
        times = ratio(mine, theirs) if row.ratio else None
        lines.append(
            f"| {row.label} | {show(mine, row.digits)} | {show(theirs, row.digits)} | "
            f"{'—' if times is None else f'{times:.2f}x'} |"
        )
    return lines


def result(ours: Measured, sdk: Measured | None) -> dict[str, Any]:
    def times(value: Callable[[Measured], float | int | None]) -> float | None:
        return ratio(value(ours), value(sdk)) if sdk is not None else None

    return {
        "cleanups": asdict(ours),
        "sdk": asdict(sdk) if sdk is not None else None,
        "ratio": {
            "all_running_after": times(lambda m: m.all_running_after_s),
            "runs_per_s": times(lambda m: m.runs_per_s),
            "lateness_p50": times(lambda m: m.lateness_ms["p50"]),
            "lateness_p99": times(lambda m: m.lateness_ms["p99"]),
            "lateness_max": times(lambda m: m.lateness_ms["max"]),
            "later_lateness_p99": times(lambda m: m.later_lateness_ms["p99"]),
            "peak_rss": times(lambda m: m.runworker_peak_rss_mb),
            "peak_threads": times(lambda m: m.peak_threads),
        },
    }


def report(
    args: argparse.Namespace, ours: Measured, sdk: Measured | None, setup: dict[str, Any]
) -> list[str]:
    rows = ROWS + (ENGINE_HOST_ROWS if args.engine == "separate" else [])
    return [
        *header(args, ours, sdk, setup),
        "",
        *table(rows, ours, sdk),
        "",
        'The bare SDK\'s "bulk start request" is its '
        f"{args.schedules} `schedule_new_orchestration` calls on {setup['bulk_threads']} "
        "threads; cleanups' is the admin's POST, whose engine calls (the next row) may end "
        "before it does. The runworker row's SDK column is the SDK's worker process (without "
        "Django). Lateness: started - planned of every run; a start's first run is planned at "
        "the start.",
        "",
        f"RESULT {json.dumps(result(ours, sdk))}",
        f"SETUP {json.dumps(setup)}",
    ]


# Main -----------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"bench/{self.prog}: {message}\n")  # one line, not the usage


def interval_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {value!r}") from None
    if not number >= 1:  # the schedule's own minimum (MIN_INTERVAL)
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {value}")
    return number


def non_negative_number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return number


def parse(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--schedules", type=positive_int, default=100, help="%(default)s")
    parser.add_argument("--interval", type=interval_seconds, default=2.0, help="s, %(default)s")
    parser.add_argument(
        "--iterations", type=positive_int, default=5, help="per schedule (max_iterations)"
    )
    parser.add_argument("--cadence", choices=["fixed_rate", "fixed_delay"], default="fixed_rate")
    parser.add_argument("--engine", choices=["in-process", "separate"], default="in-process")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--bulk-start-rate",
        type=non_negative_number,
        help="CLEANUP_BULK_START_RATE for the start (default: the project's; 0: one anchor)",
    )
    parser.add_argument("--skip-sdk", action="store_true", help="no bare SDK comparison")
    parser.add_argument("--seed", type=int, default=0, help="picks the row the form names")
    # The child processes' roles: this same file, run by the bench.
    parser.add_argument("--role", choices=["engine", "sdk-worker"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.database == "postgres" and not os.environ.get("BENCH_DATABASE_URL"):
        parser.error(
            "--database postgres needs BENCH_DATABASE_URL=postgres://user@host:port/any "
            "(it makes a database of its own there)"
        )
    if args.role and not args.port:
        parser.error("--role needs --port")
    return args


def setup_description(args: argparse.Namespace) -> dict[str, Any]:
    """What was measured, where (after the database exists: it asks for its version)."""
    from django.db import connection

    from cleanups import control
    from cleanups.conf import settings

    if connection.vendor == "sqlite":
        database = "SQLite " + ".".join(map(str, connection.Database.sqlite_version_info))
    else:
        connection.ensure_connection()
        database = f"PostgreSQL {connection.pg_version // 10000}"
    return {
        "schedules": args.schedules,
        "interval": args.interval,
        "iterations": args.iterations,
        "cadence": args.cadence,
        "engine": args.engine,
        "database": database,
        "seed": args.seed,
        "admin_one_by_one": control.ONE_BY_ONE,
        "bulk_threads": control.BULK_ENGINE_THREADS,
        "bulk_start_rate": float(settings.CLEANUP_BULK_START_RATE),
        "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def measure(args: argparse.Namespace, workdir: Path) -> int:
    port = free_port()
    env = setup_django(args, workdir, port)
    try:
        say(f"database in {workdir}; migrating")
        create_database(args)
        setup = setup_description(args)
        ours, offsets = run_cleanups(args, env, port, workdir)
        sdk = None if args.skip_sdk else run_sdk(args, env, workdir, offsets, setup)
    finally:
        drop_database(args)
    print("\n".join(report(args, ours, sdk, setup)), flush=True)
    return 0 if ours.finished and (sdk is None or sdk.finished) else 1


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.role == "engine":
        return serve_engine(args.port)
    if args.role == "sdk-worker":
        return serve_sdk_worker(args.engine, args.port, args.record)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # so that the finally blocks stop the children

    signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="cleanups-fleet-"))
    started = time.perf_counter()
    try:
        return measure(args, workdir)
    except BenchError as error:
        say(f"bench/fleet.py: {error}")
        return 2
    except KeyboardInterrupt:
        say("bench/fleet.py: interrupted")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
