"""Settings for the cleanups project: every knob comes from the environment (or an optional .env)."""

import re
import sys
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent


class _Env(environ.Env):
    """django-environ, but a value that does not parse (RECONCILE_INTERVAL=abc) stops the
    process with one line naming the variable instead of a traceback from deep in the parser."""

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):  # type: ignore[no-untyped-def]
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except (ValueError, TypeError):
            kind = {float: "a number", int: "a whole number"}.get(cast, "valid")
            raw = self.ENVIRON.get(var, "")
            sys.exit(f"cleanups: {var}={raw!r} is not {kind}.")


env = _Env()
env_file = env.path("ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(env_file).is_file():
    env.read_env(str(env_file))

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        # One readable line instead of a traceback: nothing can run safely without a key.
        sys.exit(
            "cleanups: SECRET_KEY is not set. Set it in the environment or .env "
            "(or set DEBUG=true for local development)."
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS, for a deployment behind TLS (README, "Production"). All off by default: the local demo
# serves plain HTTP, where secure-only cookies and redirects to https would lock everyone out.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)


def _proxy_ssl_header(header: str) -> tuple[str, str] | None:
    """The header a TLS-terminating proxy sets to "https" (X-Forwarded-Proto), as Django wants it."""
    if not header:
        return None
    if not re.fullmatch(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*", header):
        # At start-up rather than as a system check: gunicorn runs no checks, and a wrong value
        # would make every request look like plain HTTP (a redirect loop with SSL redirect on).
        sys.exit(
            f"cleanups: SECURE_PROXY_SSL_HEADER={header!r} is not a header name. Set it to the "
            "header your proxy sets to https, e.g. SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto."
        )
    return ("HTTP_" + header.upper().replace("-", "_"), "https")


SECURE_PROXY_SSL_HEADER = _proxy_ssl_header(env.str("SECURE_PROXY_SSL_HEADER", default=""))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "cleanups",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # A database that is away (restarting, connections dropped) answers 503, never 500.
    "cleanups.views.unavailable.DatabaseUnavailableMiddleware",
    # Static files (the admin's and ours) straight from the app server, DEBUG on or off.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cleanupsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "cleanupsite.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The worker and the web process write at the same time: WAL lets readers and one
    # writer proceed together, IMMEDIATE takes the write lock up front (so a transaction
    # never fails half-way on lock upgrade) and the timeout makes writers queue, not fail.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": env.int("SQLITE_TIMEOUT", default=30),
        }
    )
else:
    # PostgreSQL: a connection pool (DATABASE_POOL*, cleanupsite/dbpool.py). Every activity
    # closes its thread's connections when it ends: without a pool each run opens a new server
    # connection (a backend fork), with one that close returns it to the pool. CONN_MAX_AGE
    # stays 0, as Django's pooling wants. (Imported here to keep this block self-contained.)
    from cleanupsite import dbpool

    try:
        dbpool.configure(DATABASES["default"], env)
    except dbpool.ImproperlyConfigured as error:
        sys.exit(f"cleanups: {error}")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / ".local" / "static"))
