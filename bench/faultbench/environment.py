"""The environment of the bench's processes (its own database: SQLite in a new temporary
directory, or with ``FAULTS_DATABASE=postgres`` (bench/faults.py ``--database postgres``) a
throwaway PostgreSQL server of its own, as the suite's; free ports; the project's settings with
a fast reconciler), then django.setup().

Imported first by the package (bench/faultbench/__init__.py), before any module that imports
the project's models.
"""

from __future__ import annotations

import atexit
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent.parent


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

DATABASE = os.environ.pop("FAULTS_DATABASE", "sqlite")
POSTGRES = None
if DATABASE == "postgres":
    from bench.pgserver import ThrowawayPostgres

    POSTGRES = ThrowawayPostgres(crash_safe=True)  # it is crashed: commits must hold
    POSTGRES.start()
    atexit.register(POSTGRES.stop)
    import psycopg

    with psycopg.connect(POSTGRES.url("postgres"), autocommit=True) as admin:
        admin.execute("CREATE DATABASE faults")
    DATABASE_URL = POSTGRES.url("faults")
else:
    DATABASE_URL = f"sqlite:///{WORKDIR / 'faults.sqlite3'}"
# SQLite: a writer waits this long for the lock (s); the bench's lock fault holds it longer.
SQLITE_BUSY_SECONDS = 3

for name in ("BENCH_DATABASE_URL", "BENCH_DB", "ENGINE_CALL_TIMEOUT"):
    os.environ.pop(name, None)
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "cleanupsite.settings",
        "ENV_FILE": os.devnull,  # a developer's .env must not change what we measure
        "DEBUG": "true",
        "SECRET_KEY": "bench-faults-secret-key",
        "DATABASE_URL": DATABASE_URL,
        "SQLITE_TIMEOUT": str(SQLITE_BUSY_SECONDS),
        # A page waits this long for a pooled connection while PostgreSQL is away, then 503.
        "DATABASE_POOL_TIMEOUT": "3",
        # The row-deleting schedules delete most of what they see, and at once.
        "CLEANUP_FIRST_RUN_REVIEW_ROWS": "0",
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

django.setup()
