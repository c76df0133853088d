# ruff: noqa: E402 (the environment and django.setup() must come before the project's imports)
"""Fault injection: schedules on three runworker processes sharing one engine, while workers are
killed, the engine is stopped and restarted and operators act; then every guarantee is counted.

    .venv/bin/python bench/faults.py [--seconds 600] [--schedules 50] [--seed N] [--settle 30]
                                     [--keep] [--recheck DIR]

(from the project root; it makes its own SQLite database in a new temporary directory, whatever
DATABASE_URL or DJANGO_SETTINGS_MODULE say, and leaves nothing behind unless ``--keep``, which
also keeps what the checks read, so that ``--recheck DIR`` can run them again after a check
changed).

Set-up. Every process reads the project's own settings (``cleanupsite.settings``, DEBUG on, a
bench secret key, no .env) with ``RECONCILE_INTERVAL=1`` and the default missed-run grace (2 s).
``--schedules`` schedules of the built-in ``sample`` task: fast (``{"seconds": 0}``), slow (0.2 to
1.5 s) and failing (``{"seconds": "x"}``: a failed run every time; some with one retry); mostly
fixed delay and fixed rate every 1 to 3 s, a few cron every minute; missed runs ``run_once`` or
``skip``. Three ``manage.py runworker`` processes: one hosts the embedded engine on a free port,
two connect to it with ``ENDPOINT=http://127.0.0.1:<port>`` as they would to the emulator. A
``manage.py runserver`` serves the pages. This process talks to the engine as the web process
does, and makes every operator action through ``cleanups.control``.

For ``--seconds``, at random from the printed seed (the sequence of choices replays; their timing
depends on the machine), three threads act at once:

* faults, one at a time every 2 to 6 s: SIGKILL a connecting worker and start it again after 0
  to 3 s; SIGTERM the engine-hosting worker and start it again (its in-memory engine loses every
  orchestration: the reconciler must start them again from the database); SIGSTOP the
  engine-hosting worker for 0.5 to 3 s, then SIGCONT;
* an operator, every 0.3 to 1.2 s: pause, resume, start (a stopped schedule, sometimes a paused
  one), terminate, restart, bursts of run-now, and edits of the interval and cadence through the
  model, full_clean() and save(), as the admin's change form does;
* a browser: a superuser, logged in through /admin/login/, GETs the dashboard, status.json, run
  lists, schedule pages, run pages and the admin's schedule list.

A sampler reads every schedule's desired state, then the engine's states, twice a second. Then
the system settles: no more faults or actions, all three workers running, at least 10 s, and
until no run begun before settling is still ``running`` and no running schedule is overdue by
more than the grace and slack (at most ``--settle`` s more).

Invariants, each counted; 0 is the only pass. Times are the database's (planned_at, started_at,
finished_at), this process's clock for actions and faults and the workers' log lines (one
machine, one clock). The "record" of a slot is a run row or a ``skipped`` row.

* never early (planned_at): a run with a ``planned_at`` whose started_at is before it. Not
  measurable (and reported so) while CleanupRun has no ``planned_at``.
* never early (derived): where the plan follows from the data, a ``scheduled`` run that started
  before the slot its predecessor planned. The predecessor is the previous record by iteration
  that is not a manual run (a run-now moves nothing); it must have ended by its own execution
  (not running or interrupted; a skipped row only with the ``skip`` policy, whose next run waits
  for the next slot), and no start, pause, resume, restart or terminate of the schedule may fall
  between the two. The slot is computed as activities.py plans it (_plan_next, _next_after_run,
  _handle_missed_slots) with ``cleanups.cadence``: fixed delay, the end plus the interval; fixed
  rate, the next slot after the start on the grid anchored by the schedule's last start (read
  back after each start); cron, the next fire time; after an overrun, at once (``run_once``) or
  the next slot after the end (``skip``). If an edit of interval or cadence fell within 0.5 s of
  the predecessor's end (when the worker planned), the earliest candidate counts.
* every slot ran or is in a skipped row: per schedule, walk its records by iteration (manual runs
  aside) together with its state-changing actions in time order. After each record the next is
  due as above (the latest candidate; an interrupted run counts as ended when it was marked); it
  must start by the due time + the grace + 1 s (the most that may pass between the worker's
  lateness check and the row it writes), or one period more if it is a ``catch_up`` run (one
  missed slot becomes the catch-up run, by the policy); a skipped row covers the gap before it,
  however late it is written. A pause
  or terminate suspends the deadline; a resume (or a start of a paused schedule) sets it to the
  later of its end and the due time; a start from stopped to its end (cron: the next fire time),
  a restart to its end, in both cases past any engine fault that began before it was due (plus
  two reconcile intervals; the worker never records a start's first run as late); an action
  that found the engine unreachable counts from the end of the engine fault that covered it plus
  two reconcile intervals. A deadline that passes before the next action, the next record or the
  end of the bench (settled) is one violation. So gaps the operator made (paused, stopped) do not
  count, and gaps from injected faults do unless the missed-run policy recorded them.
* no iteration twice: two rows with one (schedule, iteration) (the unique constraint forbids it),
  or one (schedule, iteration) executed to its end more than once by the workers' logs (their
  ``run schedule=... iteration=N status=... duration=...`` lines).
* never two at once: two runs of one schedule (skipped rows aside) whose executions overlap. An
  execution spans started_at to finished_at; for a run still running, to the check (unless its
  finished_at is set: its attempt ended and it waits for a retry); for an interrupted run, whose
  finished_at is when a reconciler marked it, to the death of its worker process or the log line
  of its last attempt's failure, whichever is known and first.
* no run left running: a run begun before settling that is still ``running`` after it.
* no running schedule without an orchestration: in the samples, a schedule whose desired state
  is running while the engine has no live orchestration for it (none, completed, failed,
  terminated) for more than two reconcile intervals (first to last such sample). Samples that
  overlap an engine fault (from the signal until the restarted worker says it started, or
  SIGCONT) or an action on that schedule do not count, and end a streak.
* no orchestration for a stopped schedule: after settling, a stopped schedule whose orchestration
  is live.
* operator actions' outcomes: after settling, each schedule as its last action left it:
  terminate, stopped and not live; start, resume, restart, running and live but not suspended;
  pause, paused and suspended (or with no orchestration: nothing runs). The desired state the actions lead to is replayed from what each
  action does (pause and resume change nothing on a stopped or not paused schedule).
* no HTTP 500: a page that answered 5xx, or an operator action that raised (in the admin, a 500).

Stdout: the seed first, then the Markdown report with up to five examples per invariant (each
with the faults near it), then ``VIOLATIONS {json}`` (null: not measurable) and ``SUMMARY {json}``.
Progress every 10 s on stderr. Exit status 1 when any invariant has a violation, 2 when the bench
itself failed (a worker would not start).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.cookiejar import CookieJar
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, OpenerDirector, build_opener
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


WORKDIR = Path(tempfile.mkdtemp(prefix="cleanups-faults-"))
ENGINE_PORT = free_port()
WEB_PORT = free_port()
RECONCILE_INTERVAL = 1.0
GRACE = 2.0  # MISSED_RUN_GRACE_SECONDS (the project's default), given to every process
# The worker checks lateness, then writes the run: a late start is recorded only if it was
# late at the check. This is the most that may pass between the two.
SLACK = 1.0
TOLERANCE = timedelta(seconds=GRACE + SLACK)
LIVENESS_LIMIT = timedelta(seconds=2 * RECONCILE_INTERVAL)
EDIT_UNCERTAINTY = timedelta(seconds=0.5)
MIN_SETTLE = max(10.0, 6 * RECONCILE_INTERVAL)
USERNAME, PASSWORD = "bench", "bench-faults-password"
INTERVALS = [1.0, 1.5, 2.0, 2.5, 3.0]
EXAMPLES = int(os.environ.get("FAULTS_EXAMPLES", "5"))

for name in ("BENCH_DATABASE_URL", "BENCH_DB", "ENGINE_CALL_TIMEOUT"):
    os.environ.pop(name, None)
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
        "ENV_FILE": os.devnull,  # a developer's .env must not change what we measure
        "DEBUG": "true",
        "SECRET_KEY": "bench-faults-secret-key",
        "DATABASE_URL": f"sqlite:///{WORKDIR / 'faults.sqlite3'}",
        "ENDPOINT": "",
        "EMBEDDED_ENGINE_PORT": str(ENGINE_PORT),
        "TASKHUB": "default",
        "RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
        "MISSED_RUN_GRACE_SECONDS": str(GRACE),
        # The watchdog's grace: a schedule whose run or step died with a worker runs again
        # after this (the default, 60 s, is for production; this run kills workers every few s).
        "STUCK_RUN_GRACE_SECONDS": "3",
        # How long a SIGTERMed runworker may finish its work (default 20 s): its runs here take
        # at most 1.5 s, and an engine host that takes 20 s to stop is an outage of its own.
        "WORKER_STOP_SECONDS": "5",
        "EMAIL_URL": "dummymail://",  # failure notices would only fill the workers' logs
        "PYTHONUNBUFFERED": "1",
    }
)
CHILD_ENV = dict(os.environ)  # workers and web server: the project's ENGINE_CALL_TIMEOUT
# This process: a stopped engine costs an operator action or a sample 3 s rather than 5.
os.environ["ENGINE_CALL_TIMEOUT"] = "3"

import django

django.setup()

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connection, connections
from django.db.models import Count
from django.utils import timezone
from durabletask.client import OrchestrationStatus

from cleanups import control, instances
from cleanups.cadence import CRON, FIXED_DELAY, FIXED_RATE, Cadence
from cleanups.models import CleanupRun, CleanupSchedule

Status = CleanupRun.Status
RUN_ONCE = CleanupSchedule.MissedRuns.RUN_ONCE
RUNNING, PAUSED, STOPPED = "running", "paused", "stopped"
STATE_ACTIONS = {"start", "terminate", "pause", "resume", "restart"}
UNREACHABLE = control.Outcome.ENGINE_UNREACHABLE.value
# The line a worker logs when it has executed an iteration (not a timeout's or a retry's).
RUN_LINE = re.compile(
    r"cleanups\.runs: run schedule=(?P<name>\S+) iteration=(?P<iteration>\d+) "
    r"status=(?P<status>\w+) duration="
)
# An attempt that failed and waits for the engine's retry: the attempt's execution ended there.
RETRY_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO cleanups\.runs: run "
    r"schedule=(?P<name>\S+) iteration=(?P<iteration>\d+) failed \(attempt (?P<attempt>\d+) of"
)
# Not ended by its own execution: still running, a gap's record, or its worker died.
NOT_ENDED = {Status.RUNNING, Status.SKIPPED, Status.INTERRUPTED}


class BenchError(RuntimeError):
    """The bench itself could not go on (a worker would not start): not a finding."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Processes ------------------------------------------------------------------------------------

