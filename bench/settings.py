"""Settings for the benchmarks: the project's own, on a throwaway SQLite file, plus the bench app.

The database goes through the project's own settings code (as a ``DATABASE_URL``), so it gets
exactly the project's SQLite OPTIONS: WAL, synchronous=NORMAL, IMMEDIATE transactions, the busy
timeout. bench/delete_rows.py points the connection at files of its own under a temporary
directory; this file is only the default.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ENV_FILE", os.devnull)  # a developer's .env must not change what we measure

BENCH_DB = os.environ.get("BENCH_DB") or os.path.join(
    tempfile.gettempdir(), "cleanups-bench.sqlite3"
)
# The benches measure SQLite, whatever DATABASE_URL the shell happens to carry; bench/pages.py
# also measures PostgreSQL when BENCH_DATABASE_URL names a server.
BENCH_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "")
os.environ["DATABASE_URL"] = BENCH_DATABASE_URL or f"sqlite:///{BENCH_DB}"

from cleanupsite.settings import *
from cleanupsite.settings import DATABASES, INSTALLED_APPS

if not BENCH_DATABASE_URL:
    assert DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert DATABASES["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