# WhiteNoise serves from STATIC_ROOT (filled by collectstatic) and, with DEBUG on, straight from
# the apps; it warns when the directory is missing, so it always exists.
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = DEBUG
# Uploaded files, and cleanups' archives (cleanups-archive/) unless CLEANUP_ARCHIVE_STORAGE names
# another storage.
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(BASE_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"

# Failure notices: EMAIL_URL as django-environ reads it (smtp://user:pw@host:587, consolemail://).
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="cleanups@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
ADMINS = [(address, address) for address in env.list("ADMINS", default=[])]

# Durable Task engine. Names and meaning as in the eternal-orchestrations sample:
# ENDPOINT unset or empty runs the embedded engine inside `runworker`.
ENDPOINT = env.str("ENDPOINT", default="")
TASKHUB = env.str("TASKHUB", default="default")
EMBEDDED_ENGINE_PORT = env.str("EMBEDDED_ENGINE_PORT", default="4001")
AZURE_CLIENT_ID = env.str("AZURE_CLIENT_ID", default="")
# Every client call to the engine gives up after this long, so an unreachable engine is a
# message in the admin, not a hung request.
ENGINE_CALL_TIMEOUT = env.float("ENGINE_CALL_TIMEOUT", default=5.0)
# How often runworker compares desired state with the engine.
RECONCILE_INTERVAL = env.float("RECONCILE_INTERVAL", default=5.0)
# How often the reconciler reads every instance of the fleet (a sweep); between sweeps a pass
# reads only the schedules that changed, are overdue or lost a run. 0: every pass sweeps.
RECONCILE_SWEEP_SECONDS = env.float("RECONCILE_SWEEP_SECONDS", default=300.0)
# The timer of the sample's bare-integer loop (15 s in the sample).
SAMPLE_TIMER_SECONDS = env.float("SAMPLE_TIMER_SECONDS", default=15.0)

# Directories the delete_old_files task may clean (comma-separated); nothing outside them.
CLEANUP_ALLOWED_DIRS = env.list("CLEANUP_ALLOWED_DIRS", default=[])
# Models an editor may point delete_old_rows at (comma-separated app_label.Model). Unset: every
# installed model except those of auth, admin, contenttypes, sessions and cleanups.
CLEANUP_ALLOWED_MODELS = env.list("CLEANUP_ALLOWED_MODELS", default=[])
# Fields no filter may name (field, or app_label.Model.field); password fields always.
CLEANUP_PROTECTED_FIELDS = env.list("CLEANUP_PROTECTED_FIELDS", default=["password"])
# A long cleanup runs in parts of about this many seconds each, so its progress reaches the
# orchestration's custom status and a lost worker costs at most one part.
CLEANUP_PART_SECONDS = env.float("CLEANUP_PART_SECONDS", default=20.0)
# A run longer than this is recorded as timed out and its schedule goes on (a schedule's own
# max_run_seconds wins; 0: no limit).
CLEANUP_MAX_RUN_SECONDS = env.int("CLEANUP_MAX_RUN_SECONDS", default=3600)
# A live orchestration whose run was interrupted (its worker died) and not redelivered within
# this is restarted by the reconciler, its count going on.
STUCK_RUN_GRACE_SECONDS = env.float("STUCK_RUN_GRACE_SECONDS", default=60.0)
# runworker stops within about this long: work still in progress then is left to the engine,
# which delivers it again (its run is marked interrupted).
WORKER_STOP_SECONDS = env.float("WORKER_STOP_SECONDS", default=20.0)
# A scheduled run is handed to a worker this long before its planned time, and the worker starts
# it at that time exactly: the engine's and the worker's delivery time (which grows with the
# load) is spent ahead of the slot instead of after it. 0: handed over at the planned time.
CLEANUP_DISPATCH_LEAD_SECONDS = env.float("CLEANUP_DISPATCH_LEAD_SECONDS", default=1.5)
# A bulk start (more schedules than the admin starts one by one) plans the first runs of interval
# schedules at most this many a second, and within one interval: a fleet started in one click
# does not fall due at one instant at every interval. 0: all at once.
CLEANUP_BULK_START_RATE = env.float("CLEANUP_BULK_START_RATE", default=20.0)
# A scheduled run that starts more than this late has missed its slot (missed-run policy).
MISSED_RUN_GRACE_SECONDS = env.float("MISSED_RUN_GRACE_SECONDS", default=2.0)
# A failed orchestration (not a failed cleanup) is restarted after 5 s, 10 s, 20 s... at most this.
RECOVERY_BACKOFF_MAX_SECONDS = env.float("RECOVERY_BACKOFF_MAX_SECONDS", default=300.0)

# Schedules declared in code: name -> the admin form's fields and a state (README, "Schedules in
# code"), as JSON here; a project of your own writes the dict in its settings.
CLEANUP_SCHEDULES = env.json("CLEANUP_SCHEDULES", default={})

# Purging a task hub can take longer than an ordinary engine call.
PURGE_CALL_TIMEOUT = env.float("PURGE_CALL_TIMEOUT", default=300.0)

# /healthz and `manage.py healthcheck` fail while a run has been running longer than this (0: never).
HEALTH_STUCK_SECONDS = env.float("HEALTH_STUCK_SECONDS", default=600.0)
# A bearer token that lets Prometheus read /metrics without a staff login (empty: staff only).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# Alert webhooks (README, "Alerts"): URLs (comma-separated) that get every schedule's alerts.
ALERT_WEBHOOKS = env.list("ALERT_WEBHOOKS", default=[])
# Hosts a schedule's own webhooks may reach although they are internal (loopback, private...).
ALERT_WEBHOOK_ALLOWED_HOSTS = env.list("ALERT_WEBHOOK_ALLOWED_HOSTS", default=[])
# Each delivery attempt's time-out, the attempts per alert, and the first retry's wait (doubling).
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", default=5.0)
ALERT_WEBHOOK_ATTEMPTS = env.int("ALERT_WEBHOOK_ATTEMPTS", default=3)
ALERT_WEBHOOK_BACKOFF_SECONDS = env.float("ALERT_WEBHOOK_BACKOFF_SECONDS", default=1.0)
# The site's address as people reach it: alerts link to run pages under it (empty: paths only).
CLEANUP_SITE_URL = env.str("CLEANUP_SITE_URL", default="")
# Safety (README, "Safety"): the blast-radius guard, approvals, archives.
CLEANUP_MAX_ROWS_PER_RUN = env.int("CLEANUP_MAX_ROWS_PER_RUN", default=100_000)
CLEANUP_MAX_TABLE_FRACTION = env.float("CLEANUP_MAX_TABLE_FRACTION", default=0.5)
CLEANUP_JUMP_FACTOR = env.float("CLEANUP_JUMP_FACTOR", default=10.0)
CLEANUP_FIRST_RUN_REVIEW_ROWS = env.int("CLEANUP_FIRST_RUN_REVIEW_ROWS", default=10_000)
CLEANUP_FOUR_EYES = env.bool("CLEANUP_FOUR_EYES", default=True)
CLEANUP_APPROVAL_SLACK = env.float("CLEANUP_APPROVAL_SLACK", default=0.01)
CLEANUP_ARCHIVE_BY_DEFAULT = env.bool("CLEANUP_ARCHIVE_BY_DEFAULT", default=False)
CLEANUP_ARCHIVE_STORAGE = env.str("CLEANUP_ARCHIVE_STORAGE", default="")
CLEANUP_ARCHIVE_DAYS = env.int("CLEANUP_ARCHIVE_DAYS", default=30)
# Kind to the database (README, "Running against a busy database").
CLEANUP_MAX_REPLICA_LAG_SECONDS = env.float("CLEANUP_MAX_REPLICA_LAG_SECONDS", default=10.0)
CLEANUP_BATCH_PAUSE_MS = env.int("CLEANUP_BATCH_PAUSE_MS", default=0)
CLEANUP_LOCK_TIMEOUT_MS = env.int("CLEANUP_LOCK_TIMEOUT_MS", default=2_000)
CLEANUP_ANALYZE_AFTER_ROWS = env.int("CLEANUP_ANALYZE_AFTER_ROWS", default=10_000)
CLEANUP_BACKLOG_ALERT_SECONDS = env.float("CLEANUP_BACKLOG_ALERT_SECONDS", default=86_400.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "filters": {
        "drop_cancelled_stream": {"()": "cleanups.log.DropCancelledStream"},
        "escape_control_characters": {"()": "cleanups.log.EscapeControlCharacters"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["drop_cancelled_stream", "escape_control_characters"],
        },
    },
    "loggers": {
        "cleanups": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
        "durabletask": {
            "handlers": ["console"],
            "level": env.str("DURABLETASK_LOG_LEVEL", default="WARNING"),
        },
    },
}