# The child sets PR_SET_PDEATHSIG before it becomes manage.py, so a bench killed by a timeout
# leaves no worker behind. Linux ties the signal to the thread that spawned the child, so only
# the main thread spawns.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (AttributeError, OSError):
    pass
if os.getppid() != int(os.environ["FAULTS_BENCH_PID"]):
    sys.exit("bench/faults.py is gone")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@dataclass
class Life:
    """One start of a child process: its pid and when it started and died."""

    pid: int
    started: datetime
    died: datetime | None = None


class Child:
    """A ``manage.py`` child (runworker or runserver), its output in a log file per start."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], ready: str) -> None:
        self.name = name
        self.args = args
        self.env = {**env, "FAULTS_BENCH_PID": str(os.getpid())}
        self.ready = re.compile(ready)
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.lives: list[Life] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "process": None}  # kept for --recheck: the record, not the OS's

    def start(self) -> None:
        assert threading.current_thread() is threading.main_thread(), "see _DIE_WITH_PARENT"
        path = WORKDIR / f"{self.name}-{len(self.logs) + 1}.log"
        with path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, "manage.py", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.logs.append(path)
        self.lives.append(Life(self.process.pid, timezone.now()))

    def output(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.search(self.output()):
                return
            if not self.running:
                self.died()
                raise BenchError(f"{self.name} exited while starting:\n{self.output()[-3000:]}")
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f} s:\n{self.output()[-3000:]}")

    def start_ready(self, attempts: int = 3) -> None:
        """Start and wait until it says it is ready; a port still held is tried again."""
        for attempt in range(attempts):
            self.start()
            try:
                self.wait_ready()
                return
            except BenchError:
                if attempt == attempts - 1 or "port is in use" not in self.output():
                    raise
                time.sleep(1.0)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def died(self, moment: datetime | None = None) -> None:
        if self.lives and self.lives[-1].died is None:
            self.lives[-1].died = moment or timezone.now()

    def kill(self) -> None:
        """SIGKILL: it dies at once, mid-activity."""
        moment = timezone.now()
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait()
        self.died(moment)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (its clean shutdown), SIGKILL after ``timeout``."""
        if self.running:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.died()


# What happened --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    interval: timedelta
    cadence: str
    cron: str


@dataclass
class ScheduleInfo:
    pk: int
    name: str
    kind: str  # fast, slow or failing
    config: Config  # as created; edits are actions
    missed_runs: str
    max_retries: int

    def describe(self) -> str:
        every = (
            self.config.cron
            if self.config.cadence == CRON
            else f"{self.config.interval.total_seconds():g} s"
        )
        retries = f", {self.max_retries} retry" if self.max_retries else ""
        return f"{self.kind}, {self.config.cadence} {every}, {self.missed_runs}{retries}"


@dataclass
class Action:
    """An operator action or a fault: what, on which schedule, when, and what came of it."""

    kind: str
    schedule: int | None
    at: datetime
    done: datetime | None = None
    outcome: str = ""
    before: str = ""  # desired state before and after, as the action's semantics say
    after: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> datetime:
        return self.done or self.at


@dataclass
class Window:
    """An engine fault: its host down or stopped, from the signal until it is back (restarted and
    ready, or SIGCONT)."""

    start: datetime
    end: datetime | None = None  # None: not over yet

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start <= end and (self.end is None or self.end >= start)


@dataclass
class Sample:
    started: datetime
    ended: datetime
    desired: dict[int, str]
    statuses: dict[int, OrchestrationStatus | None] | None  # None: engine unreachable


@dataclass
class Request:
    at: datetime
    path: str
    status: int  # 0: no answer
    note: str = ""


@dataclass
class Run:
    schedule: int
    iteration: int
    status: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    worker: str
    attempts: int
    reason: str
    details: dict[str, Any]
    planned_at: datetime | None

    @property
    def decided(self) -> datetime:
        """When the record came to be: a skipped row's started_at is the slot it skipped."""
        if self.status == Status.SKIPPED and self.finished_at:
            return self.finished_at
        return self.started_at


