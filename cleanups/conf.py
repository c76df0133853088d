"""Every setting the cleanups app reads, with its default: a host project sets in its own settings
only what it changes. The app reads them through ``cleanups.conf.settings`` (never
``django.conf.settings`` directly), which looks each one up in the project's settings first, at
every access, so ``override_settings`` and the test suite's ``settings`` fixture apply as usual.

The demo site (``cleanupsite``) fills them from environment variables; a host project may do the
same, or write them down. The README's "Settings" table lists them with the same defaults.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # The Durable Task engine, named as in the eternal-orchestrations sample. ENDPOINT empty:
    # runworker hosts the embedded engine on EMBEDDED_ENGINE_PORT (loopback only).
    "ENDPOINT": "",
    "TASKHUB": "default",
    "EMBEDDED_ENGINE_PORT": "4001",
    # A user-assigned managed identity's client id for the Durable Task Scheduler (empty: the
    # default Azure credential chain).
    "AZURE_CLIENT_ID": "",
    # Every client call to the engine gives up after this long (s).
    "ENGINE_CALL_TIMEOUT": 5.0,
    # Purging a task hub can take longer than an ordinary engine call (s).
    "PURGE_CALL_TIMEOUT": 300.0,
    # How often runworker compares desired state with the engine (s).
    "RECONCILE_INTERVAL": 5.0,
    # How often the reconciler's pass reads every instance, not only what changed (s).
    "RECONCILE_SWEEP_SECONDS": 300.0,
    # The timer of the sample's bare-integer loop (s).
    "SAMPLE_TIMER_SECONDS": 15.0,
    # Directories delete_old_files may clean; nothing outside them (none by default).
    "CLEANUP_ALLOWED_DIRS": [],
    # Models delete_old_rows may name (app_label.Model). Empty: every installed model except
    # those of auth, admin, contenttypes, sessions and cleanups.
    "CLEANUP_ALLOWED_MODELS": [],
    # Fields no filter may name (field, or app_label.Model.field); password fields always.
    "CLEANUP_PROTECTED_FIELDS": ["password"],
    # A long cleanup runs in parts of about this long each (s).
    "CLEANUP_PART_SECONDS": 20.0,
    # A run longer than this is recorded as timed out (s; a schedule's own limit wins; 0: none).
    "CLEANUP_MAX_RUN_SECONDS": 3600,
    # A scheduled run is handed to its worker this long before its planned time (s).
    "CLEANUP_DISPATCH_LEAD_SECONDS": 1.5,
    # A bulk start (more schedules than the admin starts one by one) plans the first runs of
    # interval schedules at most this many a second, and within one interval, so that a fleet
    # started in one click does not fall due at one instant (0: all at once).
    "CLEANUP_BULK_START_RATE": 20.0,
    # A live orchestration whose run was interrupted and not redelivered within this is
    # restarted by the reconciler (s).
    "STUCK_RUN_GRACE_SECONDS": 60.0,
    # runworker stops within about this long (s).
    "WORKER_STOP_SECONDS": 20.0,
    # A scheduled run that starts more than this late has missed its slot (s).
    "MISSED_RUN_GRACE_SECONDS": 2.0,
    # A failed orchestration is restarted after 5 s, 10 s, 20 s... at most this (s).
    "RECOVERY_BACKOFF_MAX_SECONDS": 300.0,
    # Schedules declared in code: name -> the admin form's fields (and "state"), created and
    # updated by `manage.py syncschedules` (README, "Schedules in code"). Empty: none.
    "CLEANUP_SCHEDULES": {},
    # /healthz and `manage.py healthcheck` fail while a run has been running longer than this
    # (s; 0: never).
    "HEALTH_STUCK_SECONDS": 600.0,
    # A bearer token that lets a scraper read /metrics without a staff login (empty: staff only).
    "METRICS_TOKEN": "",
    # Alert webhooks (cleanups.alerts). Site-wide URLs that get every alert of every schedule
    # (set by the deployer, so trusted: they may point at internal hosts).
    "ALERT_WEBHOOKS": [],
    # Hosts (names or IP addresses, exact) a schedule's own webhooks may reach although they
    # are, or resolve to, loopback, private, link-local or otherwise non-public addresses.
    "ALERT_WEBHOOK_ALLOWED_HOSTS": [],
    # Each attempt to deliver an alert gives up after this long (s).
    "ALERT_WEBHOOK_TIMEOUT": 5.0,
    # Attempts per alert and URL (1: no retry).
    "ALERT_WEBHOOK_ATTEMPTS": 3,
    # The wait before the first retry; it doubles for each one after (s).
    "ALERT_WEBHOOK_BACKOFF_SECONDS": 1.0,
    # The site's address as people reach it (https://cleanups.example.com): alerts link to
    # run pages under it. Empty: alerts carry the pages' paths only.
    "CLEANUP_SITE_URL": "",
    # Safety (README, "Safety"). A deleting run counts first and is held for a person's
    # approval when it would delete more than this many rows (a schedule's own limit wins;
    # 0: no limit) ...
    "CLEANUP_MAX_ROWS_PER_RUN": 100_000,
    # ... or more than this fraction of a table (0: no limit; only above 1,000 rows) ...
    "CLEANUP_MAX_TABLE_FRACTION": 0.5,
    # ... or more than this many times the median of its last 10 succeeded runs (and more than
    # 1,000 rows; 0: off) ...
    "CLEANUP_JUMP_FACTOR": 10.0,
    # ... or, on its first run after it was created or its task or params changed, more than
    # this many rows (0: off).
    "CLEANUP_FIRST_RUN_REVIEW_ROWS": 10_000,
    # The approver of a held run may not be the schedule's last editor.
    "CLEANUP_FOUR_EYES": True,
    # An approved run deletes at most the count it showed plus this fraction (rows that aged
    # into its window since).
    "CLEANUP_APPROVAL_SLACK": 0.01,
    # Row-deleting schedules with "archive" blank archive their rows first when this is True.
    "CLEANUP_ARCHIVE_BY_DEFAULT": False,
    # The key of settings.STORAGES that archives go to ("": a file system storage under
    # MEDIA_ROOT/cleanups-archive).
    "CLEANUP_ARCHIVE_STORAGE": "",
    # The built-in prune_archives task deletes archives older than this (days; 0: never).
    "CLEANUP_ARCHIVE_DAYS": 30,
    # Kind to the database (README, "Running against a busy database"). Between batches a run
    # waits while a PostgreSQL replica is further behind than this, until it is back under half
    # of it (s; 0: off) ...
    "CLEANUP_MAX_REPLICA_LAG_SECONDS": 10.0,
    # ... and pauses this long after every batch (ms; 0: none).
    "CLEANUP_BATCH_PAUSE_MS": 0,
    # A batch waits at most this long for a lock another session holds on its rows or table;
    # then it gives up, and the run waits (holding nothing) and tries it again (ms; 0: the
    # database's own limits: SQLite's busy timeout, none on PostgreSQL).
    "CLEANUP_LOCK_TIMEOUT_MS": 2_000,
    # A run that deleted more than this many rows (or 10% of a table) runs ANALYZE on it
    # (SQLite: PRAGMA optimize), and VACUUM with the schedule's "vacuum" (0: never).
    "CLEANUP_ANALYZE_AFTER_ROWS": 10_000,
    # A schedule further behind its retention policy than this warns in the health check and
    # alerts (s; 0: never).
    "CLEANUP_BACKLOG_ALERT_SECONDS": 86_400.0,
}


class _Settings:
    """The project's value of a cleanups setting, or the app's default; any other setting as the
    project has it."""

    def __getattr__(self, name: str) -> Any:
        if name in DEFAULTS:
            return getattr(django_settings, name, DEFAULTS[name])
        return getattr(django_settings, name)


settings = _Settings()
