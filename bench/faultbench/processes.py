"""The bench's ``manage.py`` children (runworker, runserver): their starts, signals and deaths,
each start's output in a log file of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.utils import timezone

from bench.faultbench.environment import ROOT, WORKDIR


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


def _copy(source: Any, log: Any) -> None:
    with source, log:
        while chunk := source.read1(65536):
            log.write(chunk)


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
        # Its output comes through a pipe, and this process writes the log: a child's own file
        # writes are then only the database's, which the full-disk fault limits (RLIMIT_FSIZE).
        self.process = subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, "manage.py", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        log = path.open("wb", buffering=0)
        threading.Thread(target=_copy, args=(self.process.stdout, log), daemon=True).start()
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