@dataclass
class Observed:
    """What the checks read after settling."""

    measurable: bool
    runs: list[Run]
    duplicates: list[dict[str, Any]]
    schedules: dict[int, dict[str, Any]]
    states: dict[str, OrchestrationStatus]


class Bench:
    """Everything the threads share and the checks read."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.args = args
        self.seed = seed
        self.lock = threading.Lock()
        self.schedules: dict[int, ScheduleInfo] = {}
        self.desired: dict[int, str] = {}  # the operator's view, replayed from its actions
        self.actions: list[Action] = []
        self.faults: list[Action] = []
        self.windows: list[Window] = []
        self.samples: list[Sample] = []
        self.requests: list[Request] = []
        self.stop_operating = threading.Event()
        self.stop_watching = threading.Event()
        self.began = timezone.now()
        self.settle_started: datetime | None = None
        self.checked_at: datetime | None = None
        self._index: dict[tuple[int | None, str], list[Action]] | None = None
        worker_env = {**CHILD_ENV, "ENDPOINT": f"http://127.0.0.1:{ENGINE_PORT}"}
        ready = r"Worker \S+ started"
        self.host = Child("host", ["runworker"], CHILD_ENV, ready)
        self.connectors = [
            Child(f"worker-{letter}", ["runworker"], worker_env, ready) for letter in "bc"
        ]
        self.web = Child(
            "web",
            ["runserver", f"127.0.0.1:{WEB_PORT}", "--noreload"],
            CHILD_ENV,
            "Starting development server",
        )

    @property
    def workers(self) -> list[Child]:
        return [self.host, *self.connectors]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("lock", "stop_operating", "stop_watching"):
            state.pop(name)
        return state

    def by_schedule(self, pk: int, *kinds: str) -> list[Action]:
        """A schedule's actions of these kinds, in time order (indexed once the run is over)."""
        if self._index is None:
            index: dict[tuple[int | None, str], list[Action]] = defaultdict(list)
            for action in sorted(self.actions, key=lambda a: a.at):
                index[action.schedule, action.kind].append(action)
            self._index = index
        if len(kinds) == 1:
            return self._index.get((pk, kinds[0]), [])
        return sorted(
            (a for kind in kinds for a in self._index.get((pk, kind), [])), key=lambda a: a.at
        )

    def record(self, action: Action) -> None:
        with self.lock:
            (self.actions if action.schedule is not None else self.faults).append(action)

    def open_window(self) -> Window:
        window = Window(timezone.now())
        with self.lock:
            self.windows.append(window)
        return window

    def rel(self, moment: datetime | None) -> str:
        if moment is None:
            return "-"
        return f"t+{(moment - self.began).total_seconds():.1f}s"


# Set-up ---------------------------------------------------------------------------------------


def create_schedules(bench: Bench, user: Any) -> None:
    rng = random.Random(f"{bench.seed}:schedules")
    for number in range(1, bench.args.schedules + 1):
        kind = rng.choices(["fast", "slow", "failing"], weights=[5, 3, 2])[0]
        params: dict[str, Any] = {
            "fast": {"seconds": 0},
            "slow": {"seconds": round(rng.uniform(0.2, 1.5), 1)},
            "failing": {"seconds": "x"},  # a failed run, every time
        }[kind]
        cadence = rng.choices([FIXED_DELAY, FIXED_RATE, CRON], weights=[5, 4, 1])[0]
        config = Config(
            timedelta(seconds=rng.choice(INTERVALS)),
            cadence,
            "* * * * *" if cadence == CRON else "",
        )
        missed_runs = rng.choices(list(CleanupSchedule.MissedRuns.values), weights=[3, 1])[0]
        max_retries = rng.choice([0, 0, 1]) if kind == "failing" else 0
        # Created as a migration or a script would: a failing one would not pass the form.
        schedule = CleanupSchedule.objects.create(
            name=f"fault-{number:03}",
            task="sample",
            params=params,
            cadence=cadence,
            interval=config.interval,
            cron=config.cron,
            timezone="UTC",
            missed_runs=missed_runs,
            max_retries=max_retries,
            changed_by=user,
        )
        bench.schedules[schedule.pk] = ScheduleInfo(
            schedule.pk, schedule.name, kind, config, missed_runs, max_retries
        )
        bench.desired[schedule.pk] = STOPPED


def planned_at_measurable() -> bool:
    """Whether CleanupRun has a planned_at field, and its table the column."""
    if not any(f.name == "planned_at" for f in CleanupRun._meta.get_fields()):
        return False
    with connection.cursor() as cursor:
        columns = connection.introspection.get_table_description(cursor, CleanupRun._meta.db_table)
    return any(column.name == "planned_at" for column in columns)


# The operator ---------------------------------------------------------------------------------


def expected_after(kind: str, before: str) -> str:
    """The desired state an action leaves, as cleanups.control defines it."""
    if kind in ("start", "restart"):
        return RUNNING
    if kind == "terminate":
        return STOPPED
    if kind == "pause":
        return before if before == STOPPED else PAUSED
    if kind == "resume":
        return RUNNING if before == PAUSED else before
    return before


def act(bench: Bench, kind: str, pk: int, call: Callable[[CleanupSchedule], Any]) -> Action:
    before = bench.desired[pk]
    action = Action(kind, pk, timezone.now(), before=before, after=expected_after(kind, before))
    try:
        outcome = call(CleanupSchedule.objects.get(pk=pk))
        action.outcome = outcome if isinstance(outcome, str) else outcome.outcome.value
    except Exception as error:  # in the admin this would be a 500
        action.outcome = "raised"
        action.detail["error"] = f"{type(error).__name__}: {error}"
    action.done = timezone.now()
    if kind == "start":
        action.detail["anchor_at"] = (
            CleanupSchedule.objects.filter(pk=pk).values_list("anchor_at", flat=True).first()
        )
    bench.desired[pk] = action.after
    bench.record(action)
    return action


def edit(schedule: CleanupSchedule, interval: float, cadence: str) -> str:
    """Change interval and cadence as the admin's change form does: validate, then save()."""
    schedule.interval = timedelta(seconds=interval)
    schedule.cadence = cadence
    schedule.changed_by = get_user_model().objects.get(username=USERNAME)
    schedule.full_clean()
    schedule.save()
    return "saved"


