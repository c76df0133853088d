"""Settings for the benchmarks: the project's own, with a throwaway SQLite file and the bench app."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ENV_FILE", os.devnull)

from cleanupsite.settings import *
from cleanupsite.settings import DATABASES, INSTALLED_APPS

BENCH_DB = os.environ.get("BENCH_DB") or os.path.join(
    tempfile.gettempdir(), "cleanups-bench.sqlite3"
)
# Same engine options as the project (WAL, IMMEDIATE, busy timeout): only the file differs.
DATABASES["default"]["NAME"] = BENCH_DB
INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
