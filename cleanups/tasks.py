"""The registry of cleanup tasks a schedule can run, and the built-in tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

logger = logging.getLogger(__name__)

Params = dict[str, Any]


@dataclass
class TaskResult:
    """What one cleanup run did."""

    items_deleted: int = 0
    message: str = ""


@dataclass(frozen=True)
class CleanupTask:
    """A registered cleanup: a function plus the validation of its parameters."""

    name: str
    description: str
    function: Callable[[Params], TaskResult]
    validate: Callable[[Params], Params]

    def clean_params(self, params: Any) -> Params:
        """Return validated params, or raise ValidationError with a readable message."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ValidationError("Parameters must be a JSON object, for example {}.")
        return self.validate(dict(params))


_registry: dict[str, CleanupTask] = {}


def _accept_any(params: Params) -> Params:
    return params


def cleanup_task(
    name: str, description: str, validate: Callable[[Params], Params] | None = None
) -> Callable[[Callable[[Params], TaskResult]], Callable[[Params], TaskResult]]:
    """Register a function as a cleanup task under ``name``."""

    def register(function: Callable[[Params], TaskResult]) -> Callable[[Params], TaskResult]:
        if name in _registry and _registry[name].function is not function:
            raise ValueError(f"A cleanup task named {name!r} is already registered.")
        _registry[name] = CleanupTask(name, description, function, validate or _accept_any)
        return function

    return register


def get_task(name: str) -> CleanupTask | None:
    return _registry.get(name)


def all_tasks() -> list[CleanupTask]:
    return sorted(_registry.values(), key=lambda task: task.name)


def task_choices() -> list[tuple[str, str]]:
    """Choices for the schedule's ``task`` field; a callable so new tasks need no migration."""
    return [(task.name, task.name) for task in all_tasks()]


def _reject_unknown(params: Params, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValidationError(
            "Unknown parameter(s): %(unknown)s. Allowed: %(allowed)s.",
            params={"unknown": ", ".join(unknown), "allowed": ", ".join(sorted(allowed)) or "none"},
        )


def _number(params: Params, key: str, default: float, minimum: float, maximum: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("%(key)s must be a number.", params={"key": key})
    if not minimum <= value <= maximum:
        raise ValidationError(
            "%(key)s must be between %(min)s and %(max)s.",
            params={"key": key, "min": minimum, "max": maximum},
        )
    return value


def _validate_expired_sessions(params: Params) -> Params:
    _reject_unknown(params, {"batch_size"})
    return {"batch_size": int(_number(params, "batch_size", 1000, 1, 100_000))}


@cleanup_task(
    "expired_sessions",
    "Delete Django sessions whose expiry date has passed, in batches.",
    validate=_validate_expired_sessions,
)
def expired_sessions(params: Params) -> TaskResult:
    from django.contrib.sessions.models import Session

    batch_size = params.get("batch_size", 1000)
    now = timezone.now()
    deleted = 0
    while True:
        # Each batch is its own short statement, so no lock is held for the whole table.
        batch = list(
            Session.objects.filter(expire_date__lt=now).values_list("pk", flat=True)[:batch_size]
        )
        if not batch:
            break
        count, _ = Session.objects.filter(pk__in=batch).delete()
        deleted += count
    return TaskResult(items_deleted=deleted, message=f"Deleted {deleted} expired session(s).")


def _validate_sample(params: Params) -> Params:
    _reject_unknown(params, {"seconds"})
    return {"seconds": _number(params, "seconds", 5, 0, 3600)}


@cleanup_task(
    "sample",
    "The eternal-orchestrations sample's activity: log, wait params.seconds (default 5), delete nothing.",
    validate=_validate_sample,
)
def sample(params: Params) -> TaskResult:
    seconds = params.get("seconds", 5)
    logger.info("Performing sample cleanup (waiting %s s)", seconds)
    time.sleep(seconds)
    return TaskResult(items_deleted=0, message=f"Sample cleanup waited {seconds} s.")


def human_duration(duration: timedelta) -> str:
    """A short reading of a duration: '90 s' -> '1 min 30 s', '1 day, 2:00:00' -> '1 d 2 h'."""
    total = duration.total_seconds()
    if total < 60:
        return f"{total:g} s"
    parts = []
    remaining = int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        value, remaining = divmod(remaining, size)
        if value:
            parts.append(f"{value} {unit}")
    return " ".join(parts)
