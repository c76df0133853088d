"""What happened: the schedules, the operator's actions, the faults, the engine samples, the web
requests and the runs; the Bench the threads share and the checks read, and how an example
describes a record and the faults near it."""

from __future__ import annotations

import argparse
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from durabletask.client import OrchestrationStatus

from bench.faultbench.environment import CHILD_ENV, ENGINE_PORT, WEB_PORT
from bench.faultbench.processes import Child
from cleanups import control
from cleanups.cadence import CRON
from cleanups.models import CleanupRun, CleanupSchedule

Status = CleanupRun.Status
RUN_ONCE = CleanupSchedule.MissedRuns.RUN_ONCE
RUNNING, PAUSED, STOPPED = "running", "paused", "stopped"
STATE_ACTIONS = {"start", "terminate", "pause", "resume", "restart"}
UNREACHABLE = control.Outcome.ENGINE_UNREACHABLE.value
DATABASE_UNAVAILABLE = "database unavailable"  # an action whose database went away under it
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
# An activity whose database went away: it stops executing the run there, waits, and claims
# it again (a new execution) once the database is back.
# (Before it named the iteration it said "run of schedule <pk>:".)
DATABASE_WAIT_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING cleanups\.runs: run "
    r"(?:schedule_id=(?P<pk>\d+) iteration=(?P<iteration>\d+)|of schedule (?P<old>\d+)): "
    r"the database is unavailable"
)
# Not ended by its own execution: still running, a gap's record, or its worker died.
NOT_ENDED = {Status.RUNNING, Status.SKIPPED, Status.INTERRUPTED}


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
        # Set while a database fault lasts: the operator waits (its clicks would answer 503).
        self.database_down = threading.Event()
        from bench.faultbench.dbfaults import Rows

        self.rows = Rows()
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
        for name in ("lock", "stop_operating", "stop_watching", "database_down"):
            state.pop(name)
        return state

    def by_schedule(self, pk: int, *kinds: str) -> list[Action]:
        """A schedule's actions of these kinds, in time order (indexed once the run is over)."""
        if self._index is None:
            index: dict[tuple[int | None, str], list[Action]] = defaultdict(list)
            for action in sorted(self.actions, key=lambda a: a.at):
                if not_done(action):
                    continue
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


def not_done(action: Action) -> bool:
    """A start, pause, resume ... that the database's going away undid (in the admin, a 503):
    the desired state read back afterwards is the one before. No state change for the checks."""
    return (
        action.outcome == DATABASE_UNAVAILABLE
        and action.kind in STATE_ACTIONS
        and action.after == action.before
    )


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