def operate(bench: Bench) -> None:
    rng = random.Random(f"{bench.seed}:operator")
    pks = sorted(bench.schedules)
    editable = [
        pk
        for pk, info in bench.schedules.items()
        if info.kind != "failing" and info.config.cadence != CRON
    ]
    try:
        while not bench.stop_operating.wait(rng.uniform(0.3, 1.2)):
            by_state: dict[str, list[int]] = defaultdict(list)
            for pk in pks:
                by_state[bench.desired[pk]].append(pk)
            idle = (len(by_state[PAUSED]) + len(by_state[STOPPED])) / len(pks)
            room = idle < 0.3  # keep most schedules running
            weights = {
                "pause": 2.0 if by_state[RUNNING] and room else 0.0,
                "terminate": 1.0 if by_state[RUNNING] and room else 0.0,
                "resume": 2.0 if by_state[PAUSED] else 0.0,
                "start": 1.5 if by_state[STOPPED] else 0.0,
                "start paused": 0.3 if by_state[PAUSED] else 0.0,
                "restart": 1.0,
                "run-now burst": 2.0 if by_state[RUNNING] else 0.0,
                "edit": 2.0 if editable else 0.0,
            }
            choice = rng.choices(list(weights), weights=list(weights.values()))[0]
            if choice == "pause":
                act(bench, "pause", rng.choice(by_state[RUNNING]), control.pause_schedule)
            elif choice == "terminate":
                act(bench, "terminate", rng.choice(by_state[RUNNING]), control.terminate_schedule)
            elif choice == "resume":
                act(bench, "resume", rng.choice(by_state[PAUSED]), control.resume_schedule)
            elif choice == "start":
                act(bench, "start", rng.choice(by_state[STOPPED]), control.start_schedule)
            elif choice == "start paused":  # an operator who clicks Start on a paused one
                act(bench, "start", rng.choice(by_state[PAUSED]), control.start_schedule)
            elif choice == "restart":
                act(bench, "restart", rng.choice(pks), control.restart_schedule)
            elif choice == "run-now burst":
                targets = rng.sample(by_state[RUNNING], min(3, len(by_state[RUNNING])))
                for _ in range(rng.randint(2, 6)):
                    act(
                        bench,
                        "run_now",
                        rng.choice(targets),
                        lambda s: control.run_now(s, USERNAME),
                    )
            else:
                pk = rng.choice(editable)
                interval = rng.choice(INTERVALS)
                cadence = rng.choice([FIXED_DELAY, FIXED_RATE])
                action = act(bench, "edit", pk, lambda s, i=interval, c=cadence: edit(s, i, c))
                action.detail.update(interval=interval, cadence=cadence)
    finally:
        connections.close_all()


# Faults (main thread: it spawns) --------------------------------------------------------------


def inject_faults(bench: Bench, until: float) -> None:
    rng = random.Random(f"{bench.seed}:faults")
    while True:
        gap = rng.uniform(2.0, 6.0)
        if time.monotonic() + gap >= until:
            time.sleep(max(0.0, until - time.monotonic()))
            return
        time.sleep(gap)
        kind = rng.choices(
            ["kill worker", "restart engine host", "stop engine host"], weights=[4, 3, 3]
        )[0]
        fault = Action(kind, None, timezone.now())
        if kind == "kill worker":
            child = rng.choice(bench.connectors)
            down = rng.uniform(0.0, 3.0)
            fault.detail = {"worker": child.name, "pid": child.lives[-1].pid}
            child.kill()
            time.sleep(down)
            child.start_ready()
            fault.outcome = f"{child.name} SIGKILLed, started again after {down:.1f} s"
        elif kind == "restart engine host":
            window = bench.open_window()
            fault.detail = {"pid": bench.host.lives[-1].pid}
            bench.host.stop()
            bench.host.start_ready()
            window.end = timezone.now()
            fault.outcome = f"SIGTERM, back after {(window.end - fault.at).total_seconds():.1f} s"
        else:
            window = bench.open_window()
            paused_for = rng.uniform(0.5, 3.0)
            bench.host.signal(signal.SIGSTOP)
            time.sleep(paused_for)
            bench.host.signal(signal.SIGCONT)
            window.end = timezone.now()
            fault.outcome = f"SIGSTOP for {paused_for:.1f} s, then SIGCONT"
        fault.done = timezone.now()
        bench.record(fault)


# Watchers -------------------------------------------------------------------------------------


def sample_states(bench: Bench) -> None:
    """Desired states and the engine's, twice a second, for the liveness check."""
    try:
        while not bench.stop_watching.wait(0.5):
            started = timezone.now()
            try:
                rows = list(
                    CleanupSchedule.objects.values_list("pk", "desired_state", "instance_id")
                )
            except DatabaseError:
                continue
            try:
                states = instances.fetch_runtime_states()
            except instances.EngineUnavailable:
                statuses = None
            else:
                statuses = {
                    pk: states[instance].runtime_status if instance in states else None
                    for pk, _, instance in rows
                }
            sample = Sample(started, timezone.now(), {pk: s for pk, s, _ in rows}, statuses)
            with bench.lock:
                bench.samples.append(sample)
    finally:
        connections.close_all()


