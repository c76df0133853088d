"""System checks: a malformed engine setting is reported by `manage.py check`, not at first use."""

from typing import Any
from urllib.parse import urlsplit

from django.apps import apps
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import FieldDoesNotExist
from django.db import DatabaseError

from cleanups.conf import settings
from cleanups.engine.config import EngineConfigError, engine_config
from cleanups.models import CleanupSchedule
from cleanups.tasks.archive import storage_problem
from cleanups.webhooks import hostname, redact


@register()
def check_engine_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    try:
        engine_config()
    except EngineConfigError as error:
        return [
            Error(
                str(error),
                hint="See the README's configuration section (ENDPOINT, TASKHUB, EMBEDDED_ENGINE_PORT).",
                id="cleanups.E001",
            )
        ]
    return []


@register()
def check_allowed_models(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A typo in CLEANUP_ALLOWED_MODELS would silently allow nothing it meant to."""
    errors = []
    for label in settings.CLEANUP_ALLOWED_MODELS:
        try:
            apps.get_model(label.strip())
        except (LookupError, ValueError):
            errors.append(
                Error(
                    f"CLEANUP_ALLOWED_MODELS lists {label!r}, which is not an installed model.",
                    hint='Use app_label.ModelName labels, e.g. "sessions.Session".',
                    id="cleanups.E002",
                )
            )
    return errors


# The app's numeric settings and the least each may be (``exclusive``: it must be more than that).
_NUMBERS: dict[str, tuple[float, bool]] = {
    "ENGINE_CALL_TIMEOUT": (0, True),
    "PURGE_CALL_TIMEOUT": (0, True),
    "RECONCILE_INTERVAL": (0, True),
    "RECONCILE_SWEEP_SECONDS": (0, False),
    "SAMPLE_TIMER_SECONDS": (0, True),
    "CLEANUP_PART_SECONDS": (0, True),
    "CLEANUP_MAX_RUN_SECONDS": (0, False),
    "CLEANUP_DISPATCH_LEAD_SECONDS": (0, False),
    "CLEANUP_BULK_START_RATE": (0, False),
    "STUCK_RUN_GRACE_SECONDS": (0, False),
    "WORKER_STOP_SECONDS": (0, False),
    "MISSED_RUN_GRACE_SECONDS": (0, False),
    "RECOVERY_BACKOFF_MAX_SECONDS": (0, True),
    "HEALTH_STUCK_SECONDS": (0, False),
    "ALERT_WEBHOOK_TIMEOUT": (0, True),
    "ALERT_WEBHOOK_BACKOFF_SECONDS": (0, False),
}
_LISTS = (
    "CLEANUP_ALLOWED_DIRS",
    "CLEANUP_ALLOWED_MODELS",
    "CLEANUP_PROTECTED_FIELDS",
    "ALERT_WEBHOOKS",
    "ALERT_WEBHOOK_ALLOWED_HOSTS",
)


@register()
def check_setting_values(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A host project writes these settings by hand: a string where a number belongs, or a
    negative timeout, would otherwise surface as a traceback deep in a worker thread."""
    errors = []
    for name, (least, exclusive) in _NUMBERS.items():
        value = getattr(settings, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < least or (exclusive and value == least):
            bound = f"more than {least}" if exclusive else f"at least {least}"
            errors.append(
                Error(
                    f"{name} is {value!r}: it must be a number of seconds {bound}.",
                    id="cleanups.E003",
                )
            )
    for name in _LISTS:
        value = getattr(settings, name)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            errors.append(
                Error(f"{name} is {value!r}: it must be a list of strings.", id="cleanups.E003")
            )
    return errors


@register()
def check_safety_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """The guard's limits, the approval's slack and the archive's storage (README, "Safety")."""
    errors = []
    bounds = {
        "CLEANUP_MAX_ROWS_PER_RUN": (0, None),
        "CLEANUP_MAX_TABLE_FRACTION": (0, 1),
        "CLEANUP_JUMP_FACTOR": (0, None),
        "CLEANUP_FIRST_RUN_REVIEW_ROWS": (0, None),
        "CLEANUP_APPROVAL_SLACK": (0, 1),
        "CLEANUP_ARCHIVE_DAYS": (0, None),
        "CLEANUP_MAX_REPLICA_LAG_SECONDS": (0, None),
        "CLEANUP_BATCH_PAUSE_MS": (0, 60_000),
        "CLEANUP_LOCK_TIMEOUT_MS": (0, 600_000),
        "CLEANUP_ANALYZE_AFTER_ROWS": (0, None),
        "CLEANUP_BACKLOG_ALERT_SECONDS": (0, None),
    }
    for name, (least, most) in bounds.items():
        value = getattr(settings, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < least or (most is not None and value > most):
            within = f"from {least} to {most}" if most is not None else f"at least {least}"
            errors.append(
                Error(f"{name} is {value!r}: it must be a number {within}.", id="cleanups.E005")
            )
    for name in ("CLEANUP_FOUR_EYES", "CLEANUP_ARCHIVE_BY_DEFAULT"):
        if not isinstance(getattr(settings, name), bool):
            errors.append(Error(f"{name} must be True or False.", id="cleanups.E005"))
    problem = storage_problem()
    if problem:
        errors.append(Error(problem, id="cleanups.E005"))
    return errors


@register()
def check_alert_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A webhook URL that is no http(s) URL would fail at the first alert, unseen till then."""
    return [Error(problem, id="cleanups.E004") for problem in alert_settings_problems()]


def alert_settings_problems() -> list[str]:
    """What is wrong with the alert settings (for the system checks)."""
    problems = []
    attempts = settings.ALERT_WEBHOOK_ATTEMPTS
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        problems.append(
            f"ALERT_WEBHOOK_ATTEMPTS is {attempts!r}: it must be a whole number of 1 or more."
        )
    webhooks = settings.ALERT_WEBHOOKS
    if isinstance(webhooks, list | tuple):
        for url in webhooks:
            if not isinstance(url, str):
                continue  # the list check says so
            if urlsplit(url).scheme not in ("http", "https") or not hostname(url):
                problems.append(
                    f"ALERT_WEBHOOKS lists {redact(url)}, which is not an http:// or https:// URL."
                )
    base = settings.CLEANUP_SITE_URL
    if not isinstance(base, str) or (
        base and not (base.startswith(("http://", "https://")) and hostname(base))
    ):
        problems.append(
            f"CLEANUP_SITE_URL is {base!r}: it must be empty or the site's address, "
            "e.g. https://cleanups.example.com."
        )
    return problems


def _has_index(model: Any, name: str) -> bool:
    """Whether a database index starts with ``name`` (a field's own, or one in Meta.indexes)."""
    field = model._meta.get_field(name)
    if field.db_index or field.unique or field.primary_key:
        return True
    return any(
        index.fields and index.fields[0].lstrip("-") == name for index in model._meta.indexes
    )


def unindexed_date_fields(definitions: list[tuple[str, Any, Any]]) -> list[Warning]:
    """A warning per delete_old_rows schedule whose date field has no index: its runs, and the
    backlog's MIN() after each, then read the whole table."""
    warnings = []
    for name, task, params in definitions:
        if task != "delete_old_rows" or not isinstance(params, dict):
            continue
        try:
            model = apps.get_model(params.get("model", ""))
            field = params.get("field", "")
            indexed = _has_index(model, field)
        except (LookupError, ValueError, TypeError, FieldDoesNotExist):
            continue  # the schedule's own validation says what is wrong
        if not indexed:
            warnings.append(
                Warning(
                    f"Schedule {name!r} deletes {model._meta.label} by {field!r}, which has no "
                    "index: every run, and the retention backlog after it, reads the whole "
                    "table.",
                    hint=f"Add db_index=True to {model._meta.label}.{field} (or an index that "
                    "starts with it).",
                    id="cleanups.W001",
                )
            )
    return warnings


@register(Tags.database)
def check_cleanup_indexes(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list:
    """Declared schedules (CLEANUP_SCHEDULES) and saved ones, as Django's database checks:
    with ``check --database`` (and ``migrate``) only, so no other command prints it."""
    if not databases:
        return []
    declared = settings.CLEANUP_SCHEDULES if isinstance(settings.CLEANUP_SCHEDULES, dict) else {}
    definitions = [
        (name, fields.get("task"), fields.get("params"))
        for name, fields in declared.items()
        if isinstance(fields, dict)
    ]
    try:
        saved = CleanupSchedule.objects.filter(task="delete_old_rows")
        definitions += list(saved.values_list("name", "task", "params"))
    except DatabaseError:
        pass  # not migrated yet: nothing saved to check
    seen: set[str] = set()
    unique = [d for d in definitions if not (d[0] in seen or seen.add(d[0]))]
    return unindexed_date_fields(unique)
