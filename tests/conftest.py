"""Fixtures: the SDK's real gRPC backend on a free port, a real worker, runworker subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connection
from django.utils import timezone
from durabletask import history as history_events

from cleanups.durable.registration import register
from cleanups.engine import connection as durable_connection
from cleanups.engine.config import engine_config
from cleanups.engine.connection import build_worker
from cleanups.engine.embedded import EmbeddedEngine
from cleanups.instances import LIVE_STATUSES
from cleanups.models import CleanupRun, CleanupSchedule
from cleanups.runs.execute import execute_iteration

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; fail with a clear message on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def run_iteration(schedule: CleanupSchedule, iteration: int = 1, **kwargs: Any) -> CleanupRun:
    """Run an iteration in the test's own thread, part after part as the orchestration does (a
    part ends after CLEANUP_PART_SECONDS, which a loaded machine can reach), and its record."""
    result = execute_iteration(schedule.pk, iteration, **kwargs)
    while result.get("more"):
        kwargs["part"], iteration = result["part"], result["iteration"]
        result = execute_iteration(schedule.pk, iteration, **kwargs)
    return CleanupRun.objects.get(schedule=schedule, iteration=iteration)


def is_live(durable_client: Any, schedule: CleanupSchedule) -> bool:
    """The engine holds a live generation of the schedule's eternal orchestration.

    Which live status it reports depends on the instant asked: RUNNING on the timer or in the
    activity, PENDING between two generations (after continue_as_new, before a worker takes the
    next one). A test asks for any of them, never for one.
    """
    state = durable_client.get_orchestration_state(schedule.instance_id, fetch_payloads=False)
    return state is not None and state.runtime_status in LIVE_STATUSES


def timer_created(durable_client: Any, instance_id: str) -> Any:
    """The durable timer of an instance's current generation, once the engine has created it."""
    history = durable_client.get_orchestration_history(instance_id)
    return next((e for e in history if isinstance(e, history_events.TimerCreatedEvent)), None)


def waiting(durable_client: Any, schedule: Any) -> bool:
    """The schedule's orchestration waits for its next run: its run is done and the next one's
    time is written (the activity writes next_run_at before it returns). A TimerCreatedEvent
    alone is not that: a run's time limit is a timer created with the run."""
    state = durable_client.get_orchestration_state(schedule.instance_id)
    status = state.get_custom_status() if state else None
    return bool(status) and status.get("state") == "waiting"


def wait_for_clock(moment: datetime, timeout: float = 20.0) -> None:
    """Wait until the wall clock has passed ``moment`` (a schedule's planned time, say): for a
    test that proves nothing happened during a span, the span is fixed by the plan, not a sleep."""
    wait_until(lambda: timezone.now() > moment, timeout=timeout)


class CountingEngine(EmbeddedEngine):
    """The embedded engine (the SDK's InMemoryOrchestrationBackend), counting gRPC calls."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.calls: Counter[str] = Counter()
        self.asked_for: set[str] = set()  # the instance ids GetInstance was asked for
        self._calls_lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._calls_lock:
            self.calls[name] += 1

    def GetInstance(self, request: Any, context: Any) -> Any:
        self._count("GetInstance")
        with self._calls_lock:
            self.asked_for.add(request.instanceId)
        return super().GetInstance(request, context)

    def QueryInstances(self, request: Any, context: Any) -> Any:
        self._count("QueryInstances")
        return super().QueryInstances(request, context)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """On PostgreSQL, end the test database's stray sessions before it is dropped. The live
    server's request threads keep theirs when the browser aborts a request mid-flight (a live
    refresh cut off by a navigation: Django's development server then skips request_finished),
    and DROP DATABASE refuses to run while any session is open."""
    yield
    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def engine_port(settings: Any) -> int:
    """Point the settings at the embedded engine on a port of this test's own."""
    port = free_port()
    settings.ENDPOINT = ""
    settings.EMBEDDED_ENGINE_PORT = str(port)
    settings.ENGINE_CALL_TIMEOUT = 3.0
    # The OS may hand out a port an earlier test's engine used: its cached client would still
    # carry that channel's state (a reconnect backoff) into this test.
    durable_connection._cached_client.cache_clear()
    return port


