"""Settings for the test suite: the real settings, with a throwaway key and a file-backed test database."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault(
    "ENV_FILE", os.devnull
)  # a developer's .env must not change what the tests see

from cleanupsite.settings import *
from cleanupsite.settings import BASE_DIR, DATABASES, INSTALLED_APPS

# Worker threads and runworker subprocesses must see committed rows, so the test database
# is a real file, never SQLite's shared in-memory database.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    (BASE_DIR / ".local").mkdir(exist_ok=True)
    # One file per test run, so two runs side by side never share (or delete) a database.
    DATABASES["default"]["TEST"] = {
        "NAME": str(BASE_DIR / ".local" / f"test-db-{os.getpid()}.sqlite3")
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# An app of the tests' own: models to clean up and a custom cleanup task.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]

# Static files from the apps, as in development (collectstatic is tested on its own).
WHITENOISE_USE_FINDERS = True