def login(opener: OpenerDirector, base: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            page = opener.open(f"{base}/admin/login/", timeout=30).read().decode()
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
            assert token, "no CSRF token on the login page"
            form = {
                "username": USERNAME,
                "password": PASSWORD,
                "csrfmiddlewaretoken": token.group(1),
                "next": "/admin/",
            }
            opener.open(f"{base}/admin/login/", urlencode(form).encode(), timeout=30).read()
            return
        except (URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def browse(bench: Bench) -> None:
    """A logged-in superuser reading the pages while everything else happens."""
    rng = random.Random(f"{bench.seed}:web")
    jar = CookieJar()
    opener = build_opener(HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{WEB_PORT}"
    pks = sorted(bench.schedules)
    try:
        try:
            login(opener, base)
        except (URLError, OSError, AssertionError) as error:
            bench.requests.append(Request(timezone.now(), "/admin/login/", 0, str(error)))
            return
        if not any(cookie.name == "sessionid" for cookie in jar):
            bench.requests.append(Request(timezone.now(), "/admin/login/", 0, "login failed"))
            return
        while not bench.stop_watching.wait(rng.uniform(0.1, 0.5)):
            pk = rng.choice(pks)
            newest = CleanupRun.objects.order_by("-pk").values_list("pk", flat=True).first() or 1
            path = rng.choice(
                [
                    "/",
                    "/?show=failing",
                    "/status.json",
                    "/runs/",
                    "/runs/?status=skipped",
                    "/runs/?status=interrupted",
                    f"/schedules/{pk}/",
                    f"/schedules/{pk}/runs/",
                    f"/runs/{rng.randint(1, newest)}/",
                    "/admin/cleanups/cleanupschedule/",
                ]
            )
            at = timezone.now()
            try:
                with opener.open(f"{base}{path}", timeout=60) as response:
                    response.read()
                    request = Request(at, path, response.status)
            except HTTPError as error:
                body = error.read().decode(errors="replace")
                title = re.search(r"<title>(.*?)</title>", body, re.S)
                note = " ".join(title.group(1).split()) if title else body[:200]
                request = Request(at, path, error.code, note)
            except (URLError, OSError) as error:
                request = Request(at, path, 0, str(error))
            with bench.lock:
                bench.requests.append(request)
    finally:
        connections.close_all()


def report_progress(bench: Bench) -> None:
    try:
        while not bench.stop_watching.wait(10.0):
            try:
                runs = CleanupRun.objects.count()
            except DatabaseError:
                runs = -1
            elapsed = (timezone.now() - bench.began).total_seconds()
            phase = "settling" if bench.settle_started else "faults"
            say(
                f"[{elapsed:5.0f} s, {phase}] runs {runs}, faults {len(bench.faults)}, "
                f"actions {len(bench.actions)}, web requests {len(bench.requests)}"
            )
    finally:
        connections.close_all()


# The run --------------------------------------------------------------------------------------


def settle(bench: Bench, operator: threading.Thread) -> None:
    bench.stop_operating.set()
    operator.join()
    for child in bench.workers:
        if child.running:
            child.signal(signal.SIGCONT)
        else:
            child.start_ready()
    bench.settle_started = timezone.now()
    say(f"settling: at least {MIN_SETTLE:.0f} s, at most {MIN_SETTLE + bench.args.settle:.0f} s")
    time.sleep(MIN_SETTLE)
    deadline = time.monotonic() + bench.args.settle
    while time.monotonic() < deadline:
        # Settled: no run begun before settling still running, and no running schedule overdue
        # (an engine restart just before the end leaves a recovery to finish).
        overdue = CleanupSchedule.objects.should_run().filter(
            next_run_at__lt=timezone.now() - TOLERANCE
        )
        begun = CleanupRun.objects.running().filter(started_at__lt=bench.settle_started)
        if not begun.exists() and not overdue.exists():
            break
        time.sleep(0.5)


def final_states() -> dict[str, OrchestrationStatus]:
    for attempt in range(5):
        try:
            return {
                instance: state.runtime_status
                for instance, state in instances.fetch_runtime_states().items()
            }
        except instances.EngineUnavailable:
            if attempt == 4:
                raise BenchError("the engine is unreachable after settling") from None
            time.sleep(2.0)
    raise AssertionError("unreachable")


def load_runs(measurable: bool) -> list[Run]:
    fields = [
        "schedule_id",
        "iteration",
        "status",
        "trigger",
        "started_at",
        "finished_at",
        "worker",
        "attempts",
        "reason",
        "details",
    ]
    rows = CleanupRun.objects.order_by("schedule_id", "iteration").values(
        *fields, *(["planned_at"] if measurable else [])
    )
    return [
        Run(
            row["schedule_id"],
            row["iteration"],
            row["status"],
            row["trigger"],
            row["started_at"],
            row["finished_at"],
            row["worker"],
            row["attempts"],
            row["reason"],
            row["details"] or {},
            row.get("planned_at"),
        )
        for row in rows
    ]


def run(bench: Bench) -> int:
    args = bench.args
    say(f"database, logs in {WORKDIR}; migrating")
    call_command("migrate", verbosity=0)
    measurable = planned_at_measurable()
    user = get_user_model().objects.create_superuser(USERNAME, "bench@example.com", PASSWORD)
    create_schedules(bench, user)
    connections.close_all()

    say(f"starting 3 workers (engine on 127.0.0.1:{ENGINE_PORT}) and the web server")
    for child in [*bench.workers, bench.web]:
        child.start()
    for child in [*bench.workers, bench.web]:
        child.wait_ready()

    bench.began = timezone.now()
    for pk in sorted(bench.schedules):
        act(bench, "start", pk, control.start_schedule)
    threads = [
        threading.Thread(target=target, args=(bench,), name=target.__name__, daemon=True)
        for target in (sample_states, browse, report_progress)
    ]
    operator = threading.Thread(target=operate, args=(bench,), name="operate", daemon=True)
    for thread in [*threads, operator]:
        thread.start()
    say(f"{len(bench.schedules)} schedules started; faults and actions for {args.seconds:g} s")
    inject_faults(bench, time.monotonic() + args.seconds)

    settle(bench, operator)
    bench.stop_watching.set()
    for thread in threads:
        thread.join()
    bench.checked_at = timezone.now()
    states = final_states()
    schedules = {
        row["pk"]: row
        for row in CleanupSchedule.objects.values("pk", "name", "desired_state", "instance_id")
    }
    runs = load_runs(measurable)
    duplicates = list(
        CleanupRun.objects.values("schedule_id", "iteration")
        .annotate(rows=Count("pk"))
        .filter(rows__gt=1)
    )
    connections.close_all()
    for child in [bench.web, *bench.workers]:
        child.stop()
    say("checking")
    write_actions(bench)
    observed = Observed(measurable, runs, duplicates, schedules, states)
    if bench.args.keep:
        with (WORKDIR / "observed.pickle").open("wb") as out:
            pickle.dump((bench, observed), out)
    return check_and_report(bench, observed)


def check_and_report(bench: Bench, observed: Observed) -> int:
    findings, notes = check(bench, observed)
    print("\n".join(report(bench, observed, findings, notes)), flush=True)
    return 1 if any(found for found in findings.values() if found) else 0


def recheck(directory: Path) -> int:
    """The checks again, on a run kept with --keep (after a check changed)."""
    with (directory / "observed.pickle").open("rb") as kept:
        bench, observed = pickle.load(kept)
    return check_and_report(bench, observed)


# Checks ---------------------------------------------------------------------------------------


def configs_at(bench: Bench, pk: int, moment: datetime) -> set[Config]:
    """The schedule's interval and cadence when the worker planned at ``moment``: more than one
    when an edit was in flight within EDIT_UNCERTAINTY of it."""
    info = bench.schedules[pk]
    candidates = {info.config}
    for action in bench.by_schedule(pk, "edit"):
        if action.outcome != "saved":
            continue
        edited = Config(
            timedelta(seconds=action.detail["interval"]), action.detail["cadence"], info.config.cron
        )
        if action.end + EDIT_UNCERTAINTY < moment:
            candidates = {edited}
        elif action.at - EDIT_UNCERTAINTY <= moment:
            candidates.add(edited)
        else:
            break
    return candidates


def anchor_at(bench: Bench, pk: int, moment: datetime) -> datetime | None:
    """The fixed-rate grid's anchor: set by each start, read back after it."""
    anchor = None
    for action in bench.by_schedule(pk, "start"):
        if action.at > moment:
            break
        anchor = action.detail.get("anchor_at") or anchor
    return anchor


def rule(config: Config, anchor: datetime | None) -> Cadence:
    return Cadence(
        kind=config.cadence,
        interval=config.interval,
        anchor=anchor,
        cron=config.cron,
        timezone="UTC",
    )


def next_due(bench: Bench, record: Run, config: Config) -> datetime:
    """When the record's worker planned the next run, as activities.py plans it."""
    info = bench.schedules[record.schedule]
    assert record.finished_at is not None
    cadence = rule(config, anchor_at(bench, record.schedule, record.finished_at))
    end = record.finished_at
    run_once = info.missed_runs == RUN_ONCE
    if record.status == Status.SKIPPED:  # _handle_missed_slots, or an overrun's summary
        return end if run_once else cadence.next_after(end, end)
    following = cadence.next_after(record.started_at, end)
    if config.cadence == FIXED_DELAY or following > end:
        return following
    return end if run_once else cadence.next_after(end, end)  # it overran its slot


def dues(bench: Bench, record: Run) -> list[datetime]:
    assert record.finished_at is not None
    return [
        next_due(bench, record, config)
        for config in configs_at(bench, record.schedule, record.finished_at)
    ]


def period(bench: Bench, pk: int, moment: datetime) -> timedelta:
    """The longest time between two slots around ``moment``: one missed slot's worth."""
    longest = timedelta(0)
    for config in configs_at(bench, pk, moment):
        if config.cadence == CRON:
            cadence = rule(config, None)
            first = cadence.next_after(moment)
            longest = max(longest, cadence.next_after(first) - first)
        else:
            longest = max(longest, config.interval)
    return longest


def engine_back(bench: Bench, moment: datetime) -> datetime:
    """The end of the engine fault that covers ``moment`` (or ``moment``)."""
    for window in bench.windows:
        finish = window.end or bench.checked_at or moment
        if window.start <= moment <= finish:
            return finish
    return moment


def chains(bench: Bench, runs: list[Run]) -> dict[int, list[Run]]:
    """Per schedule, its records by iteration without manual runs (a run-now moves nothing)."""
    by_schedule: dict[int, list[Run]] = defaultdict(list)
    for record in runs:
        if record.trigger != CleanupRun.Trigger.MANUAL:
            by_schedule[record.schedule].append(record)
    return by_schedule


def actions_of(bench: Bench, pk: int) -> list[Action]:
    """The schedule's actions that change its desired state, in time order."""
    return bench.by_schedule(pk, *sorted(STATE_ACTIONS))


def describe(bench: Bench, record: Run | None) -> str:
    if record is None:
        return "no record yet"
    if record.status == Status.SKIPPED:
        return (
            f"#{record.iteration} skipped {record.details.get('slots', '?')} slot(s) "
            f"({record.reason}) decided {bench.rel(record.finished_at)}"
        )
    return (
        f"#{record.iteration} {record.trigger} {record.status} "
        f"{bench.rel(record.started_at)}–{bench.rel(record.finished_at)}"
    )


def nearby(bench: Bench, moment: datetime, before: float = 6.0, after: float = 1.0) -> str:
    """The faults around a moment (from ``before`` s before it to ``after`` s after), to read an
    example by."""
    close = [
        f"{fault.kind} {bench.rel(fault.at)}–{bench.rel(fault.done)}"
        + (f" ({fault.detail['worker']})" if "worker" in fault.detail else "")
        for fault in bench.faults
        if fault.at <= moment + timedelta(seconds=after)
        and fault.end >= moment - timedelta(seconds=before)
    ]
    return f" [faults near: {'; '.join(close)}]" if close else ""


def check_never_early_planned(bench: Bench, runs: list[Run]) -> list[str]:
    return [
        f"{bench.schedules[r.schedule].name} #{r.iteration} ({r.trigger}) started "
        f"{(r.planned_at - r.started_at).total_seconds():.3f} s before its planned_at "
        f"{bench.rel(r.planned_at)}{nearby(bench, r.started_at)}"
        for r in runs
        if r.planned_at is not None and r.started_at < r.planned_at
    ]


def check_never_early_derived(bench: Bench, runs: list[Run]) -> list[str]:
    found = []
    for pk, chain in chains(bench, runs).items():
        info = bench.schedules[pk]
        acts = actions_of(bench, pk)
        for previous, record in pairwise(chain):
            if record.trigger != CleanupRun.Trigger.SCHEDULED or record.status == Status.SKIPPED:
                continue
            if previous.status in NOT_ENDED - {Status.SKIPPED}:
                continue
            if previous.status == Status.SKIPPED and info.missed_runs == RUN_ONCE:
                continue  # its catch-up runs at once, by design
            if previous.finished_at is None:
                continue
            if any(a.at <= record.started_at and a.end >= previous.decided for a in acts):
                continue
            planned = min(dues(bench, previous))
            early = (planned - record.started_at).total_seconds()
            if early > 0.001:
                found.append(
                    f"{info.name} ({info.describe()}) #{record.iteration} started "
                    f"{bench.rel(record.started_at)}, {early:.2f} s before the slot "
                    f"{bench.rel(planned)} planned after {describe(bench, previous)}"
                    f"{nearby(bench, record.started_at)}"
                )
    return found


def gap(
    bench: Bench, pk: int, previous: Run | None, deadline: datetime, until: datetime, what: str
) -> str:
    info = bench.schedules[pk]
    return (
        f"{info.name} ({info.describe()}): after {describe(bench, previous)}, the next run was "
        f"due by {bench.rel(deadline)} (grace and slack included); {what}, "
        f"{(until - deadline).total_seconds():.1f} s later, nothing recorded in between"
        f"{nearby(bench, deadline, before=10.0)}"
    )


# The actions that write the skipped row of a schedule's overdue slots themselves
# (cleanups.runs.missed.record_overdue_slots). A resume's row is its worker's, and plans the next run as any.
RECORDS_OVERDUE_SLOTS = {"pause", "restart", "terminate"}


@dataclass
class Walk:
    """Where a schedule stands in the slot walk: its desired state, when its next run is due as
    planned, and the deadline by which a record of it must come (None: none expected)."""

    state: str = STOPPED
    due: datetime | None = None
    deadline: datetime | None = None


def check_missed_slots(bench: Bench, runs: list[Run]) -> list[str]:
    """Walk each schedule's records and state-changing actions in order (see the docstring)."""
    end = bench.checked_at
    assert end is not None
    found = []
    grid = chains(bench, runs)
    for pk in bench.schedules:
        acts = actions_of(bench, pk)
        walk = Walk()
        previous: Run | None = None
        index = 0
        applied: Action | None = None
        for record in [*grid.get(pk, []), None]:
            moment = end if record is None else record.decided
            # A skipped row covers the gap before it, however late it was written.
            covered = record is not None and record.status == Status.SKIPPED
            while index < len(acts) and acts[index].at < moment:
                action = acts[index]
                index += 1
                late = walk.deadline and walk.deadline < action.at
                if not covered and walk.state == RUNNING and late:
                    assert walk.deadline is not None
                    what = f"then {action.kind} {bench.rel(action.at)}"
                    found.append(gap(bench, pk, previous, walk.deadline, action.at, what))
                    walk.deadline = None
                apply(bench, action, walk)
                applied = action
            if record is None:
                if walk.state == RUNNING and walk.deadline and walk.deadline < end:
                    what = "still nothing when the bench ended (settled)"
                    found.append(gap(bench, pk, previous, walk.deadline, end, what))
                break
            if not covered and walk.state == RUNNING and walk.deadline:
                allowed = walk.deadline
                if record.trigger == CleanupRun.Trigger.CATCH_UP:
                    allowed += period(bench, pk, walk.deadline)  # one missed slot: the catch-up
                if record.started_at > allowed:
                    what = f"then {describe(bench, record)}"
                    found.append(gap(bench, pk, previous, walk.deadline, record.started_at, what))
            previous = record
            if (
                covered
                and applied is not None
                and applied.kind in RECORDS_OVERDUE_SLOTS
                and applied.at <= record.decided <= applied.end
            ):
                # Written by the action itself (an overdue run's slots, recorded by a pause,
                # restart or terminate): the action, not this row, says what is due next.
                continue
            if record.status == Status.RUNNING or record.finished_at is None:
                walk.due = walk.deadline = None  # still running: left_running says so
            else:
                walk.due = max(dues(bench, record))
                walk.deadline = walk.due + TOLERANCE
    return found


def apply(bench: Bench, action: Action, walk: Walk) -> None:
    """The schedule's state, due time and deadline after an operator action."""
    ready = action.end
    if action.outcome == UNREACHABLE:  # the reconciler finishes the job once it is back
        ready = engine_back(bench, ready) + LIVENESS_LIMIT
    if action.kind == "terminate":
        walk.state, walk.due, walk.deadline = STOPPED, None, None
    elif action.kind == "pause":
        walk.state = action.after  # unchanged on a stopped schedule
    elif action.kind == "restart":  # a fresh orchestration runs at once
        walk.state, walk.due = RUNNING, ready
        walk.deadline = past_faults(bench, ready) + TOLERANCE
    elif action.kind in ("resume", "start") and action.before == PAUSED:
        # The orchestration goes on: its pending run when due, at once if that is past.
        walk.state = RUNNING
        walk.deadline = max(ready, walk.due or ready) + TOLERANCE
    elif action.kind == "start" and action.before == STOPPED:
        first = ready
        configs = configs_at(bench, action.schedule or 0, ready)
        if any(config.cadence == CRON for config in configs):
            first = max(rule(config, None).next_after(ready) for config in configs)
        walk.state, walk.due = RUNNING, first
        walk.deadline = past_faults(bench, first) + TOLERANCE


def past_faults(bench: Bench, first: datetime) -> datetime:
    """When a start's first run can come: not while the engine is down or stopped (an engine
    fault that begins before it is due delays it to two reconcile intervals after the engine is
    back). The worker never records a start's first run as late (_handle_missed_slots), so a
    fault's delay of it is no gap; a delay without a fault is."""
    for window in bench.windows:  # in time order
        if window.start <= first + TOLERANCE:
            first = max(first, (window.end or bench.checked_at or first) + LIVENESS_LIMIT)
    return first


@dataclass
class Logs:
    """What the workers' logs say about runs: who finished which iteration, when attempts ended."""

    finished: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    attempt_ended: dict[tuple[str, int, int], datetime] = field(default_factory=dict)


def read_logs(bench: Bench) -> Logs:
    logs = Logs()
    zone = ZoneInfo(settings.TIME_ZONE)  # Django sets every process's TZ to it
    for child in bench.workers:
        for number, path in enumerate(child.logs, start=1):
            for line in path.read_text(errors="replace").splitlines():
                if match := RUN_LINE.search(line):
                    key = (match["name"], int(match["iteration"]))
                    logs.finished[key].append(f"{child.name}#{number} {match['status']}")
                elif match := RETRY_LINE.search(line):
                    at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
                    attempt = (match["name"], int(match["iteration"]), int(match["attempt"]))
                    logs.attempt_ended[attempt] = at.replace(tzinfo=zone)
    return logs


def check_iterations(bench: Bench, duplicates: list[dict[str, Any]], logs: Logs) -> list[str]:
    found = [
        f"{bench.schedules[row['schedule_id']].name} #{row['iteration']}: {row['rows']} rows"
        for row in duplicates
    ]
    for (name, iteration), where in sorted(logs.finished.items()):
        if len(where) > 1:
            found.append(f"{name} #{iteration} finished {len(where)} times: {', '.join(where)}")
    return found


def death_of(bench: Bench, worker: str, started: datetime) -> datetime | None:
    """When the worker process that ran a run died, if it did (worker ids hold the pid)."""
    try:
        pid = int(worker.split(":")[1])
    except (IndexError, ValueError):
        return None
    for child in bench.workers:
        for life in child.lives:
            if life.pid == pid and life.started <= started and life.died:
                return life.died
    return None


def execution_end(bench: Bench, record: Run, logs: Logs) -> datetime:
    """When the run's execution ended. An interrupted run's finished_at is when a reconciler
    marked it: it ended when its worker died, or when its last attempt failed and waited for a
    retry that never came, whichever is known and first. A running run with finished_at set
    waits for a retry (activities.py): nobody executes it."""
    assert bench.checked_at is not None
    if record.status == Status.INTERRUPTED:
        name = bench.schedules[record.schedule].name
        known = [
            moment
            for moment in (
                death_of(bench, record.worker, record.started_at),
                logs.attempt_ended.get((name, record.iteration, record.attempts)),
            )
            if moment is not None
        ]
        if known:
            return min(known)
    return record.finished_at or bench.checked_at


def check_concurrent(bench: Bench, runs: list[Run], logs: Logs) -> list[str]:
    found = []
    by_schedule: dict[int, list[Run]] = defaultdict(list)
    for record in runs:
        if record.status != Status.SKIPPED:
            by_schedule[record.schedule].append(record)
    for pk, records in by_schedule.items():
        records.sort(key=lambda r: r.started_at)
        latest: Run | None = None
        latest_end = bench.began
        for record in records:
            if latest is not None and record.started_at < latest_end:
                found.append(
                    f"{bench.schedules[pk].name}: {describe(bench, record)} began "
                    f"{(latest_end - record.started_at).total_seconds():.2f} s before "
                    f"{describe(bench, latest)} ended (at {bench.rel(latest_end)}; workers "
                    f"{latest.worker}, {record.worker}){nearby(bench, record.started_at)}"
                )
            end = execution_end(bench, record, logs)
            if latest is None or end > latest_end:
                latest, latest_end = record, end
    return found


def check_left_running(bench: Bench, runs: list[Run]) -> list[str]:
    assert bench.settle_started is not None
    return [
        f"{bench.schedules[r.schedule].name} #{r.iteration} ({r.trigger}) running since "
        f"{bench.rel(r.started_at)} on {r.worker}{nearby(bench, r.started_at, after=5.0)}"
        for r in runs
        if r.status == Status.RUNNING and r.started_at < bench.settle_started
    ]


def check_liveness(bench: Bench) -> tuple[list[str], int]:
    """Streaks of samples where a running schedule has no live orchestration."""
    found: list[str] = []
    unreachable = 0
    streaks: dict[int, tuple[Sample, Sample, OrchestrationStatus | None]] = {}
    spans = {pk: [(a.at, a.end) for a in actions_of(bench, pk)] for pk in bench.schedules}

    def close(pk: int) -> None:
        if pk in streaks:
            first, last, status = streaks.pop(pk)
            if last.ended - first.ended > LIVENESS_LIMIT:
                found.append(
                    f"{bench.schedules[pk].name}: desired running, engine "
                    f"{status.name.lower() if status else 'has no instance'} from "
                    f"{bench.rel(first.ended)} to {bench.rel(last.ended)} "
                    f"({(last.ended - first.ended).total_seconds():.1f} s)"
                    f"{nearby(bench, first.ended)}"
                )

    for sample in bench.samples:
        in_fault = any(window.overlaps(sample.started, sample.ended) for window in bench.windows)
        unreachable += sample.statuses is None and not in_fault
        for pk in bench.schedules:
            acting = any(at <= sample.ended and end >= sample.started for at, end in spans[pk])
            if sample.statuses is None or in_fault or acting:
                close(pk)
                continue
            status = sample.statuses.get(pk)
            missing = sample.desired.get(pk) == RUNNING and status not in instances.LIVE_STATUSES
            if not missing:
                close(pk)
            elif pk in streaks:
                streaks[pk] = (streaks[pk][0], sample, status)
            else:
                streaks[pk] = (sample, sample, status)
    for pk in list(streaks):
        close(pk)
    return found, unreachable


def check_final(
    bench: Bench, schedules: dict[int, dict[str, Any]], states: dict[str, OrchestrationStatus]
) -> tuple[list[str], list[str]]:
    stopped_live, mismatched = [], []
    for pk, info in bench.schedules.items():
        row = schedules[pk]
        status = states.get(row["instance_id"])
        live = status in instances.LIVE_STATUSES
        engine = status.name.lower() if status else "no instance"
        if row["desired_state"] == STOPPED and live:
            stopped_live.append(f"{info.name}: stopped, engine {engine}")
        last = actions_of(bench, pk)[-1]
        expected = bench.desired[pk]
        engine_ok = {
            RUNNING: live and status != OrchestrationStatus.SUSPENDED,
            # Paused: suspended, or no orchestration at all (an engine restart lost it; nothing
            # runs either way, and resuming starts one).
            PAUSED: status == OrchestrationStatus.SUSPENDED or status is None,
            STOPPED: not live,
        }[expected]
        if row["desired_state"] != expected or not engine_ok:
            assert bench.checked_at is not None
            since_last = (bench.checked_at - last.at).total_seconds()
            mismatched.append(
                f"{info.name}: last action {last.kind} {bench.rel(last.at)}–"
                f"{bench.rel(last.done)} ({last.before} → {last.after}, outcome {last.outcome}); "
                f"expected {expected}, database {row['desired_state']}, engine {engine}"
                f"{nearby(bench, last.at, before=1.0, after=since_last)}"
            )
    return stopped_live, mismatched


def check_http(bench: Bench) -> list[str]:
    found = [
        f"GET {r.path} → {r.status} {bench.rel(r.at)}: {r.note}{nearby(bench, r.at)}"
        for r in bench.requests
        if r.status >= 500
    ]
    found += [
        f"{a.kind} {bench.schedules[a.schedule or 0].name} {bench.rel(a.at)} raised "
        f"{a.detail.get('error')}{nearby(bench, a.at)}"
        for a in bench.actions
        if a.outcome == "raised"
    ]
    return found


INVARIANTS = {
    "never_early_planned_at": "never early: no run started before its planned_at",
    "never_early_derived": "never early (derived): no scheduled run before the slot its "
    "predecessor planned",
    "unrecorded_missed_slots": "every slot ran or is in a skipped row (no silent gap)",
    "iteration_twice": "no iteration twice (rows, or finished twice in the workers' logs)",
    "concurrent_runs": "never two runs of one schedule at once",
    "left_running": "no run left running after settling",
    "alive_without_orchestration": "no running schedule without a live orchestration for "
    f"more than {LIVENESS_LIMIT.total_seconds():g} s",
    "stopped_with_orchestration": "no live orchestration for a stopped schedule (settled)",
    "action_outcome_mismatch": "each schedule as its last operator action left it (settled)",
    "http_500": "no HTTP 500 (pages, and operator actions that raised)",
}


def check(bench: Bench, observed: Observed) -> tuple[dict[str, list[str] | None], dict[str, int]]:
    """Every invariant's violations (None: not measurable), and a few counts for the report."""
    runs = observed.runs
    logs = read_logs(bench)
    iterations = check_iterations(bench, observed.duplicates, logs)
    finish_lines = sum(len(where) for where in logs.finished.values())
    liveness, unreachable = check_liveness(bench)
    stopped_live, mismatched = check_final(bench, observed.schedules, observed.states)
    findings = {
        "never_early_planned_at": (
            check_never_early_planned(bench, runs) if observed.measurable else None
        ),
        "never_early_derived": check_never_early_derived(bench, runs),
        "unrecorded_missed_slots": check_missed_slots(bench, runs),
        "iteration_twice": iterations,
        "concurrent_runs": check_concurrent(bench, runs, logs),
        "left_running": check_left_running(bench, runs),
        "alive_without_orchestration": liveness,
        "stopped_with_orchestration": stopped_live,
        "action_outcome_mismatch": mismatched,
        "http_500": check_http(bench),
    }
    return findings, {"finish_lines": finish_lines, "unreachable_samples": unreachable}


# Report ---------------------------------------------------------------------------------------


def tally(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {count}" for key, count in counter.most_common()) or "none"


def report(
    bench: Bench,
    observed: Observed,
    findings: dict[str, list[str] | None],
    notes: dict[str, int],
) -> list[str]:
    runs = observed.runs
    args = bench.args
    assert bench.settle_started is not None and bench.checked_at is not None
    settled = (bench.checked_at - bench.settle_started).total_seconds()
    outcomes = Counter(f"{a.kind}: {a.outcome}" for a in bench.actions)
    lines = [
        f"**Faults: {len(bench.schedules)} schedules on 3 runworker processes sharing one "
        f"embedded engine, {args.seconds:g} s of faults and actions, {settled:.0f} s to settle, "
        f"seed {bench.seed}**",
        "",
        f"- runs: {len(runs)} ({tally(Counter(r.status for r in runs))}); by trigger: "
        f"{tally(Counter(r.trigger for r in runs))}; skipped slots recorded: "
        f"{sum(int(r.details.get('slots', 0)) for r in runs if r.status == Status.SKIPPED)}",
        f"- faults: {len(bench.faults)} ({tally(Counter(f.kind for f in bench.faults))})",
        f"- operator actions: {len(bench.actions)} ({tally(outcomes)})",
        f"- web requests: {len(bench.requests)} "
        f"({tally(Counter(str(r.status) for r in bench.requests))}; 0 is no answer)",
        f"- engine samples: {len(bench.samples)} ({notes['unreachable_samples']} unreachable "
        f"outside the faults); run lines in the workers' logs: {notes['finish_lines']}",
        f"- slack: a slot is late after the grace ({GRACE:g} s) + {SLACK:g} s; liveness after "
        f"{LIVENESS_LIMIT.total_seconds():g} s (two reconcile intervals)",
        "",
        "| invariant | violations |",
        "| --- | ---: |",
    ]
    for key, title in INVARIANTS.items():
        found = findings[key]
        if found is None:
            count = "not measurable: CleanupRun has no planned_at yet"
        else:
            count = str(len(found))
        lines.append(f"| {title} (`{key}`) | {count} |")
    lines.append("")
    for key, title in INVARIANTS.items():
        found = findings[key]
        if not found:
            continue
        lines += [f"**{title}**: {len(found)}, for example:", ""]
        lines += [f"- {example}" for example in found[:EXAMPLES]]
        lines.append("")
    violations = {key: None if found is None else len(found) for key, found in findings.items()}
    summary = {
        "seconds": args.seconds,
        "schedules": len(bench.schedules),
        "seed": bench.seed,
        "runs": len(runs),
        "faults": dict(Counter(f.kind for f in bench.faults)),
        "actions": len(bench.actions),
        "web_requests": len(bench.requests),
        "samples": len(bench.samples),
    }
    lines += [f"VIOLATIONS {json.dumps(violations)}", f"SUMMARY {json.dumps(summary)}"]
    return lines


def write_actions(bench: Bench) -> None:
    """Every action and fault with its outcome and times, for a replay's reader (--keep)."""
    with (WORKDIR / "actions.jsonl").open("w") as out:
        for action in sorted([*bench.actions, *bench.faults], key=lambda a: a.at):
            name = bench.schedules[action.schedule].name if action.schedule else None
            out.write(
                json.dumps(
                    {
                        "at": bench.rel(action.at),
                        "done": bench.rel(action.done),
                        "kind": action.kind,
                        "schedule": name,
                        "outcome": action.outcome,
                        "desired": f"{action.before} -> {action.after}" if name else None,
                        "detail": action.detail,
                    },
                    default=str,
                )
                + "\n"
            )


# Main -----------------------------------------------------------------------------------------


def positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Kill, stop and restart workers and the engine while operators act on "
        "schedules, then count every guarantee's violations (0 is the only pass)."
    )
    parser.add_argument(
        "--seconds", type=positive, default=600, help="faults for this long (%(default)s)"
    )
    parser.add_argument("--schedules", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument(
        "--settle",
        type=positive,
        default=30,
        help=f"at most this long after the first {MIN_SETTLE:.0f} s for runs begun before "
        "settling to end (%(default)s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database, the logs, actions.jsonl and what the checks read",
    )
    parser.add_argument(
        "--recheck",
        type=Path,
        metavar="DIR",
        help="only run the checks again on the directory a --keep run kept",
    )
    keep = False
    try:
        args = parser.parse_args()
        keep = args.keep
        if args.recheck:
            return recheck(args.recheck)
        if args.schedules < 1:
            parser.error("--schedules must be at least 1")
        seed = args.seed if args.seed is not None else random.randrange(1_000_000)
        print(
            f"seed {seed} (replay: .venv/bin/python bench/faults.py --seconds {args.seconds:g} "
            f"--schedules {args.schedules} --settle {args.settle:g} --seed {seed})",
            flush=True,
        )
        say(f"seed {seed}")
        bench = Bench(args, seed)
        try:
            return run(bench)
        except BenchError as error:
            say(f"bench/faults.py: {error}")
            return 2
        finally:
            for child in [bench.web, *bench.workers]:
                child.stop(timeout=10)
    finally:
        connections.close_all()
        if keep:
            say(f"kept: {WORKDIR}")
        else:
            shutil.rmtree(WORKDIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