@pytest.fixture
def engine(engine_port: int) -> Iterator[CountingEngine]:
    backend = CountingEngine(engine_port)
    backend.start()
    yield backend
    backend.stop(grace=0.5)


@pytest.fixture
def worker(engine: CountingEngine) -> Iterator[Any]:
    """A real worker with every orchestrator and activity, connected to the engine."""
    dt_worker = register(build_worker(engine_config()))
    dt_worker.start()
    yield dt_worker
    dt_worker.stop()


@pytest.fixture
def durable_client(engine: CountingEngine) -> Any:
    """A Durable Task client for the test engine (not Django's test client)."""
    from cleanups.engine.connection import get_client

    return get_client()


@pytest.fixture
def make_schedule(db: None, django_user_model: Any) -> Callable[..., CleanupSchedule]:
    """Schedules as a superuser saved them (tests of narrower rights pass ``changed_by``)."""

    def make(**fields: Any) -> CleanupSchedule:
        if "changed_by" not in fields:
            fields["changed_by"], _ = django_user_model.objects.get_or_create(
                username="schedule-owner", defaults={"is_staff": True, "is_superuser": True}
            )
        fields.setdefault("name", f"schedule-{CleanupSchedule.objects.count() + 1}")
        fields.setdefault("interval", timedelta(seconds=1))
        fields.setdefault("task", "sample")
        fields.setdefault("params", {"seconds": 0})
        return CleanupSchedule.objects.create(**fields)

    return make


def form_data(**overrides: str) -> dict[str, str]:
    """What the admin's add form posts for a valid schedule, with some fields changed."""
    data = {
        "name": "nightly",
        "task": "sample",
        "params": json.dumps({"seconds": 0}),
        "interval": "00:00:05",
        "max_iterations": "",
        "cadence": "fixed_delay",
        "timezone": "UTC",
        "missed_runs": "run_once",
        "max_retries": "0",
        "pause_after_failures": "0",
    }
    data.update(overrides)
    return data


def database_url() -> str:
    """The test database as a DATABASE_URL, for child processes (SQLite file or PostgreSQL)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    return f"postgres://{user}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def manage(
    *args: str, unset: Iterable[str] = (), timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """manage.py in a child process with the project's real settings (no .env): this
    process's environment less ``unset``, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in set(unset)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
            "ENV_FILE": os.devnull,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_bench(script: str, *args: str, tmp_path: Path, timeout: float) -> Any:
    """A bench/ script as a child process on its own throwaway SQLite files under ``tmp_path``,
    whatever database the shell or the test run points at."""
    ignored = {"DATABASE_URL", "DJANGO_SETTINGS_MODULE", "BENCH_DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ignored}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result


def runs_of(schedule: CleanupSchedule) -> list[CleanupRun]:
    return list(CleanupRun.objects.filter(schedule=schedule).order_by("iteration"))


class WorkerProcess:
    """`manage.py runworker` as a real child process, its output collected on a thread."""

    def __init__(self, port: int, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.lines: list[str] = []
        process_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cleanupsite.settings_test",
            "DATABASE_URL": database_url(),
            "ENDPOINT": "",
            "EMBEDDED_ENGINE_PORT": str(port),
            "RECONCILE_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", *args],
            cwd=ROOT,
            env=process_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        try:
            wait_until(lambda: text in self.output, timeout=timeout)
        except AssertionError:
            raise AssertionError(f"{text!r} not in runworker output:\n{self.output}") from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


@pytest.fixture
def start_worker_process(engine_port: int) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess(engine_port, *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()
